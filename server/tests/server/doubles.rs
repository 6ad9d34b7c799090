//! Test doubles, named as such: each delegates to the real memory backend and changes one thing a
//! real backend cannot be made to do on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use externalsource_backend_memory::MemoryStorage;
use externalsource_core::backend::host;
use externalsource_core::{
    ByteRange, Capabilities, Digest, ObjectBody, ObjectKey, ObjectMeta, ObjectSummary, Storage, StorageError,
};
use futures::StreamExt;

/// Test double: the memory backend, but reporting `serves_http = false` like S3 in direct mode.
pub struct NonServingStorage {
    inner: Arc<dyn Storage>,
}

impl NonServingStorage {
    pub fn new() -> Self {
        Self { inner: host(MemoryStorage::new(1 << 30), None) }
    }
}

#[async_trait]
impl Storage for NonServingStorage {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<ObjectMeta, StorageError> {
        self.inner.put(key, body, digest).await
    }

    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.inner.stat(key).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        self.inner.list(prefix).await
    }

    fn url(&self, key: &ObjectKey) -> String {
        self.inner.url(key)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { serves_http: false, ..self.inner.capabilities() }
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        self.inner.get(key, range).await
    }
}

/// Test double: the memory backend whose bodies yield each 64 KiB chunk after `delay` (a slow
/// upstream such as a proxied S3 object) and which counts the bytes the server pulled.
pub struct ThrottledStorage {
    inner: Arc<dyn Storage>,
    delay: Duration,
    pulled: Arc<AtomicU64>,
}

impl ThrottledStorage {
    pub fn new(delay: Duration) -> Self {
        Self { inner: host(MemoryStorage::new(1 << 30), None), delay, pulled: Arc::default() }
    }

    /// Bytes handed to the server by body streams so far.
    pub fn pulled(&self) -> u64 {
        self.pulled.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Storage for ThrottledStorage {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<ObjectMeta, StorageError> {
        self.inner.put(key, body, digest).await
    }

    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.inner.stat(key).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        self.inner.list(prefix).await
    }

    fn url(&self, key: &ObjectKey) -> String {
        self.inner.url(key)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        let mut body = self.inner.get(key, range).await?;
        let (delay, pulled) = (self.delay, self.pulled.clone());
        body.stream = body
            .stream
            .then(move |chunk| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                chunk
            })
            .inspect(move |chunk| {
                if let Ok(c) = chunk {
                    pulled.fetch_add(c.len() as u64, Ordering::Relaxed);
                }
            })
            .boxed();
        Ok(body)
    }
}
