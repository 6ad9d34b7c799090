//! The storage contract every backend fulfils.
//!
//! Bodies travel as streams of [`Bytes`] so the serving path never copies a whole object; puts take
//! one [`Bytes`] because an artifact is packaged in memory (bounded by `fetch.max_size`) before it
//! is stored.

use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::digest::Digest;
use crate::key::{KeyError, ObjectKey};

/// What a backend can do, as far as the rest of the controller cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The controller's own HTTP server may serve this backend's objects; when false the
    /// artifact routes are not mounted and consumers download from [`Storage::url`] directly.
    pub serves_http: bool,
    /// Every replica sees the same objects, so every replica may serve and be Ready.
    pub shared: bool,
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.serves_http {
            names.push("serves_http");
        }
        if self.shared {
            names.push("shared");
        }
        if names.is_empty() {
            names.push("-");
        }
        f.write_str(&names.join(" "))
    }
}

/// What is known about a stored object without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: ObjectKey,
    pub size: u64,
    /// Digest of the stored bytes; every backend knows it for every object it holds.
    pub digest: Digest,
    pub last_modified: SystemTime,
}

/// What listing reports of an object: enough for garbage collection and quotas, and cheap for
/// every backend (no digest, which an object store may only know by reading the object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    pub key: ObjectKey,
    pub size: u64,
    pub last_modified: SystemTime,
}

impl From<ObjectMeta> for ObjectSummary {
    fn from(meta: ObjectMeta) -> Self {
        Self { key: meta.key, size: meta.size, last_modified: meta.last_modified }
    }
}

/// An inclusive byte range already validated against the object's size.
pub type ByteRange = RangeInclusive<u64>;

/// A body being read: the object's metadata, the range served (if any) and the bytes.
pub struct ObjectBody {
    pub meta: ObjectMeta,
    pub range: Option<ByteRange>,
    pub stream: BoxStream<'static, io::Result<Bytes>>,
}

impl ObjectBody {
    /// Number of bytes the stream yields.
    pub fn len(&self) -> u64 {
        match &self.range {
            Some(r) => r.end() - r.start() + 1,
            None => self.meta.size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body of an object held whole in memory: the range is checked against it and sliced,
    /// and the stream yields slices of `bytes` (no copy) of at most 256 KiB each. Slices cost
    /// no memory, so they can be large: fewer, larger writes to the socket (hyper pulls the next
    /// one only when its buffer has room, so a slow reader still holds nothing extra).
    pub fn from_bytes(meta: ObjectMeta, bytes: Bytes, range: Option<ByteRange>) -> Result<Self, StorageError> {
        const CHUNK: usize = 256 * 1024;
        let range = check_range(&meta, range)?;
        let bytes = match &range {
            Some(r) => bytes.slice(*r.start() as usize..=*r.end() as usize),
            None => bytes,
        };
        let chunks = futures::stream::unfold(bytes, |mut rest| async move {
            let take = rest.len().min(CHUNK);
            (take > 0).then(|| (Ok(rest.split_to(take)), rest))
        });
        Ok(Self { meta, range, stream: Box::pin(chunks) })
    }

    /// Collects the whole stream; meant for tests and small objects.
    pub async fn collect(self) -> io::Result<Bytes> {
        use futures::TryStreamExt;
        let chunks: Vec<Bytes> = self.stream.try_collect().await?;
        Ok(chunks.concat().into())
    }
}

impl fmt::Debug for ObjectBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBody").field("meta", &self.meta).field("range", &self.range).finish_non_exhaustive()
    }
}

/// Storage failures, typed so callers can tell a missing object from an outage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(ObjectKey),
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    #[error("range {start}-{end} is not satisfiable for object {key} of {size} bytes")]
    RangeNotSatisfiable { key: ObjectKey, start: u64, end: u64, size: u64 },
    #[error("storing {key} ({size} bytes) would exceed the byte budget of {budget} bytes ({used} in use)")]
    OverBudget { key: ObjectKey, size: u64, used: u64, budget: u64 },
    #[error("access to {key} denied: {message}")]
    AccessDenied { key: String, message: String },
    #[error("storage unavailable during {operation} of {key}: {message}")]
    Unavailable { operation: &'static str, key: String, message: String },
    #[error("I/O error during {operation} of {key}: {source}")]
    Io {
        operation: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("object {key} is corrupt: {message}")]
    Corrupt { key: ObjectKey, message: String },
    /// The medium itself is full (ENOSPC, a quota), as opposed to our own byte budget.
    #[error("no space left during {operation} of {key}: {message}")]
    NoSpace { operation: &'static str, key: String, message: String },
    /// A namespace's artifacts would exceed its share of the store (`storage.namespace_quota`).
    #[error("storing {key} ({size} bytes) would exceed namespace {namespace}'s quota of {quota} bytes ({used} in use)")]
    QuotaExceeded { namespace: String, key: ObjectKey, size: u64, used: u64, quota: u64 },
    /// The store's container (an S3 bucket) does not exist: nothing is stored, nothing can be.
    #[error("the store does not exist during {operation} of {key}: {message}")]
    StoreMissing { operation: &'static str, key: String, message: String },
}

/// How a caller should react to a [`StorageError`]; the reconciler's retry policy keys on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// An outage or I/O hiccup: retry soon, with backoff.
    Transient,
    /// The budget or the medium is full: making room may help, retrying soon will not.
    OutOfSpace,
    /// Denied, corrupt, invalid, missing: retrying before something else changes is pointless.
    Permanent,
}

impl StorageError {
    /// Transient failures are worth retrying with backoff; the others are not.
    pub fn is_transient(&self) -> bool {
        self.class() == FailureClass::Transient
    }

    /// The reaction this failure calls for.
    pub fn class(&self) -> FailureClass {
        match self {
            // A missing bucket is usually an operator still setting up: worth retrying.
            Self::Unavailable { .. } | Self::Io { .. } | Self::StoreMissing { .. } => FailureClass::Transient,
            Self::OverBudget { .. } | Self::NoSpace { .. } | Self::QuotaExceeded { .. } => FailureClass::OutOfSpace,
            Self::NotFound(_)
            | Self::InvalidKey(_)
            | Self::RangeNotSatisfiable { .. }
            | Self::AccessDenied { .. }
            | Self::Corrupt { .. } => FailureClass::Permanent,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::InvalidKey(_) => "invalid_key",
            Self::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Self::OverBudget { .. } => "over_budget",
            Self::AccessDenied { .. } => "access_denied",
            Self::Unavailable { .. } => "unavailable",
            Self::Io { .. } => "io",
            Self::Corrupt { .. } => "corrupt",
            Self::NoSpace { .. } => "no_space",
            Self::StoreMissing { .. } => "store_missing",
            Self::QuotaExceeded { .. } => "namespace_quota",
        }
    }
}

/// Checks a requested range against an object's size; backends share this so they agree.
pub fn check_range(meta: &ObjectMeta, range: Option<ByteRange>) -> Result<Option<ByteRange>, StorageError> {
    match range {
        Some(r) if r.start() > r.end() || *r.end() >= meta.size => Err(StorageError::RangeNotSatisfiable {
            key: meta.key.clone(),
            start: *r.start(),
            end: *r.end(),
            size: meta.size,
        }),
        other => Ok(other),
    }
}

/// A store as the controller and the server call it. Backends implement
/// [`Backend`](crate::backend::Backend), which core turns into this; only wrappers (fault
/// injection, throttling in tests) implement it directly.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The registry name of the backend (`memory`, `filesystem`, `s3`, …).
    fn name(&self) -> &'static str;

    /// What this instance, as configured, can do.
    fn capabilities(&self) -> Capabilities;

    /// Stores `body` under `key`; `digest` is its sha256, computed when it was packaged.
    async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<ObjectMeta, StorageError>;

    /// Reads an object, or the given inclusive byte range of it.
    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError>;

    /// Metadata of an object.
    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError>;

    /// Removes an object; removing a missing object succeeds.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError>;

    /// The URL a consumer (Flux) downloads `key` from.
    fn url(&self, key: &ObjectKey) -> String;
}
