//! Which cached access token an OAuth2 client may reuse, and for how long.
//!
//! A token is kept per namespace, Secret, token endpoint, scopes, audience and a digest of the
//! client's identity (`clientID` and `clientSecret`): a rotated client secret, another scope set or
//! another audience asks for a new token at once, while an edit of the Secret that changes none of
//! them keeps the token. The digest is kept instead of the values, so the cache holds no client
//! secret. Sources that share a Secret share its token.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// How long a token without `expires_in` is used: the server did not say, so not for long.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// The largest safety margin before a token's expiry; shorter-lived tokens keep a quarter of
/// their lifetime as margin.
pub const MAX_MARGIN: Duration = Duration::from_secs(60);

/// The cache key of an OAuth2 client's token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub namespace: String,
    pub secret: String,
    pub token_url: String,
    /// The scopes as a set: the order they are written in does not ask for another token.
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    client: [u8; 32],
}

impl ClientKey {
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use reqwest::header::HeaderValue;

    use super::*;
    use crate::controller::reconcile::bearer::token_cache::{TokenCache, TokenKey};

    fn key(scopes: &[&str], audience: Option<&str>, client_secret: &str) -> TokenKey {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        TokenKey::Client(ClientKey::new(
            "ns",
            "oauth",
            "https://idp.example/token",
            &scopes,
            audience,
            "client",
            client_secret.as_bytes(),
        ))
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
    fn scope_order_does_not_matter_but_scopes_audience_and_client_do() {
        let cache = TokenCache::default();
        let now = Instant::now();
        let ten_minutes = usable_for(Some(Duration::from_secs(600)));
        cache.insert(key(&["b", "a", "a"], Some("api"), "s"), bearer("a"), ten_minutes, now);
        assert!(cache.get(&key(&["a", "b"], Some("api"), "s"), now).is_some(), "the same scope set");
        assert!(cache.get(&key(&["a"], Some("api"), "s"), now).is_none(), "fewer scopes");
        assert!(cache.get(&key(&["a", "b", "c"], Some("api"), "s"), now).is_none(), "more scopes");
        assert!(cache.get(&key(&["a", "b"], None, "s"), now).is_none(), "another audience");
        assert!(cache.get(&key(&["a", "b"], Some("api"), "rotated"), now).is_none(), "a rotated client secret");
        let TokenKey::Client(mut other_ns) = key(&["a", "b"], Some("api"), "s") else { unreachable!() };
        other_ns.namespace = "other".into();
        assert!(cache.get(&TokenKey::Client(other_ns), now).is_none(), "another namespace never shares a token");
    }

    #[test]
    fn the_client_secret_is_not_in_the_key() {
        let k = key(&[], None, "hunter2-client-secret");
        assert!(!format!("{k:?}").contains("hunter2"), "{k:?}");
    }
}
