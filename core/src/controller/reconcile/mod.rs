//! The reconciler: ExternalSource → fetched payload → stored artifact → ExternalArtifact.
//!
//! `apply` is the list of steps, each in its own module and each either handing its result to
//! the next or ending the reconcile with an [`Outcome`]: [`plan`], [`receiver`] (the webhook path),
//! [`credentials`] (and the JSON Schema of [`validate`]), `hooks` (before the request), `current`,
//! `fetch`, `hooks` (after it), [`validate`], `transform`, `package` and `store`. Whatever the
//! outcome, it goes to [`finish`], the only writer of both statuses and of the Event, which also
//! decides when the source is reconciled next. The decisions between the steps are the pure
//! functions of [`outcome`](crate::controller::outcome).

mod announce;
pub mod backoff;
pub mod bearer;
mod cleanup;
pub mod credentials;
mod current;
pub mod error;
mod fetch;
pub mod finalizer;
mod hooks;
mod labels;
pub mod oauth2;
mod package;
pub mod pages;
pub mod plan;
pub mod problem;
pub mod receiver;
pub mod scope;
mod secret_data;
mod store;
mod transform;
pub mod validate;
pub mod workload_identity;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use self::error::Stop;
use self::finalizer::Step;
use self::labels::{Ended, labels};
use self::plan::Plan;
use self::scope::Scope;
use crate::controller::api::{ExternalSource, FINALIZER};
use crate::controller::context::Context;
use crate::controller::finish::{Report, Schedule, finish};
use crate::controller::outcome::Outcome;
use crate::controller::runtime::metrics::ReconcileLabels;

pub use self::error::Error;

/// How soon an object whose namespace was at its reconcile cap is tried again (up to twice that,
/// jittered).
const NAMESPACE_BUSY_RETRY: Duration = Duration::from_millis(500);

/// Entry point for the kube-runtime `Controller`.
#[tracing::instrument(skip_all, fields(namespace = %es.namespace().unwrap_or_default(), name = %es.name_any()))]
pub async fn reconcile(es: Arc<ExternalSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (ns, name) = (es.namespace().unwrap_or_default(), es.name_any());
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
    let result = match finalizer::step(&api, FINALIZER, es).await.map_err(Error::AddFinalizer) {
        Ok(Step::Apply(es)) => apply(&mut Scope::of(&es), &ctx).await.map(Some),
        Ok(Step::Cleanup(es)) => async {
            cleanup::cleanup(&Scope::of(&es), &ctx).await?;
            finalizer::release(&api, FINALIZER, &es).await.map_err(Error::RemoveFinalizer)
        }
        .await
        .map(|()| None),
        Ok(Step::Done) => Ok(None),
        Err(e) => Err(e),
    };
    ctx.metrics.active_reconciliations.dec();
    if let Some(pass) = &ctx.restore {
        pass.attempted(&ns, &name, ctx.storage.as_ref()).await;
    }
    // After an outcome, `finish` has counted (or forgotten) the failure already.
    if let Ok(None) = result {
        ctx.backoff.forget(&ns, &name);
    }
    // A deleted object's series were dropped by cleanup; do not bring them back.
    if live {
        ctx.metrics.observe_reconcile(&ns, &name, started.elapsed());
        let (result, kind) = labels(match &result {
            Ok(Some(report)) => Ended::Concluded(&report.outcome),
            Ok(None) => Ended::Nothing,
            Err(e) => Ended::Aborted(e),
        });
        ctx.metrics.reconciled(ReconcileLabels { namespace: ns, name, result: result.into(), kind: kind.into() });
    }
    result.map(|report| report.map_or_else(Action::await_change, |r| r.action))
}

/// Backoff for the errors that left no outcome to write (see [`backoff`]).
pub fn error_policy(es: Arc<ExternalSource>, error: &Error, ctx: Arc<Context>) -> Action {
    let (ns, name) = (es.namespace().unwrap_or_default(), es.name_any());
    let (delay, attempts) = ctx.backoff.failed(&ns, &name, None);
    let (_, kind) = labels(Ended::Aborted(error));
    tracing::warn!(namespace = %ns, name = %name, attempts, delay = ?delay, kind, error = %error, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The reconcile of a live source: its steps, then [`finish`] with whatever they concluded.
async fn apply(scope: &mut Scope<'_>, ctx: &Context) -> Result<Report, Error> {
    let mut schedule = Schedule::default();
    let outcome = match steps(scope, ctx, &mut schedule).await {
        Ok(outcome) | Err(Stop::Conclude(outcome)) => outcome,
        Err(Stop::Abort(e)) => return Err(e),
    };
    finish(ctx, scope, outcome, &schedule).await
}

/// The steps up to the fetch, then the fetch to the store under [`announce`].
async fn steps(scope: &mut Scope<'_>, ctx: &Context, schedule: &mut Schedule) -> Result<Outcome, Stop> {
    plan::unless_suspended(scope)?;
    let plan = plan::plan(scope, &ctx.settings.defaults)?;
    *schedule =
        Schedule { interval: Some(plan.interval), interval_warning: plan.interval_warning(), ..Schedule::default() };
    schedule.webhook_path = Some(receiver::webhook_path_for(scope, ctx, &plan).await?);
    let credentials = credentials::read_for(scope, ctx, &plan).await?;
    let schema = validate::read_for(scope, ctx, &plan).await?;
    let fetched_to_stored = fetch_to_store(scope, ctx, &plan, credentials, schema.as_deref());
    let (outcome, announced) = announce::if_slow(scope, ctx, fetched_to_stored).await?;
    if let Some(status) = announced {
        scope.status = status;
    }
    Ok(outcome)
}

/// From the fetch to the store: nothing is written to the API here, so a quick reconcile makes
/// one status write, not two.
async fn fetch_to_store(
    scope: &Scope<'_>,
    ctx: &Context,
    plan: &Plan,
    mut credentials: credentials::Credentials,
    schema: Option<&str>,
) -> Outcome {
    let steps = async {
        // One budget of retries for every hook of this reconcile (`spec.maxRetries`).
        let mut retries_left = plan.hooks.max_retries;
        credentials.headers = hooks::pre_request(scope, ctx, plan, credentials.headers, &mut retries_left).await?;
        let current = current::verified(scope, ctx).await?;
        let fetched = fetch::fetch(scope, ctx, plan, credentials, current.as_ref()).await?;
        // Held until the body and its copies are gone, at the end of these steps.
        let _memory = fetched.memory;
        let body = hooks::post_request(scope, ctx, plan, fetched.body, &mut retries_left).await?;
        validate::validate(ctx, &plan.validation, schema, &body, fetched.content_type.as_deref()).await?;
        let body = transform::transform(ctx, plan, body).await?;
        let packaged = package::package(plan, body).await?;
        Ok::<_, Outcome>(store::store(scope, ctx, plan, packaged, fetched.etag.as_deref(), current).await)
    };
    steps.await.unwrap_or_else(|outcome| outcome)
}
