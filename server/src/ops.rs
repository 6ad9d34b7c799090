//! The ops listener: `/healthz`, `/readyz` and `/metrics`.
//!
//! It runs on its own port so probes and scrapes keep working whatever happens to the artifact
//! listener, and so a NetworkPolicy can admit Flux to one port and Prometheus to the other.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::{self, Ready};
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::body::{Body, text};
use crate::serve::{ServeOptions, serve};

/// Content type of the OpenMetrics text format that prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether this replica should receive traffic, as `/readyz` reports it.
///
/// Starts not ready. The binary flips it: with a non-shared backend only the leader is ready (it
/// holds the artifacts), with a shared backend every replica is. Cloning shares the flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn new(ready: bool) -> Self {
        Self(Arc::new(AtomicBool::new(ready)))
    }

    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The hyper service of the ops listener.
#[derive(Clone)]
pub struct OpsService {
    registry: Arc<Registry>,
    readiness: Readiness,
}

impl OpsService {
    pub fn new(registry: Arc<Registry>, readiness: Readiness) -> Self {
        Self { registry, readiness }
    }

    fn respond(&self, method: &Method, path: &str) -> Response<Body> {
        if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.readiness.is_ready() => text(StatusCode::OK, "ok\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => self.metrics(),
        }
    }

    fn metrics(&self) -> Response<Body> {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
        let mut response = Response::new(Body::full(out));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
        response
    }
}

impl<B> hyper::service::Service<Request<B>> for OpsService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        future::ready(Ok(self.respond(request.method(), request.uri().path())))
    }
}

/// Serves the ops endpoints on `listener` until `shutdown`, with default [`ServeOptions`].
/// Connections the ops listener holds at most (kubelet probes and a few scrapers need a handful).
pub const OPS_MAX_CONNECTIONS: usize = 64;

pub async fn serve_ops(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()>,
) {
    // A small cap of its own: probes and scrapes keep answering whatever the artifact port sees.
    let options = ServeOptions { max_connections: OPS_MAX_CONNECTIONS, ..ServeOptions::default() };
    serve(listener, OpsService::new(registry, readiness), options, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_shared_between_clones() {
        let r = Readiness::default();
        let r2 = r.clone();
        assert!(!r.is_ready());
        r2.set(true);
        assert!(r.is_ready());
        assert!(Readiness::new(true).is_ready());
    }
}
