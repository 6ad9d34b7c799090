//! `fetch.require_https`: with the switch on, no request of a source leaves the controller
//! over plain HTTP.
//!
//! The rule applies to every URL a request goes to: the source's URL (refused when the spec is
//! planned, as a configuration problem), every redirect hop (refused by the redirect policy, so
//! an `https://` upstream cannot downgrade the fetch to `http://`), and the OAuth2 token
//! endpoint. The proxy address is not a target: with an `https://` target the proxy only
//! relays the TLS session (`CONNECT`), so the payload and the upstream's identity stay
//! protected; an `http://` proxy address stays allowed, as in `HTTPS_PROXY`.

use reqwest::Url;

use crate::config::FetchConfig;
use crate::controller::upstream::redact::redact_url;

/// A plain `http://` URL refused by `fetch.require_https`, shown redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{url} is plain http://; {} allows only https:// URLs",
    if *redirect { "the redirect to " } else { "" }, FetchConfig::require_https)]
pub struct PlainHttp {
    pub url: String,
    /// Refused on a redirect hop rather than as the requested URL.
    pub redirect: bool,
}

/// Whether `url` may be requested when `require_https` is on (any scheme but `http` is left to
/// the checks that know it: only `http` and `https` are ever requested).
pub fn check(require_https: bool, url: &Url, redirect: bool) -> Result<(), PlainHttp> {
    if require_https && url.scheme() == "http" {
        return Err(PlainHttp { url: redact_url(url), redirect });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn off_allows_both_schemes() {
        assert!(check(false, &url("http://api.example/"), false).is_ok());
        assert!(check(false, &url("http://api.example/"), true).is_ok());
        assert!(check(false, &url("https://api.example/"), false).is_ok());
    }

    #[test]
    fn on_refuses_plain_http_naming_the_rule_and_the_redacted_url() {
        assert!(check(true, &url("https://api.example/v1"), false).is_ok());
        assert!(check(true, &url("HTTPS://API.example/v1"), true).is_ok(), "schemes are case-insensitive");
        let e = check(true, &url("http://alice:pw@api.example/v1?token=t0k"), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "http://redacted@api.example/v1?token=redacted is plain http://; fetch.require_https allows only https:// URLs"
        );
        let e = check(true, &url("HTTP://api.example:8080/"), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the redirect to http://api.example:8080/ is plain http://; fetch.require_https allows only https:// URLs"
        );
    }

    #[test]
    fn the_refusal_is_found_in_a_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] PlainHttp);
        let refused = PlainHttp { url: "http://x/".into(), redirect: true };
        let outer = Outer(refused.clone());
        assert_eq!(crate::controller::upstream::found_in_chain::<PlainHttp>(&outer), Some(&refused));
        assert_eq!(crate::controller::upstream::found_in_chain::<PlainHttp>(&std::fmt::Error), None);
    }
}
