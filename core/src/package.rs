//! Deterministic packaging: a payload and its destination path become `.tar.gz` bytes whose
//! digest is computed while they are written.
//!
//! Same payload and path give the same bytes, hence the same digest and revision, so Flux sees no
//! churn: entries carry mtime 0, uid/gid 0, empty owner names, mode 0644 (directories 0755), and
//! the gzip header has no file name and no timestamp.

use std::io::Write;

use bytes::Bytes;

use crate::digest::{Digest, DigestWriter};
use gzip::GzWriter;

/// Longest destination path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// A validated, normalised, relative file path inside the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationPath(String);

/// Why a destination path was refused. Messages name the rule only: the caller, which knows the
/// field, quotes the value once beside it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("must not be empty")]
    Empty,
    #[error("is absolute; it must be relative to the artifact root")]
    Absolute,
    #[error("contains a backslash; use '/' as the separator")]
    Backslash,
    #[error("contains a '..' segment; it must stay inside the artifact")]
    ParentSegment,
    #[error("contains a control character")]
    ControlCharacter,
    #[error("names a directory; it must name a file")]
    Directory,
    #[error("is {0} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong(usize),
}

impl DestinationPath {
    /// Validates and normalises (`./a//b` becomes `a/b`).
    pub fn parse(input: &str) -> Result<Self, PathError> {
        if input.is_empty() {
            return Err(PathError::Empty);
        }
        if input.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(input.len()));
        }
        if input.contains('\\') {
            return Err(PathError::Backslash);
        }
        if input.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter);
        }
        if input.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if input.ends_with('/') || input.ends_with("/.") || input == "." {
            return Err(PathError::Directory);
        }
        let mut segments = Vec::new();
        for segment in input.split('/') {
            match segment {
                "" | "." => {}
                ".." => return Err(PathError::ParentSegment),
                s => segments.push(s),
            }
        }
        if segments.is_empty() {
            return Err(PathError::Empty);
        }
        Ok(Self(segments.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's segments, outermost first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Parent directories, outermost first, each with a trailing '/'.
    fn parents(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(|(i, _)| &self.0[..=i])
    }
}

/// A packaged artifact.
#[derive(Debug, Clone)]
pub struct Package {
    pub bytes: Bytes,
    pub size: u64,
    pub digest: Digest,
}

/// Packages `payload` as the single file `path` of a deterministic `.tar.gz`.
pub fn package(payload: &[u8], path: &DestinationPath) -> std::io::Result<Package> {
    // Compressed output is roughly a quarter of JSON-like input; start there to avoid regrowth.
    let mut tree = TreeWriter::new(payload.len() / 4 + 1024)?;
    for dir in path.parents() {
        tree.directory(dir)?;
    }
    tree.file(path.as_str(), payload)?;
    tree.finish()
}

/// Writes a deterministic `.tar.gz` entry by entry, hashing while it writes. Callers add
/// entries in their final order (parents before children); every header is normalised here.
pub(crate) struct TreeWriter {
    tar: tar::Builder<GzWriter<DigestWriter<Vec<u8>>>>,
}

impl TreeWriter {
    pub(crate) fn new(capacity: usize) -> std::io::Result<Self> {
        let sink = DigestWriter::new(Vec::with_capacity(capacity));
        let mut tar = tar::Builder::new(GzWriter::new(sink)?);
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(Self { tar })
    }

    /// A directory entry; `path` ends with '/'.
    pub(crate) fn directory(&mut self, path: &str) -> std::io::Result<()> {
        let mut header = header(tar::EntryType::Directory, 0o755, 0);
        self.tar.append_data(&mut header, path, std::io::empty())
    }

    pub(crate) fn file(&mut self, path: &str, contents: &[u8]) -> std::io::Result<()> {
        let mut header = header(tar::EntryType::Regular, 0o644, contents.len() as u64);
        self.tar.append_data(&mut header, path, contents)
    }

    pub(crate) fn finish(self) -> std::io::Result<Package> {
        let mut gz = self.tar.into_inner()?;
        gz.flush()?;
        let (bytes, size, digest) = gz.finish()?.finish();
        Ok(Package { bytes: bytes.into(), size, digest })
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    // Empty user and group names: `new_gnu` leaves them zeroed, which is what we want.
    h
}

pub mod archive;
mod gzip;

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> DestinationPath {
        DestinationPath::parse(p).unwrap()
    }

    #[test]
    fn same_input_same_bytes() {
        let a = package(b"{\"a\":1}", &path("data")).unwrap();
        let b = package(b"{\"a\":1}", &path("data")).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.digest, Digest::of(&a.bytes));
        assert_eq!(a.size, a.bytes.len() as u64);
        let c = package(b"{\"a\":2}", &path("data")).unwrap();
        assert_ne!(a.digest, c.digest);
        let d = package(b"{\"a\":1}", &path("other")).unwrap();
        assert_ne!(a.digest, d.digest);
    }

    #[test]
    fn gzip_header_has_no_name_and_no_mtime() {
        let p = package(b"x", &path("data")).unwrap();
        assert_eq!(&p.bytes[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(p.bytes[3] & 0x08, 0, "FNAME flag set");
        assert_eq!(&p.bytes[4..8], &[0, 0, 0, 0], "MTIME not zero");
    }

    #[test]
    fn entries_are_normalised() {
        let p = package(b"hello", &path("./a//b/c.yaml")).unwrap();
        let gz = flate2::read::GzDecoder::new(&p.bytes[..]);
        let mut archive = tar::Archive::new(gz);
        let entries: Vec<(String, u32, u64, u64, bool)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap() + h.gid().unwrap(),
                    h.username().unwrap().unwrap_or("").is_empty() && h.groupname().unwrap().unwrap_or("").is_empty(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("a/".into(), 0o755, 0, 0, true),
                ("a/b/".into(), 0o755, 0, 0, true),
                ("a/b/c.yaml".into(), 0o644, 0, 0, true),
            ]
        );
    }

    /// Real readers: GNU tar and Python's tarfile extract exactly the payload at its path.
    #[test]
    fn gnu_tar_and_python_tarfile_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = package(b"{\"k\": \"v\"}\n", &path("conf/app/settings.json")).unwrap();
        let archive = dir.path().join("a.tar.gz");
        std::fs::write(&archive, &p.bytes).unwrap();
        let out = dir.path().join("tar");
        std::fs::create_dir(&out).unwrap();
        let status = std::process::Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&out).status().unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(out.join("conf/app/settings.json")).unwrap(), b"{\"k\": \"v\"}\n");
        let script = "import sys, tarfile\n\
            t = tarfile.open(sys.argv[1], 'r:gz')\n\
            names = [(m.name, m.isdir(), m.mode, m.mtime, m.uid, m.uname) for m in t.getmembers()]\n\
            assert names == [('conf', True, 0o755, 0, 0, ''), ('conf/app', True, 0o755, 0, 0, ''), \
            ('conf/app/settings.json', False, 0o644, 0, 0, '')], names\n\
            sys.stdout.write(t.extractfile('conf/app/settings.json').read().decode())\n";
        let py = std::process::Command::new("python3").arg("-c").arg(script).arg(&archive).output().unwrap();
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
        assert_eq!(py.stdout, b"{\"k\": \"v\"}\n");
    }

    #[test]
    fn path_rules() {
        assert_eq!(path("data").as_str(), "data");
        assert_eq!(path("./x/./y.json").as_str(), "x/y.json");
        assert!(matches!(DestinationPath::parse("../x"), Err(PathError::ParentSegment)));
        assert!(matches!(DestinationPath::parse("a/../../x"), Err(PathError::ParentSegment)));
        assert!(matches!(DestinationPath::parse("/etc/passwd"), Err(PathError::Absolute)));
        assert!(matches!(DestinationPath::parse("a\\b"), Err(PathError::Backslash)));
        assert!(matches!(DestinationPath::parse("a/"), Err(PathError::Directory)));
        assert!(matches!(DestinationPath::parse(""), Err(PathError::Empty)));
        assert!(matches!(DestinationPath::parse("./"), Err(PathError::Directory)));
        assert!(matches!(DestinationPath::parse("a\nb"), Err(PathError::ControlCharacter)));
        assert!(matches!(DestinationPath::parse(&"a".repeat(2000)), Err(PathError::TooLong(2000))));
    }

    #[test]
    fn long_paths_survive() {
        let long = format!("{}/{}.yaml", "d".repeat(120), "f".repeat(120));
        let p = package(b"x", &path(&long)).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&p.bytes[..]));
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names.last().unwrap(), &long);
    }
}
