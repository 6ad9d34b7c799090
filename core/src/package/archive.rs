//! `format: archive`: a `.tar.gz`, `.tar` or `.zip` payload is unpacked in memory and written
//! again as a deterministic tree, so a release tarball or a Helm chart from a URL becomes an
//! artifact with the same guarantees as a single file (sorted entries, mtime 0, fixed modes).
//!
//! The payload is hostile until proven otherwise: every entry name is normalised and confined to
//! the tree (no absolute paths, no `..`), links and device files are refused rather than
//! followed, and the bytes unpacked and the entries read are capped, so a small bomb costs no
//! more than its caps.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};

use super::{DestinationPath, MAX_PATH_LEN, Package, TreeWriter};

/// Most entries (files and directories) an archive may hold.
pub const MAX_ENTRIES: usize = 10_000;

/// Header and padding bytes a tar stream may carry per entry beyond its contents: one header,
/// PAX or GNU long-name records, padding to 512. Caps the decompressed stream, not the files.
const TAR_OVERHEAD_PER_ENTRY: u64 = 4096;

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
    /// Bytes of file contents, all entries together.
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
    #[error("holds more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("entry {entry:?} {rule}")]
    UnsafeEntry { entry: String, rule: &'static str },
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
            read_tar(Capped { inner: gz, left: stream_cap, limit: limits.max_bytes }, &mut tree)?;
        }
        Some(Kind::Tar) => read_tar(payload, &mut tree)?,
        Some(Kind::Zip) => read_zip(payload, &mut tree)?,
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

fn read_tar(stream: impl Read, tree: &mut Tree<'_>) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().map_err(io_error)? {
        let mut entry = entry.map_err(io_error)?;
        let name = String::from_utf8(entry.path_bytes().into_owned()).map_err(|e| ArchiveError::UnsafeEntry {
            entry: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            rule: "is not UTF-8",
        })?;
        let kind = entry.header().entry_type();
        let parsed = match kind {
            tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Directory => Entry::Directory,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let declared = entry.header().size().map_err(io_error)?;
                Entry::File(tree.read_contents(&mut entry, declared)?)
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target =
                    entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
                return Err(ArchiveError::Link { entry: name, target });
            }
            other => return Err(ArchiveError::Special { entry: name, kind: format!("{other:?}").to_lowercase() }),
        };
        tree.add(&name, parsed)?;
    }
    Ok(())
}

/// File-type bits of a Unix mode, as zip tools record them.
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

fn read_zip(payload: &[u8], tree: &mut Tree<'_>) -> Result<(), ArchiveError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(payload)).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    if archive.len() > tree.limits.max_entries {
        return Err(ArchiveError::TooManyEntries { limit: tree.limits.max_entries });
    }
    for index in 0..archive.len() {
        let mut file = archive.by_index(index).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let name = file.name().to_owned();
        let parsed = if file.is_symlink() {
            let mut target = String::new();
            // The target is the entry's contents; small, but capped like any read.
            let _ = (&mut file).take(MAX_PATH_LEN as u64).read_to_string(&mut target);
            return Err(ArchiveError::Link { entry: name, target });
        } else if file.is_dir() || file.unix_mode().is_some_and(|mode| mode & S_IFMT == S_IFDIR) {
            Entry::Directory
        } else if file.unix_mode().is_some_and(|mode| mode & S_IFMT != 0 && mode & S_IFMT != S_IFREG) {
            return Err(ArchiveError::Special { entry: name, kind: "special file".into() });
        } else {
            let declared = file.size();
            Entry::File(tree.read_contents(&mut file, declared)?)
        };
        tree.add(&name, parsed)?;
    }
    Ok(())
}

/// The tree being assembled: selected, normalised paths and their contents.
struct Tree<'a> {
    layout: &'a Layout,
    limits: Limits,
    /// Keyed by segments, so a directory sorts right before its contents.
    entries: BTreeMap<Vec<String>, Entry>,
    bytes: u64,
    seen: usize,
}

impl Tree<'_> {
    /// Reads one file's contents against the archive-wide byte budget. The declared size is
    /// checked first but not trusted: the read itself is capped too.
    fn read_contents(&mut self, reader: &mut impl Read, declared: u64) -> Result<Vec<u8>, ArchiveError> {
        let left = self.limits.max_bytes - self.bytes;
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

    fn add(&mut self, name: &str, entry: Entry) -> Result<(), ArchiveError> {
        self.seen += 1;
        if self.seen > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries { limit: self.limits.max_entries });
        }
        let Some(segments) = self.place(name)? else { return Ok(()) };
        for depth in 1..segments.len() {
            match self.entries.get(&segments[..depth]) {
                Some(Entry::File(_)) => return Err(ArchiveError::Duplicate { entry: segments[..depth].join("/") }),
                Some(Entry::Directory) => {}
                None => {
                    self.entries.insert(segments[..depth].to_vec(), Entry::Directory);
                }
            }
        }
        match (self.entries.get(&segments), &entry) {
            (None, _) => {}
            (Some(Entry::Directory), Entry::Directory) => return Ok(()),
            _ => return Err(ArchiveError::Duplicate { entry: name.to_owned() }),
        }
        self.entries.insert(segments, entry);
        Ok(())
    }

    /// Where an entry goes: its confined, normalised segments after `stripComponents`, `path`
    /// and the prefix; `None` when the layout leaves it out.
    fn place(&self, name: &str) -> Result<Option<Vec<String>>, ArchiveError> {
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
        Ok(Some(prefix.chain(kept.iter().copied()).map(str::to_owned).collect()))
    }

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
        for (segments, entry) in &self.entries {
            let path = segments.join("/");
            if path.len() > MAX_PATH_LEN {
                return Err(ArchiveError::UnsafeEntry { entry: path, rule: "is longer than 1024 bytes once placed" });
            }
            match entry {
                Entry::Directory => tree.directory(&format!("{path}/"))?,
                Entry::File(contents) => tree.file(&path, contents)?,
            }
        }
        Ok(tree.finish()?)
    }
}

#[cfg(test)]
mod tests;
