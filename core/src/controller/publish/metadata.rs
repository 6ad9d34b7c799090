//! The labels and annotations an ExternalArtifact copies from its ExternalSource, and the
//! ExternalArtifact a first publication creates.

use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::controller::api::{
    API_VERSION, ExternalArtifact, ExternalArtifactSpec, ExternalSource, REQUESTED_AT, SourceRef,
};

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
const NEVER_COPIED: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration", REQUESTED_AT];

/// The label the controller sets on every ExternalArtifact it manages.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "externalsource-controller");

type Metadata = std::collections::BTreeMap<String, String>;

/// The ExternalSource's labels to copy: all but the ones the controller sets itself, so that
/// selectors on ExternalArtifacts (flux-operator ResourceSets, sharding) see the source's.
fn copied_labels(es: &ExternalSource) -> Metadata {
    es.labels().iter().filter(|(k, _)| k.as_str() != MANAGED_BY.0).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The ExternalSource's annotations that `source.flux.oddkin.co/copy-annotations` names.
pub fn copied_annotations(es: &ExternalSource) -> Metadata {
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
pub(super) fn metadata_patch(es: &ExternalSource, ea: &ExternalArtifact) -> Option<Value> {
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

/// The ExternalArtifact of `es` before its first publication: owned by it, with its copied
/// labels and annotations.
pub(super) fn new_artifact(es: &ExternalSource, ns: &str, name: &str) -> ExternalArtifact {
    let mut ea = ExternalArtifact::new(
        name,
        ExternalArtifactSpec {
            source_ref: Some(SourceRef {
                api_version: API_VERSION.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
