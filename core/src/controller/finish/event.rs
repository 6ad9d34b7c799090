//! The Event of a reconcile: a Kubernetes Event, and a Flux event when
//! `controller.events_addr` is set.

use kube::Resource;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};

use crate::controller::conditions::Reason;
use crate::controller::context::Context;
use crate::controller::events::flux::{Notice, Severity};
use crate::controller::reconcile::scope::Scope;

/// Records an Event, and sends it as a Flux event when `controller.events_addr` is set (with
/// the new artifact's `revision`); failures to record are logged, never fatal.
pub async fn event(
    ctx: &Context,
    scope: &Scope<'_>,
    type_: EventType,
    reason: Reason,
    note: &str,
    revision: Option<&str>,
) {
    if let Some(flux_events) = &ctx.flux_events {
        flux_events.notify(&Notice {
            namespace: &scope.namespace,
            name: &scope.name,
            severity: if type_ == EventType::Warning { Severity::Error } else { Severity::Info },
            reason: reason.as_str(),
            message: note,
            revision,
            annotations: scope.source.annotations(),
        });
    }
    let ev = Event {
        type_,
        reason: reason.as_str().to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &scope.source.object_ref(&())).await {
        tracing::debug!(error = %e, "recording an event failed");
    }
}
