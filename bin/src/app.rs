//! Start-up and shutdown: storage, servers, leader election, controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use externalsource_core::config::{Config, ControllerConfig, MemoryCheck, OpsConfig, ReceiverConfig, ServerConfig};
use externalsource_core::controller::context::Context;
use externalsource_core::controller::receiver::Receiver;
use externalsource_core::controller::runtime::leader::{LeaderElector, Timings};
use externalsource_core::controller::runtime::metrics::{Metrics, PushLabels};
use externalsource_core::controller::runtime::restore_pass::RestorePass;
use externalsource_core::controller::{self, StartError};
use externalsource_core::restore::Restoring;
use externalsource_core::units::format_size;
use externalsource_core::{BuildError, Storage};
use externalsource_server::{
    ArtifactRoutes, ArtifactService, OpsService, Readiness, ReceiverService, ServeOptions, ServerMetrics,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::Command;
use crate::limits::MemoryLimit;

/// Why the process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the {backend} storage: {source}")]
    Storage {
        backend: &'static str,
        #[source]
        source: BuildError,
    },
    #[error("cannot listen on {key} = {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the Kubernetes API (KUBECONFIG or in-cluster config): {0}")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(
        "`serve` only reads a store the controller writes, and the {backend} store is private to one process: \
         it would answer 404 for every artifact. Use a shared backend (s3, or filesystem with \
         storage.filesystem.shared = true on a volume every replica mounts)"
    )]
    ServeNeedsShared { backend: &'static str },
    #[error("leadership was lost; exiting so a fresh process can compete again")]
    LeadershipLost,
    #[error(
        "the configuration may use up to {need} ({terms}) but the memory limit is {limit} (from {origin}); \
         lower those settings, raise the container's memory limit, or set controller.memory_check = \"warn\""
    )]
    MemoryDoesNotFit { need: String, terms: String, limit: String, origin: String },
}

impl AppError {
    /// A configuration problem found only when the storage was built (exit 2, like the others).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Storage { source: BuildError::Config(_), .. })
    }
}

/// Refuses (or warns about) a configuration whose worst case does not fit the memory limit:
/// under load the kernel would kill the pod, and with it the memory store of every tenant.
pub(crate) fn check_memory(config: &Config, mode: Command) -> Result<(), AppError> {
    let limit = match config.controller.memory_limit {
        Some(bytes) => Some(MemoryLimit { bytes, source: ControllerConfig::memory_limit.into() }),
        None => crate::limits::cgroup_memory_limit(),
    };
    let terms = config.memory_need(mode != Command::Serve);
    let need: u64 = terms.iter().map(|(_, bytes)| bytes).sum();
    let Some(limit) = limit else {
        tracing::info!(need = %format_size(need), "no memory limit found; the memory check is skipped");
        return Ok(());
    };
    if need <= limit.bytes {
        tracing::info!(need = %format_size(need), limit = %format_size(limit.bytes), "the configuration fits the memory limit");
        return Ok(());
    }
    let listed: Vec<String> = terms.iter().map(|(key, bytes)| format!("{key} {}", format_size(*bytes))).collect();
    let error = AppError::MemoryDoesNotFit {
        need: format_size(need),
        terms: listed.join(" + "),
        limit: format_size(limit.bytes),
        origin: limit.source,
    };
    match config.controller.memory_check {
        MemoryCheck::Refuse => Err(error),
        MemoryCheck::Warn => {
            tracing::warn!("{error}");
            Ok(())
        }
    }
}

async fn bind(key: &'static str, host: &str, port: u16) -> Result<TcpListener, AppError> {
    let addr = format!("{host}:{port}");
    let parsed: Result<SocketAddr, _> = addr.parse();
    let result = match parsed {
        Ok(a) => TcpListener::bind(a).await,
        Err(_) => TcpListener::bind(addr.as_str()).await,
    };
    result.map_err(|source| AppError::Bind { key, addr, source })
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs `mode` until a termination signal (or lost leadership).
pub async fn run(config: Config, mode: Command) -> Result<(), AppError> {
    warn_if_few_open_files(&config);
    check_memory(&config, mode)?;
    let shutdown = on_termination_signal();
    let servers_stop = CancellationToken::new();
    let readiness = Readiness::new(false);
    let telemetry = Telemetry::register(&config);
    // The ops listener first, before the store is opened (which may take long: a large
    // filesystem store is scanned): `/healthz` answers at once, `/readyz` stays 503 until ready.
    let mut servers = vec![start_ops_server(&config, telemetry.registries, &readiness, &servers_stop).await?];
    let storage = open_storage(&config).await?;
    let shared = storage.capabilities().shared;
    if mode == Command::Serve && !shared {
        return Err(AppError::ServeNeedsShared { backend: config.backend });
    }
    // A store that is not shared holds nothing the cluster may still point at until the
    // leader's first pass has run: 503, not 404, for any missing artifact until then.
    let restoring = if shared { Restoring::default() } else { Restoring::everything() };
    if config.server.enabled {
        let routes = ArtifactRoutes::with_metrics(storage.clone(), telemetry.server)
            .map(|r| r.with_restoring(restoring.clone()));
        servers.push(start_artifact_server(&config, routes, &servers_stop).await?);
    }
    // `serve` needs no Kubernetes access; the controller and the receiver do.
    let client = match mode {
        Command::Serve => None,
        _ => Some(kube::Client::try_default().await.map_err(AppError::Kube)?),
    };
    if let Some(client) = client.as_ref().filter(|_| config.receiver.enabled) {
        let pushes = telemetry.metrics.receiver_pushes.clone();
        servers.push(start_receiver(&config, client.clone(), pushes, &servers_stop).await?);
    }
    stop_servers_after_delay(&config, &shutdown, &servers_stop, &readiness);
    let result = match client {
        None => {
            readiness.set(true);
            shutdown.cancelled().await;
            Ok(())
        }
        Some(client) => {
            let metrics = telemetry.metrics;
            run_controller(&config, client, storage, metrics, readiness.clone(), restoring, shutdown.clone()).await
        }
    };
    readiness.set(false);
    shutdown.cancel();
    if result.is_err() {
        // Failing, not asked to stop: nothing to hand over gracefully.
        servers_stop.cancel();
    }
    for server in servers {
        let _ = server.await;
    }
    result
}

/// Each connection needs a descriptor; a limit below the cap would fail accepts instead.
fn warn_if_few_open_files(config: &Config) {
    let open_files = crate::limits::raise_open_files();
    if let Some(limit) = open_files.filter(|l| *l < u64::from(config.server.max_connections) + 256) {
        tracing::warn!(
            open_file_limit = limit,
            max_connections = config.server.max_connections,
            "the open-file limit is below {} plus headroom; accepts may fail before the cap",
            ServerConfig::max_connections
        );
    }
}

/// A token cancelled on SIGTERM or SIGINT.
fn on_termination_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        termination_signal().await;
        tracing::info!("termination signal received; draining");
        token.cancel();
    });
    shutdown
}

/// The metrics of the process and the registries that serve them.
struct Telemetry {
    /// `/metrics/totals` serves the first registry alone: what does not grow with the sources.
    registries: (Registry, Registry),
    server: ServerMetrics,
    metrics: Arc<Metrics>,
}

impl Telemetry {
    fn register(config: &Config) -> Self {
        let (mut totals, mut per_object) = (Registry::default(), Registry::default());
        let server = ServerMetrics::register(&mut totals);
        let metrics = Arc::new(Metrics::new(config.ops.per_source_histograms));
        metrics.register_totals(&mut totals);
        metrics.register_per_object(&mut per_object);
        Self { registries: (totals, per_object), server, metrics }
    }
}

async fn start_ops_server(
    config: &Config,
    (totals, per_object): (Registry, Registry),
    readiness: &Readiness,
    stop: &CancellationToken,
) -> Result<JoinHandle<()>, AppError> {
    let listener = bind(OpsConfig::port, &config.ops.bind_address, config.ops.port).await?;
    tracing::info!(addr = ?listener.local_addr().ok(), "ops server listening (/healthz, /readyz, /metrics, /metrics/totals)");
    let ops = OpsService::split(Arc::new(totals), Arc::new(per_object), readiness.clone());
    let token = stop.clone();
    Ok(tokio::spawn(async move {
        externalsource_server::serve_ops(listener, ops, token.cancelled_owned()).await;
    }))
}

async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, AppError> {
    let base_url = config.server.base_url();
    let opened = std::time::Instant::now();
    let storage: Arc<dyn Storage> = config
        .storage
        .build(base_url.as_deref())
        .await
        .map_err(|source| AppError::Storage { backend: config.backend, source })?;
    let capabilities = storage.capabilities();
    tracing::info!(backend = config.backend, %capabilities, base_url = ?base_url, took = ?opened.elapsed(), "storage ready");
    Ok(storage)
}

async fn start_artifact_server(
    config: &Config,
    routes: Option<ArtifactRoutes>,
    stop: &CancellationToken,
) -> Result<JoinHandle<()>, AppError> {
    let server = &config.server;
    let options = ServeOptions::from(server);
    let listener = bind(ServerConfig::port, &server.bind_address, server.port).await?;
    tracing::info!(addr = ?listener.local_addr().ok(), artifact_routes = routes.is_some(), "artifact server listening");
    let service = ArtifactService::new(routes);
    let token = stop.clone();
    Ok(tokio::spawn(async move {
        externalsource_server::serve(listener, service, options, token.cancelled_owned()).await;
    }))
}

/// The receiver listener of `spec.receiver`, on every replica (a push becomes a reconcile request
/// through the API, which the leader handles), with the watch that keeps its paths current.
async fn start_receiver(
    config: &Config,
    client: kube::Client,
    pushes: Family<PushLabels, Counter>,
    stop: &CancellationToken,
) -> Result<JoinHandle<()>, AppError> {
    let r = &config.receiver;
    let listener = bind(ReceiverConfig::port, &r.bind_address, r.port).await?;
    tracing::info!(addr = ?listener.local_addr().ok(), "receiver listening (POST /hook/<digest>)");
    let receiver = Receiver::new(client, r.max_body, pushes);
    let options = ServeOptions { max_connections: r.max_connections as usize, ..ServeOptions::from(&config.server) };
    let selector = config.controller.watch_label_selector.clone();
    let token = stop.clone();
    Ok(tokio::spawn(async move {
        let paths = tokio::spawn(receiver.clone().maintain(selector));
        externalsource_server::serve(listener, ReceiverService::new(receiver), options, token.cancelled_owned()).await;
        paths.abort();
    }))
}

/// Shutdown in the order endpoints need: not-Ready at once (so the Service stops sending new
/// clients), both listeners still accepting for `server.shutdown_delay` (endpoint updates take a
/// few seconds to reach every node), then stop accepting and drain.
fn stop_servers_after_delay(
    config: &Config,
    shutdown: &CancellationToken,
    servers_stop: &CancellationToken,
    readiness: &Readiness,
) {
    let (shutdown, servers_stop, readiness) = (shutdown.clone(), servers_stop.clone(), readiness.clone());
    let delay = config.server.shutdown_delay;
    tokio::spawn(async move {
        shutdown.cancelled().await;
        readiness.set(false);
        tracing::info!(?delay, "not ready; still accepting for the shutdown delay");
        tokio::time::sleep(delay).await;
        servers_stop.cancel();
    });
}

async fn run_controller(
    config: &Config,
    client: kube::Client,
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    restoring: Restoring,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    crate::legacy_env::warn_unread();
    controller::check_crds(&client).await?;
    let shared = storage.capabilities().shared;
    // With a shared store every replica serves the same objects, so every replica is Ready;
    // otherwise only the leader holds the artifacts, and only once it has stored them again.
    if shared {
        readiness.set(true);
    }
    let elector = config.controller.leader_election.then(|| elector(config, &client));
    if let Some(elector) = &elector {
        let c = &config.controller;
        tracing::info!(lease = %c.lease_name, identity = %c.pod_name, "waiting for leadership");
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    let restore = if shared { None } else { begin_restore(config, &client, storage.as_ref(), &restoring).await };
    let ready_after_restore = match restore.clone() {
        None => {
            readiness.set(true);
            None
        }
        Some(pass) => {
            let timeout = config.controller.restore_timeout;
            Some(tokio::spawn(ready_after_restore(pass, restoring, readiness.clone(), timeout)))
        }
    };
    // Transform workers are this very binary, whatever happened to its file since it started.
    let ctx = Context::from_config(config, client, storage, metrics, PathBuf::from("/proc/self/exe"));
    let ctx = Arc::new(match restore {
        Some(pass) => ctx.with_restore(pass),
        None => ctx,
    });
    let result = control_until_stopped(config, ctx, elector.as_ref(), &readiness, &shutdown).await;
    if let Some(task) = ready_after_restore {
        task.abort();
    }
    if let Some(elector) = &elector {
        elector.release().await;
    }
    result
}

/// The Lease this replica competes for.
fn elector(config: &Config, client: &kube::Client) -> LeaderElector {
    let c = &config.controller;
    let timings =
        Timings { lease_duration: c.lease_duration, renew_deadline: c.renew_deadline, retry_every: c.retry_period };
    LeaderElector::new(client.clone(), &config.server.service_namespace, &c.lease_name, &c.pod_name, timings)
}

/// The first pass of a new leader over a store that is not shared, when what is published can be
/// listed; otherwise Ready without waiting.
async fn begin_restore(
    config: &Config,
    client: &kube::Client,
    storage: &dyn Storage,
    restoring: &Restoring,
) -> Option<Arc<RestorePass>> {
    let selector = config.controller.watch_label_selector.as_deref();
    match RestorePass::begin(client, storage, restoring.clone(), selector).await {
        Ok(pass) => Some(Arc::new(pass)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell which published artifacts are missing; Ready without waiting");
            restoring.clear();
            None
        }
    }
}

/// Runs the controller until shutdown, or until leadership is lost.
async fn control_until_stopped(
    config: &Config,
    ctx: Arc<Context>,
    elector: Option<&LeaderElector>,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<(), AppError> {
    tracing::info!(concurrency = config.controller.concurrency, "controller starting");
    let controller = controller::run(ctx, config.controller.concurrency, shutdown.clone().cancelled_owned());
    let lost = async {
        match elector {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = controller => Ok(()),
        _ = lost => {
            readiness.set(false);
            shutdown.cancel();
            Err(AppError::LeadershipLost)
        }
    }
}

/// Turns Ready once the first pass stored every published artifact again, or at `timeout` with
/// a warning; artifacts still missing at `timeout` stop answering 503 and answer 404.
async fn ready_after_restore(pass: Arc<RestorePass>, restoring: Restoring, readiness: Readiness, timeout: Duration) {
    let started = tokio::time::Instant::now();
    tracing::info!(missing = pass.total(), ?timeout, "not Ready until the published artifacts are stored again");
    if tokio::time::timeout(timeout, pass.finished()).await.is_ok() {
        tracing::info!(artifacts = pass.total(), not_restored = restoring.len(), took = ?started.elapsed(), "first pass done; Ready");
    } else {
        tracing::warn!(
            artifacts = pass.total(),
            sources_not_reconciled = pass.remaining(),
            ?timeout,
            "the first pass did not reach every source within {}; Ready anyway",
            ControllerConfig::restore_timeout
        );
    }
    readiness.set(true);
    tokio::time::sleep_until(started + timeout).await;
    let left = restoring.clear();
    if left > 0 {
        tracing::warn!(
            artifacts = left,
            "published artifacts still missing after {} now answer 404",
            ControllerConfig::restore_timeout
        );
    }
}
