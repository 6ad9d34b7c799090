//! The `memory` backend: artifacts held in process memory, served by the controller's server.
//!
//! Objects are immutable [`Bytes`], so serving hands out cheap clones and slices; nothing is
//! copied per request. A byte budget bounds what the process may hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use externalsource_core::config::ConfigError;
use externalsource_core::registry::{BackendContext, BackendSettings, BuildError};
use externalsource_core::storage::check_range;
use externalsource_core::units::{format_size, parse_size};
use externalsource_core::{Capabilities, Digest, ObjectBody, ObjectKey, ObjectMeta, Storage, StorageError};
use futures::stream;

/// The name selected by `storage.backend = "memory"`.
pub const NAME: &str = "memory";

/// Chunk size of response bodies: slices of the stored `Bytes`, so no copy is made.
const CHUNK: usize = 64 * 1024;

const CAPABILITIES: Capabilities = Capabilities { serves_http: true, shared: false };

externalsource_core::register_backend! { name: NAME, capabilities: CAPABILITIES, note: "", parse: parse }

/// `[storage.memory]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    max_bytes: Option<toml::Value>,
}

/// Validated settings of the memory backend.
#[derive(Debug, Clone)]
pub struct MemorySettings {
    /// The most bytes of objects held at once.
    pub max_bytes: u64,
}

/// Default budget: enough for a few hundred typical artifacts, small enough for a default pod.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

fn parse(ctx: &BackendContext<'_>) -> Result<Box<dyn BackendSettings>, ConfigError> {
    let raw: RawSettings = ctx.deserialize(NAME)?;
    let (text, source) = match (&raw.max_bytes, ctx.env.get("MEMORY_MAX_BYTES")) {
        (_, Some(env)) => (env.to_owned(), "env MEMORY_MAX_BYTES"),
        (Some(toml::Value::Integer(i)), None) => (i.to_string(), "file"),
        (Some(toml::Value::String(s)), None) => (s.clone(), "file"),
        (Some(other), None) => (other.to_string(), "file"),
        (None, None) => {
            return Ok(Box::new(MemorySettings { max_bytes: DEFAULT_MAX_BYTES }));
        }
    };
    let max_bytes = parse_size(&text).map_err(|e| ConfigError::Invalid {
        key: "storage.memory.max_bytes".into(),
        value: format!("{text:?} (from {source})"),
        rule: e.to_string(),
    })?;
    if max_bytes == 0 {
        return Err(ConfigError::Invalid {
            key: "storage.memory.max_bytes".into(),
            value: format!("{text:?} (from {source})"),
            rule: "must be greater than zero".into(),
        });
    }
    Ok(Box::new(MemorySettings { max_bytes }))
}

#[async_trait]
impl BackendSettings for MemorySettings {
    fn redacted(&self) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("max_bytes".into(), toml::Value::String(format_size(self.max_bytes)));
        t
    }

    fn resident_bytes(&self) -> u64 {
        self.max_bytes
    }

    async fn build(&self, base_url: Option<&str>) -> Result<Arc<dyn Storage>, BuildError> {
        Ok(Arc::new(MemoryStorage::new(self.max_bytes, base_url.map(str::to_owned))))
    }
}

struct Entry {
    bytes: Bytes,
    meta: ObjectMeta,
}

/// Objects in a concurrent map, with a byte budget.
pub struct MemoryStorage {
    objects: DashMap<ObjectKey, Arc<Entry>>,
    used: AtomicU64,
    max_bytes: u64,
    base_url: Option<String>,
}

impl MemoryStorage {
    /// `base_url` is the artifact server's; without one, URLs use the predecessor's
    /// `memory://localhost/` form.
    pub fn new(max_bytes: u64, base_url: Option<String>) -> Self {
        Self { objects: DashMap::new(), used: AtomicU64::new(0), max_bytes, base_url }
    }

    /// Bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `add` bytes while releasing `release`, or fails without changing anything.
    fn reserve(&self, key: &ObjectKey, add: u64, release: u64) -> Result<(), StorageError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let next = used.saturating_sub(release).checked_add(add)?;
                (next <= self.max_bytes).then_some(next)
            })
            .map(|_| ())
            .map_err(|used| StorageError::OverBudget { key: key.clone(), size: add, used, budget: self.max_bytes })
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<ObjectMeta, StorageError> {
        let meta = ObjectMeta {
            key: key.clone(),
            size: body.len() as u64,
            digest: Digest::of(&body),
            last_modified: SystemTime::now(),
        };
        let entry = Arc::new(Entry { bytes: body, meta: meta.clone() });
        // The map's shard lock is held across reserve-and-insert so concurrent overwrites of one
        // key account for exactly the object they replace.
        match self.objects.entry(key.clone()) {
            dashmap::Entry::Occupied(mut slot) => {
                self.reserve(key, meta.size, slot.get().meta.size)?;
                slot.insert(entry);
            }
            dashmap::Entry::Vacant(slot) => {
                self.reserve(key, meta.size, 0)?;
                slot.insert(entry);
            }
        }
        Ok(meta)
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<std::ops::RangeInclusive<u64>>,
    ) -> Result<ObjectBody, StorageError> {
        let entry = self.objects.get(key).map(|e| e.clone()).ok_or_else(|| StorageError::NotFound(key.clone()))?;
        let range = check_range(&entry.meta, range)?;
        let bytes = match &range {
            Some(r) => entry.bytes.slice(*r.start() as usize..=*r.end() as usize),
            None => entry.bytes.clone(),
        };
        let chunks = (0..bytes.len()).step_by(CHUNK).map(move |at| Ok(bytes.slice(at..(at + CHUNK).min(bytes.len()))));
        Ok(ObjectBody { meta: entry.meta.clone(), range, stream: Box::pin(stream::iter(chunks.collect::<Vec<_>>())) })
    }

    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.objects.get(key).map(|e| e.meta.clone()).ok_or_else(|| StorageError::NotFound(key.clone()))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        if let Some((_, entry)) = self.objects.remove(key) {
            self.used.fetch_sub(entry.meta.size, Ordering::AcqRel);
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut out: Vec<ObjectMeta> =
            self.objects.iter().filter(|e| e.key().as_str().starts_with(prefix)).map(|e| e.meta.clone()).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn url(&self, key: &ObjectKey) -> String {
        match &self.base_url {
            Some(base) => format!("{base}/{key}"),
            None => format!("memory://localhost/{key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use externalsource_core::registry::Env;
    use externalsource_core::testing::Fixture;

    const BUDGET: u64 = 16 * 1024 * 1024;

    async fn fixture() -> Fixture {
        Fixture::new(Arc::new(MemoryStorage::new(BUDGET, Some("http://svc.ns.svc.cluster.local:8080".into()))))
            .with_budget(BUDGET)
            .with_url_base("http://svc.ns.svc.cluster.local:8080/")
    }

    externalsource_core::behaviour_suite!(fixture, with_budget);

    #[test]
    fn urls_use_the_base_url_or_the_memory_scheme() {
        let k = ObjectKey::parse("artifacts/ns/n/abc.tar.gz").unwrap();
        let served = MemoryStorage::new(1, Some("http://svc.ns.svc.cluster.local:8080".into()));
        assert_eq!(served.url(&k), "http://svc.ns.svc.cluster.local:8080/artifacts/ns/n/abc.tar.gz");
        assert_eq!(MemoryStorage::new(1, None).url(&k), "memory://localhost/artifacts/ns/n/abc.tar.gz");
    }

    #[test]
    fn settings_parse_sizes_and_name_bad_values() {
        let env = Env::default();
        let mut table = toml::Table::new();
        table.insert("max_bytes".into(), "2MiB".into());
        let s = parse(&BackendContext { table: &table, env: &env }).unwrap();
        assert_eq!(s.redacted().get("max_bytes").unwrap().as_str(), Some("2MiB"));
        table.insert("max_bytes".into(), "lots".into());
        let err = parse(&BackendContext { table: &table, env: &env }).unwrap_err().to_string();
        assert!(err.contains("storage.memory.max_bytes") && err.contains("lots"), "{err}");
        table.clear();
        table.insert("max_byte".into(), 5.into());
        let err = parse(&BackendContext { table: &table, env: &env }).unwrap_err().to_string();
        assert!(err.contains("max_byte"), "{err}");
    }
}
