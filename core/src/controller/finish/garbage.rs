//! Garbage collection after a publication: stored revisions beyond `retention` go.

use crate::controller::api::ExternalSourceStatus;
use crate::controller::context::Context;
use crate::controller::outcome;
use crate::key::artifact_dir;

/// Deletes the source's stored objects that `status.publishedPaths` does not keep. Failures are
/// logged only: a leftover revision costs space, not correctness, and goes on the next run.
pub async fn collect_garbage(
    ctx: &Context,
    ns: &str,
    name: &str,
    old: &ExternalSourceStatus,
    status: &ExternalSourceStatus,
) {
    let objects = match ctx.storage.list(&artifact_dir(ns, name)).await {
        Ok(objects) => objects,
        Err(e) => {
            tracing::warn!(error = %e, "listing revisions for garbage collection failed");
            return;
        }
    };
    let legacy = old.artifact.is_some() && old.published_paths.is_empty();
    for object in
        outcome::garbage(objects, &status.published_paths, &old.published_paths, legacy, ctx.settings.retention)
    {
        let deleted = ctx.metrics.storage_call("delete", ctx.storage.delete(&object.key)).await;
        match deleted {
            Ok(()) => tracing::info!(key = %object.key, "deleted a revision beyond retention"),
            Err(e) => tracing::warn!(key = %object.key, error = %e, "deleting an old revision failed"),
        }
    }
}
