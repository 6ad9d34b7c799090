//! The `memory` backend: artifacts held in process memory, served by the controller's server.
//!
//! Objects are immutable [`Bytes`], so serving hands out cheap clones and slices; nothing is
//! copied per request. A byte budget bounds what the process may hold.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use dashmap::DashMap;
use externalsource_core::{
    Backend, BuildError, ByteRange, ByteSize, Bytes, Capabilities, Digest, EnvVar, Invalid, ObjectBody, ObjectKey,
    ObjectMeta, ObjectSummary, OpenContext, StorageError,
};

externalsource_core::register_backend!(MemoryStorage);

/// `[storage.memory]`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySettings {
    /// The most bytes of objects held at once.
    pub max_bytes: ByteSize,
}

/// Default budget: enough for a few hundred typical artifacts, small enough for a default pod.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

impl Default for MemorySettings {
    fn default() -> Self {
        Self { max_bytes: ByteSize(DEFAULT_MAX_BYTES) }
    }
}

/// Objects in a concurrent map, with a byte budget.
pub struct MemoryStorage {
    objects: DashMap<ObjectKey, (Bytes, ObjectMeta)>,
    /// The keys of `objects` in order, so listing a prefix (each reconcile's garbage collection)
    /// reads only that prefix's keys, not every object held: with thousands of sources a scan per
    /// reconcile made a backlog quadratic. Changed under the object's shard lock, so it never
    /// disagrees with `objects` for long; read without holding any shard lock.
    keys: RwLock<BTreeSet<ObjectKey>>,
    used: AtomicU64,
    max_bytes: u64,
}

impl MemoryStorage {
    pub fn new(max_bytes: u64) -> Self {
        Self { objects: DashMap::new(), keys: RwLock::default(), used: AtomicU64::new(0), max_bytes }
    }

    /// The keys that start with `prefix`, in order.
    fn keys_under(&self, prefix: &str) -> Vec<ObjectKey> {
        let keys = self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|k| k.as_str().starts_with(prefix))
            .cloned()
            .collect()
    }

    fn index(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<ObjectKey>> {
        self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `add` bytes while releasing `release`, or fails without changing anything.
    fn reserve(&self, key: &ObjectKey, add: u64, release: u64) -> Result<(), StorageError> {
        let fits = |used: u64| used.saturating_sub(release).checked_add(add).filter(|next| *next <= self.max_bytes);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, fits)
            .map(|_| ())
            .map_err(|used| StorageError::OverBudget { key: key.clone(), size: add, used, budget: self.max_bytes })
    }
}

impl Backend for MemoryStorage {
    const NAME: &'static str = "memory";
    const CAPABILITIES: Capabilities = Capabilities { serves_http: true, shared: false };
    const ENV: &'static [EnvVar] = &[EnvVar::text("MEMORY_MAX_BYTES", "max_bytes")];
    type Settings = MemorySettings;

    fn check(settings: &MemorySettings) -> Result<(), Invalid> {
        let ByteSize(max) = settings.max_bytes;
        if max == 0 { Err(Invalid::new("max_bytes", max, "must be greater than zero")) } else { Ok(()) }
    }

    fn resident_memory(settings: &MemorySettings) -> Option<(&'static str, u64)> {
        Some(("max_bytes", settings.max_bytes.0))
    }

    async fn open(settings: &MemorySettings, _: &OpenContext) -> Result<Self, BuildError> {
        Ok(Self::new(settings.max_bytes.0))
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<(), StorageError> {
        let (size, last_modified) = (body.len() as u64, SystemTime::now());
        let entry = (body, ObjectMeta { key: key.clone(), size, digest: digest.clone(), last_modified });
        // The shard lock is held across reserve-and-insert, so concurrent overwrites of one key
        // account for exactly the object they replace.
        let slot = self.objects.entry(key.clone());
        let replaced = match &slot {
            dashmap::Entry::Occupied(old) => Some(old.get().1.size),
            dashmap::Entry::Vacant(_) => None,
        };
        self.reserve(key, size, replaced.unwrap_or(0))?;
        if replaced.is_none() {
            self.index().insert(key.clone());
        }
        slot.insert(entry);
        Ok(())
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        let (bytes, meta) =
            self.objects.get(key).map(|e| e.clone()).ok_or_else(|| StorageError::NotFound(key.clone()))?;
        ObjectBody::from_bytes(meta, bytes, range)
    }

    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.objects.get(key).map(|e| e.1.clone()).ok_or_else(|| StorageError::NotFound(key.clone()))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        if let dashmap::Entry::Occupied(slot) = self.objects.entry(key.clone()) {
            self.index().remove(key);
            let (_, meta) = slot.remove();
            self.used.fetch_sub(meta.size, Ordering::AcqRel);
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        let keys = self.keys_under(prefix);
        // A key deleted since the index was read is simply not listed.
        Ok(keys.iter().filter_map(|k| self.objects.get(k).map(|e| e.1.clone().into())).collect())
    }

    /// Without the artifact server nothing can download the objects: the predecessor's form.
    fn direct_url(&self, key: &ObjectKey) -> String {
        format!("memory://localhost/{key}")
    }
}

#[cfg(test)]
mod tests;
