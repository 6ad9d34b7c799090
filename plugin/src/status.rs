//! Reading an ExternalSource's status the way `flux get` does.

use externalsource_core::controller::api::ExternalSource;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Its `Ready` condition.
pub fn ready(es: &ExternalSource) -> Option<&Condition> {
    es.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")
}

/// The revision of the published artifact.
pub fn revision(es: &ExternalSource) -> Option<&str> {
    Some(es.status.as_ref()?.artifact.as_ref()?.revision.as_str())
}

/// Whether the controller has handled reconcile request `token` for the current spec.
pub fn handled(es: &ExternalSource, token: &str) -> bool {
    es.status.as_ref().is_some_and(|s| {
        s.last_handled_reconcile_at.as_deref() == Some(token) && s.observed_generation == es.metadata.generation
    })
}
