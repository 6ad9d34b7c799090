//! Conditions in the kstatus style Flux uses: `Ready`, with `Reconciling`/`Stalled` as needed.
//!
//! - `Reconciling=True` (reason `Progressing`) while a new generation is being worked on, and
//!   (reason `ProgressingWithRetry`) while a transient failure is retried with backoff;
//! - `Stalled=True` for problems a retry cannot fix (an invalid spec, a missing Secret, a
//!   conflicting ExternalArtifact, a missing ConfigMap);
//! - every condition carries the `observedGeneration` it describes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const STALLED: &str = "Stalled";
pub const RECONCILING: &str = "Reconciling";
/// Set while `interval` is below the controller's minimum and has been raised.
pub const INTERVAL_RAISED: &str = "IntervalRaised";

/// Every condition and Event reason the controller writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Succeeded,
    Suspended,
    FetchFailed,
    TransformFailed,
    /// `format: archive` and the payload was refused (its entry and rule are in the message).
    ArchiveRefused,
    /// A `spec.hooks` command failed (its name is in the message).
    HookFailed,
    /// The payload failed a `spec.validate` rule (the rule and the first offending path are in
    /// the message); it was not published.
    ValidationFailed,
    StorageOperationFailed,
    InvalidSpec,
    SecretNotFound,
    /// The ConfigMap (or its key) holding `spec.validate.jsonSchema` does not exist.
    ConfigMapNotFound,
    ArtifactConflict,
    Unsupported,
    Progressing,
    ProgressingWithRetry,
    BelowMinimum,
    /// Event: a new revision was stored and published.
    NewArtifact,
    /// Event: the finalizer was released although stored artifacts could not be deleted.
    CleanupAbandoned,
}

impl Reason {
    /// The reason as written to the API (CamelCase, like Flux's).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "Succeeded",
            Self::Suspended => "Suspended",
            Self::FetchFailed => "FetchFailed",
            Self::TransformFailed => "TransformFailed",
            Self::ArchiveRefused => "ArchiveRefused",
            Self::HookFailed => "HookFailed",
            Self::ValidationFailed => "ValidationFailed",
            Self::StorageOperationFailed => "StorageOperationFailed",
            Self::InvalidSpec => "InvalidSpec",
            Self::SecretNotFound => "SecretNotFound",
            Self::ConfigMapNotFound => "ConfigMapNotFound",
            Self::ArtifactConflict => "ArtifactConflict",
            Self::Unsupported => "Unsupported",
            Self::Progressing => "Progressing",
            Self::ProgressingWithRetry => "ProgressingWithRetry",
            Self::BelowMinimum => "BelowMinimum",
            Self::NewArtifact => "NewArtifact",
            Self::CleanupAbandoned => "CleanupAbandoned",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sets a condition, keeping `lastTransitionTime` when the status does not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let message: String = message.chars().take(32_000).collect();
    let reason = reason.as_str().to_owned();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status {
            existing.last_transition_time = Time(k8s_openapi::jiff::Timestamp::now());
        }
        existing.status = status;
        existing.reason = reason;
        existing.message = message;
        existing.observed_generation = generation;
        return;
    }
    conditions.push(Condition {
        type_: type_.to_owned(),
        status,
        reason,
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    });
}

pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The condition of `type_`, if present.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}
