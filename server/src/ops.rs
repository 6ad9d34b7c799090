//! The ops listener: `/healthz`, `/readyz`, `/metrics` and `/metrics/totals`.
//!
//! `/metrics/totals` is the part of `/metrics` whose size does not grow with the number of
//! sources (counts, in-flight gauges, the artifact server's families): a few hundred bytes where
//! the whole page is about 37 MB at 10,000 sources, for dashboards and checks polled often.
//!
//! It runs on its own port so probes and scrapes keep working whatever happens to the artifact
//! listener, and so a NetworkPolicy can admit Flux to one port and Prometheus to the other.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    /// Families whose series do not grow with the number of sources.
    totals: Arc<Registry>,
    /// The rest of `/metrics`.
    per_object: Arc<Registry>,
    readiness: Readiness,
    /// Capacity for the next full page: a little more than the last one.
    last_size: Arc<AtomicUsize>,
}

impl OpsService {
    /// Serves `registry` as `/metrics`; `/metrics/totals` is empty.
    pub fn new(registry: Arc<Registry>, readiness: Readiness) -> Self {
        Self::split(Arc::new(Registry::default()), registry, readiness)
    }

    /// Serves `totals` as `/metrics/totals`, and both registries as `/metrics`.
    pub fn split(totals: Arc<Registry>, per_object: Arc<Registry>, readiness: Readiness) -> Self {
        Self { totals, per_object, readiness, last_size: Arc::default() }
    }

    fn respond(&self, method: &Method, path: &str) -> Response<Body> {
        if !matches!(path, "/healthz" | "/readyz" | "/metrics" | "/metrics/totals") {
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
            "/metrics/totals" => self.metrics(false),
            _ => self.metrics(true),
        }
    }

    fn metrics(&self, per_object: bool) -> Response<Body> {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        // The page is as large as the last one, give or take: no regrowth (and copying) of a
        // string of tens of MB on every scrape.
        let mut out = String::with_capacity(if per_object { self.last_size.load(Ordering::Relaxed) } else { 0 });
        let encoded = encode_registry(&mut out, &self.totals)
            .and_then(|()| if per_object { encode_registry(&mut out, &self.per_object) } else { Ok(()) })
            .and_then(|()| encode_eof(&mut out));
        if per_object {
            self.last_size.store(out.len() + out.len() / 8, Ordering::Relaxed);
        }
        if let Err(e) = encoded {
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

pub async fn serve_ops(listener: TcpListener, service: OpsService, shutdown: impl Future<Output = ()>) {
    // A small cap of its own: probes and scrapes keep answering whatever the artifact port sees.
    let options = ServeOptions { max_connections: OPS_MAX_CONNECTIONS, ..ServeOptions::default() };
    serve(listener, service, options, shutdown).await;
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
