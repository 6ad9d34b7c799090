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

mod fsops;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use externalsource_core::config::ConfigError;
use externalsource_core::registry::{BackendContext, BackendSettings, BuildError};
use externalsource_core::storage::check_range;
use externalsource_core::{Capabilities, ObjectBody, ObjectKey, ObjectMeta, Storage, StorageError};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::fsops::{FileId, io_error};

/// The name selected by `storage.backend = "filesystem"`.
pub const NAME: &str = "filesystem";

/// Default root, the predecessor's PVC mount point.
pub const DEFAULT_ROOT: &str = "/data/artifacts";

/// Read buffer of response bodies: the most a slow client makes us hold per download.
const CHUNK: usize = 64 * 1024;

/// Objects up to this size are read whole when opened (one blocking call per request).
const SMALL_OBJECT: u64 = 256 * 1024;

/// Without `shared = true`: only the process that writes the directory holds it.
const CAPABILITIES: Capabilities = Capabilities { serves_http: true, shared: false };

/// On a shared volume, temporary files younger than this may belong to another replica's put.
const SHARED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

externalsource_core::register_backend! {
    name: NAME,
    capabilities: CAPABILITIES,
    note: "shared = true on a ReadWriteMany volume makes it shared",
    parse: parse,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    root: Option<PathBuf>,
    shared: Option<bool>,
}

/// Validated settings of the filesystem backend.
#[derive(Debug, Clone)]
pub struct FilesystemSettings {
    pub root: PathBuf,
    /// Every replica mounts the same directory (ReadWriteMany), so every replica can serve.
    pub shared: bool,
}

fn parse(ctx: &BackendContext<'_>) -> Result<Box<dyn BackendSettings>, ConfigError> {
    let raw: RawSettings = ctx.deserialize(NAME)?;
    let (root, source) = match (ctx.env.get("PVC_STORAGE_PATH"), raw.root) {
        (Some(env), _) => (PathBuf::from(env), "env PVC_STORAGE_PATH"),
        (None, Some(root)) => (root, "file"),
        (None, None) => (PathBuf::from(DEFAULT_ROOT), "default"),
    };
    if !root.is_absolute() {
        return Err(ConfigError::Invalid {
            key: "storage.filesystem.root".into(),
            value: format!("{:?} (from {source})", root.display().to_string()),
            rule: "must be an absolute path".into(),
        });
    }
    Ok(Box::new(FilesystemSettings { root, shared: raw.shared.unwrap_or(false) }))
}

#[async_trait]
impl BackendSettings for FilesystemSettings {
    fn redacted(&self) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("root".into(), toml::Value::String(self.root.display().to_string()));
        t.insert("shared".into(), toml::Value::Boolean(self.shared));
        t
    }

    async fn build(&self, base_url: Option<&str>) -> Result<Arc<dyn Storage>, BuildError> {
        let options = OpenOptions { base_url: base_url.map(str::to_owned), shared: self.shared };
        Ok(Arc::new(FilesystemStorage::open_with(&self.root, options).await?))
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

/// How a store is opened.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Base of served URLs; `None`: `file://` URLs.
    pub base_url: Option<String>,
    /// Other replicas read (and the leader writes) the same directory.
    pub shared: bool,
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
    base_url: Option<String>,
    shared: bool,
    /// Metadata by key, valid while the file's identity matches.
    index: Arc<Index>,
    scan: ScanReport,
    verification: tokio::sync::watch::Receiver<Option<VerifyReport>>,
    verifier: tokio::task::JoinHandle<()>,
}

impl Drop for FilesystemStorage {
    fn drop(&mut self) {
        self.verifier.abort();
    }
}

impl FilesystemStorage {
    /// Opens (creating if needed) a private root.
    pub async fn open(root: &Path, base_url: Option<String>) -> Result<Self, StorageError> {
        Self::open_with(root, OpenOptions { base_url, shared: false }).await
    }

    /// Opens (creating if needed) the root, indexes what it holds without reading it, and starts
    /// verifying the content in the background.
    pub async fn open_with(root: &Path, options: OpenOptions) -> Result<Self, StorageError> {
        let root = root.to_owned();
        let temp_age = options.shared.then_some(SHARED_TEMP_AGE);
        let (root, found, scan) = tokio::task::spawn_blocking(move || fsops::scan(&root, temp_age))
            .await
            .map_err(|e| io_error("scan", "", std::io::Error::other(e)))??;
        let index = Arc::new(Index::new());
        let pending: Vec<ObjectKey> = found.iter().map(|(_, meta)| meta.key.clone()).collect();
        for (id, meta) in found {
            index.insert(meta.key.clone(), Entry { id, meta, verified: false });
        }
        tracing::info!(root = %root.display(), objects = scan.objects, bytes = scan.bytes,
            temp_removed = scan.temp_files_removed, unreadable = scan.unreadable.len(), shared = options.shared,
            "filesystem storage opened; verifying content in the background");
        let (done, verification) = tokio::sync::watch::channel(None);
        let verifier = tokio::spawn(verify_all(root.clone(), index.clone(), pending, done));
        Ok(Self { root, base_url: options.base_url, shared: options.shared, index, scan, verification, verifier })
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
        file.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| io_error("seek", key.as_str(), e))?;
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

#[async_trait]
impl Storage for FilesystemStorage {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { shared: self.shared, ..CAPABILITIES }
    }

    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<ObjectMeta, StorageError> {
        let root = self.root.clone();
        let k = key.clone();
        let (id, meta) = tokio::task::spawn_blocking(move || fsops::write_atomic(&root, &k, &body))
            .await
            .map_err(|e| io_error("put", key.as_str(), std::io::Error::other(e)))??;
        self.index.insert(key.clone(), Entry { id, meta: meta.clone(), verified: true });
        Ok(meta)
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<std::ops::RangeInclusive<u64>>,
    ) -> Result<ObjectBody, StorageError> {
        // Fast path: open, stat and (for small objects) read in one blocking call, so a typical
        // artifact costs one hop to the blocking pool instead of one per step.
        let (root, k) = (self.root.clone(), key.clone());
        let opened = tokio::task::spawn_blocking(move || fsops::open_and_read_small(&root, &k, SMALL_OBJECT))
            .await
            .map_err(|e| io_error("open", key.as_str(), std::io::Error::other(e)))??;
        let Some((file, md, small)) = opened else {
            self.index.remove(key);
            return Err(StorageError::NotFound(key.clone()));
        };
        let id = FileId::of(&md);
        let verified = self.index.get(key).filter(|e| e.id == id && e.verified).map(|e| e.meta.clone());
        if let Some(bytes) = small {
            // Read whole: an unverified or unindexed file is hashed from these bytes.
            let meta = match verified {
                Some(meta) if meta.size == bytes.len() as u64 => meta,
                _ => {
                    let meta = ObjectMeta {
                        key: key.clone(),
                        size: bytes.len() as u64,
                        digest: externalsource_core::Digest::of(&bytes),
                        last_modified: md.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                    };
                    admit(&self.root, &self.index, id, meta)?
                }
            };
            let range = check_range(&meta, range)?;
            let body = match &range {
                Some(r) => bytes.slice(*r.start() as usize..=*r.end() as usize),
                None => bytes,
            };
            return Ok(ObjectBody { meta, range, stream: futures::stream::once(async { Ok(body) }).boxed() });
        }
        let mut file = tokio::fs::File::from_std(file);
        let meta = match verified {
            Some(meta) => meta,
            None => self.hash_and_admit(key, &mut file, md).await?,
        };
        let range = check_range(&meta, range)?;
        let stream = match &range {
            Some(r) => {
                file.seek(std::io::SeekFrom::Start(*r.start())).await.map_err(|e| io_error("seek", key.as_str(), e))?;
                ReaderStream::with_capacity(file.take(r.end() - r.start() + 1), CHUNK).boxed()
            }
            None => ReaderStream::with_capacity(file, CHUNK).boxed(),
        };
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
        self.index.remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let root = self.root.clone();
        let owned = prefix.to_owned();
        let keys = tokio::task::spawn_blocking(move || fsops::list_keys(&root, &owned))
            .await
            .map_err(|e| io_error("list", prefix, std::io::Error::other(e)))??;
        let mut out = Vec::with_capacity(keys.len());
        for (key, id) in keys {
            // Listing (for GC and quotas) needs sizes and times, which an unverified entry
            // knows: no file is hashed for it.
            if let Some(entry) = self.index.get(&key).filter(|e| e.id == id) {
                out.push(entry.meta.clone());
                continue;
            }
            match self.stat(&key).await {
                Ok(meta) => out.push(meta),
                // Deleted between the walk and the stat: not part of the listing.
                Err(StorageError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn url(&self, key: &ObjectKey) -> String {
        match &self.base_url {
            Some(base) => format!("{base}/{key}"),
            None => format!("file://{}", self.path_of(key).display()),
        }
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
