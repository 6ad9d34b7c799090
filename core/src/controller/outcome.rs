//! What a reconcile concluded, and the pure decisions that get there.
//!
//! The reconciler runs its steps (plan, fetch, transform, store) and hands what they returned to
//! [`after_fetch`] (an answer without a body) or [`after_store`]; the resulting [`Outcome`] is the only input of the single
//! writer (`finish`), which turns it into both statuses with [`next_status`] and
//! [`next_artifact_status`]. The fields that describe what is stored (`artifact`,
//! `lastHandledETag`, `artifactGeneration`, `publishedPaths`) are written in exactly one arm,
//! [`Outcome::Ready`], which `finish` only keeps after the ExternalArtifact points at the
//! artifact; every other outcome carries them over unchanged. Nothing here touches the network.

use std::time::Duration;

use crate::controller::api::{Artifact, ExternalArtifactStatus, ExternalSourceStatus};
use crate::controller::conditions::{self, Reason};
use crate::controller::reconcile::problem::ConfigProblem;
use crate::controller::reconcile::validate::rules::Rejection;
use crate::controller::upstream::client::FetchError;
use crate::isolated::transform::TransformError;
use crate::package::archive::ArchiveError;
use crate::storage::{FailureClass, ObjectSummary, StorageError};

/// When a failed reconcile is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Soon, with exponential backoff (at least `after` when the upstream asked for it).
    Backoff { after: Option<Duration> },
    /// At the next interval: retrying sooner would give the same answer.
    AtInterval,
}

/// A failure worth reporting: the condition reason, the metric kind, the message and the retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub kind: &'static str,
    pub message: String,
    pub retry: Retry,
}

/// Everything a reconcile can conclude.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `artifact` is stored; once published it is the source's artifact.
    Ready {
        artifact: Artifact,
        /// The upstream ETag that answered with this content (or confirmed it with a 304).
        etag: Option<String>,
        /// A revision the source did not publish before.
        new: bool,
    },
    /// `spec.suspend`: nothing is fetched, the last artifact stays published.
    Suspended,
    /// A problem retrying cannot fix; checked again on a spec or Secret change, or also at the
    /// interval when `recheck_at_interval` (a conflict another party may resolve).
    Stalled { problem: ConfigProblem, recheck_at_interval: bool },
    /// Not ready this time; the last good artifact stays published.
    Failed(Failure),
}

impl Outcome {
    /// The reason of the Ready condition.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Ready { .. } => Reason::Succeeded,
            Self::Suspended => Reason::Suspended,
            Self::Stalled { problem, .. } => problem.reason,
            Self::Failed(f) => f.reason,
        }
    }

    /// The message of the Ready condition.
    pub fn message(&self) -> String {
        match self {
            Self::Ready { artifact, .. } => format!("stored artifact for revision '{}'", artifact.revision),
            Self::Suspended => "reconciliation is suspended; the last artifact stays published".to_owned(),
            Self::Stalled { problem, .. } => problem.message.clone(),
            Self::Failed(f) => match f.retry {
                Retry::Backoff { .. } => format!("{}; retrying with backoff", f.message),
                Retry::AtInterval => format!("{}; retrying at the next interval", f.message),
            },
        }
    }
}

/// An upstream answer that did not bring a body to store.
#[derive(Debug)]
pub enum Unfetched<'a> {
    NotModified,
    Failed(&'a FetchError),
}

/// Decides what an answer without a body means. `current` is the stored artifact as verified
/// against the store, `sent_if_none_match` whether the request was conditional.
pub fn after_fetch(
    current: Option<&Artifact>,
    recorded_etag: Option<&str>,
    sent_if_none_match: bool,
    answer: Unfetched<'_>,
) -> Outcome {
    match answer {
        Unfetched::NotModified => match current {
            Some(artifact) if sent_if_none_match => {
                Outcome::Ready { artifact: artifact.clone(), etag: recorded_etag.map(str::to_owned), new: false }
            }
            // A 304 to an unconditional request, or for an artifact we no longer hold: the
            // upstream (or a cache in front of it) is wrong. Backing off keeps it from becoming
            // a request loop; the next attempt, unconditional, rebuilds what is missing.
            _ => Outcome::Failed(Failure {
                reason: Reason::FetchFailed,
                kind: "unexpected_not_modified",
                message: if sent_if_none_match {
                    "the upstream answered 304 Not Modified but the stored artifact is gone".to_owned()
                } else {
                    "the upstream answered 304 Not Modified to a request without If-None-Match".to_owned()
                },
                retry: Retry::Backoff { after: None },
            }),
        },
        Unfetched::Failed(e) => Outcome::Failed(Failure {
            reason: Reason::FetchFailed,
            kind: e.kind(),
            message: format!("fetch failed: {e}"),
            retry: if e.is_permanent() { Retry::AtInterval } else { Retry::Backoff { after: e.retry_after() } },
        }),
    }
}

/// What transforming, packaging and storing the body gave.
#[derive(Debug)]
pub enum Stored {
    /// A new object was put.
    New(Artifact),
    /// The packaged bytes equal the current artifact's: same revision, whatever the ETag says.
    Same(Artifact),
    /// `spec.transform` failed (or did not compile).
    TransformFailed(TransformError),
    /// Writing the tarball failed (it is built in memory: practically never).
    PackagingFailed(String),
    /// `format: archive`, and the payload is not an archive we unpack (unknown format, an entry
    /// escaping the tree, a link, over a cap).
    ArchiveRefused(ArchiveError),
    /// The put failed (after room was made, where that helps).
    Failed(StorageError),
}

/// Decides what a store attempt means.
pub fn after_store(stored: Stored, etag: Option<&str>) -> Outcome {
    let etag = etag.map(str::to_owned);
    match stored {
        Stored::New(artifact) => Outcome::Ready { artifact, etag, new: true },
        Stored::Same(artifact) => Outcome::Ready { artifact, etag, new: false },
        Stored::TransformFailed(e) if e.is_spec_error() => Outcome::Stalled {
            problem: ConfigProblem { reason: Reason::InvalidSpec, message: format!("spec.transform.jq {e}") },
            recheck_at_interval: false,
        },
        Stored::TransformFailed(e) => Outcome::Failed(Failure {
            reason: Reason::TransformFailed,
            kind: "transform",
            message: format!("spec.transform.jq {e}"),
            // A filter that hit a limit hits it again on the same payload: wait for the interval.
            retry: if e.is_transient() { Retry::Backoff { after: None } } else { Retry::AtInterval },
        }),
        Stored::PackagingFailed(message) => Outcome::Failed(Failure {
            reason: Reason::StorageOperationFailed,
            kind: "package",
            message: format!("packaging failed: {message}"),
            retry: Retry::AtInterval,
        }),
        Stored::ArchiveRefused(e) => Outcome::Failed(Failure {
            reason: Reason::ArchiveRefused,
            kind: "archive",
            message: format!("the payload (spec.format: archive) {e}"),
            // The same payload is refused again: wait for the interval, not a backoff.
            retry: Retry::AtInterval,
        }),
        Stored::Failed(e) => Outcome::Failed(storage_failure(&e)),
    }
}

/// A failed hook: `HookFailed` naming it; the last good artifact stays. A whitelist refusal (of
/// the command, an argument or an environment variable) is a spec problem: `Stalled`, checked
/// again at the interval too, since a whitelist change can also resolve it. A bad request fails
/// again on every try, so it waits for the interval; anything else backs off.
pub fn hook_failure(e: &crate::controller::hooks::chain::HookFailure) -> Outcome {
    if e.is_refusal() {
        let problem = ConfigProblem { reason: Reason::HookFailed, message: e.to_string() };
        return Outcome::Stalled { problem, recheck_at_interval: true };
    }
    Outcome::Failed(Failure {
        reason: Reason::HookFailed,
        kind: "hook",
        message: e.to_string(),
        retry: if e.is_permanent() { Retry::AtInterval } else { Retry::Backoff { after: None } },
    })
}

/// A payload `spec.validate` refused: `ValidationFailed` naming the rule and the first offending
/// path; nothing is packaged or published and the last good artifact stays. The same payload is
/// refused again, so it waits for the interval; a rule that does not compile (the jq expression,
/// or the schema in its ConfigMap) is a spec problem, `Stalled` until the spec or ConfigMap
/// changes; a sandbox that could not run the rule at all backs off.
pub fn validation_failure(rejection: &Rejection) -> Outcome {
    let message = rejection.to_string();
    if rejection.is_spec_error() {
        let problem = ConfigProblem { reason: Reason::InvalidSpec, message };
        return Outcome::Stalled { problem, recheck_at_interval: false };
    }
    let retry = if rejection.is_transient() { Retry::Backoff { after: None } } else { Retry::AtInterval };
    Outcome::Failed(Failure { reason: Reason::ValidationFailed, kind: "validation", message, retry })
}

/// Pre-request hooks printed something that is not headers (the same output next time).
pub fn hook_output_failure(e: &crate::controller::hooks::chain::HeaderLineError) -> Failure {
    Failure { reason: Reason::HookFailed, kind: "hook", message: e.to_string(), retry: Retry::AtInterval }
}

/// A storage failure by class: outages back off; a full store, denied access, corruption and
/// invalid keys wait for the interval (room was already made for the put, where that helps).
pub fn storage_failure(e: &StorageError) -> Failure {
    let message = match e {
        StorageError::OverBudget { key, size, used, budget } => format!(
            "storing {key} needs {size} bytes but only {available} of the store's {budget}-byte budget are available \
             after deleting this source's unpublished and older revisions",
            available = budget.saturating_sub(*used),
        ),
        StorageError::QuotaExceeded { namespace, key, size, used, quota } => format!(
            "storing {key} needs {size} bytes but namespace {namespace} already stores {used} of its {quota}-byte \
             quota (storage.namespace_quota) after deleting this source's unpublished and older revisions"
        ),
        other => format!("storage operation failed: {other}"),
    };
    let retry = match e.class() {
        FailureClass::Transient => Retry::Backoff { after: None },
        FailureClass::OutOfSpace | FailureClass::Permanent => Retry::AtInterval,
    };
    Failure { reason: Reason::StorageOperationFailed, kind: e.kind(), message, retry }
}

/// Inputs of [`next_status`] besides the outcome.
#[derive(Debug, Clone, Default)]
pub struct StatusInputs<'a> {
    pub generation: Option<i64>,
    /// The `reconcile.fluxcd.io/requestedAt` annotation being handled.
    pub requested_at: Option<&'a str>,
    /// The `IntervalRaised` message when the spec parsed and its interval was raised.
    pub interval_warning: Option<&'a str>,
    /// The path the ExternalArtifact pointed at before this reconcile published (it may be
    /// ahead of our own status when an earlier status write failed).
    pub previously_published: Option<&'a str>,
    /// How many published revisions are kept.
    pub retention: usize,
    /// `status.webhookPath` as derived by this reconcile (`Some(None)`: no receiver); `None`
    /// keeps the old one.
    pub webhook_path: Option<Option<&'a str>>,
}

/// The ExternalSource status after `outcome`. The stored-artifact fields change only in the
/// [`Outcome::Ready`] arm; the caller keeps that arm only once the ExternalArtifact points at it.
pub fn next_status(old: &ExternalSourceStatus, outcome: &Outcome, inputs: &StatusInputs<'_>) -> ExternalSourceStatus {
    let generation = inputs.generation;
    let mut status = ExternalSourceStatus {
        conditions: old.conditions.clone(),
        artifact: old.artifact.clone(),
        last_handled_e_tag: old.last_handled_e_tag.clone(),
        artifact_generation: old.artifact_generation,
        published_paths: old.published_paths.clone(),
        observed_generation: generation,
        last_handled_reconcile_at: inputs
            .requested_at
            .map(str::to_owned)
            .or_else(|| old.last_handled_reconcile_at.clone()),
        webhook_path: inputs.webhook_path.map_or_else(|| old.webhook_path.clone(), |p| p.map(str::to_owned)),
    };
    if let Outcome::Ready { artifact, etag, .. } = outcome {
        status.published_paths = published_paths(old, &artifact.path, inputs.previously_published, inputs.retention);
        status.artifact = Some(artifact.clone());
        status.last_handled_e_tag = etag.clone();
        status.artifact_generation = generation;
    }
    let message = outcome.message();
    let reason = outcome.reason();
    let c = &mut status.conditions;
    match outcome {
        Outcome::Ready { .. } => {
            conditions::set(c, conditions::READY, true, reason, &message, generation);
            conditions::remove(c, conditions::RECONCILING);
            conditions::remove(c, conditions::STALLED);
        }
        Outcome::Suspended => {
            conditions::set(c, conditions::READY, false, reason, &message, generation);
            conditions::remove(c, conditions::RECONCILING);
            conditions::remove(c, conditions::STALLED);
        }
        Outcome::Stalled { .. } => {
            conditions::set(c, conditions::READY, false, reason, &message, generation);
            conditions::set(c, conditions::STALLED, true, reason, &message, generation);
            conditions::remove(c, conditions::RECONCILING);
        }
        Outcome::Failed(f) => {
            conditions::set(c, conditions::READY, false, reason, &message, generation);
            match f.retry {
                Retry::Backoff { .. } => conditions::set(
                    c,
                    conditions::RECONCILING,
                    true,
                    Reason::ProgressingWithRetry,
                    &message,
                    generation,
                ),
                Retry::AtInterval => conditions::remove(c, conditions::RECONCILING),
            }
            conditions::remove(c, conditions::STALLED);
        }
    }
    match inputs.interval_warning {
        Some(w) => conditions::set(c, conditions::INTERVAL_RAISED, true, Reason::BelowMinimum, w, generation),
        None => conditions::remove(c, conditions::INTERVAL_RAISED),
    }
    status
}

/// The status written when a reconcile of a new generation starts: `Reconciling=True`, reason
/// `Progressing`. `None` when the generation was already observed (nothing to announce).
pub fn progressing_status(old: &ExternalSourceStatus, generation: Option<i64>) -> Option<ExternalSourceStatus> {
    if old.observed_generation == generation {
        return None;
    }
    let mut status = old.clone();
    let message = match generation {
        Some(g) => format!("reconciling generation {g}"),
        None => "reconciling".to_owned(),
    };
    conditions::set(&mut status.conditions, conditions::RECONCILING, true, Reason::Progressing, &message, generation);
    Some(status)
}

/// Paths of the last `retention` published artifacts, newest first, after publishing `current`.
fn published_paths(
    old: &ExternalSourceStatus,
    current: &str,
    previously_published: Option<&str>,
    retention: usize,
) -> Vec<String> {
    let mut paths = vec![current.to_owned()];
    // Our own status may lag the ExternalArtifact (a status write failed after the publish), so
    // what the ExternalArtifact pointed at counts as published too.
    let candidates = previously_published
        .into_iter()
        .chain(old.artifact.as_ref().map(|a| a.path.as_str()))
        .chain(old.published_paths.iter().map(String::as_str));
    for path in candidates {
        if paths.len() >= retention.max(1) {
            break;
        }
        if !paths.iter().any(|p| p == path) {
            paths.push(path.to_owned());
        }
    }
    paths
}

/// The objects garbage collection deletes, never-published ones first. `published` is the new
/// `publishedPaths`; a status written before `publishedPaths` existed (`legacy`) falls back to
/// keeping the newest objects by modification time, so an upgrade deletes nothing a consumer
/// may still be reading.
pub fn garbage(
    mut objects: Vec<ObjectSummary>,
    published: &[String],
    known_published: &[String],
    legacy: bool,
    retention: usize,
) -> Vec<ObjectSummary> {
    objects.retain(|o| !published.iter().any(|p| p == o.key.as_str()));
    objects.sort_by(|a, b| b.last_modified.cmp(&a.last_modified).then_with(|| b.key.cmp(&a.key)));
    if legacy {
        let spare = retention.saturating_sub(published.len());
        objects = objects.into_iter().skip(spare).collect();
    }
    // Unpublished first: if deleting stops half-way, what was never served is gone already.
    objects.sort_by_key(|o| known_published.iter().any(|p| p == o.key.as_str()));
    objects
}

/// The ExternalArtifact status after `outcome`, or `None` when it is not to be touched.
pub fn next_artifact_status(
    old: &ExternalArtifactStatus,
    outcome: &Outcome,
    generation: Option<i64>,
) -> Option<ExternalArtifactStatus> {
    let mut status = old.clone();
    let message = outcome.message();
    match outcome {
        Outcome::Ready { artifact, .. } => {
            status.artifact = Some(artifact.clone());
            conditions::set(&mut status.conditions, conditions::READY, true, Reason::Succeeded, &message, generation);
        }
        // A suspended source leaves its published artifact as it was.
        Outcome::Suspended => return None,
        Outcome::Stalled { .. } | Outcome::Failed(_) => {
            conditions::set(&mut status.conditions, conditions::READY, false, outcome.reason(), &message, generation);
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests;
