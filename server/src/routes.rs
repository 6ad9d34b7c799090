//! The artifact routes: `GET` and `HEAD` of `/<key>` for keys under `artifacts/`.
//!
//! Why not tower-http's `ServeDir`: it serves files from a directory, derives its ETag from file
//! metadata and seeks to serve ranges. Our ETag must be the artifact's digest (Flux and caches
//! compare it with `status.artifact.digest`), and objects proxied from S3 are streams that cannot
//! seek, so the routes work on the [`Storage`] trait and ask it for the byte range instead.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use externalsource_core::restore::Restoring;
use externalsource_core::{ObjectBody, ObjectKey, ObjectMeta, Storage, StorageError};
use futures::future::BoxFuture;
use http::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, InvalidHeaderValue, LAST_MODIFIED, RANGE, RETRY_AFTER,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;

use crate::body::{Body, text};
use crate::conditional::{RangeDecision, Validators};
use crate::metrics::ServerMetrics;
use crate::path::{self, Target};

/// Artifacts never change under a key (the key holds the digest), so caches may keep them forever.
const CACHE_CONTROL_VALUE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");

/// The artifact routes over one storage backend; cheap to clone.
///
/// Only exists for a backend whose capabilities say `serves_http`: a backend that does not (S3 in
/// `direct` mode) has consumers download from its own URLs, and the controller must not become a
/// second, unintended way into the bucket.
#[derive(Clone)]
pub struct ArtifactRoutes(Arc<Inner>);

struct Inner {
    storage: Arc<dyn Storage>,
    metrics: ServerMetrics,
    restoring: Restoring,
}

/// What a client is told to wait before asking again for an artifact being restored.
const RESTORE_RETRY_AFTER: HeaderValue = HeaderValue::from_static("5");

impl ArtifactRoutes {
    /// Routes over `storage`, with their metrics registered in `registry`; `None` (and nothing
    /// registered) when the backend does not serve HTTP.
    pub fn new(storage: Arc<dyn Storage>, registry: &mut Registry) -> Option<Self> {
        if !storage.capabilities().serves_http {
            tracing::info!(backend = storage.name(), "backend does not serve HTTP; artifact routes not mounted");
            return None;
        }
        Self::with_metrics(storage, ServerMetrics::register(registry))
    }

    /// Routes over `storage` recording into metrics registered beforehand, so the registry can
    /// be served before the storage is open; `None` when the backend does not serve HTTP.
    pub fn with_metrics(storage: Arc<dyn Storage>, metrics: ServerMetrics) -> Option<Self> {
        if !storage.capabilities().serves_http {
            tracing::info!(backend = storage.name(), "backend does not serve HTTP; artifact routes not mounted");
            return None;
        }
        Some(Self(Arc::new(Inner { storage, metrics, restoring: Restoring::default() })))
    }

    /// Requests for keys in `restoring` that the store does not hold yet answer 503 with
    /// `Retry-After` instead of 404 (see [`Restoring`]).
    pub fn with_restoring(self, restoring: Restoring) -> Self {
        let inner = Inner { storage: self.0.storage.clone(), metrics: self.0.metrics.clone(), restoring };
        Self(Arc::new(inner))
    }

    async fn respond(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Body> {
        let key = match path::classify(path) {
            Target::Artifact(key) => key,
            Target::NotFound => return text(StatusCode::NOT_FOUND, "not found\n"),
            Target::Malformed(e) => {
                tracing::debug!(error = %e, "refused a malformed artifact path");
                return text(StatusCode::BAD_REQUEST, "bad request\n");
            }
        };
        match self.artifact(method, &key, headers).await {
            Ok(response) => response,
            Err(ResponseFailure::Storage(StorageError::NotFound(_))) if self.0.restoring.contains(&key) => {
                let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "artifact being restored; retry later\n");
                response.headers_mut().insert(RETRY_AFTER, RESTORE_RETRY_AFTER);
                response
            }
            Err(ResponseFailure::Storage(e)) => storage_error(&key, &e),
            Err(ResponseFailure::Header(e)) => {
                tracing::error!(key = %key, error = %e, "could not encode a response header");
                text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
        }
    }

    async fn artifact(
        &self,
        method: &Method,
        key: &ObjectKey,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, ResponseFailure> {
        let storage = &self.0.storage;
        let is_head = method == Method::HEAD;
        // Metadata is needed before reading only to evaluate conditions or answer HEAD; a plain
        // GET goes straight to `get`, which is one round trip for a proxied S3 object.
        let needs_meta = is_head || [IF_NONE_MATCH, IF_MODIFIED_SINCE, RANGE].iter().any(|h| headers.contains_key(h));
        let range = if needs_meta {
            let meta = storage.stat(key).await?;
            let validators = Validators::of(&meta);
            if validators.not_modified(headers) {
                return Ok(not_modified(&validators)?);
            }
            if is_head {
                let mut response = Response::new(Body::empty());
                representation_headers(response.headers_mut(), &meta, &validators)?;
                response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(meta.size));
                return Ok(response);
            }
            match validators.range(headers, meta.size) {
                RangeDecision::Full => None,
                RangeDecision::Partial(range) => Some(range),
                RangeDecision::Unsatisfiable => return Ok(range_not_satisfiable(meta.size)),
            }
        } else {
            None
        };
        Ok(object(storage.get(key, range).await?)?)
    }
}

/// Why an artifact response could not be built.
#[derive(Debug, thiserror::Error)]
enum ResponseFailure {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Header(#[from] InvalidHeaderValue),
}

/// A 200 or 206 streaming `body`.
fn object(body: ObjectBody) -> Result<Response<Body>, InvalidHeaderValue> {
    let validators = Validators::of(&body.meta);
    let len = body.len();
    let mut response = Response::new(Body::empty());
    representation_headers(response.headers_mut(), &body.meta, &validators)?;
    response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(range) = &body.range {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let value = format!("bytes {}-{}/{}", range.start(), range.end(), body.meta.size);
        response.headers_mut().insert(CONTENT_RANGE, HeaderValue::try_from(value)?);
    }
    *response.body_mut() = Body::stream(body.stream, len);
    Ok(response)
}

/// The headers of §6 that describe the object itself, shared by GET, HEAD and 206.
fn representation_headers(
    headers: &mut HeaderMap,
    meta: &ObjectMeta,
    validators: &Validators,
) -> Result<(), InvalidHeaderValue> {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    let disposition = format!("attachment; filename=\"{}\"", meta.key.file_name());
    headers.insert(CONTENT_DISPOSITION, HeaderValue::try_from(disposition)?);
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    cache_headers(headers, validators)
}

/// The headers a 304 repeats so caches can refresh what they hold.
fn cache_headers(headers: &mut HeaderMap, validators: &Validators) -> Result<(), InvalidHeaderValue> {
    headers.insert(ETAG, HeaderValue::try_from(validators.etag.as_str())?);
    headers.insert(LAST_MODIFIED, HeaderValue::try_from(validators.last_modified_http())?);
    headers.insert(CACHE_CONTROL, CACHE_CONTROL_VALUE);
    Ok(())
}

fn not_modified(validators: &Validators) -> Result<Response<Body>, InvalidHeaderValue> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    cache_headers(response.headers_mut(), validators)?;
    Ok(response)
}

fn range_not_satisfiable(size: u64) -> Response<Body> {
    let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
    // Formatting a number yields only digits, so this value is always valid.
    if let Ok(value) = HeaderValue::try_from(format!("bytes */{size}")) {
        response.headers_mut().insert(CONTENT_RANGE, value);
    }
    response
}

/// Maps a storage failure to a status; details go to the log, never to the client.
fn storage_error(key: &ObjectKey, e: &StorageError) -> Response<Body> {
    match e {
        StorageError::NotFound(_) => text(StatusCode::NOT_FOUND, "not found\n"),
        StorageError::InvalidKey(_) => text(StatusCode::BAD_REQUEST, "bad request\n"),
        StorageError::RangeNotSatisfiable { size, .. } => range_not_satisfiable(*size),
        StorageError::Unavailable { .. } | StorageError::StoreMissing { .. } => {
            tracing::warn!(key = %key, kind = e.kind(), error = %e, "storage unavailable while serving an artifact");
            text(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n")
        }
        _ => {
            tracing::error!(key = %key, kind = e.kind(), error = %e, "storage failed while serving an artifact");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

/// The hyper service of the artifact listener: the artifact routes when mounted, 404 otherwise.
#[derive(Clone)]
pub struct ArtifactService {
    routes: Option<ArtifactRoutes>,
}

impl ArtifactService {
    /// With `None` (a backend that does not serve HTTP) every path answers 404, so the listener
    /// can stay up for probes of the port without exposing anything of the storage.
    pub fn new(routes: Option<ArtifactRoutes>) -> Self {
        Self { routes }
    }

    /// Whether the artifact routes are mounted.
    pub fn is_mounted(&self) -> bool {
        self.routes.is_some()
    }
}

impl<B> hyper::service::Service<Request<B>> for ArtifactService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let routes = self.routes.clone();
        // Request bodies are never read: GET and HEAD carry none, and other methods get 405.
        let (parts, _) = request.into_parts();
        Box::pin(async move {
            let started = Instant::now();
            // The listener only ever reads: any other method is refused whatever the path
            // (RFC 9110 §15.5.6), before the path is looked at.
            let refused = (parts.method != Method::GET && parts.method != Method::HEAD).then(|| {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                response
            });
            let Some(routes) = routes else {
                return Ok(refused.unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")));
            };
            let response = match refused {
                Some(response) => response,
                None => routes.respond(&parts.method, parts.uri.path(), &parts.headers).await,
            };
            let observer = routes.0.metrics.observe(&parts.method, response.status(), started);
            Ok(response.map(|body| body.observed(observer)))
        })
    }
}
