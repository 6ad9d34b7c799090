//! Objects this controller did not write, met as a user meets them: the Go predecessor's
//! ExternalSources and ExternalArtifacts (payload-hash digest, URL as path, bare-hex revision, no
//! size), another producer's ExternalArtifact, and an ExternalSource stored under an older schema.
//! The real binary is started in their presence, as after an image swap.

use std::time::Duration;

use externalsource_core::controller::api::FINALIZER;
use externalsource_core::controller::api::{ExternalArtifact, ExternalSource};
use externalsource_core::controller::writer::FIELD_MANAGER;
use externalsource_tests::binary::ControllerProcess;
use externalsource_tests::sources::{WAIT, artifact, download, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, Upstream, eventually, sha256};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// An ExternalArtifact as the predecessor wrote it for `es`: owned by the source, its artifact
/// at a URL that is also its path, the payload's hash as digest and revision, no size.
fn predecessor_artifact(es: &ExternalSource, payload_hex: &str) -> Value {
    let ns = es.metadata.namespace.clone().unwrap_or_default();
    let name = es.metadata.name.clone().unwrap_or_default();
    let url = format!(
        "http://externalsource-controller-manager-0.artifacts.{ns}.svc.cluster.local:8080/artifacts/{ns}/{name}/{payload_hex}.tar.gz"
    );
    json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "ExternalArtifact",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": [{
            "apiVersion": "source.flux.oddkin.co/v1alpha1", "kind": "ExternalSource", "name": name,
            "uid": es.metadata.uid, "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"sourceRef": {"apiVersion": "source.flux.oddkin.co/v1alpha1", "kind": "ExternalSource",
                               "name": name, "namespace": ns}},
        "status": {"artifact": {"url": url, "path": url, "revision": payload_hex, "digest": format!("sha256:{payload_hex}"),
            "lastUpdateTime": "2026-11-01T00:00:00Z",
            "metadata": {"created": "2026-11-01T00:00:00Z", "size": "180", "contentHash": payload_hex}}},
    })
}

/// Creates `object` and writes its `status` through the status subresource, as its writer did.
async fn create_with_status<K>(api: &Api<K>, object: Value) -> K
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize
        + std::fmt::Debug,
{
    let name = object["metadata"]["name"].as_str().expect("name").to_owned();
    let typed: K = serde_json::from_value(object.clone()).expect("object");
    api.create(&PostParams::default(), &typed).await.expect("create");
    let status = json!({"status": object["status"]});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("status")
}

/// Makes the schema at `path` (property names from the root) of CRD `name` keep whatever it is
/// given, so an object can be stored in a shape the real schema refuses; returns the CRD as it
/// was, for [`restore`].
async fn loosen(crds: &Api<CustomResourceDefinition>, name: &str, path: &[&str]) -> CustomResourceDefinition {
    let original = crds.get(name).await.expect("crd");
    let mut loose = serde_json::to_value(&original).expect("crd");
    let mut at = &mut loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for property in path {
        at = &mut at["properties"][*property];
    }
    *at = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let loose: CustomResourceDefinition = serde_json::from_value(loose).expect("crd");
    crds.replace(name, &PostParams::default(), &loose).await.expect("loosen the CRD");
    original
}

/// Puts a CRD [`loosen`] changed back; the objects stored meanwhile keep their shape.
async fn restore(crds: &Api<CustomResourceDefinition>, mut original: CustomResourceDefinition) {
    let name = original.metadata.name.clone().expect("name");
    original.metadata.resource_version = crds.get(&name).await.expect("crd").metadata.resource_version;
    crds.replace(&name, &PostParams::default(), &original).await.expect("restore the CRD");
}

/// Retries `create` until the API server serves the CRD's current schema.
async fn create_raw(api: &Api<kube::api::DynamicObject>, object: &Value) {
    eventually("the object stored", WAIT, || async {
        api.create(&PostParams::default(), &serde_json::from_value(object.clone()).ok()?).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_predecessors_objects_converge_on_the_first_reconcile_and_delete() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("migration").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = r#"{"kept":"as before"}"#;
    // The upstream answers the ETag the predecessor last handled: a controller that trusted the
    // old status would send If-None-Match, get a 304 and never publish a servable artifact.
    let upstream = Upstream::start(Reply::ok(payload).with_etag("\"e1\"")).await;
    let payload_hex = &sha256(payload.as_bytes())["sha256:".len()..];
    let sources: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let artifacts: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);

    let mut names = Vec::new();
    for name in ["legacy-a", "legacy-b"] {
        let mut object = serde_json::to_value(source(name, &upstream.url("/data.json"), json!({}))).unwrap();
        object["metadata"]["finalizers"] = json!([FINALIZER]);
        // The predecessor's status: no digest, path or size in its artifact.
        object["status"] = json!({
            "artifact": {"url": format!("http://old/artifacts/{ns}/{name}/{payload_hex}.tar.gz"), "revision": payload_hex,
                         "lastUpdateTime": "2026-11-01T00:00:00Z",
                         "metadata": {"created": "2026-11-01T00:00:00Z", "size": "180", "contentHash": payload_hex}},
            "lastHandledETag": "\"e1\"",
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "Artifact is ready",
                            "lastTransitionTime": "2026-11-01T00:00:00Z", "observedGeneration": 1}],
        });
        let es = create_with_status(&sources, object).await;
        create_with_status(&artifacts, predecessor_artifact(&es, payload_hex)).await;
        names.push(name);
    }
    // Another producer's ExternalArtifact beside them: no size, no metadata, no owner (Flux's
    // CRD requires a digest).
    let foreign = json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "ExternalArtifact",
        "metadata": {"name": "theirs", "namespace": ns},
        "spec": {"sourceRef": {"kind": "Bucket", "name": "elsewhere"}},
        "status": {"artifact": {"url": "http://elsewhere/a.tar.gz", "path": "a.tar.gz", "revision": "r1", "digest": "sha256:00",
                                "lastUpdateTime": "2026-11-01T00:00:00Z"}},
    });
    let theirs = create_with_status(&artifacts, foreign).await;

    // The start check is the function the binary calls before anything else.
    externalsource_core::controller::check_crds(&cp.client()).await.expect("foreign objects never stop a start");
    let ctl = ControllerProcess::start(&cp, &ns, dir.path()).await;

    for name in &names {
        let es = wait_ready(&sources, name, "True").await;
        let art = eventually(&format!("{name} republished"), WAIT, || async {
            let es = sources.get(name).await.ok()?;
            let art = es.status.as_ref()?.artifact.clone()?;
            art.path.starts_with("artifacts/").then_some(art)
        })
        .await;
        assert_eq!(es.metadata.finalizers.as_deref(), Some(&[FINALIZER.to_owned()][..]), "the one finalizer, shared");
        let (code, bytes) = download(&art.url).await;
        assert_eq!(code, 200, "{name}: served");
        assert_eq!(sha256(&bytes), art.digest, "{name}: the digest is the served bytes' digest");
        assert!(art.url.starts_with(&ctl.base_url), "{name}: our URL, not the predecessor's: {}", art.url);
        assert_eq!(art.size, Some(bytes.len() as i64));
        assert_eq!(art.revision, format!("e1@{}", art.digest), "{name}: our revision format");
        let ea = artifacts.get(name).await.expect("ExternalArtifact");
        let ea_art = ea.status.as_ref().and_then(|s| s.artifact.clone()).expect("EA artifact");
        assert_eq!(ea_art, art, "{name}: the ExternalArtifact publishes the same artifact");
        let ea_ready = ea.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
        assert_eq!(ea_ready.map(|c| c.status), Some("True".to_owned()), "{name}: the ExternalArtifact gets a Ready");
        // Every write names our field manager: managedFields say who wrote the status.
        let es = sources.get(name).await.expect("source");
        for (kind, fields) in
            [("ExternalSource", &es.metadata.managed_fields), ("ExternalArtifact", &ea.metadata.managed_fields)]
        {
            let ours = |f: &&ManagedFieldsEntry| f.manager.as_deref() == Some(FIELD_MANAGER);
            let status = fields.iter().flatten().filter(ours).any(|f| f.subresource.as_deref() == Some("status"));
            assert!(status, "{name}: {kind} status written as {FIELD_MANAGER}: {fields:?}");
        }
    }
    let untouched = artifacts.get("theirs").await.expect("the foreign ExternalArtifact");
    assert_eq!(untouched.metadata.resource_version, theirs.metadata.resource_version, "not ours: never written");

    // Deletion completes: our finalizer (the predecessor's name) is released, the artifact goes.
    let art = artifact(&sources.get("legacy-a").await.expect("source"));
    sources.delete("legacy-a", &DeleteParams::default()).await.expect("delete");
    eventually("legacy-a deleted", WAIT, || async { sources.get_opt("legacy-a").await.ok()?.is_none().then_some(()) })
        .await;
    eventually("its artifact gone", WAIT, || async { (download(&art.url).await.0 == 404).then_some(()) }).await;
    assert!(artifacts.get_opt("legacy-a").await.expect("get").is_none(), "its ExternalArtifact is deleted");
    ctl.process.assert_running();
}

/// The predecessor's chart shipped a CEL-era CRD (`transform {type, expression}`): such a stored
/// source does not parse as ours. It is reported by name and skipped; every other source is
/// reconciled, and the source itself once it is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_stored_under_an_older_schema_is_skipped_not_fatal() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("old-schema").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = Upstream::start(Reply::ok(r#"{"a":1}"#)).await;
    let sources: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client());

    // Loosen our CRD the way the old one was, store the old shape, then put ours back.
    let original = loosen(&crds, ExternalSource::crd_name(), &["spec", "transform"]).await;
    let old = json!({
        "apiVersion": "source.flux.oddkin.co/v1alpha1", "kind": "ExternalSource",
        "metadata": {"name": "cel-era", "namespace": ns},
        "spec": {"interval": "1h", "generator": {"type": "http", "http": {"url": upstream.url("/old")}},
                 "transform": {"type": "cel", "expression": "data.items"}},
    });
    let dynamic = kube::api::ApiResource::erase::<ExternalSource>(&());
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(cp.client(), &ns, &dynamic);
    create_raw(&raw, &old).await;
    restore(&crds, original).await;
    let stored = raw.get("cel-era").await.expect("stored");
    assert_eq!(stored.data["spec"]["transform"].get("jq"), None, "the object keeps a shape we cannot read");

    sources.create(&PostParams::default(), &source("current", &upstream.url("/new"), json!({}))).await.expect("create");
    externalsource_core::controller::check_crds(&cp.client()).await.expect("an unreadable source never stops a start");
    let ctl = ControllerProcess::start(&cp, &ns, dir.path()).await;
    wait_ready(&sources, "current", "True").await;
    ctl.process.assert_running();
    let log = ctl.process.log_text();
    let reports = log.lines().filter(|l| l.contains("object skipped") && l.contains("cel-era")).count();
    assert_eq!(reports, 1, "reported once, by name:\n{log}");

    // Fixed with the current field (the API server prunes the old ones on write): reconciled.
    let fix = json!({"spec": {"transform": {"jq": "."}}});
    raw.patch("cel-era", &PatchParams::default(), &Patch::Merge(&fix)).await.expect("fix");
    let es = wait_ready(&sources, "cel-era", "True").await;
    assert_eq!(es.spec.transform.map(|t| t.jq), Some(".".to_owned()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    ctl.process.assert_running();
}

/// An ExternalArtifact of ours whose stored content does not parse (its status written under
/// another schema) is written afresh, not a reconcile error for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_artifact_that_does_not_parse_is_rewritten() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("unparsable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = Upstream::start(Reply::ok(r#"{"b":2}"#)).await;
    let sources: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let artifacts: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client());
    let es =
        sources.create(&PostParams::default(), &source("junk", &upstream.url("/"), json!({}))).await.expect("create");

    let original = loosen(&crds, ExternalArtifact::crd_name(), &["status"]).await;
    let dynamic = kube::api::ApiResource::erase::<ExternalArtifact>(&());
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(cp.client(), &ns, &dynamic);
    let junk = json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "ExternalArtifact",
        "metadata": {"name": "junk", "namespace": ns, "ownerReferences": [{
            "apiVersion": "source.flux.oddkin.co/v1alpha1", "kind": "ExternalSource", "name": "junk",
            "uid": es.metadata.uid, "controller": true}]},
        "spec": {"sourceRef": {"kind": "ExternalSource", "name": "junk"}},
    });
    create_raw(&raw, &junk).await;
    let status = json!({"status": {"artifact": {"url": 1, "revision": ["not", "a", "string"], "size": "big"}}});
    raw.patch_status("junk", &PatchParams::default(), &Patch::Merge(&status)).await.expect("junk status");
    restore(&crds, original).await;
    assert!(
        matches!(artifacts.get("junk").await, Err(kube::Error::SerdeError(_))),
        "the stored artifact does not parse as Flux's type"
    );

    let _ctl = ControllerProcess::start(&cp, &ns, dir.path()).await;
    wait_ready(&sources, "junk", "True").await;
    let ea = eventually("the artifact rewritten", WAIT, || async { artifacts.get("junk").await.ok() }).await;
    let art = ea.status.and_then(|s| s.artifact).expect("a fresh artifact");
    let (code, bytes) = download(&art.url).await;
    assert_eq!((code, sha256(&bytes)), (200, art.digest));
    assert_eq!(ea.spec.source_ref.map(|r| r.namespace), Some(ns.clone()), "the spec is ours again");
}
