//! Two linked crates registering one backend name: start-up refuses it, naming both crates,
//! rather than letting `storage.backend = "memory"` pick one of them by link order.

use externalsource_backend_memory::{MemorySettings, MemoryStorage};
use externalsource_core::config::ConfigLoader;
use externalsource_core::registry::{self, Env};
use externalsource_core::{
    Backend, BuildError, ByteRange, Bytes, Capabilities, Digest, ObjectBody, ObjectKey, ObjectMeta, ObjectSummary,
    OpenContext, StorageError,
};

/// A second "memory" backend, from this crate: the built-in one under another crate's name.
struct SecondMemory(MemoryStorage);

impl Backend for SecondMemory {
    const NAME: &'static str = "memory";
    const CAPABILITIES: Capabilities = MemoryStorage::CAPABILITIES;
    type Settings = MemorySettings;

    async fn open(settings: &MemorySettings, ctx: &OpenContext) -> Result<Self, BuildError> {
        MemoryStorage::open(settings, ctx).await.map(Self)
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<(), StorageError> {
        self.0.put(key, body, digest).await
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        self.0.get(key, range).await
    }

    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.0.stat(key).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.0.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        self.0.list(prefix).await
    }

    fn direct_url(&self, key: &ObjectKey) -> String {
        self.0.direct_url(key)
    }
}

externalsource_core::register_backend!(SecondMemory);

#[test]
fn a_duplicate_backend_name_is_refused_naming_both_crates() {
    let err = registry::check_unique().expect_err("two crates register memory");
    assert_eq!(err.name, "memory");
    assert_eq!(err.crates, "externalsource-backend-memory, externalsource-tests");
    let message = ConfigLoader::new(Env::default()).build().expect_err("memory is ambiguous").to_string();
    assert!(message.contains("externalsource-backend-memory") && message.contains("externalsource-tests"), "{message}");
    assert!(registry::describe_backends().contains("[externalsource-tests]"), "--list-backends names the crates");
}
