//! A bounded cache of hot artifacts in memory, so a download that is served again and again costs
//! no trip to the blocking pool and no system call.
//!
//! Only artifacts whose bytes were checked against the digest their key ends in are admitted: such
//! bytes never change, so a cached copy cannot go stale. It can only outlive a deletion by another
//! replica or by hand, so an entry is dropped after [`REVALIDATE_AFTER`] and the next download goes
//! to the disk again (and finds the file, or not). Our own deletes drop the entry at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use externalsource_core::{Bytes, ObjectKey, ObjectMeta};

/// How long a cached artifact is served without looking at the disk.
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(10);

/// The largest object admitted, as a fraction of the budget: one large artifact should not
/// evict every small one.
const MAX_OBJECT_SHARE: u64 = 8;

/// Artifacts by key, at most `budget` bytes, least recently used evicted first.
pub struct HotCache {
    state: Mutex<State>,
    budget: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<ObjectKey, Entry>,
    bytes: u64,
    clock: u64,
}

struct Entry {
    bytes: Bytes,
    meta: ObjectMeta,
    admitted: Instant,
    used: u64,
}

impl HotCache {
    /// A budget of 0 disables the cache.
    pub fn new(budget: u64) -> Self {
        Self { state: Mutex::new(State::default()), budget }
    }

    /// The largest object worth reading whole to admit it.
    pub fn max_object(&self) -> u64 {
        self.budget / MAX_OBJECT_SHARE
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// A fresh copy of `key`, if cached.
    pub fn get(&self, key: &ObjectKey) -> Option<(Bytes, ObjectMeta)> {
        let mut state = self.lock();
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(key)?;
        if entry.admitted.elapsed() >= REVALIDATE_AFTER {
            let size = entry.meta.size;
            state.entries.remove(key);
            state.bytes -= size;
            return None;
        }
        entry.used = clock;
        Some((entry.bytes.clone(), entry.meta.clone()))
    }

    /// Admits verified bytes (the caller checked them against the key's digest), evicting the
    /// least recently used entries to make room; an object over [`HotCache::max_object`] is not
    /// admitted.
    pub fn admit(&self, bytes: Bytes, meta: ObjectMeta) {
        let size = meta.size;
        if size == 0 || size > self.max_object() {
            return;
        }
        let mut state = self.lock();
        if let Some(old) = state.entries.remove(&meta.key) {
            state.bytes -= old.meta.size;
        }
        while state.bytes + size > self.budget {
            let Some(oldest) = state.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) else { break };
            if let Some(evicted) = state.entries.remove(&oldest) {
                state.bytes -= evicted.meta.size;
            }
        }
        state.clock += 1;
        let used = state.clock;
        state.bytes += size;
        state.entries.insert(meta.key.clone(), Entry { bytes, meta, admitted: Instant::now(), used });
    }

    pub fn remove(&self, key: &ObjectKey) {
        let mut state = self.lock();
        if let Some(old) = state.entries.remove(key) {
            state.bytes -= old.meta.size;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (every update is complete).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use externalsource_core::Digest;

    use super::*;

    fn object(name: &str, size: usize) -> (Bytes, ObjectMeta) {
        let bytes = Bytes::from(vec![7u8; size]);
        let key = ObjectKey::parse(&format!("artifacts/ns/s/{name}")).unwrap();
        let meta = ObjectMeta { key, size: size as u64, digest: Digest::of(&bytes), last_modified: SystemTime::now() };
        (bytes, meta)
    }

    #[test]
    fn holds_at_most_its_budget_evicting_the_least_recently_used() {
        let cache = HotCache::new(800);
        let (a, b, c) = (object("a", 100), object("b", 100), object("c", 100));
        for (bytes, meta) in [a.clone(), b.clone()] {
            cache.admit(bytes, meta);
        }
        assert!(cache.get(&a.1.key).is_some(), "a is now the most recently used");
        for i in 0..6 {
            let (bytes, meta) = object(&format!("filler-{i}"), 100);
            cache.admit(bytes, meta);
        }
        assert_eq!(cache.bytes(), 800);
        cache.admit(c.0.clone(), c.1.clone());
        assert_eq!(cache.bytes(), 800, "never over budget");
        assert!(cache.get(&b.1.key).is_none(), "b was the least recently used");
        assert!(cache.get(&a.1.key).is_some() && cache.get(&c.1.key).is_some());
        cache.remove(&c.1.key);
        assert!(cache.get(&c.1.key).is_none());
        assert_eq!(cache.bytes(), 700);
    }

    #[test]
    fn large_objects_and_a_zero_budget_are_not_cached() {
        let cache = HotCache::new(800);
        let (bytes, meta) = object("big", 101);
        cache.admit(bytes, meta.clone());
        assert!(cache.get(&meta.key).is_none(), "over an eighth of the budget");
        let off = HotCache::new(0);
        let (bytes, meta) = object("small", 1);
        off.admit(bytes, meta.clone());
        assert!(off.get(&meta.key).is_none());
    }
}
