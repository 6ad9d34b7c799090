//! Artifacts that are published but not yet back in this replica's store.
//!
//! A store that is not shared (memory, a private volume) is empty on a new leader, while every
//! status still names the old leader's artifacts. Until the first reconcile pass has stored them
//! again, the HTTP server answers requests for those keys with 503 and `Retry-After` (Flux
//! retries), never 404 (which would read as "this artifact is gone").

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::ObjectKey;

/// Keys being restored; cheap to clone, shared by the controller and the server.
#[derive(Clone, Default)]
pub struct Restoring(Arc<Inner>);

#[derive(Default)]
struct Inner {
    keys: RwLock<HashSet<ObjectKey>>,
    /// Before the pass has listed what is published (a standby, a leader still listing), any
    /// missing artifact may be a published one.
    everything: AtomicBool,
}

impl Restoring {
    /// Nothing is known yet: every missing artifact answers 503 until [`Self::expect`] narrows
    /// it down to the published keys.
    pub fn everything() -> Self {
        let restoring = Self::default();
        restoring.0.everything.store(true, Ordering::Release);
        restoring
    }

    /// Marks exactly `keys` (and no other) as published and not yet stored.
    pub fn expect(&self, keys: impl IntoIterator<Item = ObjectKey>) {
        self.0.keys.write().unwrap_or_else(PoisonError::into_inner).extend(keys);
        self.0.everything.store(false, Ordering::Release);
    }

    /// `key` is stored again (or no longer published).
    pub fn restored(&self, key: &ObjectKey) {
        self.0.keys.write().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// Whether a request for `key`, which the store lacks, should be told to come back later.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.0.everything.load(Ordering::Acquire)
            || self.0.keys.read().unwrap_or_else(PoisonError::into_inner).contains(key)
    }

    /// How many published keys are still missing.
    pub fn len(&self) -> usize {
        self.0.keys.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives up on what is left (the restore timed out); returns how many keys that was.
    pub fn clear(&self) -> usize {
        self.0.everything.store(false, Ordering::Release);
        let mut keys = self.0.keys.write().unwrap_or_else(PoisonError::into_inner);
        let left = keys.len();
        keys.clear();
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_pending_until_restored_or_cleared() {
        let restoring = Restoring::default();
        let (a, b) = (ObjectKey::parse("artifacts/ns/a/x").unwrap(), ObjectKey::parse("artifacts/ns/b/y").unwrap());
        restoring.expect([a.clone(), b.clone()]);
        let seen_by_server = restoring.clone();
        assert!(seen_by_server.contains(&a) && seen_by_server.contains(&b));
        restoring.restored(&a);
        assert!(!seen_by_server.contains(&a) && seen_by_server.contains(&b));
        assert_eq!(restoring.clear(), 1);
        assert!(seen_by_server.is_empty());
    }

    #[test]
    fn everything_is_pending_until_the_published_keys_are_known() {
        let restoring = Restoring::everything();
        let (a, b) = (ObjectKey::parse("artifacts/ns/a/x").unwrap(), ObjectKey::parse("artifacts/ns/b/y").unwrap());
        assert!(restoring.contains(&a) && restoring.contains(&b));
        restoring.expect([a.clone()]);
        assert!(restoring.contains(&a) && !restoring.contains(&b));
        let standby = Restoring::everything();
        standby.clear();
        assert!(!standby.contains(&a), "nothing after giving up");
    }
}
