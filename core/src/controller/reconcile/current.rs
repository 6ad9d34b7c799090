//! The current-artifact step: the artifact our status names, if the store still holds it with
//! the recorded digest. What a conditional fetch and the "same bytes" check compare against.

use crate::controller::api::Artifact;
use crate::controller::context::Context;
use crate::controller::outcome::{self, Outcome};
use crate::controller::reconcile::scope::Scope;
use crate::key::ObjectKey;
use crate::storage::StorageError;

/// A lost or altered object is treated as absent, so it is rebuilt whatever the upstream ETag
/// says; a store that does not answer fails the reconcile.
pub async fn verified(scope: &Scope<'_>, ctx: &Context) -> Result<Option<Artifact>, Outcome> {
    let Some(artifact) = &scope.status.artifact else { return Ok(None) };
    let Ok(key) = ObjectKey::parse(&artifact.path) else { return Ok(None) };
    match ctx.storage.stat(&key).await {
        Ok(meta) if meta.digest.as_str() == artifact.digest => {
            // The advertised address may have changed since: always publish the current URL.
            Ok(Some(Artifact { url: ctx.storage.url(&key), ..artifact.clone() }))
        }
        Ok(meta) => {
            tracing::warn!(key = %key, stored = %meta.digest, expected = %artifact.digest, "stored artifact does not match its digest; rebuilding");
            Ok(None)
        }
        Err(StorageError::NotFound(_)) => {
            tracing::info!(key = %key, "stored artifact is missing; rebuilding");
            Ok(None)
        }
        Err(e @ StorageError::Corrupt { .. }) => {
            tracing::warn!(key = %key, error = %e, "stored artifact is corrupt; rebuilding");
            Ok(None)
        }
        Err(e) => Err(Outcome::Failed(outcome::storage_failure(&e))),
    }
}
