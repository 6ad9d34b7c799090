//! The controller run in-process against a control plane, with its artifact server on loopback:
//! the same `controller::run` and server the binary uses, with test-sized intervals.

use std::sync::Arc;
use std::time::Duration;

use externalsource_backend_memory::MemoryStorage;
use externalsource_core::Storage;
use externalsource_core::backend::host;
use externalsource_core::config::TransformConfig;
use externalsource_core::controller::api::REPORTING_CONTROLLER;
use externalsource_core::controller::context::{Context, Settings};
use externalsource_core::controller::events::kubernetes::EventRecorder;
use externalsource_core::controller::hooks::spec::HookDefaults;
use externalsource_core::controller::reconcile::plan::Defaults;
use externalsource_core::controller::runtime::metrics::Metrics;
use externalsource_core::controller::upstream::client::Fetcher;
use externalsource_core::controller::upstream::egress::EgressPolicy;
use externalsource_core::isolated::transform::sandbox::Sandbox;
use externalsource_core::testing::FaultInjector;
use externalsource_server::{ArtifactRoutes, ArtifactService, ServeOptions};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::process::controller_binary;

/// Knobs of a test controller.
#[derive(Debug, Clone)]
pub struct Options {
    pub min_interval: Duration,
    pub retention: usize,
    pub max_size: u64,
    pub timeout: Duration,
    pub finalizer_attempts: u32,
    pub egress: EgressPolicy,
    /// Of the test controller's 4 reconcile slots.
    pub namespace_concurrency: usize,
    /// Limits of the transform sandbox, whose workers are the built controller binary.
    pub transform: TransformConfig,
    /// In-flight fetch bytes (bodies count twice).
    pub memory_budget: u64,
    /// `storage.namespace_quota`.
    pub namespace_quota: Option<u64>,
    /// The hook executor's socket; `None`: hooks are off.
    pub hook_socket: Option<std::path::PathBuf>,
    /// Only sources matching this selector are reconciled.
    pub watch_label_selector: Option<String>,
    /// notification-controller's event address (`controller.events_addr`).
    pub events_addr: Option<String>,
    /// `fetch.workload_identity`: whether `serviceAccountName` is honoured.
    pub workload_identity: bool,
    /// `fetch.require_https`: for the plan and for every request's hop.
    pub require_https: bool,
}

/// Sandbox limits small enough for a hostile filter to hit them quickly.
pub fn test_transform_limits() -> TransformConfig {
    TransformConfig {
        max_cpu: Duration::from_secs(1),
        max_memory: 256 << 20,
        timeout: Duration::from_secs(5),
        max_depth: 512,
        concurrency: 2,
        max_schema_size: 256 << 10,
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(1),
            retention: 2,
            max_size: 1 << 20,
            timeout: Duration::from_secs(5),
            finalizer_attempts: 5,
            egress: EgressPolicy::default(),
            namespace_concurrency: 3,
            transform: test_transform_limits(),
            memory_budget: 64 << 20,
            namespace_quota: None,
            hook_socket: None,
            watch_label_selector: None,
            events_addr: None,
            workload_identity: true,
            require_https: false,
        }
    }
}

/// A running controller and artifact server; both stop when dropped.
pub struct TestController {
    pub storage: Arc<dyn Storage>,
    pub base_url: String,
    pub registry: Arc<Registry>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestController {
    /// With a fresh memory backend.
    pub async fn start(client: kube::Client, options: Options) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind artifact server");
        let base_url = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let storage: Arc<dyn Storage> = host(MemoryStorage::new(256 << 20), Some(&base_url));
        Self::start_with(client, options, storage, listener, base_url).await
    }

    /// With a memory backend of `budget` bytes behind a fault injector the test commands.
    pub async fn start_faulty(client: kube::Client, options: Options, budget: u64) -> (Self, Arc<FaultInjector>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind artifact server");
        let base_url = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let memory: Arc<dyn Storage> = host(MemoryStorage::new(budget), Some(&base_url));
        let faults = FaultInjector::new(memory);
        let storage: Arc<dyn Storage> = faults.clone();
        (Self::start_with(client, options, storage, listener, base_url).await, faults)
    }

    /// With a given storage whose URLs point at `base_url`, served from `listener`.
    pub async fn start_with(
        client: kube::Client,
        options: Options,
        storage: Arc<dyn Storage>,
        listener: TcpListener,
        base_url: String,
    ) -> Self {
        let mut registry = Registry::default();
        let routes = ArtifactRoutes::new(storage.clone(), &mut registry);
        let metrics = Arc::new(Metrics::register(&mut registry));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let token = stop.clone();
        let opts = ServeOptions { shutdown_grace: Duration::from_millis(200), ..ServeOptions::default() };
        tasks.push(tokio::spawn(async move {
            externalsource_server::serve(listener, ArtifactService::new(routes), opts, token.cancelled_owned()).await;
        }));
        let ctx = Arc::new(Context::new(
            client.clone(),
            storage.clone(),
            Fetcher::with_policy(
                "externalsource-controller/test",
                options.egress.clone().requiring_https(options.require_https),
            ),
            Settings {
                defaults: Defaults {
                    min_interval: options.min_interval,
                    timeout: options.timeout,
                    max_timeout: std::time::Duration::from_secs(600),
                    max_size: options.max_size,
                    hooks: HookDefaults {
                        enabled: options.hook_socket.is_some(),
                        default_timeout: Duration::from_secs(10),
                        max_timeout: Duration::from_secs(60),
                    },
                    workload_identity: options.workload_identity,
                    require_https: options.require_https,
                    max_pages: 100,
                },
                retention: options.retention,
                finalizer_attempts: options.finalizer_attempts,
                namespace_concurrency: options.namespace_concurrency,
                memory_budget: options.memory_budget,
                namespace_quota: options.namespace_quota,
                hook_socket: options.hook_socket.clone(),
                watch_label_selector: options.watch_label_selector.clone(),
                events_addr: options.events_addr.clone(),
                reporting_instance: "test".into(),
            },
            EventRecorder::new(client, REPORTING_CONTROLLER, "test"),
            metrics,
            Sandbox::new(controller_binary(), options.transform.clone()),
        ));
        let token = stop.clone();
        tasks.push(tokio::spawn(externalsource_core::controller::run(ctx, 4, token.cancelled_owned())));
        Self { storage, base_url, registry: Arc::new(registry), stop, tasks }
    }

    /// Stops the controller and server and waits for them.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
