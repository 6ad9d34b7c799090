//! The single writer of a reconcile's results: the ExternalArtifact status, then the
//! ExternalSource status, then the Event, all from one [`Outcome`].
//!
//! Order is what keeps the statuses honest: the ExternalArtifact is pointed at a new artifact
//! first, and only if that succeeded does the ExternalSource record it (with its ETag and
//! generation); old revisions are deleted last. A failure at any step leaves every earlier write
//! true: the worst case is an ExternalArtifact ahead of our own status, which the next
//! reconcile reads back (see [`outcome::next_status`]).

use std::time::Duration;

use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};

use super::api::{ExternalArtifact, ExternalArtifactSpec, ExternalSource, ExternalSourceStatus, SourceRef};
use super::conditions::Reason;
use super::flux_events::{Notice, Severity};
use super::metrics::ObjectLabels;
use super::outcome::{self, Outcome, Retry, StatusInputs};
use super::plan::ConfigProblem;
use super::readable::Readable;
use super::reconcile::{Context, Error, key_of};
use super::writer;
use crate::key::artifact_dir;

/// What a finished reconcile tells the controller runtime and the metrics.
pub struct Report {
    pub action: Action,
    /// Ready or suspended, as opposed to stalled or failed.
    pub ok: bool,
    /// The `kind` label of the reconcile metric.
    pub kind: &'static str,
}

/// Writes `outcome`: ExternalArtifact, ExternalSource status, garbage collection, Event.
pub async fn finish(
    ctx: &Context,
    es: &ExternalSource,
    old: &ExternalSourceStatus,
    outcome: Outcome,
    mut inputs: StatusInputs<'_>,
    interval: Option<Duration>,
) -> Result<Report, Error> {
    let (ns, name) = key_of(es);
    let (outcome, previous) = match publish(ctx, es, &outcome).await? {
        Publication::Written { previous } => (outcome, previous),
        Publication::Untouched => (outcome, None),
        Publication::Conflict(problem) => (Outcome::Stalled { problem, recheck_at_interval: true }, None),
    };
    inputs.previously_published = previous.as_deref();
    let status = outcome::next_status(old, &outcome, &inputs);
    let changed = write_status(ctx, es, old, &status).await?;

    if let Outcome::Ready { artifact, new, .. } = &outcome {
        let labels = ObjectLabels { namespace: ns.clone(), name: name.clone() };
        ctx.metrics.storage_bytes.get_or_create(&labels).set(artifact.size.unwrap_or_default());
        collect_garbage(ctx, &ns, &name, old, &status).await;
        // A put repeated after a lost status write is not news.
        if *new && previous.as_deref() != Some(artifact.path.as_str()) {
            let revision = Some(artifact.revision.as_str());
            event(ctx, es, EventType::Normal, Reason::NewArtifact, &outcome.message(), revision).await;
        }
    } else if changed && !matches!(outcome, Outcome::Suspended) {
        event(ctx, es, EventType::Warning, outcome.reason(), &outcome.message(), None).await;
    }

    let next_interval = || interval.map_or_else(Action::await_change, at_interval);
    let action = match &outcome {
        Outcome::Ready { .. } => next_interval(),
        Outcome::Suspended | Outcome::Stalled { recheck_at_interval: false, .. } => Action::await_change(),
        Outcome::Stalled { recheck_at_interval: true, .. } => next_interval(),
        Outcome::Failed(f) => match f.retry {
            Retry::AtInterval => next_interval(),
            Retry::Backoff { .. } => return Err(Error::Backoff(f.clone())),
        },
    };
    let ok = matches!(outcome, Outcome::Ready { .. } | Outcome::Suspended);
    Ok(Report { action, ok, kind: outcome.kind() })
}

/// Requeue at the interval with up to 5 % jitter, so sources created together spread out.
fn at_interval(interval: Duration) -> Action {
    Action::requeue(interval.mul_f64(1.0 + fastrand::f64() * 0.05))
}

/// What happened to the ExternalArtifact.
enum Publication {
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
async fn publish(ctx: &Context, es: &ExternalSource, outcome: &Outcome) -> Result<Publication, Error> {
    if matches!(outcome, Outcome::Suspended) {
        return Ok(Publication::Untouched);
    }
    let (ns, name) = key_of(es);
    let api: Api<ExternalArtifact> = Api::namespaced(ctx.client.clone(), &ns);
    let ready = matches!(outcome, Outcome::Ready { .. });
    let created = if ready && never_published(es) { create(&api, es, &ns, &name).await? } else { None };
    if let Some(ea) = created {
        return Ok(bring_in_line(ctx, &api, es, outcome, ea, Basis::Read).await?);
    }
    if let Some(ea) = ctx.artifacts.current(&ns, &name).filter(|ea| owned_by(ea, es)) {
        match bring_in_line(ctx, &api, es, outcome, ea, Basis::Remembered).await {
            Err(kube::Error::Api(s)) if s.code == 409 => ctx.artifacts.forget(&ns, &name),
            written => return Ok(written?),
        }
    }
    let existing = match read_artifact(&api, es, &ns, &name).await? {
        Some(ea) if !owned_by(&ea, es) => {
            return Ok(if ready { Publication::Conflict(conflict(&ns, &name)) } else { Publication::Untouched });
        }
        Some(ea) => ea,
        None if ready => api.create(&writer::post(), &new_artifact(es, &ns, &name)).await?,
        None => return Ok(Publication::Untouched),
    };
    Ok(bring_in_line(ctx, &api, es, outcome, existing, Basis::Read).await?)
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

/// `patch` made conditional on the object still being at `version`, when one is given (the API
/// server answers 409 otherwise).
fn with_precondition(mut patch: Value, version: Option<&str>) -> Value {
    if let (Some(version), Some(object)) = (version, patch.as_object_mut()) {
        let metadata = object.entry("metadata").or_insert_with(|| json!({}));
        if let Some(metadata) = metadata.as_object_mut() {
            metadata.insert("resourceVersion".to_owned(), Value::String(version.to_owned()));
        }
    }
    patch
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

/// Annotation on an ExternalArtifact listing the label keys copied from its ExternalSource, so
/// a label removed from the source is removed from the artifact too (and no other).
pub const COPIED_LABELS: &str = "source.flux.oddkin.co/copied-labels";

/// Annotation on an ExternalSource naming (comma-separated) the annotations of it to copy to its
/// ExternalArtifact. Annotations are opt-in, unlike labels: many are tool state, not metadata.
pub const COPY_ANNOTATIONS: &str = "source.flux.oddkin.co/copy-annotations";

/// Annotation on an ExternalArtifact listing the annotation keys copied, like [`COPIED_LABELS`].
pub const COPIED_ANNOTATIONS: &str = "source.flux.oddkin.co/copied-annotations";

/// Annotations never copied, even when named: ours, and ones that mean something only on the
/// object that carries them.
const NEVER_COPIED: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration", super::reconcile::REQUESTED_AT];

/// The label the controller sets on every ExternalArtifact it manages.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "externalsource-controller");

type Metadata = std::collections::BTreeMap<String, String>;

/// The ExternalSource's labels to copy: all but the ones the controller sets itself, so that
/// selectors on ExternalArtifacts (flux-operator ResourceSets, sharding) see the source's.
fn copied_labels(es: &ExternalSource) -> Metadata {
    es.labels().iter().filter(|(k, _)| k.as_str() != MANAGED_BY.0).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The ExternalSource's annotations that `source.flux.oddkin.co/copy-annotations` names.
pub(super) fn copied_annotations(es: &ExternalSource) -> Metadata {
    let all = es.annotations();
    let Some(chosen) = all.get(COPY_ANNOTATIONS) else { return Metadata::new() };
    chosen
        .split(',')
        .map(str::trim)
        .filter(|k| !k.starts_with("source.flux.oddkin.co/") && !NEVER_COPIED.contains(k))
        .filter_map(|k| all.get(k).map(|v| (k.to_owned(), v.clone())))
        .collect()
}

/// The merge-patch entries bringing the copied keys of `have` in line with `want`, given the
/// keys copied last time (`tracked`), and the new value of the tracking annotation.
fn sync(want: &Metadata, have: &Metadata, tracked: Option<&String>) -> (serde_json::Map<String, Value>, Option<Value>) {
    let before: Vec<&str> = tracked.map(|v| v.split(',').filter(|k| !k.is_empty()).collect()).unwrap_or_default();
    let mut changes = serde_json::Map::new();
    for (k, v) in want {
        if have.get(k) != Some(v) {
            changes.insert(k.clone(), Value::String(v.clone()));
        }
    }
    for k in before.iter().filter(|k| !want.contains_key(**k) && have.contains_key(**k)) {
        changes.insert((*k).to_owned(), Value::Null);
    }
    let keys = want.keys().cloned().collect::<Vec<_>>().join(",");
    let changed = tracked.map(String::as_str).unwrap_or("") != keys;
    let tracking = if keys.is_empty() { Value::Null } else { Value::String(keys) };
    (changes, changed.then_some(tracking))
}

/// A metadata merge patch bringing `ea`'s copied labels and annotations in line with `es`'s;
/// `None` when they already are (no write).
fn metadata_patch(es: &ExternalSource, ea: &ExternalArtifact) -> Option<Value> {
    let (labels, labels_tracking) = sync(&copied_labels(es), ea.labels(), ea.annotations().get(COPIED_LABELS));
    let (mut annotations, annotations_tracking) =
        sync(&copied_annotations(es), ea.annotations(), ea.annotations().get(COPIED_ANNOTATIONS));
    if labels.is_empty() && annotations.is_empty() && labels_tracking.is_none() && annotations_tracking.is_none() {
        return None;
    }
    for (key, tracking) in [(COPIED_LABELS, labels_tracking), (COPIED_ANNOTATIONS, annotations_tracking)] {
        if let Some(value) = tracking {
            annotations.insert(key.to_owned(), value);
        }
    }
    Some(json!({"metadata": {"labels": labels, "annotations": annotations}}))
}

fn new_artifact(es: &ExternalSource, ns: &str, name: &str) -> ExternalArtifact {
    let mut ea = ExternalArtifact::new(
        name,
        ExternalArtifactSpec {
            source_ref: Some(SourceRef {
                api_version: super::api::API_VERSION.into(),
                kind: "ExternalSource".into(),
                name: name.to_owned(),
                namespace: ns.to_owned(),
            }),
        },
    );
    ea.metadata.namespace = Some(ns.to_owned());
    ea.metadata.owner_references = es.controller_owner_ref(&()).map(|r| vec![r]);
    let mut labels = copied_labels(es);
    let mut annotations = copied_annotations(es);
    for (tracking, keys) in [
        (COPIED_LABELS, labels.keys().cloned().collect::<Vec<_>>().join(",")),
        (COPIED_ANNOTATIONS, annotations.keys().cloned().collect::<Vec<_>>().join(",")),
    ] {
        if !keys.is_empty() {
            annotations.insert(tracking.to_owned(), keys);
        }
    }
    if !annotations.is_empty() {
        ea.metadata.annotations = Some(annotations);
    }
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    ea.metadata.labels = Some(labels);
    ea
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

/// Writes the ExternalSource status if it changed; returns whether it did.
pub(super) async fn write_status(
    ctx: &Context,
    es: &ExternalSource,
    old: &ExternalSourceStatus,
    status: &ExternalSourceStatus,
) -> Result<bool, Error> {
    let (ns, name) = key_of(es);
    let api: Api<ExternalSource> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(patch_status(&api, &name, old, status, None).await?.is_some())
}

/// A merge patch of a status subresource that also clears what `new` no longer has, conditional
/// on `version` when one is given; no request when nothing changed. Returns the object written.
async fn patch_status<K, S>(
    api: &Api<K>,
    name: &str,
    old: &S,
    new: &S,
    version: Option<&str>,
) -> Result<Option<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if old == new {
        return Ok(None);
    }
    let patch = with_precondition(json!({ "status": clearing_merge_patch(old, new) }), version);
    Ok(Some(api.patch_status(name, &writer::patch(), &Patch::Merge(patch)).await?))
}

/// `new` as a JSON merge patch over `old`: fields `old` had and `new` lacks become `null`, at
/// every depth (a merge patch merges nested objects too), so an absent optional field is removed
/// on the server instead of silently kept (RFC 7396). Arrays are replaced whole.
pub fn clearing_merge_patch<S: Serialize>(old: &S, new: &S) -> Value {
    let old = serde_json::to_value(old).unwrap_or(Value::Null);
    let mut new = serde_json::to_value(new).unwrap_or(Value::Null);
    clear_missing(&old, &mut new);
    new
}

fn clear_missing(old: &Value, new: &mut Value) {
    let (Value::Object(old), Value::Object(new)) = (old, new) else { return };
    for (key, old_value) in old {
        match new.get_mut(key) {
            None => {
                new.insert(key.clone(), Value::Null);
            }
            Some(new_value) => clear_missing(old_value, new_value),
        }
    }
}

/// Deletes the source's stored objects that `status.publishedPaths` does not keep. Failures are
/// logged only: a leftover revision costs space, not correctness, and goes on the next run.
async fn collect_garbage(
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
        let deleted = ctx.storage.delete(&object.key).await;
        ctx.metrics.operation("delete", deleted.is_ok());
        match deleted {
            Ok(()) => tracing::info!(key = %object.key, "deleted a revision beyond retention"),
            Err(e) => tracing::warn!(key = %object.key, error = %e, "deleting an old revision failed"),
        }
    }
}

/// Records an Event, and sends it as a Flux event when `controller.events_addr` is set (with
/// the new artifact's `revision`); failures to record are logged, never fatal.
pub(super) async fn event(
    ctx: &Context,
    es: &ExternalSource,
    type_: EventType,
    reason: Reason,
    note: &str,
    revision: Option<&str>,
) {
    if let Some(flux_events) = &ctx.flux_events {
        let (namespace, name) = key_of(es);
        flux_events.notify(&Notice {
            namespace: &namespace,
            name: &name,
            severity: if type_ == EventType::Warning { Severity::Error } else { Severity::Info },
            reason: reason.as_str(),
            message: note,
            revision,
            annotations: es.annotations(),
        });
    }
    let ev = Event {
        type_,
        reason: reason.as_str().to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &es.object_ref(&())).await {
        tracing::debug!(error = %e, "recording an event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::api::Artifact;

    #[test]
    fn label_patch_adds_changes_and_removes_only_copied_labels() {
        let mut es: ExternalSource = serde_json::from_value(json!({
            "apiVersion": "source.flux.oddkin.co/v1alpha1", "kind": "ExternalSource",
            "metadata": {"name": "s", "labels": {"team": "a", "tier": "1"}},
            "spec": {"interval": "1m", "generator": {"type": "http", "http": {"url": "https://example.com"}}},
        }))
        .unwrap();
        let mut ea = new_artifact(&es, "ns", "s");
        assert_eq!(metadata_patch(&es, &ea), None, "a new artifact carries the labels already");
        ea.metadata.labels.as_mut().unwrap().insert("theirs".into(), "x".into());
        es.metadata.labels = Some([("team".into(), "b".into())].into());
        let patch = metadata_patch(&es, &ea).unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {"labels": {"team": "b", "tier": null}, "annotations": {COPIED_LABELS: "team"}}})
        );
        ea.metadata.labels.as_mut().unwrap().insert("team".into(), "b".into());
        ea.metadata.labels.as_mut().unwrap().remove("tier");
        ea.metadata.annotations.as_mut().unwrap().insert(COPIED_LABELS.into(), "team".into());
        assert_eq!(metadata_patch(&es, &ea), None, "in line: no write");
        es.metadata.labels = None;
        let patch = metadata_patch(&es, &ea).unwrap();
        assert_eq!(patch["metadata"]["labels"], json!({"team": null}), "only copied labels are removed");
        assert_eq!(patch["metadata"]["annotations"][COPIED_LABELS], Value::Null);
    }

    #[test]
    fn only_the_chosen_annotations_are_copied_and_removals_follow() {
        let mut es: ExternalSource = serde_json::from_value(json!({
            "apiVersion": "source.flux.oddkin.co/v1alpha1", "kind": "ExternalSource",
            "metadata": {"name": "s", "annotations": {
                COPY_ANNOTATIONS: "docs.example/owner, docs.example/absent,reconcile.fluxcd.io/requestedAt,source.flux.oddkin.co/copied-labels",
                "docs.example/owner": "team-a",
                "docs.example/other": "not chosen",
                "reconcile.fluxcd.io/requestedAt": "now",
            }},
            "spec": {"interval": "1m", "generator": {"type": "http", "http": {"url": "https://example.com"}}},
        }))
        .unwrap();
        let mut ea = new_artifact(&es, "ns", "s");
        assert_eq!(
            ea.annotations(),
            &Metadata::from([
                ("docs.example/owner".into(), "team-a".into()),
                (COPIED_ANNOTATIONS.into(), "docs.example/owner".into())
            ])
        );
        assert_eq!(metadata_patch(&es, &ea), None);
        ea.metadata.annotations.as_mut().unwrap().insert("theirs".into(), "x".into());
        es.metadata.annotations.as_mut().unwrap().insert(COPY_ANNOTATIONS.into(), "docs.example/other".into());
        let patch = metadata_patch(&es, &ea).unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {"labels": {}, "annotations": {
                "docs.example/owner": null,
                "docs.example/other": "not chosen",
                COPIED_ANNOTATIONS: "docs.example/other",
            }}}),
            "the unchosen one goes, the chosen one comes, others' stay"
        );
    }

    #[test]
    fn a_precondition_names_the_version_and_keeps_the_patch() {
        let patch = json!({"metadata": {"labels": {"a": "b"}}, "status": {"x": 1}});
        assert_eq!(with_precondition(patch.clone(), None), patch, "no version: unconditional");
        assert_eq!(
            with_precondition(patch, Some("42")),
            json!({"metadata": {"labels": {"a": "b"}, "resourceVersion": "42"}, "status": {"x": 1}})
        );
        assert_eq!(
            with_precondition(json!({"status": {"x": 1}}), Some("7")),
            json!({"metadata": {"resourceVersion": "7"}, "status": {"x": 1}})
        );
    }

    #[test]
    fn a_cleared_field_is_sent_as_null_and_others_as_they_are() {
        let old = ExternalSourceStatus {
            last_handled_e_tag: Some("\"v1\"".into()),
            observed_generation: Some(1),
            ..Default::default()
        };
        let new = ExternalSourceStatus { observed_generation: Some(2), ..Default::default() };
        let patch = clearing_merge_patch(&old, &new);
        assert_eq!(patch, json!({"lastHandledETag": null, "observedGeneration": 2}));
        // Nothing cleared: the patch is the status itself.
        let art = Artifact {
            url: "u".into(),
            revision: "r".into(),
            digest: "d".into(),
            path: "p".into(),
            size: Some(1),
            last_update_time: "t".into(),
            metadata: Default::default(),
        };
        let with = ExternalSourceStatus { artifact: Some(art.clone()), ..new.clone() };
        assert_eq!(clearing_merge_patch(&new, &with), serde_json::to_value(&with).unwrap());
        // Nested maps are merged by the server, so a dropped nested key is cleared too.
        let mut untagged = art.clone();
        untagged.metadata.insert("source".into(), "s".into());
        let mut tagged = untagged.clone();
        tagged.metadata.insert("etag".into(), "\"v1\"".into());
        let before = ExternalSourceStatus { artifact: Some(tagged), ..new.clone() };
        let after = ExternalSourceStatus { artifact: Some(untagged), ..new.clone() };
        let patch = clearing_merge_patch(&before, &after);
        assert_eq!(patch["artifact"]["metadata"], json!({"etag": null, "source": "s"}));
        assert_eq!(patch["artifact"]["digest"], json!("d"));
    }
}
