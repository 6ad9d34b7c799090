//! Finalizer cleanup: a deleted ExternalSource's stored artifacts and its ExternalArtifact go,
//! then the finalizer.
//!
//! A finalizer that cannot finish hangs the deletion of its namespace, so cleanup never waits on
//! a store that can only fail: a store whose bucket or root is gone has nothing to delete, and
//! a permanent delete failure (denied, corrupt) is retried with backoff only
//! `controller.finalizer_attempts` times before the finalizer is released with a Warning Event
//! that names what was left behind. Outages (transient failures) keep being retried: the objects
//! are still there to delete once the store answers.

use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::events::EventType;

use crate::controller::api::ExternalArtifact;
use crate::controller::conditions::Reason;
use crate::controller::context::Context;
use crate::controller::finish::event::event;
use crate::controller::publish::owned_by;
use crate::controller::reconcile::error::Error;
use crate::controller::reconcile::scope::Scope;
use crate::key::{ObjectKey, artifact_dir};
use crate::storage::{FailureClass, StorageError};

/// Longest list of leftover keys an Event names.
const LEFTOVERS_NAMED: usize = 10;

/// Deletes what the source stored and its ExternalArtifact; the caller then releases the
/// finalizer.
pub(super) async fn cleanup(scope: &Scope<'_>, ctx: &Context) -> Result<(), Error> {
    let (ns, name, es) = (&scope.namespace, &scope.name, scope.source);
    // Counted per object UID: a stale queue entry after the release must not start over, and a
    // new object of the same name must not inherit the count.
    let uid = es.uid().unwrap_or_default();
    let limit = ctx.settings.finalizer_attempts;
    let given_up = ctx.cleanup_attempts.get(&uid).is_some_and(|n| *n >= limit);
    if !given_up && let Err((error, left)) = delete_stored(ctx, ns, name).await {
        if error.class() == FailureClass::Transient {
            return Err(error.into());
        }
        let attempts = {
            let mut entry = ctx.cleanup_attempts.entry(uid.clone()).or_insert(0);
            *entry += 1;
            *entry
        };
        if attempts < limit {
            return Err(error.into());
        }
        let named: Vec<&str> = left.iter().take(LEFTOVERS_NAMED).map(ObjectKey::as_str).collect();
        let more = left.len().saturating_sub(named.len());
        let message = format!(
            "released the finalizer after {attempts} failed attempts to delete stored artifacts; left behind {} object(s): {}{}; last error: {error}",
            left.len(),
            if named.is_empty() { format!("under {}", artifact_dir(ns, name)) } else { named.join(", ") },
            if more > 0 { format!(" and {more} more") } else { String::new() },
        );
        tracing::warn!(namespace = %ns, name = %name, kind = error.kind(), "{message}");
        event(ctx, scope, EventType::Warning, Reason::CleanupAbandoned, &message, None).await;
    } else if !given_up {
        ctx.cleanup_attempts.remove(&uid);
    }
    let api: Api<ExternalArtifact> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(ea) = api.get_opt(name).await?
        && owned_by(&ea, es)
    {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.artifacts.forget(ns, name);
    ctx.metrics.forget(ns, name);
    ctx.backoff.forget(ns, name);
    tracing::info!(namespace = %ns, name = %name, "deleted stored artifacts and ExternalArtifact");
    Ok(())
}

/// Deletes every stored object of the source. On failure: the first error and the keys left.
async fn delete_stored(ctx: &Context, ns: &str, name: &str) -> Result<(), (StorageError, Vec<ObjectKey>)> {
    let objects = match ctx.storage.list(&artifact_dir(ns, name)).await {
        Ok(objects) => objects,
        Err(StorageError::StoreMissing { .. } | StorageError::NotFound(_)) => return Ok(()),
        Err(e) => return Err((e, Vec::new())),
    };
    let mut first_error = None;
    let mut left = Vec::new();
    for object in objects {
        let deleted = ctx.metrics.storage_call("delete", ctx.storage.delete(&object.key)).await;
        match deleted {
            Ok(()) | Err(StorageError::StoreMissing { .. } | StorageError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(key = %object.key, error = %e, "deleting a stored artifact failed");
                first_error.get_or_insert(e);
                left.push(object.key);
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(e) => Err((e, left)),
    }
}
