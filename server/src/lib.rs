//! The HTTP side of the ExternalSource controller: the artifact server Flux downloads from, and the
//! ops endpoints (`/healthz`, `/readyz`, `/metrics`, `/metrics/totals`) the kubelet and
//! Prometheus scrape.
//!
//! Both run on plain hyper 1.x connections driven by [`serve`], which adds what a server exposed
//! inside a cluster needs and hyper leaves to its user: a header-read timeout and an idle timeout
//! against slowloris clients, and a graceful shutdown that drains in-flight downloads for a bounded
//! grace period while refusing new connections.
//!
//! Wiring, as the binary does it:
//!
//! ```no_run
//! # async fn wire(storage: std::sync::Arc<dyn externalsource_core::Storage>) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use externalsource_server::{ArtifactRoutes, ArtifactService, OpsService, Readiness, ServeOptions, serve, serve_ops};
//! use prometheus_client::registry::Registry;
//!
//! let mut registry = Registry::default();
//! // `None` when the backend does not serve HTTP: the listener then answers 404 to every path.
//! let routes = ArtifactRoutes::new(storage, &mut registry);
//! let readiness = Readiness::default();
//! let artifacts = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! let ops = tokio::net::TcpListener::bind("0.0.0.0:8081").await?;
//! // In the binary these complete on SIGTERM.
//! let (stop_artifacts, stop_ops) = (std::future::pending::<()>(), std::future::pending::<()>());
//! tokio::spawn(serve(artifacts, ArtifactService::new(routes), ServeOptions::default(), stop_artifacts));
//! tokio::spawn(serve_ops(ops, OpsService::new(Arc::new(registry), readiness.clone()), stop_ops));
//! readiness.set(true);
//! # Ok(()) }
//! ```

mod body;
mod conditional;
mod idle;
mod metrics;
mod ops;
mod path;
#[cfg(feature = "receiver")]
mod receiver;
mod routes;
mod serve;

pub use body::Body;
pub use metrics::ServerMetrics;
pub use ops::{OpsService, Readiness, serve_ops};
#[cfg(feature = "receiver")]
pub use receiver::ReceiverService;
pub use routes::{ArtifactRoutes, ArtifactService};
pub use serve::{ServeOptions, serve};
