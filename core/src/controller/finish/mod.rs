//! The single writer of a reconcile's results: the ExternalArtifact status, then the
//! ExternalSource status, then the Event, all from one [`Outcome`].
//!
//! Order is what keeps the statuses honest: the ExternalArtifact is pointed at a new artifact
//! first, and only if that succeeded does the ExternalSource record it (with its ETag and
//! generation); old revisions are deleted last. A failure at any step leaves every earlier write
//! true: the worst case is an ExternalArtifact ahead of our own status, which the next
//! reconcile reads back (see [`outcome::next_status`]).

pub mod event;
mod garbage;

use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use self::event::event;
use self::garbage::collect_garbage;
use crate::controller::api::{ExternalSource, ExternalSourceStatus, REQUESTED_AT};
use crate::controller::conditions::Reason;
use crate::controller::context::Context;
use crate::controller::outcome::{self, Outcome, Retry, StatusInputs};
use crate::controller::publish::{Publication, publish};
use crate::controller::reconcile::error::Error;
use crate::controller::reconcile::scope::Scope;
use crate::controller::runtime::metrics::ObjectLabels;
use crate::controller::writer::patch_status;

/// What a finished reconcile tells the controller runtime and the metrics.
pub struct Report {
    /// When the source is reconciled next.
    pub action: Action,
    /// What was written: the steps' outcome, or a conflict found while publishing it.
    pub outcome: Outcome,
}

/// What the plan says of the schedule, when the spec got that far.
#[derive(Debug, Default)]
pub struct Schedule {
    /// `spec.interval` as planned (raised to the minimum).
    pub interval: Option<Duration>,
    /// The `IntervalRaised` message, when it was raised.
    pub interval_warning: Option<String>,
    /// `status.webhookPath` when the reconcile got far enough to derive it (`Some(None)`: the
    /// source has no receiver); `None` keeps the one recorded.
    pub webhook_path: Option<Option<String>>,
}

/// Writes `outcome`: ExternalArtifact, ExternalSource status, garbage collection, Event; and
/// decides when the source is reconciled next.
pub async fn finish(ctx: &Context, scope: &Scope<'_>, outcome: Outcome, schedule: &Schedule) -> Result<Report, Error> {
    let old = &scope.status;
    let (outcome, previous) = match publish(scope, ctx, &outcome).await? {
        Publication::Written { previous } => (outcome, previous),
        Publication::Untouched => (outcome, None),
        Publication::Conflict(problem) => (Outcome::Stalled { problem, recheck_at_interval: true }, None),
    };
    let inputs = StatusInputs {
        generation: scope.generation(),
        requested_at: scope.source.annotations().get(REQUESTED_AT).map(String::as_str),
        interval_warning: schedule.interval_warning.as_deref(),
        previously_published: previous.as_deref(),
        retention: ctx.settings.retention,
        webhook_path: schedule.webhook_path.as_ref().map(Option::as_deref),
    };
    let status = outcome::next_status(old, &outcome, &inputs);
    let changed = write_status(ctx, scope, old, &status).await?;

    if let Outcome::Ready { artifact, new, .. } = &outcome {
        let labels = ObjectLabels { namespace: scope.namespace.clone(), name: scope.name.clone() };
        ctx.metrics.storage_bytes.get_or_create(&labels).set(artifact.size.unwrap_or_default());
        collect_garbage(ctx, &scope.namespace, &scope.name, old, &status).await;
        // A put repeated after a lost status write is not news.
        if *new && previous.as_deref() != Some(artifact.path.as_str()) {
            let revision = Some(artifact.revision.as_str());
            event(ctx, scope, EventType::Normal, Reason::NewArtifact, &outcome.message(), revision).await;
        }
    } else if changed && !matches!(outcome, Outcome::Suspended) {
        event(ctx, scope, EventType::Warning, outcome.reason(), &outcome.message(), None).await;
    }
    let action = next_reconcile(ctx, scope, &outcome, schedule.interval);
    Ok(Report { action, outcome })
}

/// When the source is reconciled next: at the interval, on a change only, or after a backoff
/// that grows with each transient failure in a row (which any other outcome resets).
fn next_reconcile(ctx: &Context, scope: &Scope<'_>, outcome: &Outcome, interval: Option<Duration>) -> Action {
    let (ns, name) = (&scope.namespace, &scope.name);
    if let Outcome::Failed(failure @ outcome::Failure { retry: Retry::Backoff { after }, .. }) = outcome {
        let (delay, attempts) = ctx.backoff.failed(ns, name, *after);
        tracing::warn!(namespace = %ns, name = %name, attempts, delay = ?delay, kind = failure.kind, error = %failure.message, "reconcile failed; retrying");
        return Action::requeue(delay);
    }
    ctx.backoff.forget(ns, name);
    let next_interval = || interval.map_or_else(Action::await_change, at_interval);
    match outcome {
        Outcome::Suspended | Outcome::Stalled { recheck_at_interval: false, .. } => Action::await_change(),
        Outcome::Ready { .. } | Outcome::Stalled { recheck_at_interval: true, .. } | Outcome::Failed(_) => {
            next_interval()
        }
    }
}

/// Requeue at the interval with up to 5 % jitter, so sources created together spread out.
fn at_interval(interval: Duration) -> Action {
    Action::requeue(interval.mul_f64(1.0 + fastrand::f64() * 0.05))
}

/// Writes the ExternalSource status if it changed; returns whether it did.
pub async fn write_status(
    ctx: &Context,
    scope: &Scope<'_>,
    old: &ExternalSourceStatus,
    status: &ExternalSourceStatus,
) -> Result<bool, Error> {
    let api: Api<ExternalSource> = Api::namespaced(ctx.client.clone(), &scope.namespace);
    Ok(patch_status(&api, &scope.name, old, status, None).await?.is_some())
}
