//! What every reconcile shares: the clients, the store, the operator's policy and the
//! process-wide state (memory budget, namespace slots, backoff counters, remembered
//! ExternalArtifacts).

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::controller::api::REPORTING_CONTROLLER;
use crate::controller::events::flux::FluxEvents;
use crate::controller::events::kubernetes::EventRecorder;
use crate::controller::hooks::spec::HookDefaults;
use crate::controller::publish::cache::ArtifactCache;
use crate::controller::reconcile::backoff::Backoff;
use crate::controller::reconcile::bearer::token_cache::TokenCache;
use crate::controller::reconcile::plan::Defaults;
use crate::controller::runtime::memory::MemoryBudget;
use crate::controller::runtime::metrics::Metrics;
use crate::controller::runtime::restore_pass::RestorePass;
use crate::controller::upstream::client::Fetcher;
use crate::controller::upstream::egress::EgressPolicy;
use crate::isolated::hook_executor::protocol::ExecutorClient;
use crate::isolated::transform::sandbox::Sandbox;
use crate::storage::Storage;

/// Operator policy of the reconciler.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What a spec falls back to.
    pub defaults: Defaults,
    /// Published revisions kept per source (current included).
    pub retention: usize,
    /// Failed attempts at deleting a source's storage before the finalizer is released anyway.
    pub finalizer_attempts: u32,
    /// Reconciles of one namespace at once.
    pub namespace_concurrency: usize,
    /// Bytes of fetched bodies (and their copies) in memory at once, across all reconciles.
    pub memory_budget: u64,
    /// Bytes one namespace may store, when set.
    pub namespace_quota: Option<u64>,
    /// The hook executor's socket (`hooks.socket`), when hooks are on.
    pub hook_socket: Option<std::path::PathBuf>,
    /// Only sources (and their ExternalArtifacts, which carry their labels) matching this
    /// selector are watched: one shard of several controllers.
    pub watch_label_selector: Option<String>,
    /// notification-controller's event address (`controller.events_addr`): Flux events are
    /// posted there besides the Kubernetes Events.
    pub events_addr: Option<String>,
    /// Who the Flux events say sent them (Flux's `reportingInstance`: the pod).
    pub reporting_instance: String,
}

impl Settings {
    /// The policy `config` sets.
    pub fn from_config(config: &Config) -> Self {
        let (controller, fetch, hooks) = (&config.controller, &config.fetch, &config.hooks);
        Self {
            defaults: Defaults {
                min_interval: controller.min_interval,
                timeout: fetch.timeout,
                max_timeout: fetch.max_timeout,
                max_size: fetch.max_size,
                hooks: HookDefaults {
                    enabled: hooks.socket.is_some(),
                    default_timeout: hooks.default_timeout,
                    max_timeout: hooks.max_timeout,
                },
                workload_identity: fetch.workload_identity,
            },
            retention: controller.retention.into(),
            finalizer_attempts: controller.finalizer_attempts,
            namespace_concurrency: controller.namespace_concurrency.into(),
            memory_budget: fetch.memory_budget,
            namespace_quota: config.namespace_quota,
            hook_socket: hooks.socket.clone(),
            watch_label_selector: controller.watch_label_selector.clone(),
            events_addr: controller.events_addr.clone(),
            reporting_instance: controller.pod_name.clone(),
        }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: kube::Client,
    pub storage: Arc<dyn Storage>,
    pub fetcher: Fetcher,
    pub settings: Settings,
    pub recorder: EventRecorder,
    pub metrics: Arc<Metrics>,
    /// Where `spec.transform` filters run.
    pub transforms: Sandbox,
    /// In-flight fetch memory (see [`Settings::memory_budget`]).
    pub memory: MemoryBudget,
    /// Where `spec.hooks` run, when an executor is configured.
    pub hooks: Option<ExecutorClient>,
    /// Posts Flux events, when `events_addr` is set.
    pub flux_events: Option<FluxEvents>,
    /// Consecutive transient failures per object, for exponential backoff.
    pub(super) backoff: Backoff,
    /// Reconcile slots per namespace (see [`Settings::namespace_concurrency`]).
    namespace_slots: DashMap<String, Arc<Semaphore>>,
    /// Failed cleanup attempts per UID of an object being deleted; an entry stays after the
    /// finalizer was released anyway (one per abandoned cleanup), so stale retries stop at once.
    pub(super) cleanup_attempts: DashMap<String, u32>,
    /// The first pass of a new leader over a store that is not shared, when one runs.
    pub(super) restore: Option<Arc<RestorePass>>,
    /// ExternalArtifacts as last read or written, while the watch reports them unchanged.
    pub(super) artifacts: ArtifactCache,
    /// Bearer tokens the controller obtained (OAuth2 access tokens of `secretRef` client
    /// credentials, ServiceAccount tokens of `serviceAccountName`), until they are due for renewal.
    pub(super) tokens: TokenCache,
}

impl Context {
    pub fn new(
        client: kube::Client,
        storage: Arc<dyn Storage>,
        fetcher: Fetcher,
        settings: Settings,
        recorder: EventRecorder,
        metrics: Arc<Metrics>,
        transforms: Sandbox,
    ) -> Self {
        let memory = MemoryBudget::reporting(settings.memory_budget, metrics.admission.clone());
        let hooks = settings.hook_socket.as_ref().map(|s| ExecutorClient::new(s, settings.defaults.max_size as usize));
        let flux_events = settings.events_addr.as_ref().map(|address| {
            FluxEvents::start(address.clone(), settings.reporting_instance.clone(), metrics.flux_events.clone())
        });
        Self {
            client,
            storage,
            fetcher,
            settings: Settings {
                retention: settings.retention.max(1),
                finalizer_attempts: settings.finalizer_attempts.max(1),
                namespace_concurrency: settings.namespace_concurrency.max(1),
                ..settings
            },
            recorder,
            metrics,
            transforms,
            memory,
            hooks,
            flux_events,
            backoff: Backoff::default(),
            namespace_slots: DashMap::new(),
            cleanup_attempts: DashMap::new(),
            restore: None,
            artifacts: ArtifactCache::default(),
            tokens: TokenCache::default(),
        }
    }

    /// The context `config` describes, on `client` and `storage`. Transform workers are
    /// `transform_worker` re-executed (the controller binary itself).
    pub fn from_config(
        config: &Config,
        client: kube::Client,
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
        transform_worker: std::path::PathBuf,
    ) -> Self {
        let fetch = &config.fetch;
        let egress = EgressPolicy::new(fetch.deny_cidrs.clone(), fetch.allow_cidrs.clone());
        let recorder = EventRecorder::new(client.clone(), REPORTING_CONTROLLER, config.controller.pod_name.clone());
        Self::new(
            client,
            storage,
            Fetcher::with_policy(fetch.user_agent.clone(), egress),
            Settings::from_config(config),
            recorder,
            metrics,
            Sandbox::new(transform_worker, config.transform.clone()),
        )
    }

    /// Reports each reconcile to `pass`, so the process turns Ready once its store holds what
    /// is published.
    pub fn with_restore(mut self, pass: Arc<RestorePass>) -> Self {
        self.restore = Some(pass);
        self
    }

    /// The ExternalArtifacts this process last read or wrote. [`run`](crate::controller::run)'s metadata
    /// watch feeds it; a test without a watch reports what one would see.
    pub fn artifact_cache(&self) -> &ArtifactCache {
        &self.artifacts
    }

    /// A reconcile slot of `namespace`, or `None` when the namespace already uses all of its own.
    pub(super) fn namespace_slot(&self, namespace: &str) -> Option<OwnedSemaphorePermit> {
        let slots = self
            .namespace_slots
            .entry(namespace.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.namespace_concurrency)))
            .clone();
        slots.try_acquire_owned().ok()
    }
}
