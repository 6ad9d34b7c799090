//! The reconciler: ExternalSource → fetched payload → stored artifact → ExternalArtifact.
//!
//! `apply` runs steps that each return data (plan, Secrets, verified current artifact, fetch,
//! transform and store) and ends in exactly one call of [`finish`](super::finish::finish), the
//! only writer of both statuses and of the Event. The decisions between the steps are the pure
//! functions of [`outcome`](super::outcome).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::api::{Artifact, ExternalArtifact, ExternalSource, ExternalSourceStatus};
use super::artifact_cache::ArtifactCache;
use super::credentials::{self, Credentials};
use super::events::EventRecorder;
use super::fetch::{FetchOutcome, FetchRequest, Fetcher};
use super::finalizer::{self, Step};
use super::finish::{Report, finish, owned_by, write_status};
use super::flux_events::FluxEvents;
use super::hooks::chain::{self, HookFailure, Phase};
use super::hooks::protocol::ExecutorClient;
use super::memory::{MemoryBudget, UNPACK_WORKSPACE};
use super::metrics::{Metrics, ReconcileLabels, ResultLabels};
use super::oauth2::{self, token_cache::TokenCache};
use super::outcome::{self, Outcome, Retry, StatusInputs, Stored, Unfetched};
use super::plan::{Defaults, Packaging, Plan};
use super::redact::redact_url;
use super::restore::RestorePass;
use super::revision::revision;
use super::transform::TransformError;
use super::transform::sandbox::Sandbox;
use crate::Digest;
use crate::key::{ObjectKey, artifact_dir, namespace_dir};
use crate::package::archive::{Limits, MAX_ENTRIES, repackage};
use crate::package::{Package, package};
use crate::storage::{FailureClass, ObjectMeta, Storage, StorageError};

/// The predecessor's finalizer name, kept so objects move between the two controllers.
pub const FINALIZER: &str = "source.flux.oddkin.co/externalsource-finalizer";
/// The controller's name in Kubernetes Events (`reportingController`) and Flux events.
pub const REPORTING_CONTROLLER: &str = "externalsource-controller";
/// Flux's "reconcile now" annotation.
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
/// Metadata key of the upstream ETag in artifacts.
pub const ETAG_METADATA: &str = "etag";
/// Metadata key of the fetched URL (OCI convention Flux tooling shows).
pub const SOURCE_METADATA: &str = "org.opencontainers.image.source";

/// How soon an object whose namespace was at its reconcile cap is tried again (up to twice that,
/// jittered).
const NAMESPACE_BUSY_RETRY: Duration = Duration::from_millis(500);

/// Longest backoff after repeated transient errors.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

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
    failures: DashMap<(String, String), u32>,
    /// Reconcile slots per namespace (see [`Settings::namespace_concurrency`]).
    namespace_slots: DashMap<String, Arc<Semaphore>>,
    /// Failed cleanup attempts per UID of an object being deleted; an entry stays after the
    /// finalizer was released anyway (one per abandoned cleanup), so stale retries stop at once.
    pub(super) cleanup_attempts: DashMap<String, u32>,
    /// The first pass of a new leader over a store that is not shared, when one runs.
    restore: Option<Arc<RestorePass>>,
    /// ExternalArtifacts as last read or written, while the watch reports them unchanged.
    pub(super) artifacts: ArtifactCache,
    /// OAuth2 access tokens of `secretRef` client credentials, until shortly before they expire.
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
        let memory = MemoryBudget::new(settings.memory_budget);
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
            failures: DashMap::new(),
            namespace_slots: DashMap::new(),
            cleanup_attempts: DashMap::new(),
            restore: None,
            artifacts: ArtifactCache::default(),
            tokens: TokenCache::default(),
        }
    }

    /// Reports each reconcile to `pass`, so the process turns Ready once its store holds what
    /// is published.
    pub fn with_restore(mut self, pass: Arc<RestorePass>) -> Self {
        self.restore = Some(pass);
        self
    }

    /// A reconcile slot of `namespace`, or `None` when the namespace already uses all of its own.
    fn namespace_slot(&self, namespace: &str) -> Option<OwnedSemaphorePermit> {
        let slots = self
            .namespace_slots
            .entry(namespace.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.namespace_concurrency)))
            .clone();
        slots.try_acquire_owned().ok()
    }

    pub(super) fn forget_failures(&self, key: &(String, String)) {
        self.failures.remove(key);
    }
}

/// Reconcile failures that are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// A transient failure already reported in the status; retried with backoff.
    #[error("{}", .0.message)]
    Backoff(outcome::Failure),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("adding the finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    #[error("releasing the finalizer: {0}")]
    RemoveFinalizer(#[source] kube::Error),
}

impl Error {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Backoff(f) => f.kind,
            Error::Storage(e) => e.kind(),
            Error::AddFinalizer(_) | Error::RemoveFinalizer(_) => "finalizer",
        }
    }
}

pub(super) fn key_of(es: &ExternalSource) -> (String, String) {
    (es.namespace().unwrap_or_default(), es.name_any())
}

/// Entry point for the kube-runtime `Controller`.
#[tracing::instrument(skip_all, fields(namespace = %es.namespace().unwrap_or_default(), name = %es.name_any()))]
pub async fn reconcile(es: Arc<ExternalSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (ns, name) = key_of(&es);
    // A namespace at its cap gives the controller slot back at once (waiting here would hold
    // it): the object is tried again shortly, and other namespaces' objects run meanwhile.
    let Some(_slot) = ctx.namespace_slot(&ns) else {
        tracing::debug!("namespace at its reconcile cap; requeued");
        return Ok(Action::requeue(NAMESPACE_BUSY_RETRY.mul_f64(1.0 + fastrand::f64())));
    };
    let started = Instant::now();
    ctx.metrics.active_reconciliations.inc();
    let live = es.metadata.deletion_timestamp.is_none();
    let api: Api<ExternalSource> = Api::namespaced(ctx.client.clone(), &ns);
    let mut report: Option<(bool, &'static str)> = None;
    let result = match finalizer::step(&api, FINALIZER, es).await.map_err(Error::AddFinalizer) {
        Ok(Step::Apply(es)) => apply(&es, &ctx).await.map(|Report { action, ok, kind }| {
            report = Some((ok, kind));
            action
        }),
        Ok(Step::Cleanup(es)) => {
            async {
                let action = super::cleanup::cleanup(&es, &ctx).await?;
                finalizer::release(&api, FINALIZER, &es).await.map_err(Error::RemoveFinalizer)?;
                Ok(action)
            }
            .await
        }
        Ok(Step::Done) => Ok(Action::await_change()),
        Err(e) => Err(e),
    };
    ctx.metrics.active_reconciliations.dec();
    if let Some(pass) = &ctx.restore {
        pass.attempted(&ns, &name, ctx.storage.as_ref()).await;
    }
    if result.is_ok() {
        ctx.forget_failures(&(ns.clone(), name.clone()));
    }
    // A deleted object's series were dropped by cleanup; do not bring them back.
    if live {
        ctx.metrics.observe_reconcile(&ns, &name, started.elapsed());
        let (ok, kind) = match (&result, report) {
            (Ok(_), Some(report)) => report,
            (Ok(_), None) => (true, "none"),
            (Err(e), _) => (false, e.kind()),
        };
        ctx.metrics.reconciled(ReconcileLabels {
            namespace: ns,
            name,
            result: if ok { "success" } else { "error" }.into(),
            kind: kind.into(),
        });
    }
    result
}

/// Backoff for transient errors: 1 s doubling to 5 min, with jitter; `Retry-After` is honoured.
pub fn error_policy(es: Arc<ExternalSource>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = {
        let mut entry = ctx.failures.entry(key_of(&es)).or_insert(0);
        *entry += 1;
        *entry
    };
    let retry_after = match error {
        Error::Backoff(outcome::Failure { retry: Retry::Backoff { after }, .. }) => *after,
        _ => None,
    };
    let delay = backoff(attempts, retry_after, fastrand::f64());
    tracing::warn!(namespace = %key_of(&es).0, name = %es.name_any(), attempts, delay = ?delay, kind = error.kind(), error = %error, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The delay before attempt `attempts + 1`: 1 s doubling per attempt up to [`MAX_BACKOFF`],
/// jittered by ±10 % (`jitter` in 0..1), never shorter than a requested `Retry-After`.
fn backoff(attempts: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1 << attempts.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    let jittered = base.mul_f64(0.9 + jitter * 0.2).min(MAX_BACKOFF);
    retry_after.map_or(jittered, |r| r.max(jittered).min(MAX_BACKOFF))
}

/// How long a reconcile of a new generation runs before it writes Reconciling=True.
const ANNOUNCE_AFTER: Duration = Duration::from_secs(1);

async fn apply(es: &ExternalSource, ctx: &Context) -> Result<Report, Error> {
    let (ns, _) = key_of(es);
    let generation = es.metadata.generation;
    let old = es.status.clone().unwrap_or_default();
    let mut inputs = StatusInputs {
        generation,
        requested_at: es.annotations().get(REQUESTED_AT).map(String::as_str),
        interval_warning: None,
        previously_published: None,
        retention: ctx.settings.retention,
    };
    if es.spec.suspend.unwrap_or(false) {
        return finish(ctx, es, &old, Outcome::Suspended, inputs, None).await;
    }
    let plan = match Plan::from_spec(&es.spec, &ctx.settings.defaults) {
        Ok(plan) => plan,
        Err(problem) => {
            let stalled = Outcome::Stalled { problem, recheck_at_interval: false };
            return finish(ctx, es, &old, stalled, inputs, None).await;
        }
    };
    let warning = plan.interval_warning();
    inputs.interval_warning = warning.as_deref();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let credentials = match credentials::read(&secrets, &ns, &plan).await? {
        Ok(v) => v,
        Err(problem) => {
            let stalled = Outcome::Stalled { problem, recheck_at_interval: false };
            return finish(ctx, es, &old, stalled, inputs, Some(plan.interval)).await;
        }
    };
    // A new generation is announced (Reconciling=True) when its fetch and store take longer than
    // ANNOUNCE_AFTER; a quicker one goes straight to its final status, one write instead of two.
    // Until then, observedGeneration < generation already tells kstatus it is in progress.
    let progressing = outcome::progressing_status(&old, generation);
    let (outcome, announced) = {
        let work = fetch_and_store(ctx, es, &plan, &old, credentials);
        match &progressing {
            None => (work.await, false),
            Some(announcement) => {
                tokio::pin!(work);
                tokio::select! {
                    outcome = &mut work => (outcome, false),
                    () = tokio::time::sleep(ANNOUNCE_AFTER) => {
                        write_status(ctx, es, &old, announcement).await?;
                        (work.await, true)
                    }
                }
            }
        }
    };
    let old = match progressing {
        Some(announcement) if announced => announcement,
        _ => old,
    };
    finish(ctx, es, &old, outcome, inputs, Some(plan.interval)).await
}

/// The fetch and store steps, ending in an outcome (nothing is written to the API here).
async fn fetch_and_store(
    ctx: &Context,
    es: &ExternalSource,
    plan: &Plan,
    old: &ExternalSourceStatus,
    credentials: Credentials,
) -> Outcome {
    let (ns, name) = key_of(es);
    // One budget of retries for every hook of this reconcile (`spec.maxRetries`).
    let mut retries_left = plan.hooks.max_retries;
    let Credentials { mut headers, tls, proxy, oauth2 } = credentials;
    if !plan.hooks.pre_request.is_empty() {
        let output = match run_hooks(
            ctx,
            &ns,
            &name,
            Phase::PreRequest,
            &plan.hooks.pre_request,
            Bytes::new(),
            &mut retries_left,
        )
        .await
        {
            Ok(output) => output,
            Err(e) => return outcome::hook_failure(&e),
        };
        match chain::parse_headers(&output) {
            // Hook headers win over the headers Secret's: they are the fresher credential.
            Ok(extra) => {
                for (name, value) in extra.iter() {
                    headers.insert(name.clone(), value.clone());
                }
            }
            Err(e) => return Outcome::Failed(outcome::hook_output_failure(&e)),
        }
    }
    let current = match verified_artifact(ctx, old).await {
        Ok(current) => current,
        Err(e) => return Outcome::Failed(outcome::storage_failure(&e)),
    };
    // The recorded ETag describes the published artifact only for the spec that fetched it.
    let same_spec = old.artifact_generation.is_some() && old.artifact_generation == es.metadata.generation;
    let if_none_match = current.as_ref().filter(|_| same_spec).and(old.last_handled_e_tag.clone());
    let sent_if_none_match = if_none_match.is_some();
    let mut request = FetchRequest {
        url: plan.url.clone(),
        method: plan.method.clone(),
        headers,
        tls,
        timeout: plan.timeout,
        max_size: plan.max_size,
        if_none_match,
        proxy,
    };

    // Held until the body and its copies are gone, at the end of this function.
    let unpacked = if matches!(plan.packaging, Packaging::Archive(_)) {
        plan.max_size.saturating_add(UNPACK_WORKSPACE)
    } else {
        0
    };
    let mut memory = ctx.memory.reserve_with(plan.max_size, unpacked).await;
    let started = Instant::now();
    let fetched = match &oauth2 {
        None => ctx.fetcher.fetch(&request, &mut memory).await,
        Some(client) => {
            match oauth2::fetch_with_token(&ctx.fetcher, &ctx.tokens, &ns, client, &mut request, &mut memory).await {
                Ok(fetched) => fetched,
                Err(e) => return client.failure(&e),
            }
        }
    };
    ctx.metrics.observe_source_request(&ns, &name, started.elapsed());
    let request_result = match &fetched {
        Ok(FetchOutcome::NotModified) => "not_modified",
        Ok(_) => "success",
        Err(_) => "error",
    };
    ctx.metrics
        .source_requests
        .get_or_create(&ResultLabels { namespace: ns.clone(), name: name.clone(), result: request_result.into() })
        .inc();

    let recorded_etag = old.last_handled_e_tag.as_deref();
    // Moved out, not cloned: the body is released as soon as it is packaged.
    let (body, etag) = match fetched {
        Ok(FetchOutcome::Fetched { body, etag }) => (body, etag),
        Ok(FetchOutcome::NotModified) => {
            return outcome::after_fetch(current.as_ref(), recorded_etag, sent_if_none_match, Unfetched::NotModified);
        }
        Err(e) => {
            return outcome::after_fetch(current.as_ref(), recorded_etag, sent_if_none_match, Unfetched::Failed(&e));
        }
    };
    let body = if plan.hooks.post_request.is_empty() {
        body
    } else {
        match run_hooks(ctx, &ns, &name, Phase::PostRequest, &plan.hooks.post_request, body, &mut retries_left).await {
            Ok(body) => body,
            Err(e) => return outcome::hook_failure(&e),
        }
    };
    let stored = store(ctx, es, plan, old, body, etag.as_deref(), current).await;
    outcome::after_store(stored, etag.as_deref())
}

/// Runs one list of hooks through the executor, counting each attempt in the metrics.
async fn run_hooks(
    ctx: &Context,
    namespace: &str,
    name: &str,
    phase: Phase,
    hooks: &[super::hooks::spec::Hook],
    input: Bytes,
    retries_left: &mut u32,
) -> Result<Bytes, HookFailure> {
    let Some(client) = &ctx.hooks else {
        // The plan refuses hooks without an executor; this only guards a wiring mistake.
        let error = super::hooks::protocol::CallError::Failed {
            kind: super::hooks::protocol::FailureKind::BadRequest,
            message: "no hook executor is configured (hooks.socket)".into(),
        };
        let hook = hooks.first().map(|h| h.name.clone()).unwrap_or_default();
        return Err(HookFailure { hook, phase, attempts: 0, error });
    };
    let call = |invocation: super::hooks::run::Invocation| {
        let client = client.clone();
        async move { client.call(namespace, &invocation).await }
    };
    let record = |a: chain::Attempt<'_>| ctx.metrics.hook_attempt(namespace, name, &a);
    chain::run_chain(hooks, phase, input, retries_left, call, record).await
}

/// The artifact in the status, if its object is still stored with the recorded digest. A lost or
/// altered object is treated as absent, so it is rebuilt whatever the upstream ETag says.
async fn verified_artifact(ctx: &Context, status: &ExternalSourceStatus) -> Result<Option<Artifact>, StorageError> {
    let Some(artifact) = &status.artifact else { return Ok(None) };
    let Ok(key) = ObjectKey::parse(&artifact.path) else { return Ok(None) };
    match ctx.storage.stat(&key).await {
        Ok(meta) if meta.digest.as_str() == artifact.digest => {
            // The advertised address may have changed since: always publish the current URL.
            Ok(Some(Artifact { url: ctx.storage.url(&key), ..artifact.clone() }))
        }
        Ok(meta) => {
            tracing::warn!(key = %key, stored = %meta.digest, expected = %artifact.digest, "stored artifact does not match its digest; rebuilding");
            Ok(None)
        }
        Err(StorageError::NotFound(_)) => {
            tracing::info!(key = %key, "stored artifact is missing; rebuilding");
            Ok(None)
        }
        Err(e @ StorageError::Corrupt { .. }) => {
            tracing::warn!(key = %key, error = %e, "stored artifact is corrupt; rebuilding");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Transforms, packages and stores a payload, unless the identical artifact is already current.
async fn store(
    ctx: &Context,
    es: &ExternalSource,
    plan: &Plan,
    old: &ExternalSourceStatus,
    body: Bytes,
    etag: Option<&str>,
    current: Option<Artifact>,
) -> Stored {
    let (ns, name) = key_of(es);
    let body = match transformed(ctx, plan, body).await {
        Ok(body) => body,
        Err(e) => return Stored::TransformFailed(e),
    };
    let packaged = match packaged(plan, body).await {
        Ok(packaged) => packaged,
        Err(failed) => return failed,
    };
    if let Some(current) = current.filter(|c| c.digest == packaged.digest.as_str()) {
        // Same bytes: same revision, whatever the ETag says, so consumers see no churn.
        return Stored::Same(current);
    }
    let key = match ObjectKey::artifact(&ns, &name, &packaged.digest) {
        Ok(key) => key,
        Err(e) => return Stored::Failed(e.into()),
    };
    let meta = match put_making_room(ctx, es, old, &key, packaged.bytes, &packaged.digest).await {
        Ok(meta) => meta,
        Err(e) => return Stored::Failed(e),
    };
    let mut metadata = BTreeMap::new();
    metadata.insert(SOURCE_METADATA.to_owned(), redact_url(&plan.url));
    if let Some(etag) = etag {
        metadata.insert(ETAG_METADATA.to_owned(), etag.to_owned());
    }
    Stored::New(Artifact {
        url: ctx.storage.url(&key),
        revision: revision(etag, &meta.digest),
        digest: meta.digest.to_string(),
        path: key.to_string(),
        size: Some(meta.size as i64),
        last_update_time: now(),
        metadata,
    })
}

/// Packages the body as `spec.format` says. The body is moved in, so it is released as soon as
/// it is packaged, before the put.
async fn packaged(plan: &Plan, body: Bytes) -> Result<Package, Stored> {
    match &plan.packaging {
        Packaging::File(path) => package(&body, path).map_err(|e| Stored::PackagingFailed(e.to_string())),
        Packaging::Archive(layout) => {
            let (layout, limits) = (layout.clone(), Limits { max_bytes: plan.max_size, max_entries: MAX_ENTRIES });
            // Unpacking up to maxSize is CPU work: off the reactor.
            match tokio::task::spawn_blocking(move || repackage(&body, &layout, limits)).await {
                Ok(result) => result.map_err(Stored::ArchiveRefused),
                Err(e) => Err(Stored::PackagingFailed(e.to_string())),
            }
        }
    }
}

/// Puts `bytes`; when the store is full, deletes this source's revisions except the published
/// one and tries once more.
async fn put_making_room(
    ctx: &Context,
    es: &ExternalSource,
    old: &ExternalSourceStatus,
    key: &ObjectKey,
    bytes: Bytes,
    digest: &Digest,
) -> Result<ObjectMeta, StorageError> {
    let namespace = es.namespace().unwrap_or_default();
    let put = match within_quota(ctx, &namespace, key, bytes.len() as u64).await {
        Ok(()) => ctx.storage.put(key, bytes.clone(), digest).await,
        Err(e) => Err(e),
    };
    ctx.metrics.operation("put", put.is_ok());
    match put {
        Err(e) if e.class() == FailureClass::OutOfSpace => {
            tracing::info!(key = %key, error = %e, "store or quota is full; deleting this source's unpublished and older revisions");
            if make_room(ctx, es, old, key).await == 0 {
                return Err(e);
            }
            within_quota(ctx, &namespace, key, bytes.len() as u64).await?;
            let put = ctx.storage.put(key, bytes, digest).await;
            ctx.metrics.operation("put", put.is_ok());
            put
        }
        other => other,
    }
}

/// Checks `storage.namespace_quota` for a put of `size` bytes at `key`: what the namespace
/// already stores (the object being replaced aside) plus `size` must fit.
async fn within_quota(ctx: &Context, namespace: &str, key: &ObjectKey, size: u64) -> Result<(), StorageError> {
    let Some(quota) = ctx.settings.namespace_quota else { return Ok(()) };
    let stored = ctx.storage.list(&namespace_dir(namespace)).await?;
    let used: u64 = stored.iter().filter(|o| o.key != *key).map(|o| o.size).sum();
    if used.saturating_add(size) > quota {
        return Err(StorageError::QuotaExceeded {
            namespace: namespace.to_owned(),
            key: key.clone(),
            size,
            used,
            quota,
        });
    }
    Ok(())
}

/// Deletes this source's stored revisions other than the one the ExternalArtifact points at
/// (and the one our status names, normally the same); returns how many went. When the
/// ExternalArtifact cannot be read, nothing is deleted: what is published must stay served.
async fn make_room(ctx: &Context, es: &ExternalSource, old: &ExternalSourceStatus, incoming: &ObjectKey) -> usize {
    let (ns, name) = key_of(es);
    let api: Api<ExternalArtifact> = Api::namespaced(ctx.client.clone(), &ns);
    let published = match api.get_opt(&name).await {
        Ok(ea) => ea.filter(|ea| owned_by(ea, es)).and_then(|ea| ea.status?.artifact.map(|a| a.path)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the ExternalArtifact; not deleting revisions to make room");
            return 0;
        }
    };
    let keep: Vec<&str> =
        published.iter().map(String::as_str).chain(old.artifact.iter().map(|a| a.path.as_str())).collect();
    let objects = match ctx.storage.list(&artifact_dir(&ns, &name)).await {
        Ok(objects) => objects,
        Err(e) => {
            tracing::warn!(error = %e, "listing revisions to make room failed");
            return 0;
        }
    };
    let mut deleted = 0;
    for object in objects.iter().filter(|o| o.key != *incoming && !keep.contains(&o.key.as_str())) {
        let result = ctx.storage.delete(&object.key).await;
        ctx.metrics.operation("delete", result.is_ok());
        match result {
            Ok(()) => {
                deleted += 1;
                tracing::info!(key = %object.key, size = object.size, "deleted a revision to make room");
            }
            Err(e) => tracing::warn!(key = %object.key, error = %e, "deleting a revision to make room failed"),
        }
    }
    deleted
}

pub(super) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The payload after `spec.transform`, run in the sandbox.
async fn transformed(ctx: &Context, plan: &Plan, body: Bytes) -> Result<Bytes, TransformError> {
    let Some(code) = &plan.transform else { return Ok(body) };
    let out = ctx.transforms.run(code, &body, plan.max_size).await?;
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_honours_retry_after() {
        let mid = |attempts| backoff(attempts, None, 0.5);
        assert_eq!(mid(1), Duration::from_secs(1));
        assert_eq!(mid(2), Duration::from_secs(2));
        assert_eq!(mid(5), Duration::from_secs(16));
        assert_eq!(mid(40), MAX_BACKOFF, "capped");
        assert!(
            backoff(1, None, 0.0) >= Duration::from_millis(900) && backoff(1, None, 1.0) <= Duration::from_millis(1100)
        );
        assert_eq!(backoff(1, Some(Duration::from_secs(30)), 0.5), Duration::from_secs(30), "Retry-After is a floor");
        assert_eq!(backoff(1, Some(Duration::from_secs(3600)), 0.5), MAX_BACKOFF, "but capped too");
    }
}
