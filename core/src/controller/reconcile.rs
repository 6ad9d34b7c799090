//! The reconciler: ExternalSource → fetched payload → stored artifact → ExternalArtifact.
//!
//! Order matters for consumers: the artifact is stored before any status points at it, and old
//! revisions are deleted only after the ExternalArtifact points at the new one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::api::{Artifact, ExternalArtifact, ExternalArtifactSpec, ExternalSource, ExternalSourceStatus, SourceRef};
use super::conditions::{self, reason};
use super::fetch::{FetchError, FetchOutcome, FetchRequest, Fetcher, TlsSettings};
use super::metrics::{Metrics, ObjectLabels, ResultLabels};
use super::plan::{self, ConfigProblem, Defaults, Plan};
use super::revision::revision;
use crate::key::{ObjectKey, artifact_dir};
use crate::package::package;
use crate::storage::{Storage, StorageError};

/// The predecessor's finalizer name, kept so objects move between the two controllers.
pub const FINALIZER: &str = "source.flux.oddkin.co/externalsource-finalizer";
/// Flux's "reconcile now" annotation.
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
/// Metadata key of the upstream ETag in artifacts.
pub const ETAG_METADATA: &str = "etag";
/// Metadata key of the fetched URL (OCI convention Flux tooling shows).
pub const SOURCE_METADATA: &str = "org.opencontainers.image.source";

/// Longest backoff after repeated transient errors.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Everything a reconcile needs.
pub struct Context {
    pub client: kube::Client,
    pub storage: Arc<dyn Storage>,
    pub fetcher: Fetcher,
    pub defaults: Defaults,
    /// Revisions kept per source (current included).
    pub retention: usize,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive transient failures per object, for exponential backoff.
    failures: DashMap<(String, String), u32>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        storage: Arc<dyn Storage>,
        fetcher: Fetcher,
        defaults: Defaults,
        retention: usize,
        recorder: Recorder,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            storage,
            fetcher,
            defaults,
            retention: retention.max(1),
            recorder,
            metrics,
            failures: DashMap::new(),
        }
    }
}

/// Reconcile failures that are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("packaging failed: {0}")]
    Package(#[source] std::io::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// The innermost reconcile error (unwrapping the finalizer's wrapper).
    fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner.inner(),
                _ => self,
            },
            other => other,
        }
    }

    /// A short label for metrics and events.
    pub fn kind(&self) -> &'static str {
        match self.inner() {
            Error::Kube(_) => "kube",
            Error::Fetch(_) => "fetch",
            Error::Storage(e) => e.kind(),
            Error::Package(_) => "package",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

fn key_of(es: &ExternalSource) -> (String, String) {
    (es.namespace().unwrap_or_default(), es.name_any())
}

/// Entry point for the kube-runtime `Controller`.
#[tracing::instrument(skip_all, fields(namespace = %es.namespace().unwrap_or_default(), name = %es.name_any()))]
pub async fn reconcile(es: Arc<ExternalSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (ns, name) = key_of(&es);
    let started = Instant::now();
    ctx.metrics.active_reconciliations.inc();
    let live = es.metadata.deletion_timestamp.is_none();
    let api: Api<ExternalSource> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, es, |event| async {
        match event {
            finalizer::Event::Apply(es) => apply(&es, &ctx).await,
            finalizer::Event::Cleanup(es) => cleanup(&es, &ctx).await,
        }
    })
    .await;
    let result = match result {
        // The object was already gone when the finalizer was released (a stale queue entry after
        // cleanup ran): deletion is complete, not failed.
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(s))) if s.code == 404 => Ok(Action::await_change()),
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    ctx.metrics.active_reconciliations.dec();
    let labels = ObjectLabels { namespace: ns.clone(), name: name.clone() };
    if result.is_ok() {
        ctx.failures.remove(&(ns.clone(), name.clone()));
    }
    // A deleted object's series were dropped by cleanup; do not bring them back.
    if live {
        ctx.metrics.reconcile_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "success" } else { "error" };
        ctx.metrics.reconciliations.get_or_create(&ResultLabels { namespace: ns, name, result: outcome.into() }).inc();
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
    let base = Duration::from_secs(1).saturating_mul(1 << attempts.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    let jittered = base.mul_f64(0.9 + fastrand::f64() * 0.2).min(MAX_BACKOFF);
    let retry_after = match error.inner() {
        Error::Fetch(e) => e.retry_after(),
        _ => None,
    };
    let delay = retry_after.map_or(jittered, |r| r.max(jittered).min(MAX_BACKOFF));
    tracing::warn!(namespace = %key_of(&es).0, name = %es.name_any(), attempts, delay = ?delay, kind = error.kind(), error = %error, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Requeue at the interval with up to 5 % jitter, so sources created together spread out.
fn at_interval(interval: Duration) -> Action {
    Action::requeue(interval.mul_f64(1.0 + fastrand::f64() * 0.05))
}

/// The outcome of the fetch-and-store step.
enum Stored {
    /// A new artifact was stored (a new revision).
    New(Artifact),
    /// The current artifact still holds (304, or identical content).
    Unchanged(Artifact),
}

async fn apply(es: &ExternalSource, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = key_of(es);
    let generation = es.metadata.generation;
    let old = es.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.last_handled_reconcile_at =
        es.annotations().get(REQUESTED_AT).cloned().or(old.last_handled_reconcile_at.clone());

    if es.spec.suspend.unwrap_or(false) {
        conditions::set(
            &mut status.conditions,
            conditions::READY,
            false,
            reason::SUSPENDED,
            "reconciliation is suspended; the last artifact stays published",
            generation,
        );
        conditions::remove(&mut status.conditions, conditions::RECONCILING);
        conditions::remove(&mut status.conditions, conditions::STALLED);
        status.observed_generation = generation;
        write_status(ctx, es, &old, status).await?;
        return Ok(Action::await_change());
    }

    let plan = match Plan::from_spec(&es.spec, &ctx.defaults) {
        Ok(plan) => plan,
        Err(problem) => return stall(ctx, es, old, status, problem).await,
    };
    let (headers, tls) = match read_secrets(ctx, &ns, &plan).await? {
        Ok(v) => v,
        Err(problem) => return stall(ctx, es, old, status, problem).await,
    };
    match plan.interval_warning() {
        Some(w) => conditions::set(
            &mut status.conditions,
            conditions::INTERVAL_RAISED,
            true,
            reason::BELOW_MINIMUM,
            &w,
            generation,
        ),
        None => conditions::remove(&mut status.conditions, conditions::INTERVAL_RAISED),
    }

    let current = match verified_artifact(ctx, &old).await {
        Ok(current) => current,
        Err(e) => return fail(ctx, es, old, status, reason::STORAGE_FAILED, Error::Storage(e)).await,
    };
    let spec_unchanged = old.observed_generation.is_some() && old.observed_generation == generation;
    let if_none_match = current.as_ref().filter(|_| spec_unchanged).and(old.last_handled_e_tag.clone());
    let request = FetchRequest {
        url: plan.url.clone(),
        method: plan.method.clone(),
        headers,
        tls,
        timeout: plan.timeout,
        max_size: plan.max_size,
        if_none_match,
    };

    let labels = ObjectLabels { namespace: ns.clone(), name: name.clone() };
    let started = Instant::now();
    let fetched = ctx.fetcher.fetch(&request).await;
    ctx.metrics.source_request_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let request_result = match &fetched {
        Ok(FetchOutcome::NotModified) => "not_modified",
        Ok(_) => "success",
        Err(_) => "error",
    };
    ctx.metrics
        .source_requests
        .get_or_create(&ResultLabels { namespace: ns.clone(), name: name.clone(), result: request_result.into() })
        .inc();

    let stored = match fetched {
        Ok(FetchOutcome::NotModified) => match current {
            Some(artifact) => Stored::Unchanged(artifact),
            // The stored artifact vanished between the check and the answer: fetch it whole next time.
            None => return Ok(Action::requeue(Duration::from_secs(1))),
        },
        Ok(FetchOutcome::Fetched { body, etag }) => {
            status.last_handled_e_tag = etag.clone();
            let body = match transformed(&plan, body).await {
                Ok(body) => body,
                Err(message) => {
                    return fail_until_interval(
                        ctx,
                        es,
                        old,
                        status,
                        reason::TRANSFORM_FAILED,
                        &message,
                        plan.interval,
                    )
                    .await;
                }
            };
            match store(ctx, es, &plan, &body, etag.as_deref(), current).await {
                Ok(stored) => stored,
                Err(e) => return fail(ctx, es, old, status, reason::STORAGE_FAILED, e).await,
            }
        }
        Err(e) if e.is_permanent() => {
            let message = format!("fetch failed: {e}");
            return fail_until_interval(ctx, es, old, status, reason::FETCH_FAILED, &message, plan.interval).await;
        }
        Err(e) => return fail(ctx, es, old, status, reason::FETCH_FAILED, Error::Fetch(e)).await,
    };

    let (artifact, is_new) = match stored {
        Stored::New(a) => (a, true),
        Stored::Unchanged(a) => (a, false),
    };
    let message = format!("stored artifact for revision '{}'", artifact.revision);
    if let Err(problem) = publish(ctx, es, &artifact, &message).await? {
        return stall_on_interval(ctx, es, old, status, problem, plan.interval).await;
    }
    ctx.metrics.storage_bytes.get_or_create(&labels).set(artifact.size);
    conditions::set(&mut status.conditions, conditions::READY, true, reason::SUCCEEDED, &message, generation);
    for c in [conditions::RECONCILING, conditions::STALLED, conditions::FETCHING, conditions::STORING] {
        conditions::remove(&mut status.conditions, c);
    }
    status.artifact = Some(artifact.clone());
    status.observed_generation = generation;
    write_status(ctx, es, &old, status).await?;
    collect_garbage(ctx, &ns, &name, &artifact.path).await;
    if is_new {
        event(ctx, es, EventType::Normal, "NewArtifact", &message).await;
    }
    Ok(at_interval(plan.interval))
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
        Err(e) => Err(e),
    }
}

/// Packages and stores a payload, unless the identical artifact is already current.
async fn store(
    ctx: &Context,
    es: &ExternalSource,
    plan: &Plan,
    body: &[u8],
    etag: Option<&str>,
    current: Option<Artifact>,
) -> Result<Stored, Error> {
    let (ns, name) = key_of(es);
    let packaged = package(body, &plan.destination).map_err(Error::Package)?;
    if let Some(current) = current.filter(|c| c.digest == packaged.digest.as_str()) {
        // Same bytes: same revision, whatever the ETag says, so consumers see no churn.
        return Ok(Stored::Unchanged(current));
    }
    let key = ObjectKey::artifact(&ns, &name, &packaged.digest).map_err(StorageError::from)?;
    let put = ctx.storage.put(&key, packaged.bytes).await;
    ctx.metrics.operation("put", put.is_ok());
    let meta = put?;
    let mut metadata = BTreeMap::new();
    metadata.insert(SOURCE_METADATA.to_owned(), plan.url.to_string());
    if let Some(etag) = etag {
        metadata.insert(ETAG_METADATA.to_owned(), etag.to_owned());
    }
    Ok(Stored::New(Artifact {
        url: ctx.storage.url(&key),
        revision: revision(etag, &meta.digest),
        digest: meta.digest.to_string(),
        path: key.to_string(),
        size: meta.size as i64,
        last_update_time: now(),
        metadata,
    }))
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Reads the headers Secret and CA bundle. `Ok(Err(_))` is a configuration problem.
async fn read_secrets(
    ctx: &Context,
    ns: &str,
    plan: &Plan,
) -> Result<Result<(reqwest::header::HeaderMap, TlsSettings), ConfigProblem>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let missing = |what: String| ConfigProblem { reason: reason::SECRET_NOT_FOUND, message: what };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(name) = &plan.headers_secret {
        match secrets.get_opt(name).await? {
            None => {
                return Ok(Err(missing(format!(
                    "spec.generator.http.headersSecretRef: Secret {name:?} not found in namespace {ns:?}"
                ))));
            }
            Some(secret) => match plan::headers_from_secret(name, &secret.data.unwrap_or_default()) {
                Ok(h) => headers = h,
                Err(problem) => return Ok(Err(problem)),
            },
        }
    }
    let mut tls = TlsSettings { ca_bundle: None, insecure_skip_verify: plan.insecure_skip_verify };
    if let Some((name, key)) = &plan.ca_bundle {
        let Some(secret) = secrets.get_opt(name).await? else {
            return Ok(Err(missing(format!(
                "spec.generator.http.caBundleSecretRef: Secret {name:?} not found in namespace {ns:?}"
            ))));
        };
        match secret.data.unwrap_or_default().remove(key) {
            Some(pem) => tls.ca_bundle = Some(pem.0),
            None => {
                return Ok(Err(missing(format!(
                    "spec.generator.http.caBundleSecretRef: Secret {name:?} has no key {key:?}"
                ))));
            }
        }
    }
    Ok(Ok((headers, tls)))
}

/// A configuration problem: Ready=False and Stalled=True; no retry until the spec or a Secret changes.
async fn stall(
    ctx: &Context,
    es: &ExternalSource,
    old: ExternalSourceStatus,
    mut status: ExternalSourceStatus,
    problem: ConfigProblem,
) -> Result<Action, Error> {
    let generation = es.metadata.generation;
    conditions::set(&mut status.conditions, conditions::READY, false, problem.reason, &problem.message, generation);
    conditions::set(&mut status.conditions, conditions::STALLED, true, problem.reason, &problem.message, generation);
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    status.observed_generation = generation;
    let changed = write_status(ctx, es, &old, status).await?;
    if changed {
        event(ctx, es, EventType::Warning, problem.reason, &problem.message).await;
    }
    Ok(Action::await_change())
}

/// Like [`stall`], but checked again at the interval (a conflict another party may resolve).
async fn stall_on_interval(
    ctx: &Context,
    es: &ExternalSource,
    old: ExternalSourceStatus,
    status: ExternalSourceStatus,
    problem: ConfigProblem,
    interval: Duration,
) -> Result<Action, Error> {
    stall(ctx, es, old, status, problem).await?;
    Ok(at_interval(interval))
}

/// A transient failure: Ready=False with the last good artifact kept, then backoff.
async fn fail(
    ctx: &Context,
    es: &ExternalSource,
    old: ExternalSourceStatus,
    mut status: ExternalSourceStatus,
    why: &str,
    error: Error,
) -> Result<Action, Error> {
    let generation = es.metadata.generation;
    let message = format!("{error}; retrying with backoff");
    publish_failure(ctx, es, why, &message).await?;
    conditions::set(&mut status.conditions, conditions::READY, false, why, &message, generation);
    conditions::set(&mut status.conditions, conditions::RECONCILING, true, reason::RETRYING, &message, generation);
    conditions::remove(&mut status.conditions, conditions::STALLED);
    if write_status(ctx, es, &old, status).await? {
        event(ctx, es, EventType::Warning, why, &message).await;
    }
    Err(error)
}

/// A failure that retrying soon will not fix (HTTP 4xx, a transform error): Ready=False with the
/// last good artifact kept, and the next attempt at the interval.
async fn fail_until_interval(
    ctx: &Context,
    es: &ExternalSource,
    old: ExternalSourceStatus,
    mut status: ExternalSourceStatus,
    why: &str,
    message: &str,
    interval: Duration,
) -> Result<Action, Error> {
    let generation = es.metadata.generation;
    let message = format!("{message}; retrying at the next interval");
    publish_failure(ctx, es, why, &message).await?;
    conditions::set(&mut status.conditions, conditions::READY, false, why, &message, generation);
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    conditions::remove(&mut status.conditions, conditions::STALLED);
    status.observed_generation = generation;
    if write_status(ctx, es, &old, status).await? {
        event(ctx, es, EventType::Warning, why, &message).await;
    }
    Ok(at_interval(interval))
}

/// The payload after `spec.transform`, run off the async threads within the fetch budget.
async fn transformed(plan: &Plan, body: bytes::Bytes) -> Result<bytes::Bytes, String> {
    let Some(transform) = plan.transform.clone() else { return Ok(body) };
    let (max_size, budget) = (plan.max_size, plan.timeout);
    match tokio::task::spawn_blocking(move || transform.apply(&body, max_size, budget)).await {
        Ok(Ok(out)) => Ok(out.into()),
        Ok(Err(e)) => Err(format!("spec.transform.jq {e}")),
        Err(e) => Err(format!("spec.transform.jq panicked: {e}")),
    }
}

/// Writes the status if it changed; returns whether it did.
async fn write_status(
    ctx: &Context,
    es: &ExternalSource,
    old: &ExternalSourceStatus,
    status: ExternalSourceStatus,
) -> Result<bool, Error> {
    if *old == status {
        return Ok(false);
    }
    let (ns, name) = key_of(es);
    let api: Api<ExternalSource> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
    Ok(true)
}

fn owner_reference(es: &ExternalSource) -> Option<OwnerReference> {
    es.controller_owner_ref(&())
}

/// Whether `ea` is controlled by `es`.
fn owned_by(ea: &ExternalArtifact, es: &ExternalSource) -> bool {
    let uid = es.uid();
    ea.owner_references().iter().any(|r| r.controller == Some(true) && Some(&r.uid) == uid.as_ref())
}

fn conflict(ns: &str, name: &str) -> ConfigProblem {
    ConfigProblem {
        reason: reason::ARTIFACT_CONFLICT,
        message: format!(
            "ExternalArtifact {ns}/{name} exists and is not owned by this ExternalSource; it was left untouched (delete it or rename the source)"
        ),
    }
}

/// Creates or updates the ExternalArtifact so it points at `artifact`, Ready=True.
async fn publish(
    ctx: &Context,
    es: &ExternalSource,
    artifact: &Artifact,
    message: &str,
) -> Result<Result<(), ConfigProblem>, Error> {
    let (ns, name) = key_of(es);
    let api: Api<ExternalArtifact> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = match api.get_opt(&name).await? {
        Some(ea) if !owned_by(&ea, es) => return Ok(Err(conflict(&ns, &name))),
        Some(ea) => ea,
        None => {
            let mut ea = ExternalArtifact::new(
                &name,
                ExternalArtifactSpec {
                    source_ref: Some(SourceRef {
                        api_version: super::api::API_VERSION.into(),
                        kind: "ExternalSource".into(),
                        name: name.clone(),
                        namespace: ns.clone(),
                    }),
                },
            );
            ea.metadata.namespace = Some(ns.clone());
            ea.metadata.owner_references = owner_reference(es).map(|r| vec![r]);
            ea.metadata.labels =
                Some([("app.kubernetes.io/managed-by".to_owned(), "externalsource-controller".to_owned())].into());
            api.create(&PostParams::default(), &ea).await?
        }
    };
    let old = existing.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.artifact = Some(artifact.clone());
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        true,
        reason::SUCCEEDED,
        message,
        existing.metadata.generation,
    );
    if status != old {
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
    }
    Ok(Ok(()))
}

/// Marks an owned ExternalArtifact Ready=False while keeping its last good artifact.
async fn publish_failure(ctx: &Context, es: &ExternalSource, why: &str, message: &str) -> Result<(), Error> {
    let (ns, name) = key_of(es);
    let api: Api<ExternalArtifact> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(existing) = api.get_opt(&name).await? else { return Ok(()) };
    if !owned_by(&existing, es) {
        return Ok(());
    }
    let old = existing.status.clone().unwrap_or_default();
    let mut status = old.clone();
    conditions::set(&mut status.conditions, conditions::READY, false, why, message, existing.metadata.generation);
    if status != old {
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
    }
    Ok(())
}

/// Deletes revisions beyond retention; the current one is always kept. Failures are logged only:
/// a leftover revision costs space, not correctness, and is collected on the next reconcile.
async fn collect_garbage(ctx: &Context, ns: &str, name: &str, current: &str) {
    let mut objects = match ctx.storage.list(&artifact_dir(ns, name)).await {
        Ok(objects) => objects,
        Err(e) => {
            tracing::warn!(error = %e, "listing revisions for garbage collection failed");
            return;
        }
    };
    objects.retain(|o| o.key.as_str() != current);
    objects.sort_by(|a, b| b.last_modified.cmp(&a.last_modified).then_with(|| b.key.cmp(&a.key)));
    for old in objects.into_iter().skip(ctx.retention - 1) {
        let deleted = ctx.storage.delete(&old.key).await;
        ctx.metrics.operation("delete", deleted.is_ok());
        match deleted {
            Ok(()) => tracing::info!(key = %old.key, "deleted revision beyond retention"),
            Err(e) => tracing::warn!(key = %old.key, error = %e, "deleting an old revision failed"),
        }
    }
}

/// Finalizer cleanup: stored revisions and the owned ExternalArtifact go, then the finalizer.
async fn cleanup(es: &ExternalSource, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = key_of(es);
    for object in ctx.storage.list(&artifact_dir(&ns, &name)).await? {
        let deleted = ctx.storage.delete(&object.key).await;
        ctx.metrics.operation("delete", deleted.is_ok());
        deleted?;
    }
    let api: Api<ExternalArtifact> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(ea) = api.get_opt(&name).await?
        && owned_by(&ea, es)
    {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.metrics.forget(&ns, &name);
    ctx.failures.remove(&(ns.clone(), name.clone()));
    tracing::info!(namespace = %ns, name = %name, "deleted stored artifacts and ExternalArtifact");
    Ok(Action::await_change())
}

/// Records an Event; failures to record are logged, never fatal.
async fn event(ctx: &Context, es: &ExternalSource, type_: EventType, reason: &str, note: &str) {
    let ev = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &es.object_ref(&())).await {
        tracing::debug!(error = %e, "recording an event failed");
    }
}
