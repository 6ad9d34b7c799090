//! Publication of the ExternalArtifact: created for a first artifact, its copied metadata and
//! its status brought in line with each outcome. What the ExternalArtifact points at (what is
//! published) is answered here: from the version this process remembers while the watch says
//! nobody changed it, from a read otherwise.

pub mod cache;
pub mod metadata;

use kube::ResourceExt;
use kube::api::{Api, Patch};
use serde_json::json;

use self::metadata::{metadata_patch, new_artifact};
use crate::controller::api::{ExternalArtifact, ExternalSource};
use crate::controller::conditions::Reason;
use crate::controller::context::Context;
use crate::controller::outcome::{self, Outcome};
use crate::controller::reconcile::problem::ConfigProblem;
use crate::controller::reconcile::scope::Scope;
use crate::controller::runtime::readable::Readable;
use crate::controller::writer::{self, patch_status, with_precondition};

/// What happened to the ExternalArtifact.
pub enum Publication {
    /// Its status was brought in line with the outcome (or already was); `previous` is the path
    /// it pointed at before.
    Written { previous: Option<String> },
    /// Not ours, absent with nothing to publish, or a suspended source: left as it is.
    Untouched,
    /// An ExternalArtifact of that name exists and belongs to someone else.
    Conflict(ConfigProblem),
}

/// Brings the owned ExternalArtifact in line with `outcome`, creating it for a first artifact.
///
/// It starts from the version this process last read or wrote when the watch says nobody
/// changed it since (no read: the steady state costs the API server nothing), and from a read
/// otherwise. A write based on a remembered version is conditional on it; if the object moved
/// on meanwhile (the watch lags), the version is dropped and the publication runs again from a
/// read.
pub async fn publish(scope: &Scope<'_>, ctx: &Context, outcome: &Outcome) -> Result<Publication, kube::Error> {
    if matches!(outcome, Outcome::Suspended) {
        return Ok(Publication::Untouched);
    }
    let (ns, name, es) = (scope.namespace.as_str(), scope.name.as_str(), scope.source);
    let api: Api<ExternalArtifact> = Api::namespaced(ctx.client.clone(), ns);
    let ready = matches!(outcome, Outcome::Ready { .. });
    let created = if ready && never_published(es) { create(&api, es, ns, name).await? } else { None };
    if let Some(ea) = created {
        return bring_in_line(ctx, &api, es, outcome, ea, Basis::Read).await;
    }
    if let Some(ea) = ctx.artifacts.current(ns, name).filter(|ea| owned_by(ea, es)) {
        match bring_in_line(ctx, &api, es, outcome, ea, Basis::Remembered).await {
            Err(kube::Error::Api(s)) if s.code == 409 => ctx.artifacts.forget(ns, name),
            written => return written,
        }
    }
    let existing = match read_artifact(&api, es, ns, name).await? {
        Some(ea) if !owned_by(&ea, es) => {
            return Ok(if ready { Publication::Conflict(conflict(ns, name)) } else { Publication::Untouched });
        }
        Some(ea) => ea,
        None if ready => api.create(&writer::post(), &new_artifact(es, ns, name)).await?,
        None => return Ok(Publication::Untouched),
    };
    bring_in_line(ctx, &api, es, outcome, existing, Basis::Read).await
}

/// The path the source's ExternalArtifact points at, read from the API server: what deleting
/// revisions to make room must keep. Never from memory: a lagging watch could make a remembered
/// version older than the one written over, and the decision deletes data.
pub async fn published_path(scope: &Scope<'_>, ctx: &Context) -> Result<Option<String>, kube::Error> {
    let api: Api<ExternalArtifact> = Api::namespaced(ctx.client.clone(), &scope.namespace);
    let ea = api.get_opt(&scope.name).await?;
    Ok(ea.filter(|ea| owned_by(ea, scope.source)).and_then(|ea| ea.status?.artifact.map(|a| a.path)))
}

/// Reads the source's ExternalArtifact. One whose content does not parse (written under another
/// schema) is read again as metadata only: someone else's is returned as it is, to be reported
/// as a conflict and left untouched; ours gets its spec and status written afresh, since nothing
/// in them can be trusted, so a reconcile never fails for ever on an object it owns.
async fn read_artifact(
    api: &Api<ExternalArtifact>,
    es: &ExternalSource,
    ns: &str,
    name: &str,
) -> Result<Option<ExternalArtifact>, kube::Error> {
    let reason = match api.get_opt(name).await {
        Err(kube::Error::SerdeError(reason)) => reason,
        read => return read,
    };
    let Some(found) = api.get_metadata_opt(name).await? else { return Ok(None) };
    let found = ExternalArtifact { metadata: found.metadata, spec: Default::default(), status: None };
    if !owned_by(&found, es) {
        return Ok(Some(found));
    }
    tracing::warn!(namespace = ns, name, %reason, "our ExternalArtifact does not parse; writing its spec and status afresh");
    // Written through the lenient type: the API server answers with the whole object, whose
    // other half may still not parse until both writes are done.
    let lenient: Api<Readable<ExternalArtifact>> = Api::namespaced(api.clone().into_client(), ns);
    lenient.patch_status(name, &writer::patch(), &Patch::Merge(json!({ "status": null }))).await?;
    let spec = json!({ "spec": new_artifact(es, ns, name).spec });
    lenient.patch(name, &writer::patch(), &Patch::Merge(spec)).await?;
    api.get_opt(name).await
}

/// Where the ExternalArtifact a publication starts from came from.
#[derive(Clone, Copy, PartialEq)]
enum Basis {
    /// Read from (or returned by) the API server during this reconcile.
    Read,
    /// Remembered from an earlier one: writes are conditional on its `resourceVersion`.
    Remembered,
}

/// Patches `existing`'s copied metadata and status to match `es` and `outcome`, and remembers
/// the result.
async fn bring_in_line(
    ctx: &Context,
    api: &Api<ExternalArtifact>,
    es: &ExternalSource,
    outcome: &Outcome,
    existing: ExternalArtifact,
    basis: Basis,
) -> Result<Publication, kube::Error> {
    let name = existing.name_any();
    let precondition = (basis == Basis::Remembered).then(|| existing.resource_version()).flatten();
    let mut latest = existing;
    if let Some(patch) = metadata_patch(es, &latest) {
        let patch = with_precondition(patch, precondition.as_deref());
        latest = api.patch(&name, &writer::patch(), &Patch::Merge(patch)).await?;
    }
    let old = latest.status.clone().unwrap_or_default();
    let previous = old.artifact.as_ref().map(|a| a.path.clone());
    if let Some(status) = outcome::next_artifact_status(&old, outcome, latest.metadata.generation) {
        // After a metadata patch, `latest` is what the API server returned: its version holds.
        let version = precondition.as_ref().and_then(|_| latest.resource_version());
        if let Some(written) = patch_status(api, &name, &old, &status, version.as_deref()).await? {
            latest = written;
        }
    }
    ctx.artifacts.remember(latest);
    Ok(Publication::Written { previous })
}

/// Whether the source's status names no artifact: then its ExternalArtifact most likely does not
/// exist yet (it can, after a status write was lost), and creating it comes before reading it.
fn never_published(es: &ExternalSource) -> bool {
    es.status.as_ref().is_none_or(|s| s.artifact.is_none() && s.published_paths.is_empty())
}

/// Creates the ExternalArtifact of a first publication: one write and no read for a new source.
/// `None` when one exists already (ours after a lost status write, or someone else's): the
/// caller reads it and proceeds as for any update.
async fn create(
    api: &Api<ExternalArtifact>,
    es: &ExternalSource,
    ns: &str,
    name: &str,
) -> Result<Option<ExternalArtifact>, kube::Error> {
    match api.create(&writer::post(), &new_artifact(es, ns, name)).await {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `ea` is controlled by `es`.
pub(super) fn owned_by(ea: &ExternalArtifact, es: &ExternalSource) -> bool {
    let uid = es.uid();
    ea.owner_references().iter().any(|r| r.controller == Some(true) && Some(&r.uid) == uid.as_ref())
}

fn conflict(ns: &str, name: &str) -> ConfigProblem {
    ConfigProblem {
        reason: Reason::ArtifactConflict,
        message: format!(
            "ExternalArtifact {ns}/{name} exists and is not owned by this ExternalSource; it was left untouched (delete it or rename the source)"
        ),
    }
}
