//! Access tokens of the client credentials grant, kept until shortly before they expire.
//!
//! A token is kept per namespace, Secret, token endpoint, scopes, audience and a digest of the
//! client's identity (`clientID` and `clientSecret`): a rotated client secret, another scope set or
//! another audience asks for a new token at once, while an edit of the Secret that changes none of
//! them keeps the token. The digest is kept instead of the values, so the cache holds no client
//! secret. Sources that share a Secret share its token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use sha2::{Digest as _, Sha256};

/// How long a token without `expires_in` is used: the server did not say, so not for long.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// The largest safety margin before a token's expiry; shorter-lived tokens keep a quarter of
/// their lifetime as margin.
pub const MAX_MARGIN: Duration = Duration::from_secs(60);
/// Tokens kept at most; past it the expired ones go, then all (Secrets rotate, sources go).
const MAX_ENTRIES: usize = 1024;

/// Which token a request may reuse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub namespace: String,
    pub secret: String,
    pub token_url: String,
    /// The scopes as a set: the order they are written in does not ask for another token.
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    client: [u8; 32],
}

impl TokenKey {
    pub fn new(
        namespace: &str,
        secret: &str,
        token_url: &str,
        scopes: &[String],
        audience: Option<&str>,
        client_id: &str,
        client_secret: &[u8],
    ) -> Self {
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let mut digest = Sha256::new();
        digest.update((client_id.len() as u64).to_be_bytes());
        digest.update(client_id.as_bytes());
        digest.update(client_secret);
        Self {
            namespace: namespace.to_owned(),
            secret: secret.to_owned(),
            token_url: token_url.to_owned(),
            scopes,
            audience: audience.map(str::to_owned),
            client: digest.finalize().into(),
        }
    }
}

/// How long a token that lives `expires_in` is used: its lifetime less a safety margin (a
/// quarter of it, at most [`MAX_MARGIN`]), so it is not sent as it expires. Without
/// `expires_in`, [`DEFAULT_LIFETIME`].
pub fn usable_for(expires_in: Option<Duration>) -> Duration {
    match expires_in {
        None => DEFAULT_LIFETIME,
        Some(lifetime) => lifetime - (lifetime / 4).min(MAX_MARGIN),
    }
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

    /// Keeps a token obtained at `now` that lives `expires_in` (see [`usable_for`]); one that
    /// would be usable for no time is not kept.
    pub fn insert(&self, key: TokenKey, authorization: HeaderValue, expires_in: Option<Duration>, now: Instant) {
        let usable = usable_for(expires_in);
        if usable.is_zero() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, e| now < e.usable_until);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, Entry { authorization, usable_until: now + usable });
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

    fn key(scopes: &[&str], audience: Option<&str>, client_secret: &str) -> TokenKey {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        TokenKey::new("ns", "oauth", "https://idp.example/token", &scopes, audience, "client", client_secret.as_bytes())
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn the_margin_is_a_quarter_of_the_lifetime_at_most_a_minute() {
        assert_eq!(usable_for(Some(Duration::from_secs(3600))), Duration::from_secs(3540));
        assert_eq!(usable_for(Some(Duration::from_secs(120))), Duration::from_secs(90));
        assert_eq!(usable_for(Some(Duration::from_secs(4))), Duration::from_secs(3));
        assert_eq!(usable_for(Some(Duration::ZERO)), Duration::ZERO);
        assert_eq!(usable_for(None), DEFAULT_LIFETIME);
    }

    #[test]
    fn a_token_is_reused_until_shortly_before_it_expires() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        cache.insert(key(&["read"], None, "s"), bearer("a"), Some(Duration::from_secs(3600)), t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(cache.get(&key(&["read"], None, "s"), at(3539)), Some(bearer("a")));
        assert_eq!(cache.get(&key(&["read"], None, "s"), at(3540)), None, "inside the margin: fetch a new one");
        assert!(cache.is_empty(), "an expired token is dropped when seen");
    }

    #[test]
    fn without_expires_in_a_token_lives_the_short_default() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        cache.insert(key(&[], None, "s"), bearer("a"), None, t0);
        assert!(cache.get(&key(&[], None, "s"), t0 + DEFAULT_LIFETIME - Duration::from_millis(1)).is_some());
        assert!(cache.get(&key(&[], None, "s"), t0 + DEFAULT_LIFETIME).is_none());
    }

    #[test]
    fn a_token_that_expires_at_once_is_not_kept() {
        let cache = TokenCache::default();
        cache.insert(key(&[], None, "s"), bearer("a"), Some(Duration::ZERO), Instant::now());
        assert!(cache.is_empty());
    }

    #[test]
    fn scope_order_does_not_matter_but_scopes_audience_and_client_do() {
        let cache = TokenCache::default();
        let now = Instant::now();
        cache.insert(key(&["b", "a", "a"], Some("api"), "s"), bearer("a"), Some(Duration::from_secs(600)), now);
        assert!(cache.get(&key(&["a", "b"], Some("api"), "s"), now).is_some(), "the same scope set");
        assert!(cache.get(&key(&["a"], Some("api"), "s"), now).is_none(), "fewer scopes");
        assert!(cache.get(&key(&["a", "b", "c"], Some("api"), "s"), now).is_none(), "more scopes");
        assert!(cache.get(&key(&["a", "b"], None, "s"), now).is_none(), "another audience");
        assert!(cache.get(&key(&["a", "b"], Some("api"), "rotated"), now).is_none(), "a rotated client secret");
        let mut other_ns = key(&["a", "b"], Some("api"), "s");
        other_ns.namespace = "other".into();
        assert!(cache.get(&other_ns, now).is_none(), "another namespace never shares a token");
    }

    #[test]
    fn invalidate_forgets_a_refused_token() {
        let cache = TokenCache::default();
        let now = Instant::now();
        cache.insert(key(&[], None, "s"), bearer("a"), Some(Duration::from_secs(600)), now);
        cache.invalidate(&key(&[], None, "s"));
        assert!(cache.get(&key(&[], None, "s"), now).is_none());
    }

    #[test]
    fn the_client_secret_is_not_in_the_key() {
        let k = key(&[], None, "hunter2-client-secret");
        assert!(!format!("{k:?}").contains("hunter2"), "{k:?}");
    }
}
