//! Conditions in the kstatus style Flux uses: `Ready`, with `Reconciling`/`Stalled` as needed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const STALLED: &str = "Stalled";
pub const RECONCILING: &str = "Reconciling";
pub const FETCHING: &str = "Fetching";
pub const STORING: &str = "Storing";
/// Set while `interval` is below the controller's minimum and has been raised.
pub const INTERVAL_RAISED: &str = "IntervalRaised";

/// Condition reasons, as written to the API.
pub mod reason {
    pub const SUCCEEDED: &str = "Succeeded";
    pub const SUSPENDED: &str = "Suspended";
    pub const FETCH_FAILED: &str = "FetchFailed";
    pub const TRANSFORM_FAILED: &str = "TransformFailed";
    pub const STORAGE_FAILED: &str = "StorageOperationFailed";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const ARTIFACT_CONFLICT: &str = "ArtifactConflict";
    pub const UNSUPPORTED: &str = "Unsupported";
    pub const PROGRESSING: &str = "Progressing";
    pub const RETRYING: &str = "Retrying";
    pub const BELOW_MINIMUM: &str = "BelowMinimum";
}

/// Sets a condition, keeping `lastTransitionTime` when the status does not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let message: String = message.chars().take(32_000).collect();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status {
            existing.last_transition_time = Time(k8s_openapi::jiff::Timestamp::now());
        }
        existing.status = status;
        existing.reason = reason.to_owned();
        existing.message = message;
        existing.observed_generation = generation;
        return;
    }
    conditions.push(Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    });
}

pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}
