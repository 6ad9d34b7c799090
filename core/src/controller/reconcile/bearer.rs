//! Fetching with a bearer token the controller obtains itself, whoever issues it (an OAuth2
//! token endpoint, the Kubernetes TokenRequest API): a cached token while its issuer's renewal
//! rule allows, else a new one; a 401 to a cached token drops it and the fetch is retried once
//! with a new token. A 401 to a token just issued is the upstream's answer (a new token would be
//! refused too) and is returned as such.
//!
//! The token travels as a sensitive `Authorization` header of the request, so the fetcher
//! confines it to the URL's origin like every other credential.

pub mod token_cache;

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};

use crate::controller::runtime::memory::Reservation;
use crate::controller::upstream::client::{FetchError, FetchOutcome, FetchRequest, Fetcher};
use token_cache::{TokenCache, TokenKey};

/// A token as its issuer gave it.
#[derive(Debug)]
pub struct Bearer {
    /// `Bearer <token>`, marked sensitive (`Debug` shows `Sensitive`).
    pub authorization: HeaderValue,
    /// How long it may be sent, by the issuer's renewal rule.
    pub usable_for: Duration,
}

/// Who issues the tokens of a source (and logs, at debug level, that it did, without the
/// token). `Display` names it for the log.
pub(crate) trait Issuer: std::fmt::Display {
    type Error;

    /// The cache key of its tokens.
    fn key(&self) -> TokenKey;

    /// A new token, for `request` (whose TLS, proxy and timeout an HTTP issuer uses).
    fn issue(&self, request: &FetchRequest) -> impl Future<Output = Result<Bearer, Self::Error>> + Send;
}

/// A token of `issuer`, from the cache or new; `true` when it came from the cache.
async fn token<I: Issuer>(
    tokens: &TokenCache,
    key: &TokenKey,
    issuer: &I,
    request: &FetchRequest,
    use_cache: bool,
) -> Result<(HeaderValue, bool), I::Error> {
    if use_cache && let Some(cached) = tokens.get(key, Instant::now()) {
        return Ok((cached, true));
    }
    let issued = issuer.issue(request).await?;
    tokens.insert(key.clone(), issued.authorization.clone(), issued.usable_for, Instant::now());
    Ok((issued.authorization, false))
}

/// Fetches `request` with a bearer token of `issuer` (see the module). `Err` when no token
/// could be had; a final 401 in `Ok(Err(_))` was the answer to a token just issued.
pub(crate) async fn fetch_with_bearer<I: Issuer>(
    fetcher: &Fetcher,
    tokens: &TokenCache,
    issuer: &I,
    request: &mut FetchRequest,
    memory: &mut Reservation,
) -> Result<Result<FetchOutcome, FetchError>, I::Error> {
    let key = issuer.key();
    let (authorization, cached) = token(tokens, &key, issuer, request, true).await?;
    request.headers.insert(AUTHORIZATION, authorization);
    let fetched = fetcher.fetch(request, memory).await;
    if !is_unauthorized(&fetched) {
        return Ok(fetched);
    }
    tokens.invalidate(&key);
    if !cached {
        return Ok(fetched);
    }
    tracing::debug!(issuer = %issuer, "the upstream refused a cached bearer token; getting a new one");
    let (authorization, _) = token(tokens, &key, issuer, request, false).await?;
    request.headers.insert(AUTHORIZATION, authorization);
    Ok(fetcher.fetch(request, memory).await)
}

/// Whether the upstream answered 401 Unauthorized.
pub fn is_unauthorized(fetched: &Result<FetchOutcome, FetchError>) -> bool {
    matches!(fetched, Err(FetchError::Status { status, .. }) if *status == StatusCode::UNAUTHORIZED)
}
