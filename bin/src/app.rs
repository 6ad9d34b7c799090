//! Start-up and shutdown: storage, servers, leader election, controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use externalsource_core::config::{Config, MemoryCheck};
use externalsource_core::controller::egress::EgressPolicy;
use externalsource_core::controller::events::EventRecorder;
use externalsource_core::controller::fetch::Fetcher;
use externalsource_core::controller::hooks::spec::HookDefaults;
use externalsource_core::controller::leader::{LeaderElector, Timings};
use externalsource_core::controller::metrics::Metrics;
use externalsource_core::controller::plan::Defaults;
use externalsource_core::controller::reconcile::{Context, REPORTING_CONTROLLER, Settings};
use externalsource_core::controller::restore::RestorePass;
use externalsource_core::controller::transform::sandbox::Sandbox;
use externalsource_core::controller::{self, StartError};
use externalsource_core::restore::Restoring;
use externalsource_core::units::format_size;
use externalsource_core::{BuildError, Storage};
use externalsource_server::{ArtifactRoutes, ArtifactService, OpsService, Readiness, ServeOptions, ServerMetrics};
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
        Some(bytes) => Some(MemoryLimit { bytes, source: "controller.memory_limit".into() }),
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
    let open_files = crate::limits::raise_open_files();
    // Each connection needs a descriptor; a limit below the cap would fail accepts instead.
    if let Some(limit) = open_files.filter(|l| *l < u64::from(config.server.max_connections) + 256) {
        tracing::warn!(
            open_file_limit = limit,
            max_connections = config.server.max_connections,
            "the open-file limit is below server.max_connections plus headroom; accepts may fail before the cap"
        );
    }
    check_memory(&config, mode)?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            termination_signal().await;
            tracing::info!("termination signal received; draining");
            shutdown.cancel();
        });
    }
    let servers_stop = CancellationToken::new();
    // `/metrics/totals` serves the first registry alone: what does not grow with the sources.
    let (mut totals, mut per_object) = (Registry::default(), Registry::default());
    let server_metrics = ServerMetrics::register(&mut totals);
    let metrics = Arc::new(Metrics::new(config.ops.per_source_histograms));
    metrics.register_totals(&mut totals);
    metrics.register_per_object(&mut per_object);
    let readiness = Readiness::new(false);
    let mut servers: Vec<JoinHandle<()>> = Vec::new();
    // The ops listener first, before the store is opened (which may take long: a large
    // filesystem store is scanned): `/healthz` answers at once, `/readyz` stays 503 until ready.
    let ops_listener = bind("ops.port", &config.ops.bind_address, config.ops.port).await?;
    tracing::info!(addr = ?ops_listener.local_addr().ok(), "ops server listening (/healthz, /readyz, /metrics, /metrics/totals)");
    {
        let token = servers_stop.clone();
        let ops = OpsService::split(Arc::new(totals), Arc::new(per_object), readiness.clone());
        servers.push(tokio::spawn(async move {
            externalsource_server::serve_ops(ops_listener, ops, token.cancelled_owned()).await;
        }));
    }

    let base_url = config.server.base_url();
    let opened = std::time::Instant::now();
    let storage: Arc<dyn Storage> = config
        .storage
        .build(base_url.as_deref())
        .await
        .map_err(|source| AppError::Storage { backend: config.backend, source })?;
    let capabilities = storage.capabilities();
    tracing::info!(backend = config.backend, %capabilities, base_url = ?base_url, took = ?opened.elapsed(), "storage ready");

    if mode == Command::Serve && !capabilities.shared {
        return Err(AppError::ServeNeedsShared { backend: config.backend });
    }
    // A store that is not shared holds nothing the cluster may still point at until the
    // leader's first pass has run: 503, not 404, for any missing artifact until then.
    let restoring = if capabilities.shared { Restoring::default() } else { Restoring::everything() };
    let routes = if config.server.enabled {
        ArtifactRoutes::with_metrics(storage.clone(), server_metrics).map(|r| r.with_restoring(restoring.clone()))
    } else {
        None
    };
    let options = ServeOptions::from(&config.server);
    if config.server.enabled {
        let listener = bind("server.port", &config.server.bind_address, config.server.port).await?;
        let mounted = routes.is_some();
        tracing::info!(addr = ?listener.local_addr().ok(), artifact_routes = mounted, "artifact server listening");
        let service = ArtifactService::new(routes);
        let token = servers_stop.clone();
        servers.push(tokio::spawn(async move {
            externalsource_server::serve(listener, service, options, token.cancelled_owned()).await;
        }));
    }
    // Shutdown in the order endpoints need: not-Ready at once (so the Service stops sending new
    // clients), both listeners still accepting for `server.shutdown_delay` (endpoint updates
    // take a few seconds to reach every node), then stop accepting and drain.
    {
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
    let result = match mode {
        Command::Serve => {
            readiness.set(true);
            shutdown.cancelled().await;
            Ok(())
        }
        _ => run_controller(&config, storage, metrics, readiness.clone(), restoring, shutdown.clone()).await,
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

async fn run_controller(
    config: &Config,
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    restoring: Restoring,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    crate::legacy_env::warn_unread();
    let client = kube::Client::try_default().await.map_err(AppError::Kube)?;
    controller::check_crds(&client).await?;
    let shared = storage.capabilities().shared;
    // With a shared store every replica serves the same objects, so every replica is Ready;
    // otherwise only the leader holds the artifacts, and only once it has stored them again.
    if shared {
        readiness.set(true);
    }
    let c = &config.controller;
    let elector = c.leader_election.then(|| {
        let timings =
            Timings { lease_duration: c.lease_duration, renew_deadline: c.renew_deadline, retry_every: c.retry_period };
        LeaderElector::new(client.clone(), &config.server.service_namespace, &c.lease_name, &c.pod_name, timings)
    });
    if let Some(elector) = &elector {
        tracing::info!(lease = %c.lease_name, identity = %c.pod_name, "waiting for leadership");
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    let restore = if shared {
        None
    } else {
        match RestorePass::begin(&client, storage.as_ref(), restoring.clone(), c.watch_label_selector.as_deref()).await
        {
            Ok(pass) => Some(Arc::new(pass)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which published artifacts are missing; Ready without waiting");
                restoring.clear();
                None
            }
        }
    };
    let ready_after_restore = match restore.clone() {
        None => {
            readiness.set(true);
            None
        }
        Some(pass) => Some(tokio::spawn(ready_after_restore(pass, restoring, readiness.clone(), c.restore_timeout))),
    };
    let ctx = Context::new(
        client.clone(),
        storage,
        Fetcher::with_policy(
            config.fetch.user_agent.clone(),
            EgressPolicy::new(config.fetch.deny_cidrs.clone(), config.fetch.allow_cidrs.clone()),
        ),
        Settings {
            defaults: Defaults {
                min_interval: config.controller.min_interval,
                timeout: config.fetch.timeout,
                max_timeout: config.fetch.max_timeout,
                max_size: config.fetch.max_size,
                hooks: HookDefaults {
                    enabled: config.hooks.socket.is_some(),
                    default_timeout: config.hooks.default_timeout,
                    max_timeout: config.hooks.max_timeout,
                },
            },
            retention: config.controller.retention.into(),
            finalizer_attempts: config.controller.finalizer_attempts,
            namespace_concurrency: config.controller.namespace_concurrency.into(),
            memory_budget: config.fetch.memory_budget,
            namespace_quota: config.namespace_quota,
            hook_socket: config.hooks.socket.clone(),
            watch_label_selector: config.controller.watch_label_selector.clone(),
            events_addr: config.controller.events_addr.clone(),
            reporting_instance: config.controller.pod_name.clone(),
        },
        EventRecorder::new(client, REPORTING_CONTROLLER, config.controller.pod_name.clone()),
        metrics,
        // This very binary, whatever happened to its file since it started.
        Sandbox::new(PathBuf::from("/proc/self/exe"), config.transform.clone()),
    );
    let ctx = Arc::new(match restore {
        Some(pass) => ctx.with_restore(pass),
        None => ctx,
    });
    tracing::info!(concurrency = config.controller.concurrency, "controller starting");
    let controller = controller::run(ctx, config.controller.concurrency, shutdown.clone().cancelled_owned());
    let lost = async {
        match &elector {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        _ = controller => Ok(()),
        _ = lost => {
            readiness.set(false);
            shutdown.cancel();
            Err(AppError::LeadershipLost)
        }
    };
    if let Some(task) = ready_after_restore {
        task.abort();
    }
    if let Some(elector) = &elector {
        elector.release().await;
    }
    result
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
            "the first pass did not reach every source within controller.restore_timeout; Ready anyway"
        );
    }
    readiness.set(true);
    tokio::time::sleep_until(started + timeout).await;
    let left = restoring.clear();
    if left > 0 {
        tracing::warn!(
            artifacts = left,
            "published artifacts still missing after controller.restore_timeout now answer 404"
        );
    }
}
