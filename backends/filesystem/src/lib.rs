//! The `filesystem` backend: artifacts as files under a root directory, typically a PVC.
//!
//! Key `K` lives at `<root>/K`, so an operator can inspect the volume with `ls`. Writes go to a
//! temporary file in the target directory, are fsynced and renamed into place, and the directory
//! is fsynced, so a crash leaves the old object or the new one, never a torn file. Digests are
//! computed on put and, for what survives a restart, by the start-up scan, which also deletes
//! leftovers of interrupted writes and artifacts whose bytes no longer match their name.

mod fsops;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use externalsource_core::config::ConfigError;
use externalsource_core::registry::{BackendContext, BackendDescriptor, BackendSettings};
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

const CAPABILITIES: Capabilities = Capabilities { serves_http: true, shared: false };

externalsource_core::inventory::submit! {
    BackendDescriptor { name: NAME, capabilities: CAPABILITIES, note: "", parse }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    root: Option<PathBuf>,
}

/// Validated settings of the filesystem backend.
#[derive(Debug, Clone)]
pub struct FilesystemSettings {
    pub root: PathBuf,
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
    Ok(Box::new(FilesystemSettings { root }))
}

#[async_trait]
impl BackendSettings for FilesystemSettings {
    fn redacted(&self) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("root".into(), toml::Value::String(self.root.display().to_string()));
        t
    }

    async fn build(&self, base_url: Option<&str>) -> Result<Arc<dyn Storage>, StorageError> {
        Ok(Arc::new(FilesystemStorage::open(&self.root, base_url.map(str::to_owned)).await?))
    }
}

/// What the start-up scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    pub objects: usize,
    pub bytes: u64,
    /// Leftovers of interrupted writes, removed.
    pub temp_files_removed: usize,
    /// Artifacts whose content no longer matched the digest in their name, removed so the
    /// controller rebuilds them.
    pub corrupt_removed: Vec<String>,
    /// Entries that are not regular files (symlinks, devices), ignored and never served.
    pub ignored: Vec<String>,
}

/// Files under a root directory.
pub struct FilesystemStorage {
    root: PathBuf,
    base_url: Option<String>,
    /// Metadata by key, valid while the file's identity matches.
    index: DashMap<ObjectKey, (FileId, ObjectMeta)>,
    scan: ScanReport,
}

impl FilesystemStorage {
    /// Opens (creating if needed) the root and verifies what it holds.
    pub async fn open(root: &Path, base_url: Option<String>) -> Result<Self, StorageError> {
        let root = root.to_owned();
        let (root, found, scan) = tokio::task::spawn_blocking(move || fsops::scan(&root))
            .await
            .map_err(|e| io_error("scan", "", std::io::Error::other(e)))??;
        let index = DashMap::new();
        for (id, meta) in found {
            index.insert(meta.key.clone(), (id, meta));
        }
        tracing::info!(root = %root.display(), objects = scan.objects, bytes = scan.bytes,
            temp_removed = scan.temp_files_removed, corrupt_removed = scan.corrupt_removed.len(),
            "filesystem storage opened");
        Ok(Self { root, base_url, index, scan })
    }

    /// The result of the start-up scan.
    pub fn scan_report(&self) -> &ScanReport {
        &self.scan
    }

    fn path_of(&self, key: &ObjectKey) -> PathBuf {
        key.segments().fold(self.root.clone(), |p, s| p.join(s))
    }

    /// Metadata of an opened file with stat `md`: from the index when the file is the one indexed,
    /// otherwise by hashing it (an object written by another process, or replaced since).
    async fn meta_with(
        &self,
        key: &ObjectKey,
        file: &mut tokio::fs::File,
        md: std::fs::Metadata,
    ) -> Result<ObjectMeta, StorageError> {
        let id = FileId::of(&md);
        if let Some(entry) = self.index.get(key).filter(|e| e.0 == id) {
            return Ok(entry.1.clone());
        }
        let mut std_file = file.try_clone().await.map_err(|e| io_error("stat", key.as_str(), e))?.into_std().await;
        let key2 = key.clone();
        let meta = tokio::task::spawn_blocking(move || fsops::hash_file(&key2, &mut std_file, &md))
            .await
            .map_err(|e| io_error("hash", key.as_str(), std::io::Error::other(e)))??;
        file.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| io_error("seek", key.as_str(), e))?;
        self.index.insert(key.clone(), (id, meta.clone()));
        Ok(meta)
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
        CAPABILITIES
    }

    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<ObjectMeta, StorageError> {
        let root = self.root.clone();
        let k = key.clone();
        let (id, meta) = tokio::task::spawn_blocking(move || fsops::write_atomic(&root, &k, &body))
            .await
            .map_err(|e| io_error("put", key.as_str(), std::io::Error::other(e)))??;
        self.index.insert(key.clone(), (id, meta.clone()));
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
        let indexed = self.index.get(key).filter(|e| e.0 == id).map(|e| e.1.clone());
        if let Some(bytes) = small {
            // Read whole: an unindexed file (written behind our back) is hashed from these bytes.
            let meta = match indexed {
                Some(meta) if meta.size == bytes.len() as u64 => meta,
                _ => {
                    let meta = ObjectMeta {
                        key: key.clone(),
                        size: bytes.len() as u64,
                        digest: externalsource_core::Digest::of(&bytes),
                        last_modified: md.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                    };
                    self.index.insert(key.clone(), (id, meta.clone()));
                    meta
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
        let meta = match indexed {
            Some(meta) => meta,
            None => self.meta_with(key, &mut file, md).await?,
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
        self.meta_with(key, &mut file, md).await
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
        for key in keys {
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

#[cfg(test)]
mod tests;
