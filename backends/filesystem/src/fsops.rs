//! Blocking filesystem operations, run on tokio's blocking pool by the storage.
//!
//! Confinement: keys are already free of `..` and absolute forms (see `ObjectKey`); what is left
//! is symlinks planted inside the root. Every parent directory is checked with `lstat` and the file
//! itself is opened with `O_NOFOLLOW`, so no symlink is ever followed out of the root.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use externalsource_core::digest::DigestHasher;
use externalsource_core::{Digest, ObjectKey, ObjectMeta, ObjectSummary, StorageError};

use crate::ScanReport;
use crate::buffers::{ReadBuffer, ReadBuffers};

/// Prefix of temporary files; `~` cannot appear in a key, so a temp file is never an object.
const TEMP_PREFIX: &str = ".~tmp-";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Identity of a file version: an index entry is valid only while the file still has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
}

impl FileId {
    pub fn of(md: &fs::Metadata) -> Self {
        Self { dev: md.dev(), ino: md.ino(), size: md.size(), mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec() }
    }
}

pub fn io_error(operation: &'static str, key: &str, source: io::Error) -> StorageError {
    // A full volume or an exhausted quota is not an outage: the reconciler makes room first.
    if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(libc::EDQUOT) {
        return StorageError::NoSpace { operation, key: key.to_owned(), message: source.to_string() };
    }
    StorageError::Io { operation, key: key.to_owned(), source }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) || e.raw_os_error() == Some(libc::ELOOP)
}

/// Parent directories of `key` exist as real directories (not symlinks) under `root`.
fn parents_are_real_dirs(root: &Path, key: &ObjectKey) -> io::Result<bool> {
    let segments: Vec<&str> = key.segments().collect();
    let mut path = root.to_owned();
    for segment in &segments[..segments.len() - 1] {
        path.push(segment);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(_) => return Ok(false),
            Err(e) if is_missing(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn path_of(root: &Path, key: &ObjectKey) -> PathBuf {
    key.segments().fold(root.to_owned(), |p, s| p.join(s))
}

/// Opens the regular file at `key`, or `None` when there is none (or only a symlink, a directory).
pub fn open_confined(root: &Path, key: &ObjectKey) -> Result<Option<File>, StorageError> {
    let err = |e| io_error("open", key.as_str(), e);
    if !parents_are_real_dirs(root, key).map_err(err)? {
        return Ok(None);
    }
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path_of(root, key)) {
        Ok(f) => f,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let md = file.metadata().map_err(err)?;
    Ok(md.file_type().is_file().then_some(file))
}

/// Opens `key` and reads it whole when it is at most `small` bytes; `None` when there is no such
/// regular file.
#[allow(clippy::type_complexity)]
pub fn open_and_read_small(
    root: &Path,
    key: &ObjectKey,
    small: u64,
) -> Result<Option<(File, fs::Metadata, Option<externalsource_core::Bytes>)>, StorageError> {
    let Some(mut file) = open_confined(root, key)? else { return Ok(None) };
    let err = |e| io_error("read", key.as_str(), e);
    let md = file.metadata().map_err(err)?;
    let body = if md.len() <= small {
        let mut buf = Vec::with_capacity(md.len() as usize);
        file.read_to_end(&mut buf).map_err(err)?;
        Some(externalsource_core::Bytes::from(buf))
    } else {
        None
    };
    Ok(Some((file, md, body)))
}

/// Hashes an opened file from its start.
pub fn hash_file(key: &ObjectKey, file: &mut File, md: &fs::Metadata) -> Result<ObjectMeta, StorageError> {
    use std::io::Seek;
    let err = |e| io_error("hash", key.as_str(), e);
    file.seek(io::SeekFrom::Start(0)).map_err(err)?;
    let mut hasher = DigestHasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(ObjectMeta {
        key: key.clone(),
        size,
        digest: hasher.finish(),
        last_modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    })
}

/// Creates the parent directories of `key`, refusing to pass through anything but directories.
fn create_parents(root: &Path, key: &ObjectKey) -> io::Result<PathBuf> {
    let segments: Vec<&str> = key.segments().collect();
    let mut dir = root.to_owned();
    for segment in &segments[..segments.len() - 1] {
        dir.push(segment);
        match fs::symlink_metadata(&dir) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", dir.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// Temp file in the target directory, fsync, rename, fsync of the directory.
pub fn write_atomic(
    root: &Path,
    key: &ObjectKey,
    body: &[u8],
    digest: &Digest,
) -> Result<(FileId, ObjectMeta), StorageError> {
    let err = |e| io_error("put", key.as_str(), e);
    let dir = create_parents(root, key).map_err(err)?;
    let temp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed),
        key.file_name()
    ));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&temp)?;
        file.write_all(body)?;
        file.sync_all()?;
        let md = file.metadata()?;
        fs::rename(&temp, path_of(root, key))?;
        File::open(&dir)?.sync_all()?;
        Ok::<_, io::Error>(md)
    })();
    match result {
        Ok(md) => Ok((
            FileId::of(&md),
            ObjectMeta {
                key: key.clone(),
                size: body.len() as u64,
                digest: digest.clone(),
                last_modified: md.modified().unwrap_or_else(|_| SystemTime::now()),
            },
        )),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(err(e))
        }
    }
}

/// Removes the file of `key` (a missing one is fine) and the directories it leaves empty.
pub fn remove(root: &Path, key: &ObjectKey) -> Result<(), StorageError> {
    let err = |e| io_error("delete", key.as_str(), e);
    if !parents_are_real_dirs(root, key).map_err(err)? {
        return Ok(());
    }
    let path = path_of(root, key);
    match fs::symlink_metadata(&path) {
        Ok(md) if md.file_type().is_file() => fs::remove_file(&path).map_err(err)?,
        Ok(_) => return Ok(()),
        Err(e) if is_missing(&e) => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| *d != root) {
        if fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// An entry the walk could not read (permissions, I/O errors, removed meanwhile): logged and
/// skipped, so one bad entry never hides the rest of the store.
#[derive(Debug)]
pub struct Unreadable {
    pub path: PathBuf,
    pub error: io::Error,
}

/// Removes the file of `key` if it is still the version `id` (a replica may have replaced it).
pub fn remove_version(root: &Path, key: &ObjectKey, id: FileId) -> Result<(), StorageError> {
    let err = |e| io_error("delete", key.as_str(), e);
    if !parents_are_real_dirs(root, key).map_err(err)? {
        return Ok(());
    }
    let path = path_of(root, key);
    match fs::symlink_metadata(&path) {
        Ok(md) if md.file_type().is_file() && FileId::of(&md) == id => fs::remove_file(&path).map_err(err),
        Ok(_) => Ok(()),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Walks `dir` (never following symlinks) and calls `f` with each non-directory entry and its
/// key, if its path is a valid key. Entries that cannot be read are pushed to `unreadable`.
fn walk(
    root: &Path,
    dir: &Path,
    f: &mut dyn FnMut(&Path, Option<ObjectKey>, &fs::Metadata),
    unreadable: &mut Vec<Unreadable>,
) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // Removed meanwhile (a delete on a shared volume): nothing to report.
        Err(e) if is_missing(&e) => return,
        Err(error) => return unreadable.push(Unreadable { path: dir.to_owned(), error }),
    };
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(error) => {
                unreadable.push(Unreadable { path: dir.to_owned(), error });
                continue;
            }
        };
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if is_missing(&e) => continue,
            Err(error) => {
                unreadable.push(Unreadable { path, error });
                continue;
            }
        };
        if md.file_type().is_dir() {
            walk(root, &path, f, unreadable);
        } else {
            let key =
                path.strip_prefix(root).ok().and_then(|rel| rel.to_str()).and_then(|rel| ObjectKey::parse(rel).ok());
            f(&path, key, &md);
        }
    }
}

fn log_unreadable(unreadable: &[Unreadable]) {
    for u in unreadable {
        tracing::warn!(path = %u.path.display(), error = %u.error, "cannot read a store entry; skipped");
    }
}

/// The regular files whose key starts with `prefix`, sorted, from `lstat` alone.
pub fn list(root: &Path, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
    let dir_part = prefix.rfind('/').map(|i| &prefix[..i]).unwrap_or("");
    let start = if dir_part.is_empty() {
        root.to_owned()
    } else {
        match ObjectKey::parse(dir_part) {
            Ok(k)
                if parents_are_real_dirs(root, &ObjectKey::parse(&format!("{dir_part}/x")).unwrap_or(k.clone()))
                    .unwrap_or(false) =>
            {
                path_of(root, &k)
            }
            _ => return Ok(Vec::new()),
        }
    };
    if fs::symlink_metadata(&start).map(|m| !m.file_type().is_dir()).unwrap_or(true) {
        return Ok(Vec::new());
    }
    let mut keys = Vec::new();
    let mut unreadable = Vec::new();
    walk(
        root,
        &start,
        &mut |_, key, md| {
            if let Some(key) = key.filter(|k| md.file_type().is_file() && k.as_str().starts_with(prefix)) {
                let last_modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                keys.push(ObjectSummary { key, size: md.len(), last_modified });
            }
        },
        &mut unreadable,
    );
    log_unreadable(&unreadable);
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(keys)
}

/// The digest an artifact's name promises: artifact keys end in `<digest hex>.tar.gz`, so the
/// name is the digest persisted at put time, and start-up needs no hashing to know it.
pub fn claimed_digest(key: &ObjectKey) -> Option<Digest> {
    let hex = key.file_name().strip_suffix(".tar.gz")?;
    if !key.as_str().starts_with(externalsource_core::key::ARTIFACT_PREFIX) {
        return None;
    }
    Digest::parse(&format!("{}:{hex}", externalsource_core::digest::ALGORITHM))
}

/// Creates the root if needed, removes leftovers of interrupted writes (on a shared volume
/// only those older than `temp_age`, as another replica may be writing), and indexes every
/// artifact from its name and `lstat` alone: no file is read, so start-up time does not grow
/// with the bytes stored. Content is verified later (see `verify`).
#[allow(clippy::type_complexity)]
pub fn scan(
    root: &Path,
    temp_age: Option<std::time::Duration>,
) -> Result<(PathBuf, Vec<(FileId, ObjectMeta)>, ScanReport), StorageError> {
    let err = |e| io_error("scan", &root.display().to_string(), e);
    fs::create_dir_all(root).map_err(err)?;
    let root = fs::canonicalize(root).map_err(err)?;
    // The root itself must be readable: without it there is no store at all.
    fs::read_dir(&root).map_err(err)?;
    let mut report = ScanReport::default();
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    let now = SystemTime::now();
    walk(
        &root,
        &root,
        &mut |path, key, md| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(TEMP_PREFIX) && md.file_type().is_file() {
                let old_enough = temp_age.is_none_or(|age| {
                    md.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|a| a >= age)
                });
                if old_enough && fs::remove_file(path).is_ok() {
                    report.temp_files_removed += 1;
                }
                return;
            }
            let Some(key) = key.filter(|_| md.file_type().is_file()) else {
                report.ignored.push(path.display().to_string());
                return;
            };
            report.objects += 1;
            report.bytes += md.len();
            if let Some(digest) = claimed_digest(&key) {
                let last_modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((FileId::of(md), ObjectMeta { key, size: md.len(), digest, last_modified }));
            }
        },
        &mut unreadable,
    );
    log_unreadable(&unreadable);
    report.unreadable = unreadable.into_iter().map(|u| u.path.display().to_string()).collect();
    for ignored in &report.ignored {
        tracing::warn!(path = %ignored, "ignoring an entry that is not a regular file with a valid key");
    }
    Ok((root, found, report))
}

/// `len` bytes of `file` from `start`, in positioned reads of one buffer each on the blocking
/// pool. The next chunk is read while the ones before it are being sent, so the disk and the
/// socket work at once.
pub fn read_chunks(
    file: File,
    start: u64,
    len: u64,
    buffers: std::sync::Arc<ReadBuffers>,
) -> impl futures::Stream<Item = io::Result<externalsource_core::Bytes>> + Send + 'static {
    let file = std::sync::Arc::new(file);
    let first = (len > 0).then(|| read_ahead(&buffers, file.clone(), start, len));
    futures::stream::try_unfold((file, start, len, first), move |(file, at, left, pending)| {
        let buffers = buffers.clone();
        async move {
            let Some((got, handle)) = pending else { return Ok(None) };
            let bytes = handle.await.map_err(io::Error::other)??;
            let (at, left) = (at + got, left - got);
            let next = (left > 0).then(|| read_ahead(&buffers, file.clone(), at, left));
            Ok(Some((bytes, (file, at, left, next))))
        }
    })
}

/// Starts reading the next chunk, at most one buffer of the `left` bytes at `at`.
fn read_ahead(
    buffers: &std::sync::Arc<ReadBuffers>,
    file: std::sync::Arc<File>,
    at: u64,
    left: u64,
) -> (u64, tokio::task::JoinHandle<io::Result<externalsource_core::Bytes>>) {
    let want = left.min(buffers.size() as u64) as usize;
    let buffer = buffers.take();
    (want as u64, tokio::task::spawn_blocking(move || read_exact_at(&file, at, buffer, want)))
}

/// Exactly `want` bytes at `at` (at most the buffer's size), or an error if the file ends first.
fn read_exact_at(file: &File, at: u64, mut buffer: ReadBuffer, want: usize) -> io::Result<externalsource_core::Bytes> {
    use std::os::unix::fs::FileExt;
    let want = want.min(buffer.space().len());
    file.read_exact_at(&mut buffer.space()[..want], at)?;
    Ok(buffer.into_bytes(want))
}
