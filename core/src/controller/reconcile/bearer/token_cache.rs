//! Bearer tokens the controller obtained for upstreams (OAuth2 access tokens, ServiceAccount
//! tokens), kept until the issuer's renewal rule says they are due.
//!
//! The cache holds what the rule decided, `usable_until`, not the rule: each issuer computes how
//! long its token may be sent (see `oauth2::client_key::usable_for` and
//! `workload_identity::usable_for`). Keys carry no secret: an OAuth2 client is a digest of its
//! identity, a ServiceAccount its namespace, name and audience.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;

use crate::controller::reconcile::oauth2::client_key::ClientKey;
use crate::controller::reconcile::workload_identity::spec::AccountKey;

/// Tokens kept at most; past it the expired ones go, then all (Secrets rotate, sources go).
const MAX_ENTRIES: usize = 1024;

/// Which token a request may reuse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenKey {
    /// An OAuth2 client of a `secretRef` Secret.
    Client(ClientKey),
    /// A ServiceAccount of `serviceAccountName`, for one audience.
    ServiceAccount(AccountKey),
}

struct Entry {
    /// `Bearer <token>`, marked sensitive.
    authorization: HeaderValue,
    usable_until: Instant,
}

/// The tokens of every source, shared by the reconciles.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<TokenKey, Entry>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenCache({} tokens)", self.lock().len())
    }
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `Authorization` value of a token still usable at `now`.
    pub fn get(&self, key: &TokenKey, now: Instant) -> Option<HeaderValue> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(e) if now < e.usable_until => Some(e.authorization.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps a token obtained at `now` that may be sent for `usable_for`; one usable for no
    /// time is not kept.
    pub fn insert(&self, key: TokenKey, authorization: HeaderValue, usable_for: Duration, now: Instant) {
        if usable_for.is_zero() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, e| now < e.usable_until);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, Entry { authorization, usable_until: now + usable_for });
    }

    /// Forgets a token the upstream refused.
    pub fn invalidate(&self, key: &TokenKey) {
        self.lock().remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> TokenKey {
        TokenKey::ServiceAccount(AccountKey::new("ns", name, "https://api.example"))
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn a_token_is_reused_while_usable() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        cache.insert(key("a"), bearer("a"), Duration::from_secs(2880), t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(cache.get(&key("a"), at(2879)), Some(bearer("a")));
        assert_eq!(cache.get(&key("b"), at(1)), None, "another key");
        assert_eq!(cache.get(&key("a"), at(2880)), None, "due for renewal: fetch a new one");
        assert!(cache.is_empty(), "an expired token is dropped when seen");
    }

    #[test]
    fn a_token_usable_for_no_time_is_not_kept() {
        let cache = TokenCache::default();
        cache.insert(key("a"), bearer("a"), Duration::ZERO, Instant::now());
        assert!(cache.is_empty());
    }

    #[test]
    fn invalidate_forgets_a_refused_token() {
        let cache = TokenCache::default();
        let now = Instant::now();
        cache.insert(key("a"), bearer("a"), Duration::from_secs(600), now);
        cache.invalidate(&key("a"));
        assert!(cache.get(&key("a"), now).is_none());
    }

    #[test]
    fn past_the_bound_expired_tokens_go_first() {
        let cache = TokenCache::default();
        let now = Instant::now();
        cache.insert(key("short"), bearer("s"), Duration::from_secs(1), now);
        for i in 1..MAX_ENTRIES {
            cache.insert(key(&format!("k{i}")), bearer("x"), Duration::from_secs(600), now);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        let later = now + Duration::from_secs(2);
        cache.insert(key("new"), bearer("n"), Duration::from_secs(600), later);
        assert_eq!(cache.len(), MAX_ENTRIES, "the expired one made room");
        assert!(cache.get(&key("k1"), later).is_some(), "usable tokens stay");
    }
}
