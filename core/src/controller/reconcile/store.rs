//! The store step: the packaged artifact put under its digest, within the namespace's quota;
//! when the store is full, this source's unpublished and older revisions make room first.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::Digest;
use crate::controller::api::{Artifact, ETAG_METADATA, SOURCE_METADATA};
use crate::controller::context::Context;
use crate::controller::outcome::{self, Outcome, Stored};
use crate::controller::publish;
use crate::controller::reconcile::plan::Plan;
use crate::controller::reconcile::scope::Scope;
use crate::controller::revision::revision;
use crate::controller::upstream::redact::redact_url;
use crate::key::{ObjectKey, artifact_dir, namespace_dir};
use crate::package::Package;
use crate::storage::{FailureClass, ObjectMeta, StorageError};

/// Stores `packaged`, unless the identical artifact is current already; ends in the outcome.
pub async fn store(
    scope: &Scope<'_>,
    ctx: &Context,
    plan: &Plan,
    packaged: Package,
    etag: Option<&str>,
    current: Option<Artifact>,
) -> Outcome {
    let stored = match current.filter(|c| c.digest == packaged.digest.as_str()) {
        // Same bytes: same revision, whatever the ETag says, so consumers see no churn.
        Some(current) => Stored::Same(current),
        None => match put(scope, ctx, plan, packaged, etag).await {
            Ok(artifact) => Stored::New(artifact),
            Err(e) => Stored::Failed(e),
        },
    };
    outcome::after_store(stored, etag)
}

/// Puts a new revision and describes it.
async fn put(
    scope: &Scope<'_>,
    ctx: &Context,
    plan: &Plan,
    packaged: Package,
    etag: Option<&str>,
) -> Result<Artifact, StorageError> {
    let key = ObjectKey::artifact(&scope.namespace, &scope.name, &packaged.digest)?;
    let meta = put_making_room(scope, ctx, &key, packaged.bytes, &packaged.digest).await?;
    let mut metadata = BTreeMap::new();
    metadata.insert(SOURCE_METADATA.to_owned(), redact_url(&plan.url));
    if let Some(etag) = etag {
        metadata.insert(ETAG_METADATA.to_owned(), etag.to_owned());
    }
    Ok(Artifact {
        url: ctx.storage.url(&key),
        revision: revision(etag, &meta.digest),
        digest: meta.digest.to_string(),
        path: key.to_string(),
        size: Some(meta.size as i64),
        last_update_time: k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        metadata,
    })
}

/// Puts `bytes`; when the store is full, deletes this source's revisions except the published
/// one and tries once more.
async fn put_making_room(
    scope: &Scope<'_>,
    ctx: &Context,
    key: &ObjectKey,
    bytes: Bytes,
    digest: &Digest,
) -> Result<ObjectMeta, StorageError> {
    let namespace = &scope.namespace;
    // A put refused by the quota counts (and is timed) as a failed put.
    let put = ctx.metrics.storage_call("put", async {
        within_quota(ctx, namespace, key, bytes.len() as u64).await?;
        ctx.storage.put(key, bytes.clone(), digest).await
    });
    match put.await {
        Err(e) if e.class() == FailureClass::OutOfSpace => {
            tracing::info!(key = %key, error = %e, "store or quota is full; deleting this source's unpublished and older revisions");
            if make_room(scope, ctx, key).await == 0 {
                return Err(e);
            }
            within_quota(ctx, namespace, key, bytes.len() as u64).await?;
            ctx.metrics.storage_call("put", ctx.storage.put(key, bytes, digest)).await
        }
        other => other,
    }
}

/// Checks `storage.namespace_quota` for a put of `size` bytes at `key`: what the namespace
/// already stores (the object being replaced aside) plus `size` must fit.
async fn within_quota(ctx: &Context, namespace: &str, key: &ObjectKey, size: u64) -> Result<(), StorageError> {
    let Some(quota) = ctx.settings.namespace_quota else { return Ok(()) };
    let stored = ctx.storage.list(&namespace_dir(namespace)).await?;
    let used: u64 = stored.iter().filter(|o| o.key != *key).map(|o| o.size).sum();
    if used.saturating_add(size) > quota {
        return Err(StorageError::QuotaExceeded {
            namespace: namespace.to_owned(),
            key: key.clone(),
            size,
            used,
            quota,
        });
    }
    Ok(())
}

/// Deletes this source's stored revisions other than the one the ExternalArtifact points at
/// (and the one our status names, normally the same); returns how many went. When the
/// ExternalArtifact cannot be read, nothing is deleted: what is published must stay served.
async fn make_room(scope: &Scope<'_>, ctx: &Context, incoming: &ObjectKey) -> usize {
    let published = match publish::published_path(scope, ctx).await {
        Ok(path) => path,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the ExternalArtifact; not deleting revisions to make room");
            return 0;
        }
    };
    let keep: Vec<&str> =
        published.iter().map(String::as_str).chain(scope.status.artifact.iter().map(|a| a.path.as_str())).collect();
    let objects = match ctx.storage.list(&artifact_dir(&scope.namespace, &scope.name)).await {
        Ok(objects) => objects,
        Err(e) => {
            tracing::warn!(error = %e, "listing revisions to make room failed");
            return 0;
        }
    };
    let mut deleted = 0;
    for object in objects.iter().filter(|o| o.key != *incoming && !keep.contains(&o.key.as_str())) {
        let result = ctx.metrics.storage_call("delete", ctx.storage.delete(&object.key)).await;
        match result {
            Ok(()) => {
                deleted += 1;
                tracing::info!(key = %object.key, size = object.size, "deleted a revision to make room");
            }
            Err(e) => tracing::warn!(key = %object.key, error = %e, "deleting a revision to make room failed"),
        }
    }
    deleted
}
