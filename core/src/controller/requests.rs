//! Reconcile requests made on our ExternalArtifacts, handed on to their ExternalSources.
//!
//! Flux's tools ask for a reconcile by setting `reconcile.fluxcd.io/requestedAt` on the object
//! they know, and for our sources that is the ExternalArtifact: the object a Kustomization
//! names, that `flux get sources external` lists and `flux trace` reaches. What fetches is the
//! ExternalSource, so the value is copied to the ExternalSource's own annotation. From there it
//! is an ordinary request: it triggers a reconcile (see `trigger_hash`), and the status records
//! it as `lastHandledReconcileAt`. Copying through the API, not a private queue, keeps the
//! request visible on the object that runs it, survives a change of leader, and costs one write
//! per request, none for a value already handed on.

use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::controller::api::{ExternalArtifact, ExternalSource, REQUESTED_AT};

/// A request to copy: the value, and the ExternalSource it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub namespace: String,
    pub name: String,
    pub requested_at: String,
}

/// The request `ea` carries for its ExternalSource, if there is one it does not already have.
///
/// Only an ExternalArtifact whose controlling owner is an ExternalSource (one we published)
/// hands a request on; the owner must be known (in `sources`, by UID, so a source deleted and
/// created again under the same name is not asked on behalf of its predecessor's artifact). A
/// value the source already carries or has handled is not news: at every restart the watch
/// lists every artifact again, with its old value.
pub fn forward(ea: &PartialObjectMeta<ExternalArtifact>, sources: &Store<ExternalSource>) -> Option<Forward> {
    let requested_at = ea.annotations().get(REQUESTED_AT)?;
    let namespace = ea.namespace()?;
    let owner = ea.owner_references().iter().find(|r| r.controller == Some(true))?;
    if owner.kind != ExternalSource::kind(&()) || owner.api_version != ExternalSource::api_version(&()) {
        return None;
    }
    let source = sources.get(&ObjectRef::new(&owner.name).within(&namespace))?;
    if source.uid().as_deref() != Some(owner.uid.as_str()) || !is_news(&source, requested_at) {
        return None;
    }
    Some(Forward { namespace, name: owner.name.clone(), requested_at: requested_at.clone() })
}

/// Whether `requested_at` is a request `source` has neither been given nor handled.
fn is_news(source: &ExternalSource, requested_at: &str) -> bool {
    let given = source.annotations().get(REQUESTED_AT).map(String::as_str);
    let handled = source.status.as_ref().and_then(|s| s.last_handled_reconcile_at.as_deref());
    given != Some(requested_at) && handled != Some(requested_at)
}

impl Forward {
    /// Sets the annotation on the ExternalSource. A failure is logged and not retried: the
    /// request is Flux-style best effort, and the next value set on the artifact is tried anew.
    pub async fn send(self, client: kube::Client) {
        let api: Api<ExternalSource> = Api::namespaced(client, &self.namespace);
        let patch = json!({"metadata": {"annotations": {REQUESTED_AT: &self.requested_at}}});
        match api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => tracing::info!(
                namespace = %self.namespace, name = %self.name, requested_at = %self.requested_at,
                "reconcile requested on the ExternalArtifact handed on to its ExternalSource"
            ),
            Err(e) => tracing::warn!(
                namespace = %self.namespace, name = %self.name, error = %e,
                "could not hand a reconcile request on from the ExternalArtifact"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::controller::api::{ExternalSourceSpec, ExternalSourceStatus};

    fn source(uid: &str, annotation: Option<&str>, handled: Option<&str>) -> ExternalSource {
        let spec: ExternalSourceSpec = serde_json::from_value(
            json!({"interval": "1m", "generator": {"type": "http", "http": {"url": "http://a"}}}),
        )
        .unwrap();
        let mut es = ExternalSource::new("src", spec);
        es.metadata.namespace = Some("ns".into());
        es.metadata.uid = Some(uid.into());
        if let Some(v) = annotation {
            es.annotations_mut().insert(REQUESTED_AT.into(), v.into());
        }
        es.status =
            Some(ExternalSourceStatus { last_handled_reconcile_at: handled.map(Into::into), ..Default::default() });
        es
    }

    fn sources(es: ExternalSource) -> Store<ExternalSource> {
        let (reader, mut writer) = store();
        writer.apply_watcher_event(&Event::Apply(es));
        reader
    }

    fn artifact(owner_kind: &str, owner_uid: &str, requested: Option<&str>) -> PartialObjectMeta<ExternalArtifact> {
        let mut ea: PartialObjectMeta<ExternalArtifact> =
            serde_json::from_value(json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata"})).unwrap();
        ea.metadata.name = Some("src".into());
        ea.metadata.namespace = Some("ns".into());
        ea.metadata.owner_references = Some(vec![OwnerReference {
            api_version: ExternalSource::api_version(&()).into_owned(),
            kind: owner_kind.into(),
            name: "src".into(),
            uid: owner_uid.into(),
            controller: Some(true),
            ..Default::default()
        }]);
        if let Some(v) = requested {
            ea.annotations_mut().insert(REQUESTED_AT.into(), v.into());
        }
        ea
    }

    #[test]
    fn a_new_request_on_the_artifact_goes_to_its_source() {
        let got =
            forward(&artifact("ExternalSource", "u1", Some("t2")), &sources(source("u1", Some("t1"), Some("t1"))));
        let want = Forward { namespace: "ns".into(), name: "src".into(), requested_at: "t2".into() };
        assert_eq!(got, Some(want));
    }

    #[test]
    fn a_request_already_given_or_handled_is_not_sent_again() {
        let ea = artifact("ExternalSource", "u1", Some("t1"));
        assert_eq!(forward(&ea, &sources(source("u1", Some("t1"), None))), None, "already given");
        assert_eq!(forward(&ea, &sources(source("u1", None, Some("t1")))), None, "already handled");
    }

    #[test]
    fn only_artifacts_of_a_known_source_hand_requests_on() {
        let known = || sources(source("u1", None, None));
        assert_eq!(forward(&artifact("ExternalSource", "u1", None), &known()), None, "no request");
        assert_eq!(forward(&artifact("GitRepository", "u1", Some("t")), &known()), None, "another owner kind");
        assert_eq!(forward(&artifact("ExternalSource", "u0", Some("t")), &known()), None, "a predecessor's artifact");
        let (empty, _writer) = store::<ExternalSource>();
        assert_eq!(forward(&artifact("ExternalSource", "u1", Some("t")), &empty), None, "unknown source");
    }
}
