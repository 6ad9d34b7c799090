//! The `filesystem` backend: artifacts as files under a root directory, typically a PVC.
//!
//! Key `K` lives at `<root>/K`, so an operator can inspect the volume with `ls`. Writes go to a
//! temporary file in the target directory, are fsynced and renamed into place, and the directory
//! is fsynced, so a crash leaves the old object or the new one, never a torn file.
//!
//! Start-up does not read the store: an artifact's key ends in its digest, so the scan indexes
//! each file from its name and `lstat`, and deletes leftovers of interrupted writes. Content is
//! verified afterwards, in the background, and before any unverified file is served or stat'ed;
//! a file whose bytes no longer match its name is deleted so the controller rebuilds it.
//!
//! With `shared = true` (a ReadWriteMany volume) every replica reads the directory the leader
//! writes, so every replica is Ready and serves it.

mod buffers;
mod cache;
mod fsops;
mod mapped;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;
use externalsource_core::{
    Backend, BuildError, ByteRange, ByteSize, Bytes, Capabilities, Digest, EnvVar, Invalid, ObjectBody, ObjectKey,
    ObjectMeta, ObjectSummary, OpenContext, StorageError,
};
use futures::StreamExt;

use crate::buffers::ReadBuffers;
use crate::cache::HotCache;
use crate::fsops::{FileId, io_error};
use crate::mapped::Mappings;

/// Default root, the predecessor's PVC mount point.
pub const DEFAULT_ROOT: &str = "/data/artifacts";

/// Read size of response bodies streamed from disk: each read is one hop to the blocking pool. A
/// slow client makes us hold at most three chunks: the one read ahead, the one hyper is sending,
/// and the last bytes of the one before (the server caps hyper's write queue at 16 KiB, so it
/// takes the next chunk only when less than that is left). The buffers are reused (see
/// `buffers`), so their size costs no allocation or zeroing per read.
const CHUNK: usize = 256 * 1024;

/// Chunk buffers kept for reuse while no download needs them: at most 8 MiB.
const IDLE_CHUNKS: usize = 32;

/// Objects up to this size are read whole when opened (one blocking call per request).
const SMALL_OBJECT: u64 = 256 * 1024;

/// Default budget of the hot-artifact cache: a few hundred typical artifacts, a small part of the
/// default memory limit.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// On a shared volume, temporary files younger than this may belong to another replica's put.
const SHARED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

externalsource_core::register_backend!(FilesystemStorage);

/// `[storage.filesystem]`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemSettings {
    pub root: PathBuf,
    /// Every replica mounts the same directory (ReadWriteMany), so every replica can serve.
    pub shared: bool,
    /// Memory for the hot artifacts served most (see `cache`); 0 turns the cache off.
    pub cache_bytes: ByteSize,
}

impl Default for FilesystemSettings {
    fn default() -> Self {
        Self { root: PathBuf::from(DEFAULT_ROOT), shared: false, cache_bytes: ByteSize(DEFAULT_CACHE_BYTES) }
    }
}

/// What the start-up scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    pub objects: usize,
    pub bytes: u64,
    /// Leftovers of interrupted writes, removed.
    pub temp_files_removed: usize,
    /// Entries that are not regular files (symlinks, devices), ignored and never served.
    pub ignored: Vec<String>,
    /// Entries that could not be read (logged and skipped; start-up goes on).
    pub unreadable: Vec<String>,
}

/// What the background verification of the scanned artifacts found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub verified: usize,
    /// Artifacts whose content no longer matched the digest in their name, removed so the
    /// controller rebuilds them.
    pub corrupt_removed: Vec<String>,
    /// Artifacts that could not be read; left in place and verified again when accessed.
    pub unreadable: Vec<String>,
}

/// An indexed file version. `verified`: its bytes were hashed (by us, at put or since); an
/// unverified entry comes from the start-up scan and knows the digest only from the name.
#[derive(Debug, Clone)]
struct Entry {
    id: FileId,
    meta: ObjectMeta,
    verified: bool,
}

type Index = DashMap<ObjectKey, Entry>;

/// Files under a root directory.
pub struct FilesystemStorage {
    root: PathBuf,
    /// Other replicas read (and the leader writes) the same directory.
    shared: bool,
    /// Metadata by key, valid while the file's identity matches.
    index: Arc<Index>,
    scan: ScanReport,
    /// Verified artifacts in memory, for repeated downloads.
    cache: HotCache,
    /// Large objects are served from mappings of their files (a store no one else writes only).
    mappings: Mappings,
    /// Read buffers of large objects streamed instead (a shared store).
    buffers: Arc<ReadBuffers>,
    verification: tokio::sync::watch::Receiver<Option<VerifyReport>>,
    verifier: tokio::task::JoinHandle<()>,
}

impl Drop for FilesystemStorage {
    fn drop(&mut self) {
        self.verifier.abort();
    }
}

impl FilesystemStorage {
    /// Opens (creating if needed) the root, indexes what it holds without reading it, and starts
    /// verifying the content in the background. `shared`: other replicas read the directory.
    pub async fn open_dir(root: &Path, shared: bool) -> Result<Self, StorageError> {
        let root = root.to_owned();
        let temp_age = shared.then_some(SHARED_TEMP_AGE);
        let (root, found, scan) = tokio::task::spawn_blocking(move || fsops::scan(&root, temp_age))
            .await
            .map_err(|e| io_error("scan", "", std::io::Error::other(e)))??;
        let index = Arc::new(Index::new());
        let pending: Vec<ObjectKey> = found.iter().map(|(_, meta)| meta.key.clone()).collect();
        for (id, meta) in found {
            index.insert(meta.key.clone(), Entry { id, meta, verified: false });
        }
        tracing::info!(root = %root.display(), objects = scan.objects, bytes = scan.bytes,
            temp_removed = scan.temp_files_removed, unreadable = scan.unreadable.len(), shared,
            "filesystem storage opened; verifying content in the background");
        let (done, verification) = tokio::sync::watch::channel(None);
        let verifier = tokio::spawn(verify_all(root.clone(), index.clone(), pending, done));
        let cache = HotCache::new(0);
        let buffers = ReadBuffers::new(CHUNK, IDLE_CHUNKS);
        Ok(Self { root, shared, index, scan, cache, mappings: Mappings::default(), buffers, verification, verifier })
    }

    /// Keeps up to `bytes` of the most downloaded artifacts in memory (off by default).
    pub fn with_cache(mut self, bytes: u64) -> Self {
        self.cache = HotCache::new(bytes);
        self
    }

    /// Bytes the hot-artifact cache holds now.
    pub fn cached_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// Admits bytes read or written for `meta`'s key when they are what its name promises.
    fn admit_if_artifact(&self, bytes: &Bytes, meta: &ObjectMeta) {
        if fsops::claimed_digest(&meta.key).as_ref() == Some(&meta.digest) {
            self.cache.admit(bytes.clone(), meta.clone());
        }
    }

    /// The result of the start-up scan.
    pub fn scan_report(&self) -> &ScanReport {
        &self.scan
    }

    /// Waits for the background verification of what the scan found.
    pub async fn verification(&self) -> VerifyReport {
        let mut rx = self.verification.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(report) => report.clone().unwrap_or_default(),
            Err(_) => VerifyReport::default(),
        }
    }

    fn path_of(&self, key: &ObjectKey) -> PathBuf {
        key.segments().fold(self.root.clone(), |p, s| p.join(s))
    }

    /// Hashes an opened file (stat `md`) and admits the result: an unverified scan entry, an
    /// object written by another process, or one replaced since it was indexed.
    async fn hash_and_admit(
        &self,
        key: &ObjectKey,
        file: &mut tokio::fs::File,
        md: std::fs::Metadata,
    ) -> Result<ObjectMeta, StorageError> {
        let id = FileId::of(&md);
        let mut std_file = file.try_clone().await.map_err(|e| io_error("stat", key.as_str(), e))?.into_std().await;
        let key2 = key.clone();
        let meta = tokio::task::spawn_blocking(move || fsops::hash_file(&key2, &mut std_file, &md))
            .await
            .map_err(|e| io_error("hash", key.as_str(), std::io::Error::other(e)))??;
        admit(&self.root, &self.index, id, meta)
    }

    async fn open_object(&self, key: &ObjectKey) -> Result<tokio::fs::File, StorageError> {
        let root = self.root.clone();
        let key2 = key.clone();
        let file = tokio::task::spawn_blocking(move || fsops::open_confined(&root, &key2))
            .await
            .map_err(|e| io_error("open", key.as_str(), std::io::Error::other(e)))??;
        match file {
            Some(f) => Ok(tokio::fs::File::from_std(f)),
            None => {
                self.index.remove(key);
                Err(StorageError::NotFound(key.clone()))
            }
        }
    }
}

impl Backend for FilesystemStorage {
    const NAME: &'static str = "filesystem";
    /// Without `shared = true`, only the process that writes the directory holds it.
    const CAPABILITIES: Capabilities = Capabilities { serves_http: true, shared: false };
    const NOTE: &'static str = "shared = true on a ReadWriteMany volume makes it shared";
    const ENV: &'static [EnvVar] = &[EnvVar::text("PVC_STORAGE_PATH", "root")];
    type Settings = FilesystemSettings;

    fn check(settings: &FilesystemSettings) -> Result<(), Invalid> {
        let root = &settings.root;
        if root.is_absolute() { Ok(()) } else { Err(Invalid::new("root", root.display(), "must be an absolute path")) }
    }

    fn resident_memory(settings: &FilesystemSettings) -> Option<(&'static str, u64)> {
        Some(("cache_bytes", settings.cache_bytes.0))
    }

    async fn open(settings: &FilesystemSettings, _: &OpenContext) -> Result<Self, BuildError> {
        Ok(Self::open_dir(&settings.root, settings.shared).await?.with_cache(settings.cache_bytes.0))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { shared: self.shared, ..Self::CAPABILITIES }
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<(), StorageError> {
        let (root, k, d, bytes) = (self.root.clone(), key.clone(), digest.clone(), body.clone());
        let (id, meta) = tokio::task::spawn_blocking(move || fsops::write_atomic(&root, &k, &bytes, &d))
            .await
            .map_err(|e| io_error("put", key.as_str(), std::io::Error::other(e)))??;
        // Consumers download a new artifact right after it is published.
        self.cache.remove(key);
        self.admit_if_artifact(&body, &meta);
        self.index.insert(key.clone(), Entry { id, meta, verified: true });
        Ok(())
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        if let Some((bytes, meta)) = self.cache.get(key) {
            return ObjectBody::from_bytes(meta, bytes, range);
        }
        // Otherwise open, stat and (for small or cacheable objects) read in one blocking call, so
        // a typical artifact costs one hop to the blocking pool instead of one per step.
        let (root, k) = (self.root.clone(), key.clone());
        let whole = SMALL_OBJECT.max(self.cache.max_object());
        let opened = tokio::task::spawn_blocking(move || fsops::open_and_read_small(&root, &k, whole))
            .await
            .map_err(|e| io_error("open", key.as_str(), std::io::Error::other(e)))??;
        let Some((file, md, small)) = opened else {
            self.index.remove(key);
            return Err(StorageError::NotFound(key.clone()));
        };
        let (id, file_len) = (FileId::of(&md), md.len());
        let verified = self.index.get(key).filter(|e| e.id == id && e.verified).map(|e| e.meta.clone());
        if let Some(bytes) = small {
            // Read whole: an unverified or unindexed file is hashed from these bytes.
            let meta = match verified {
                Some(meta) if meta.size == bytes.len() as u64 => meta,
                _ => {
                    let meta = ObjectMeta {
                        key: key.clone(),
                        size: bytes.len() as u64,
                        digest: Digest::of(&bytes),
                        last_modified: md.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                    };
                    admit(&self.root, &self.index, id, meta)?
                }
            };
            self.admit_if_artifact(&bytes, &meta);
            return ObjectBody::from_bytes(meta, bytes, range);
        }
        let mut file = tokio::fs::File::from_std(file);
        let meta = match verified {
            Some(meta) => meta,
            None => self.hash_and_admit(key, &mut file, md).await?,
        };
        let file = file.into_std().await;
        if !self.shared && meta.size == file_len {
            match self.mappings.bytes(key, id, &file, meta.size) {
                Ok(bytes) => return ObjectBody::from_bytes(meta, bytes, range),
                Err(e) => tracing::debug!(key = %key, error = %e, "cannot map the file; reading it instead"),
            }
        }
        let range = externalsource_core::storage::check_range(&meta, range)?;
        let (start, len) = range.as_ref().map_or((0, meta.size), |r| (*r.start(), r.end() - r.start() + 1));
        let stream = fsops::read_chunks(file, start, len, self.buffers.clone()).boxed();
        Ok(ObjectBody { meta, range, stream })
    }

    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        let mut file = self.open_object(key).await?;
        let md = file.metadata().await.map_err(|e| io_error("stat", key.as_str(), e))?;
        let id = FileId::of(&md);
        if let Some(entry) = self.index.get(key).filter(|e| e.id == id && e.verified) {
            return Ok(entry.meta.clone());
        }
        self.hash_and_admit(key, &mut file, md).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let root = self.root.clone();
        let k = key.clone();
        tokio::task::spawn_blocking(move || fsops::remove(&root, &k))
            .await
            .map_err(|e| io_error("delete", key.as_str(), std::io::Error::other(e)))??;
        self.cache.remove(key);
        self.index.remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        let (root, owned) = (self.root.clone(), prefix.to_owned());
        tokio::task::spawn_blocking(move || fsops::list(&root, &owned))
            .await
            .map_err(|e| io_error("list", prefix, std::io::Error::other(e)))?
    }

    /// Without the artifact server, the path for a consumer that mounts the same volume.
    fn direct_url(&self, key: &ObjectKey) -> String {
        format!("file://{}", self.path_of(key).display())
    }
}

/// Records a freshly hashed file version, unless its bytes contradict the digest in its name:
/// then the file is deleted (a torn copy, bit rot, a hand edit) so the controller rebuilds it,
/// and it is reported as not found, never served.
fn admit(root: &Path, index: &Index, id: FileId, meta: ObjectMeta) -> Result<ObjectMeta, StorageError> {
    if let Some(claimed) = fsops::claimed_digest(&meta.key).filter(|claimed| *claimed != meta.digest) {
        tracing::warn!(key = %meta.key, digest = %meta.digest, %claimed, "stored artifact does not match its name; removed so it is rebuilt");
        index.remove(&meta.key);
        fsops::remove_version(root, &meta.key, id)?;
        return Err(StorageError::NotFound(meta.key));
    }
    index.insert(meta.key.clone(), Entry { id, meta: meta.clone(), verified: true });
    Ok(meta)
}

/// Hashes every scanned artifact still unverified, one at a time (a background task should not
/// compete with downloads for the disk), and publishes what it found.
async fn verify_all(
    root: PathBuf,
    index: Arc<Index>,
    pending: Vec<ObjectKey>,
    done: tokio::sync::watch::Sender<Option<VerifyReport>>,
) {
    let started = std::time::Instant::now();
    let mut report = VerifyReport::default();
    for key in pending {
        let Some(entry) = index.get(&key).map(|e| e.clone()).filter(|e| !e.verified) else { continue };
        let (root2, key2) = (root.clone(), key.clone());
        let hashed = tokio::task::spawn_blocking(move || {
            let Some(mut file) = fsops::open_confined(&root2, &key2)? else { return Ok(None) };
            let md = file.metadata().map_err(|e| io_error("verify", key2.as_str(), e))?;
            // Replaced since the scan: whoever reads it next hashes the new version.
            if FileId::of(&md) != entry.id {
                return Ok(None);
            }
            fsops::hash_file(&key2, &mut file, &md).map(Some)
        })
        .await
        .unwrap_or_else(|e| Err(io_error("verify", key.as_str(), std::io::Error::other(e))));
        match hashed {
            Ok(Some(meta)) => match admit(&root, &index, entry.id, meta) {
                Ok(_) => report.verified += 1,
                Err(StorageError::NotFound(_)) => report.corrupt_removed.push(key.to_string()),
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "cannot remove a corrupt artifact");
                    report.corrupt_removed.push(key.to_string());
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "cannot verify a stored artifact; skipped, verified again when read");
                report.unreadable.push(key.to_string());
            }
        }
    }
    tracing::info!(verified = report.verified, corrupt_removed = report.corrupt_removed.len(),
        unreadable = report.unreadable.len(), took = ?started.elapsed(), "filesystem store verified");
    let _ = done.send(Some(report));
}

#[cfg(test)]
mod tests;
