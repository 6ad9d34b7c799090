//! `format: archive`: a `.tar.gz`, `.tar` or `.zip` payload is unpacked in memory and written
//! again as a deterministic tree, so a release tarball or a Helm chart from a URL becomes an
//! artifact with the same guarantees as a single file (sorted entries, mtime 0, fixed modes).
//!
//! The payload is hostile until proven otherwise: every entry name is normalised and confined to
//! the tree (no absolute paths, no `..`), links and device files are refused rather than
//! followed, and the bytes unpacked and the entries read are capped, so a small bomb costs no
//! more than its caps.
//!
//! The caps apply before anything grows with the input: a zip's declared entry count and its
//! central directory are checked, and every record walked, before a single entry is read
//! (`zip_reader`); a tar's long-name and PAX records are measured by their headers before they
//! are read (`tar_reader`); and the tree held meanwhile costs its entries' names and contents,
//! both charged to the same byte cap, so nothing here is proportional to what the payload merely
//! claims.

use std::collections::BTreeMap;
use std::io::Read;

use super::{DestinationPath, MAX_PATH_LEN, Package, TreeWriter};

mod tar_reader;
mod zip_reader;

/// Most entries (files and directories) an archive may hold.
pub const MAX_ENTRIES: usize = 10_000;

/// Header and padding bytes a tar stream may carry per entry beyond its contents: one header,
/// PAX or GNU long-name records, padding to 512. Caps the decompressed stream, not the files.
const TAR_OVERHEAD_PER_ENTRY: u64 = 4096;

/// Bytes of a hostile name quoted when it is refused: enough to recognise it, never the whole of
/// a name that may be kilobytes long.
const QUOTED: usize = 64;

/// A name for messages: the first [`QUOTED`] bytes of a possibly long, possibly non-UTF-8 one.
fn quote(name: &[u8]) -> String {
    let head = String::from_utf8_lossy(&name[..name.len().min(QUOTED)]).into_owned();
    if name.len() > QUOTED { format!("{head}…") } else { head }
}

/// Which part of the archive becomes the artifact, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// Leading path segments removed from every entry first (like `tar --strip-components`);
    /// entries with no more segments than this are dropped.
    pub strip_components: usize,
    /// Then only entries under this directory are kept, relative to it.
    pub path: Option<DestinationPath>,
    /// The directory the tree is placed under inside the artifact (the root when absent).
    pub prefix: Option<DestinationPath>,
}

/// Caps on what unpacking may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of file contents and entry names, all entries together: what the tree held in
    /// memory costs, whatever the archive declares.
    pub max_bytes: u64,
    pub max_entries: usize,
}

/// Why an archive was refused. Messages name the entry and the rule.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("is not a gzip tarball, a tar or a zip archive (it starts with {0})")]
    UnknownFormat(String),
    #[error("cannot be read: {0}")]
    Corrupt(String),
    #[error("holds more than {limit} entries (entry {entry:?} is one too many)")]
    TooManyEntries { entry: String, limit: usize },
    #[error("implies more than {limit} directories its entries do not name (directory {entry:?} is one too many)")]
    TooManyDirectories { entry: String, limit: usize },
    #[error("its {record} declares {count} entries; the limit is {limit}")]
    DeclaredTooMany { record: &'static str, count: u64, limit: usize },
    #[error("its {record} declares a central directory of {size} bytes; {count} entries take at most {limit}")]
    DirectoryTooLarge { record: &'static str, size: u64, count: u64, limit: u64 },
    #[error("its central directory holds more than the {count} records its {record} declares")]
    MoreRecordsThanDeclared { record: &'static str, count: u64 },
    #[error("the {record} of entry {entry:?} is {size} bytes; the limit is {limit}")]
    RecordTooLarge { record: &'static str, entry: String, size: u64, limit: u64 },
    #[error("unpacks to more than {limit} bytes (file contents and entry names)")]
    TooLarge { limit: u64 },
    #[error("entry {entry:?} {rule}")]
    UnsafeEntry { entry: String, rule: &'static str },
    #[error("entry {entry:?} cannot be read: {reason}")]
    CorruptEntry { entry: String, reason: String },
    #[error("entry {entry:?} {what}; only stored and deflated, unencrypted zip entries are read")]
    Unsupported { entry: String, what: String },
    #[error("entry {entry:?} is a link (to {target:?}); archives may hold only regular files and directories")]
    Link { entry: String, target: String },
    #[error("entry {entry:?} is a {kind}; archives may hold only regular files and directories")]
    Special { entry: String, kind: String },
    #[error("entry {entry:?} appears twice (or as both a file and a directory)")]
    Duplicate { entry: String },
    #[error("{0}")]
    Empty(String),
    #[error("writing the tarball failed: {0}")]
    Write(#[from] std::io::Error),
}

/// One entry as the archive gave it.
enum Entry {
    Directory,
    File(Vec<u8>),
}

/// Unpacks `payload` and repackages the selected tree.
pub fn repackage(payload: &[u8], layout: &Layout, limits: Limits) -> Result<Package, ArchiveError> {
    let mut tree = Tree { layout, limits, entries: BTreeMap::new(), bytes: 0, seen: 0 };
    match sniff(payload) {
        Some(Kind::Gzip) => {
            let stream_cap = limits.max_bytes.saturating_add(TAR_OVERHEAD_PER_ENTRY * (limits.max_entries as u64 + 2));
            let gz = flate2::read::GzDecoder::new(payload);
            tar_reader::read(Capped { inner: gz, left: stream_cap, limit: limits.max_bytes }, &mut tree)?;
        }
        Some(Kind::Tar) => tar_reader::read(payload, &mut tree)?,
        Some(Kind::Zip) => zip_reader::read(payload, &mut tree)?,
        None => return Err(ArchiveError::UnknownFormat(leading_bytes(payload))),
    }
    tree.write()
}

enum Kind {
    Gzip,
    Tar,
    Zip,
}

/// The format, from magic numbers rather than names: URLs and Content-Types lie.
fn sniff(payload: &[u8]) -> Option<Kind> {
    if payload.starts_with(&[0x1f, 0x8b]) {
        Some(Kind::Gzip)
    } else if payload.starts_with(b"PK\x03\x04") || payload.starts_with(b"PK\x05\x06") {
        Some(Kind::Zip)
    } else if payload.get(257..262) == Some(b"ustar") {
        Some(Kind::Tar)
    } else {
        None
    }
}

fn leading_bytes(payload: &[u8]) -> String {
    if payload.is_empty() {
        return "nothing: the payload is empty".into();
    }
    let head: Vec<String> = payload.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", head.join(" "))
}

/// Refuses a decompressed stream longer than its cap, so a gzip bomb stops there.
struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| std::io::Error::other(TooLargeMarker(self.limit)))?;
        Ok(n)
    }
}

/// Carried through `io::Error` so the cap is reported as such, not as a corrupt stream.
#[derive(Debug, thiserror::Error)]
#[error("decompressed stream over its cap")]
struct TooLargeMarker(u64);

fn io_error(e: std::io::Error) -> ArchiveError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<TooLargeMarker>()) {
        Some(TooLargeMarker(limit)) => ArchiveError::TooLarge { limit: *limit },
        None => ArchiveError::Corrupt(e.to_string()),
    }
}

/// Joins the segments of a key in [`Tree::entries`]. Lower than any character a segment may hold
/// (control characters are refused), so keys sort as their segment lists would: a directory
/// right before its contents, and a file right before anything that would use it as a directory.
const SEP: char = '\0';

/// The tree being assembled: the selected entries by normalised path, and their contents.
///
/// Only the entries the archive names are held: the directories their paths imply are written
/// out in [`Tree::write`], not stored, so a deep path costs its length once rather than once per
/// parent.
struct Tree<'a> {
    layout: &'a Layout,
    limits: Limits,
    /// Keyed by the placed segments joined with [`SEP`].
    entries: BTreeMap<String, Entry>,
    /// Contents and key bytes held, against `limits.max_bytes`.
    bytes: u64,
    seen: usize,
}

impl Tree<'_> {
    /// Bytes of the budget not spent yet.
    fn left(&self) -> u64 {
        self.limits.max_bytes.saturating_sub(self.bytes)
    }

    /// Reads one file's contents against the archive-wide byte budget. The declared size is
    /// checked first but not trusted: the read itself is capped too.
    fn read_contents(&mut self, reader: &mut impl Read, declared: u64) -> Result<Vec<u8>, ArchiveError> {
        let left = self.left();
        if declared > left {
            return Err(ArchiveError::TooLarge { limit: self.limits.max_bytes });
        }
        let mut contents = Vec::with_capacity(declared as usize);
        reader.take(left + 1).read_to_end(&mut contents).map_err(io_error)?;
        if contents.len() as u64 > left {
            return Err(ArchiveError::TooLarge { limit: self.limits.max_bytes });
        }
        self.bytes += contents.len() as u64;
        Ok(contents)
    }

    /// Counts an entry the archive holds, kept or not, against the entry cap.
    fn count(&mut self, name: &str) -> Result<(), ArchiveError> {
        self.seen += 1;
        if self.seen > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries { entry: name.to_owned(), limit: self.limits.max_entries });
        }
        Ok(())
    }

    fn add(&mut self, name: &str, entry: Entry) -> Result<(), ArchiveError> {
        self.count(name)?;
        let Some(segments) = self.place(name)? else { return Ok(()) };
        let key = segments.join(&SEP.to_string());
        match (self.entries.get(&key), &entry) {
            (None, _) => {}
            (Some(Entry::Directory), Entry::Directory) => return Ok(()),
            _ => return Err(ArchiveError::Duplicate { entry: name.to_owned() }),
        }
        // The name is held as long as the contents are: it is charged to the same budget.
        if key.len() as u64 > self.left() {
            return Err(ArchiveError::TooLarge { limit: self.limits.max_bytes });
        }
        self.bytes += key.len() as u64;
        self.entries.insert(key, entry);
        Ok(())
    }

    /// Where an entry goes: its confined, normalised segments after `stripComponents`, `path`
    /// and the prefix; `None` when the layout leaves it out.
    fn place<'n>(&'n self, name: &'n str) -> Result<Option<Vec<&'n str>>, ArchiveError> {
        let unsafe_entry = |rule| ArchiveError::UnsafeEntry { entry: name.to_owned(), rule };
        if name.starts_with('/') {
            return Err(unsafe_entry("is an absolute path"));
        }
        if name.contains('\\') {
            return Err(unsafe_entry("contains a backslash"));
        }
        if name.chars().any(char::is_control) {
            return Err(unsafe_entry("contains a control character"));
        }
        if name.len() > MAX_PATH_LEN {
            return Err(unsafe_entry("is longer than 1024 bytes"));
        }
        let mut segments = Vec::new();
        for segment in name.split('/') {
            match segment {
                "" | "." => {}
                ".." => return Err(unsafe_entry("contains a '..' segment")),
                s => segments.push(s),
            }
        }
        let Some(kept) = segments.get(self.layout.strip_components..) else { return Ok(None) };
        let kept = match &self.layout.path {
            None => kept,
            Some(dir) => {
                let dir: Vec<&str> = dir.segments().collect();
                match kept.strip_prefix(dir.as_slice()) {
                    Some(rest) => rest,
                    None => return Ok(None),
                }
            }
        };
        if kept.is_empty() {
            return Ok(None);
        }
        let prefix = self.layout.prefix.iter().flat_map(|p| p.segments());
        Ok(Some(prefix.chain(kept.iter().copied()).collect()))
    }

    /// Writes the tree in key order, each entry preceded by the directories its path implies
    /// that were not written yet. A file that another entry would put a path under is refused
    /// here: in key order that entry comes right after the file.
    ///
    /// Implied directories are entries of the artifact too: at most `max_entries` of them, their
    /// paths charged to the byte cap, so deep paths cannot make the artifact (and whoever
    /// unpacks it) pay per parent.
    fn write(self) -> Result<Package, ArchiveError> {
        if !self.entries.values().any(|e| matches!(e, Entry::File(_))) {
            let why = match (&self.layout.path, self.layout.strip_components) {
                (Some(path), _) => format!("holds no file under archive.path {:?}", path.as_str()),
                (None, n) if n > 0 => format!("holds no file once archive.stripComponents {n} is applied"),
                _ => "holds no file".into(),
            };
            return Err(ArchiveError::Empty(why));
        }
        let mut tree = TreeWriter::new(self.bytes as usize / 4 + 1024)?;
        // The directories written last, outermost first: the common prefix with the next path
        // is written already.
        let mut open: Vec<&str> = Vec::new();
        let mut last_file: Option<&str> = None;
        let (mut implied, mut bytes) = (0, self.bytes);
        for (key, entry) in &self.entries {
            if let Some(file) = last_file.take()
                && key.strip_prefix(file).is_some_and(|rest| rest.starts_with(SEP))
            {
                return Err(ArchiveError::Duplicate { entry: file.replace(SEP, "/") });
            }
            let segments: Vec<&str> = key.split(SEP).collect();
            let path = segments.join("/");
            if path.len() > MAX_PATH_LEN {
                let entry = quote(path.as_bytes());
                return Err(ArchiveError::UnsafeEntry { entry, rule: "is longer than 1024 bytes once placed" });
            }
            let parents = &segments[..segments.len() - 1];
            let shared = open.iter().zip(parents).take_while(|(a, b)| a == b).count();
            for depth in shared..parents.len() {
                let directory = parents[..=depth].join("/");
                implied += 1;
                if implied > self.limits.max_entries {
                    let entry = quote(directory.as_bytes());
                    return Err(ArchiveError::TooManyDirectories { entry, limit: self.limits.max_entries });
                }
                bytes = bytes.saturating_add(directory.len() as u64);
                if bytes > self.limits.max_bytes {
                    return Err(ArchiveError::TooLarge { limit: self.limits.max_bytes });
                }
                tree.directory(&format!("{directory}/"))?;
            }
            open.clear();
            open.extend_from_slice(parents);
            match entry {
                Entry::Directory => {
                    tree.directory(&format!("{path}/"))?;
                    open.push(segments[segments.len() - 1]);
                }
                Entry::File(contents) => {
                    tree.file(&path, contents)?;
                    last_file = Some(key);
                }
            }
        }
        Ok(tree.finish()?)
    }
}

#[cfg(test)]
mod tests;
