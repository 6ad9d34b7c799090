//! Artifacts that are published but not yet back in this replica's store.
//!
//! A store that is not shared (memory, a private volume) is empty on a new leader, while every
//! status still names the old leader's artifacts. Until the first reconcile pass has stored them
//! again, the HTTP server answers requests for those keys with 503 and `Retry-After` (Flux
//! retries), never 404 (which would read as "this artifact is gone").

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use crate::ObjectKey;

/// Keys being restored; cheap to clone, shared by the controller and the server.
#[derive(Clone, Default)]
pub struct Restoring(Arc<RwLock<HashSet<ObjectKey>>>);

impl Restoring {
    /// Marks `keys` as published and not yet stored.
    pub fn expect(&self, keys: impl IntoIterator<Item = ObjectKey>) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).extend(keys);
    }

    /// `key` is stored again (or no longer published).
    pub fn restored(&self, key: &ObjectKey) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// Whether a request for `key` should be told to come back later.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains(key)
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives up on what is left (the restore timed out); returns how many keys that was.
    pub fn clear(&self) -> usize {
        let mut keys = self.0.write().unwrap_or_else(PoisonError::into_inner);
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
}
