//! URLs as shown to people: in status messages, Events, logs and artifact metadata.
//!
//! A tenant may put credentials in the URL itself (`https://user:token@host/`, `?api_key=…`).
//! Those are sent to the upstream, never shown: the userinfo and every query value are replaced,
//! while the scheme, host, port, path and query keys stay so the message still says what failed.

use reqwest::Url;

/// What replaces a hidden value.
pub const REDACTED: &str = "redacted";

/// `url` with its userinfo and query values replaced by [`REDACTED`].
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() || shown.password().is_some() {
        // Both calls only fail for URLs that cannot carry credentials, which have none to hide.
        let _ = shown.set_username(REDACTED);
        let _ = shown.set_password(None);
    }
    if shown.query().is_some() {
        let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let mut pairs = shown.query_pairs_mut();
        pairs.clear();
        for key in keys {
            pairs.append_pair(&key, REDACTED);
        }
    }
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_query_values_are_hidden() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            redact_url(&url("https://alice:s3cr3t@api.example.com:8443/v1/items?token=abc&page=2#frag")),
            "https://redacted@api.example.com:8443/v1/items?token=redacted&page=redacted"
        );
        assert_eq!(redact_url(&url("https://tok@host/")), "https://redacted@host/");
        assert_eq!(redact_url(&url("http://host/plain")), "http://host/plain");
        let shown = redact_url(&url("http://host/?a=%2Fsecret%2F&b"));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
