//! What a push must prove, per `spec.receiver.type`, and where it is sent: the webhook path is
//! derived from the token the way Flux's notification-controller derives a Receiver's, so the
//! path of a `generic` receiver is as hard to guess as the token.
//!
//! Every comparison with a secret value (a signature, a token) takes the same time whatever the
//! bytes compared, so a sender cannot learn a signature byte by byte from response times.

use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use sha2::{Digest, Sha256};

use crate::controller::api::ReceiverType;

/// The prefix of every webhook path.
pub const HOOK_PREFIX: &str = "/hook/";

/// The header of a `generic-hmac` signature.
pub const SIGNATURE_HEADER: &str = "x-signature";
/// The header of a GitHub webhook's SHA-256 signature.
pub const GITHUB_SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// GitHub's event name (`ping` when a webhook is created).
pub const GITHUB_EVENT_HEADER: &str = "x-github-event";
/// The header of a GitLab webhook's secret token.
pub const GITLAB_TOKEN_HEADER: &str = "x-gitlab-token";

/// `/hook/<hex sha256 of token + name + namespace>`, as notification-controller computes it.
pub fn webhook_path(token: &[u8], name: &str, namespace: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(token);
    digest.update(name.as_bytes());
    digest.update(namespace.as_bytes());
    format!("{HOOK_PREFIX}{}", hex::encode(digest.finalize()))
}

/// Why a push was refused (the sender gets 401; the reason is logged, never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    #[error("header {0} is not `sha256=<hex>`")]
    MalformedSignature(&'static str),
    #[error("the signature in {0} does not match the body")]
    BadSignature(&'static str),
    #[error("the token in {0} does not match")]
    BadToken(&'static str),
}

/// What an authenticated push asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    /// Fetch now.
    Reconcile,
    /// GitHub's `ping` on webhook creation: answered, nothing fetched.
    Ping,
}

/// Whether `kind` needs the request body to decide.
pub fn needs_body(kind: ReceiverType) -> bool {
    matches!(kind, ReceiverType::GenericHmac | ReceiverType::Github)
}

/// Checks a push that reached the path of `token` (which proves a `generic` push already).
pub fn verify(kind: ReceiverType, token: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<Authenticated, Refused> {
    match kind {
        ReceiverType::Generic => Ok(Authenticated::Reconcile),
        ReceiverType::GenericHmac => {
            hmac_sha256(SIGNATURE_HEADER, token, headers, body).map(|()| Authenticated::Reconcile)
        }
        ReceiverType::Github => {
            hmac_sha256(GITHUB_SIGNATURE_HEADER, token, headers, body)?;
            let event = headers.get(GITHUB_EVENT_HEADER).map(|v| v.as_bytes());
            Ok(if event == Some(b"ping") { Authenticated::Ping } else { Authenticated::Reconcile })
        }
        ReceiverType::Gitlab => {
            let given = headers.get(GITLAB_TOKEN_HEADER).ok_or(Refused::MissingHeader(GITLAB_TOKEN_HEADER))?;
            if constant_time_eq(given.as_bytes(), token) {
                Ok(Authenticated::Reconcile)
            } else {
                Err(Refused::BadToken(GITLAB_TOKEN_HEADER))
            }
        }
    }
}

/// `header: sha256=<hex of HMAC-SHA256(token, body)>`, compared in constant time.
fn hmac_sha256(header: &'static str, token: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), Refused> {
    let value = headers.get(header).ok_or(Refused::MissingHeader(header))?;
    let hex_signature = value.as_bytes().strip_prefix(b"sha256=").ok_or(Refused::MalformedSignature(header))?;
    let signature = hex::decode(hex_signature).map_err(|_| Refused::MalformedSignature(header))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(token).map_err(|_| Refused::BadSignature(header))?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature).map_err(|_| Refused::BadSignature(header))
}

/// Equality whose time depends on the lengths only, never on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    const TOKEN: &[u8] = b"s3cr3t-token";
    const BODY: &[u8] = br#"{"ref":"refs/heads/main"}"#;

    fn signed(header: &'static str, token: &[u8], body: &[u8]) -> HeaderMap {
        let mut mac = Hmac::<Sha256>::new_from_slice(token).unwrap();
        mac.update(body);
        let mut headers = HeaderMap::new();
        let value = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        headers.insert(header, HeaderValue::from_str(&value).unwrap());
        headers
    }

    #[test]
    fn the_path_is_flux_s_digest_of_token_name_and_namespace() {
        // echo -n 's3cr3t-tokenwebhookflux-system' | sha256sum
        assert_eq!(
            webhook_path(TOKEN, "webhook", "flux-system"),
            "/hook/7e0d65b1416143471b0c3cce2f160c48324c8424a4124b694f5dbb96d7a202a8"
        );
    }

    #[test]
    fn the_path_changes_with_each_input() {
        let base = webhook_path(TOKEN, "a", "ns");
        assert_ne!(base, webhook_path(b"other", "a", "ns"));
        assert_ne!(base, webhook_path(TOKEN, "b", "ns"));
        assert_ne!(base, webhook_path(TOKEN, "a", "other"));
        assert!(base.starts_with(HOOK_PREFIX) && base.len() == HOOK_PREFIX.len() + 64);
    }

    #[test]
    fn generic_hmac_accepts_the_body_s_signature_only() {
        let kind = ReceiverType::GenericHmac;
        let headers = signed(SIGNATURE_HEADER, TOKEN, BODY);
        assert_eq!(verify(kind, TOKEN, &headers, BODY), Ok(Authenticated::Reconcile));
        assert_eq!(verify(kind, TOKEN, &headers, b"{}"), Err(Refused::BadSignature(SIGNATURE_HEADER)));
        let wrong_key = signed(SIGNATURE_HEADER, b"guess", BODY);
        assert_eq!(verify(kind, TOKEN, &wrong_key, BODY), Err(Refused::BadSignature(SIGNATURE_HEADER)));
        assert_eq!(verify(kind, TOKEN, &HeaderMap::new(), BODY), Err(Refused::MissingHeader(SIGNATURE_HEADER)));
        let mut bare = HeaderMap::new();
        bare.insert(SIGNATURE_HEADER, HeaderValue::from_static("deadbeef"));
        assert_eq!(verify(kind, TOKEN, &bare, BODY), Err(Refused::MalformedSignature(SIGNATURE_HEADER)));
        // GitHub's header is not the generic one.
        let github = signed(GITHUB_SIGNATURE_HEADER, TOKEN, BODY);
        assert_eq!(verify(kind, TOKEN, &github, BODY), Err(Refused::MissingHeader(SIGNATURE_HEADER)));
    }

    #[test]
    fn github_checks_its_header_and_answers_a_ping() {
        let kind = ReceiverType::Github;
        let mut headers = signed(GITHUB_SIGNATURE_HEADER, TOKEN, BODY);
        assert_eq!(verify(kind, TOKEN, &headers, BODY), Ok(Authenticated::Reconcile));
        headers.insert(GITHUB_EVENT_HEADER, HeaderValue::from_static("ping"));
        assert_eq!(verify(kind, TOKEN, &headers, BODY), Ok(Authenticated::Ping));
        assert_eq!(verify(kind, TOKEN, &headers, b"tampered"), Err(Refused::BadSignature(GITHUB_SIGNATURE_HEADER)));
    }

    #[test]
    fn gitlab_compares_the_token() {
        let kind = ReceiverType::Gitlab;
        let mut headers = HeaderMap::new();
        headers.insert(GITLAB_TOKEN_HEADER, HeaderValue::from_static("s3cr3t-token"));
        assert_eq!(verify(kind, TOKEN, &headers, b""), Ok(Authenticated::Reconcile));
        headers.insert(GITLAB_TOKEN_HEADER, HeaderValue::from_static("s3cr3t-tokeN"));
        assert_eq!(verify(kind, TOKEN, &headers, b""), Err(Refused::BadToken(GITLAB_TOKEN_HEADER)));
        assert_eq!(verify(kind, TOKEN, &HeaderMap::new(), b""), Err(Refused::MissingHeader(GITLAB_TOKEN_HEADER)));
    }

    #[test]
    fn generic_needs_nothing_beyond_the_path() {
        assert_eq!(verify(ReceiverType::Generic, TOKEN, &HeaderMap::new(), b""), Ok(Authenticated::Reconcile));
        assert!(!needs_body(ReceiverType::Generic) && !needs_body(ReceiverType::Gitlab));
        assert!(needs_body(ReceiverType::GenericHmac) && needs_body(ReceiverType::Github));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
