//! Zip payloads, read straight from the fetched bytes.
//!
//! A zip is indexed by its central directory at the end; a general-purpose reader parses every
//! record of it into memory before the first entry can be read, so a small zip declaring a
//! million empty entries costs hundreds of MiB before any cap applies. Here the end record's
//! entry count and directory size are checked first, then the directory is walked with nothing
//! but a position (each record's name length checked, the count of records held to the
//! declared one), and only then read a second time, record by record, each entry unpacked
//! straight into the tree. Nothing is held per record.

use std::io::Read;

use super::{ArchiveError, Entry, MAX_PATH_LEN, QUOTED, Tree, quote};

/// End of central directory record: signature, fixed part length.
const EOCD: &[u8] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
/// Zip64 end of central directory locator (right before the end record) and record.
const ZIP64_LOCATOR: &[u8] = b"PK\x06\x07";
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD: &[u8] = b"PK\x06\x06";
const ZIP64_EOCD_LEN: usize = 56;
/// Central directory file header: signature, fixed part length.
const CENTRAL: &[u8] = b"PK\x01\x02";
const CENTRAL_LEN: usize = 46;
/// Local file header: signature, fixed part length.
const LOCAL: &[u8] = b"PK\x03\x04";
const LOCAL_LEN: usize = 30;

/// Extra fields and comment one central directory record may carry. Real ones hold timestamps,
/// owners and zip64 sizes: tens of bytes.
const MAX_EXTRA_AND_COMMENT: usize = 8 << 10;
/// The longest central directory record accepted, so the largest directory `n` entries may have.
const MAX_RECORD: u64 = (CENTRAL_LEN + MAX_PATH_LEN + MAX_EXTRA_AND_COMMENT) as u64;

/// Compression methods read: stored and deflated (what zip tools write by default).
const STORED: u16 = 0;
const DEFLATED: u16 = 8;
/// Flag bit 0: the entry is encrypted.
const ENCRYPTED: u16 = 1;
/// Host systems (high byte of "version made by") whose external attributes hold a Unix mode.
const UNIX_HOSTS: [u8; 2] = [3, 19];
/// MS-DOS directory attribute, in the low byte of the external attributes.
const DOS_DIRECTORY: u32 = 0x10;

/// File-type bits of a Unix mode, as zip tools record them.
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

pub(super) fn read(payload: &[u8], tree: &mut Tree<'_>) -> Result<(), ArchiveError> {
    let directory = Directory::locate(payload, tree.limits.max_entries)?;
    directory.check()?;
    for record in directory.records() {
        read_entry(payload, &record?, tree)?;
    }
    Ok(())
}

/// Where the central directory is, as the end record says, checked against the caps.
struct Directory<'a> {
    payload: &'a [u8],
    /// The end record that declared it, for messages.
    record: &'static str,
    count: u64,
    start: usize,
    end: usize,
}

impl<'a> Directory<'a> {
    /// Reads the end record (and its zip64 form) and refuses a declared count or directory
    /// size over the caps, before a record is looked at.
    fn locate(payload: &'a [u8], max_entries: usize) -> Result<Self, ArchiveError> {
        let corrupt = |reason: &str| ArchiveError::Corrupt(reason.into());
        // The end record is last, followed only by its comment (at most 64 KiB).
        let last = payload.len().checked_sub(EOCD_LEN).ok_or_else(|| corrupt("too short for a zip archive"))?;
        let first = last.saturating_sub(u16::MAX as usize);
        let eocd = (first..=last)
            .rev()
            .find(|&at| {
                payload[at..].starts_with(EOCD)
                    && at + EOCD_LEN + le(payload, at + 20, 2).unwrap_or(0) as usize <= payload.len()
            })
            .ok_or_else(|| corrupt("no end of central directory record"))?;
        let field = |at: usize, n: usize| le(payload, eocd + at, n).unwrap_or(0);
        let (mut record, mut disks, mut count) =
            ("end of central directory record", (field(4, 2), field(6, 2)), (field(8, 2), field(10, 2)));
        let (mut size, mut offset, mut directory_end) = (field(12, 4), field(16, 4), eocd as u64);
        if eocd >= ZIP64_LOCATOR_LEN && payload[eocd - ZIP64_LOCATOR_LEN..].starts_with(ZIP64_LOCATOR) {
            let at = le(payload, eocd - ZIP64_LOCATOR_LEN + 8, 8).ok_or_else(|| corrupt("truncated zip64 locator"))?;
            let at = usize::try_from(at)
                .ok()
                .filter(|&at| payload.get(at..).is_some_and(|r| r.starts_with(ZIP64_EOCD) && r.len() >= ZIP64_EOCD_LEN))
                .ok_or_else(|| corrupt("its zip64 locator points to no zip64 end of central directory record"))?;
            let field = |n: usize| le(payload, at + n, if n < 24 { 4 } else { 8 }).unwrap_or(0);
            record = "zip64 end of central directory record";
            (disks, count) = ((field(16), field(20)), (field(24), field(32)));
            (size, offset, directory_end) = (field(40), field(48), at as u64);
        }
        if disks != (0, 0) || count.0 != count.1 {
            return Err(corrupt("spans several disks"));
        }
        let count = count.1;
        if count > max_entries as u64 {
            return Err(ArchiveError::DeclaredTooMany { record, count, limit: max_entries });
        }
        let limit = count * MAX_RECORD;
        if size > limit {
            return Err(ArchiveError::DirectoryTooLarge { record, size, count, limit });
        }
        if offset.checked_add(size).is_none_or(|end| end > directory_end) {
            return Err(ArchiveError::Corrupt(format!(
                "its {record} places the central directory at {offset} ({size} bytes), past the end record at {directory_end}"
            )));
        }
        // Both fit in usize: they are within the payload.
        Ok(Self { payload, record, count, start: offset as usize, end: (offset + size) as usize })
    }

    /// Walks every record, holding only a position: each is checked (signature, name length,
    /// extra fields), there are exactly as many as declared and they fill the directory.
    fn check(&self) -> Result<(), ArchiveError> {
        let mut records = self.records();
        for record in records.by_ref() {
            record?;
        }
        // A record right after the declared ones, inside the declared size or past it.
        if self.payload[records.at..].starts_with(CENTRAL) {
            return Err(ArchiveError::MoreRecordsThanDeclared { record: self.record, count: self.count });
        }
        if records.at != self.end {
            return Err(ArchiveError::Corrupt(format!(
                "its {} declares a central directory of {} bytes; its {} records take {}",
                self.record,
                self.end - self.start,
                self.count,
                records.at - self.start
            )));
        }
        Ok(())
    }

    fn records(&self) -> Records<'a> {
        Records { payload: self.payload, at: self.start, end: self.end, index: 0, count: self.count }
    }
}

/// The records of a central directory, in order, each checked as it is parsed.
struct Records<'a> {
    payload: &'a [u8],
    at: usize,
    end: usize,
    index: u64,
    count: u64,
}

/// One central directory record: what is needed to read its entry.
struct Record<'a> {
    name: &'a [u8],
    flags: u16,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    host: u8,
    external: u32,
    offset: u64,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index == self.count {
            return None;
        }
        self.index += 1;
        let parsed = self.parse();
        if parsed.is_err() {
            self.index = self.count;
        }
        Some(parsed)
    }
}

impl<'a> Records<'a> {
    fn parse(&mut self) -> Result<Record<'a>, ArchiveError> {
        let directory = &self.payload[..self.end];
        let missing = || {
            ArchiveError::Corrupt(format!(
                "central directory record {} of {} is missing or cut short",
                self.index, self.count
            ))
        };
        let fixed =
            directory.get(self.at..self.at + CENTRAL_LEN).filter(|h| h.starts_with(CENTRAL)).ok_or_else(missing)?;
        let field = |at: usize, n: usize| le(fixed, at, n).unwrap_or(0);
        let (name_len, extra_len, comment_len) = (field(28, 2) as usize, field(30, 2) as usize, field(32, 2) as usize);
        let name_at = self.at + CENTRAL_LEN;
        if name_len > MAX_PATH_LEN {
            let quoted =
                directory.get(name_at..).map(|rest| quote(&rest[..rest.len().min(QUOTED + 1)])).unwrap_or_default();
            return Err(ArchiveError::RecordTooLarge {
                record: "name",
                entry: quoted,
                size: name_len as u64,
                limit: MAX_PATH_LEN as u64,
            });
        }
        let name = directory.get(name_at..name_at + name_len).ok_or_else(missing)?;
        if extra_len + comment_len > MAX_EXTRA_AND_COMMENT {
            return Err(ArchiveError::RecordTooLarge {
                record: "extra fields and comment",
                entry: quote(name),
                size: (extra_len + comment_len) as u64,
                limit: MAX_EXTRA_AND_COMMENT as u64,
            });
        }
        let extra_at = name_at + name_len;
        let extra = directory.get(extra_at..extra_at + extra_len).ok_or_else(missing)?;
        let next = extra_at + extra_len + comment_len;
        if next > directory.len() {
            return Err(missing());
        }
        self.at = next;
        let mut record = Record {
            name,
            flags: field(8, 2) as u16,
            method: field(10, 2) as u16,
            crc: field(16, 4) as u32,
            compressed: field(20, 4),
            size: field(24, 4),
            host: (field(4, 2) >> 8) as u8,
            external: field(38, 4) as u32,
            offset: field(42, 4),
        };
        record.apply_zip64(extra)?;
        Ok(record)
    }
}

impl Record<'_> {
    /// Takes the 64-bit sizes and offset from the zip64 extra field, for each 32-bit field that
    /// says to (all ones), in the order the format fixes.
    fn apply_zip64(&mut self, mut extra: &[u8]) -> Result<(), ArchiveError> {
        while extra.len() >= 4 {
            let (id, len) = (le(extra, 0, 2).unwrap_or(0), le(extra, 2, 2).unwrap_or(0) as usize);
            let data = extra.get(4..4 + len).unwrap_or(&extra[4..]);
            if id == 1 {
                let mut values = data.chunks_exact(8).map(|c| le(c, 0, 8).unwrap_or(0));
                for field in [&mut self.size, &mut self.compressed, &mut self.offset] {
                    if *field == u32::MAX as u64 {
                        *field = values.next().ok_or_else(|| ArchiveError::CorruptEntry {
                            entry: quote(self.name),
                            reason: "its zip64 extra field lacks a size or offset it is needed for".into(),
                        })?;
                    }
                }
            }
            extra = extra.get(4 + len..).unwrap_or_default();
        }
        Ok(())
    }

    /// The Unix mode, when the tool that wrote the entry recorded one.
    fn unix_mode(&self) -> Option<u32> {
        Some(self.external >> 16).filter(|mode| UNIX_HOSTS.contains(&self.host) && *mode != 0)
    }
}

fn read_entry(payload: &[u8], record: &Record<'_>, tree: &mut Tree<'_>) -> Result<(), ArchiveError> {
    let name = std::str::from_utf8(record.name)
        .map_err(|_| ArchiveError::UnsafeEntry { entry: quote(record.name), rule: "is not UTF-8" })?;
    // File-type bits of 0 say nothing (Python's zipfile writes permissions alone): a file.
    let mode = record.unix_mode().map(|mode| mode & S_IFMT).filter(|&kind| kind != 0);
    if mode == Some(S_IFLNK) {
        let mut target = String::new();
        // The target is the entry's contents; small, but capped like any read.
        if let Ok(reader) = contents(payload, name, record) {
            let _ = reader.take(MAX_PATH_LEN as u64).read_to_string(&mut target);
        }
        return Err(ArchiveError::Link { entry: name.to_owned(), target });
    }
    let directory = name.ends_with('/')
        || mode == Some(S_IFDIR)
        || (mode.is_none() && record.external & DOS_DIRECTORY != 0 && !UNIX_HOSTS.contains(&record.host));
    let parsed = if directory {
        Entry::Directory
    } else if mode.is_some_and(|mode| mode != S_IFREG) {
        return Err(ArchiveError::Special { entry: name.to_owned(), kind: "special file".into() });
    } else {
        let mut reader = contents(payload, name, record)?;
        let bytes = tree.read_contents(&mut reader, record.size)?;
        let bad = |reason: String| ArchiveError::CorruptEntry { entry: name.to_owned(), reason };
        if bytes.len() as u64 != record.size {
            return Err(bad(format!("it holds {} bytes; its record declares {}", bytes.len(), record.size)));
        }
        let mut crc = flate2::Crc::new();
        crc.update(&bytes);
        if crc.sum() != record.crc {
            return Err(bad(format!("its CRC-32 is {:08x}; its record declares {:08x}", crc.sum(), record.crc)));
        }
        Entry::File(bytes)
    };
    tree.add(name, parsed)
}

/// The entry's contents as stored: found through its local header, inflated when deflated.
fn contents<'a>(payload: &'a [u8], name: &str, record: &Record<'_>) -> Result<Box<dyn Read + 'a>, ArchiveError> {
    let bad = |reason: &str| ArchiveError::CorruptEntry { entry: name.to_owned(), reason: reason.into() };
    let unsupported = |what: String| ArchiveError::Unsupported { entry: name.to_owned(), what };
    if record.flags & ENCRYPTED != 0 {
        return Err(unsupported("is encrypted".into()));
    }
    let local = usize::try_from(record.offset)
        .ok()
        .and_then(|at| payload.get(at..at.checked_add(LOCAL_LEN)?))
        .filter(|h| h.starts_with(LOCAL))
        .ok_or_else(|| bad("its local header is missing"))?;
    let skip = LOCAL_LEN + le(local, 26, 2).unwrap_or(0) as usize + le(local, 28, 2).unwrap_or(0) as usize;
    let data = (record.offset as usize)
        .checked_add(skip)
        .and_then(|start| payload.get(start..start.checked_add(usize::try_from(record.compressed).ok()?)?))
        .ok_or_else(|| bad("its data runs past the end of the archive"))?;
    match record.method {
        STORED if record.compressed != record.size => Err(bad("it is stored, yet its two sizes differ")),
        STORED => Ok(Box::new(data)),
        DEFLATED => Ok(Box::new(flate2::read::DeflateDecoder::new(data))),
        other => Err(unsupported(format!("uses compression method {other}"))),
    }
}

/// `n` little-endian bytes at `at`, if the slice holds them.
fn le(bytes: &[u8], at: usize, n: usize) -> Option<u64> {
    let field = bytes.get(at..at.checked_add(n)?)?;
    Some(field.iter().rev().fold(0, |value, &b| value << 8 | u64::from(b)))
}
