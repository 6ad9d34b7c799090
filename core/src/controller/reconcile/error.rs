//! Failures a reconcile cannot write down as an outcome: the API server did not take a write
//! (or a read), or a deleted source's storage did not answer. They are retried with backoff.

use crate::controller::outcome::Outcome;
use crate::storage::StorageError;

/// Reconcile failures that are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("adding the finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    #[error("releasing the finalizer: {0}")]
    RemoveFinalizer(#[source] kube::Error),
}

/// Why the steps of a reconcile stopped before the last one: with an outcome to write (a
/// problem in the spec, a failed fetch, an unchanged upstream...), or on an [`Error`] that
/// leaves nothing to write.
#[derive(Debug)]
pub enum Stop {
    Conclude(Outcome),
    Abort(Error),
}

impl From<Outcome> for Stop {
    fn from(outcome: Outcome) -> Self {
        Self::Conclude(outcome)
    }
}

impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        Self::Abort(error)
    }
}

impl From<kube::Error> for Stop {
    fn from(error: kube::Error) -> Self {
        Self::Abort(error.into())
    }
}
