//! The `result` and `kind` labels of the reconcile metric: the one place they are decided, for
//! every way a reconcile ends.

use crate::controller::conditions::Reason;
use crate::controller::outcome::Outcome;
use crate::controller::reconcile::error::Error;

/// How a reconcile ended, as far as the metric cares.
pub enum Ended<'a> {
    /// Its outcome was written.
    Concluded(&'a Outcome),
    /// It stopped on an error before an outcome could be written.
    Aborted(&'a Error),
    /// Nothing to do (a deleted source whose finalizer is already off, or a cleanup).
    Nothing,
}

/// The metric's labels: whether the reconcile went well (`success` or `error`) and its `kind`,
/// `none` when it went well.
pub fn labels(ended: Ended<'_>) -> (&'static str, &'static str) {
    let kind = match ended {
        Ended::Nothing | Ended::Concluded(Outcome::Ready { .. } | Outcome::Suspended) => return ("success", "none"),
        Ended::Concluded(Outcome::Stalled { problem, .. }) => match problem.reason {
            Reason::SecretNotFound => "secret_not_found",
            Reason::ConfigMapNotFound => "config_map_not_found",
            Reason::ArtifactConflict => "artifact_conflict",
            Reason::Unsupported => "unsupported",
            Reason::HookFailed => "hook_refused",
            _ => "invalid_spec",
        },
        // Set where the failure was classified (fetch, store, hook, transform, package).
        Ended::Concluded(Outcome::Failed(failure)) => failure.kind,
        Ended::Aborted(Error::Kube(_)) => "kube",
        Ended::Aborted(Error::Storage(e)) => e.kind(),
        Ended::Aborted(Error::AddFinalizer(_) | Error::RemoveFinalizer(_)) => "finalizer",
    };
    ("error", kind)
}
