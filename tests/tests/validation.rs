//! `spec.validate`: an upstream that answers 200 with an HTML login page, an empty list or a
//! payload its schema refuses never replaces a good artifact. The rules' jq and JSON Schema run in
//! the sandbox's worker (the built controller binary); the controller runs in this process.

use externalsource_core::controller::api::{ExternalArtifact, ExternalSource};
use externalsource_core::isolated::transform::TransformError;
use externalsource_core::isolated::transform::sandbox::Sandbox;
use externalsource_tests::controller::{Options, test_transform_limits};
use externalsource_tests::process::controller_binary;
use externalsource_tests::sources::{artifact, download, ready, request_reconcile, source, wait_failing, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, sha256};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const JSON: &str = "application/json; charset=utf-8";

/// Every item has a lower-case name.
const ITEMS_SCHEMA: &str = r#"{
    "type": "object",
    "required": ["items"],
    "properties": {"items": {"type": "array", "items": {
        "type": "object", "required": ["name"], "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}}
    }}}
}"#;

fn json_reply(body: &str) -> Reply {
    Reply::ok(body.to_owned()).with_header("Content-Type", JSON)
}

fn config_map(name: &str, key: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {key: value}})).unwrap()
}

fn validate_all() -> serde_json::Value {
    json!({"validate": {
        "contentType": "application/json",
        "jq": ".items | length > 0",
        "jsonSchema": {"configMapRef": {"name": "schemas", "key": "items.json"}},
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_fails_a_rule_never_replaces_the_last_good_artifact() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("validate").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(json_reply(r#"{"items":[{"name":"a"}]}"#)).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(cp.client(), &ns);
    config_maps.create(&PostParams::default(), &config_map("schemas", "items.json", ITEMS_SCHEMA)).await.unwrap();
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("guarded", &fixture.url("/items"), validate_all())).await.unwrap();
    let good = artifact(&wait_ready(&api, "guarded", "True").await);
    let (code, good_bytes) = download(&good.url).await;
    assert_eq!((code, sha256(&good_bytes)), (200, good.digest.clone()));

    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    let stored = || async {
        let dir = externalsource_core::key::artifact_dir(&ns, "guarded");
        ctl.storage.list(&dir).await.unwrap().into_iter().map(|o| o.key.to_string()).collect::<Vec<_>>()
    };
    let stored_before = stored().await;
    // Each refusal: ValidationFailed naming the rule, the same artifact in both statuses and
    // still served, nothing new stored.
    let refused = |token: &'static str, reply: Reply, expected: &'static str| {
        let (api, eas, good, good_bytes, fixture) = (&api, &eas, &good, &good_bytes, &fixture);
        async move {
            fixture.set(reply);
            let es = request_reconcile(api, "guarded", token).await;
            let (status, reason, message) = ready(&es).unwrap();
            assert_eq!((status.as_str(), reason.as_str()), ("False", "ValidationFailed"), "{token}: {message}");
            assert!(message.starts_with(expected), "{token}: {message:?} starts with {expected:?}");
            assert_eq!(artifact(&es).revision, good.revision, "{token}: a new revision was recorded");
            let ea = eas.get("guarded").await.unwrap();
            let published = ea.status.and_then(|s| s.artifact).expect("the ExternalArtifact keeps its artifact");
            assert_eq!((published.revision, published.digest), (good.revision.clone(), good.digest.clone()));
            assert_eq!(download(&good.url).await, (200, good_bytes.clone()), "{token}: the last good artifact");
            message
        }
    };
    let html = Reply::ok("<html><body>Sign in</body></html>").with_header("Content-Type", "text/html; charset=utf-8");
    let message = refused("html", html, "spec.validate.contentType: ").await;
    assert_eq!(
        message,
        "spec.validate.contentType: expected \"application/json\", received \"text/html; charset=utf-8\"; retrying at \
         the next interval"
    );
    let message = refused("empty", json_reply(r#"{"items":[]}"#), "spec.validate.jq ").await;
    assert!(message.starts_with("spec.validate.jq \".items | length > 0\" yielded false, not true"), "{message}");
    let bad_item = json_reply(r#"{"items":[{"name":"a"},{"name":"B"}]}"#);
    let message = refused("schema", bad_item, "spec.validate.jsonSchema ").await;
    assert!(
        message.starts_with(
            "spec.validate.jsonSchema (ConfigMap \"schemas\" key \"items.json\"): the payload does not hold at \
             instance path \"/items/1/name\": "
        ),
        "{message}"
    );
    assert_eq!(stored().await, stored_before, "a refused payload is never stored");

    // Good again: published as a new revision.
    fixture.set(json_reply(r#"{"items":[{"name":"a"},{"name":"b"}]}"#));
    let es = request_reconcile(&api, "guarded", "good").await;
    assert_eq!(ready(&es).unwrap().1, "Succeeded");
    let recovered = artifact(&es);
    assert_ne!(recovered.revision, good.revision);
    let (code, bytes) = download(&recovered.url).await;
    assert_eq!((code, sha256(&bytes)), (200, recovered.digest));
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_config_map_is_watched_and_a_hostile_schema_stays_in_the_sandbox() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("schemas").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(json_reply(r#"{"items":[{"name":"a"}]}"#)).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(cp.client(), &ns);
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("early", &fixture.url("/items"), validate_all())).await.unwrap();
    let message = wait_failing(&api, "early", "ConfigMapNotFound").await;
    assert!(message.starts_with("spec.validate.jsonSchema.configMapRef: ConfigMap \"schemas\" not found"), "{message}");

    // Creating the ConfigMap rechecks the stalled source at once; so does each edit.
    config_maps.create(&PostParams::default(), &config_map("schemas", "items.json", ITEMS_SCHEMA)).await.unwrap();
    let first = artifact(&wait_ready(&api, "early", "True").await);
    let stricter = r#"{"type": "object", "required": ["items", "version"]}"#;
    let patch = json!({"data": {"items.json": stricter}});
    config_maps.patch("schemas", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let message = wait_failing(&api, "early", "ValidationFailed").await;
    assert!(message.contains("at instance path \"\" (the document itself): "), "{message}");
    assert!(message.contains("version"), "{message}");
    assert_eq!(artifact(&api.get("early").await.unwrap()).revision, first.revision);

    // Hostile schemas: each a spec problem or a limit, named; the controller carries on.
    let nested = format!("{}{}", "{\"items\":".repeat(200), "}".repeat(200));
    let huge = format!("{{\"description\": \"{}\"}}", "x".repeat(300 << 10));
    let cases: [(&str, String, &str, &str); 4] = [
        ("nested", nested, "InvalidSpec", "the schema is not JSON: recursion limit exceeded"),
        ("huge", huge, "InvalidSpec", "over the limit of 256KiB (transform.max_schema_size)"),
        ("file-ref", r#"{"$ref": "file:///etc/hostname"}"#.into(), "InvalidSpec", "references to other documents"),
        // Exponential for a backtracking engine; boon's regexes match in linear time.
        ("regex", r#"{"properties": {"x": {"pattern": "^(a+)+$"}}}"#.into(), "Ready", ""),
    ];
    let slow = format!(r#"{{"items":[{{"name":"a"}}],"x":"{}b"}}"#, "a".repeat(50_000));
    fixture.set(json_reply(&slow));
    for (name, schema, _, _) in &cases {
        config_maps.create(&PostParams::default(), &config_map(name, "s.json", schema)).await.unwrap();
        let spec = json!({"validate": {"jsonSchema": {"configMapRef": {"name": name, "key": "s.json"}}}});
        api.create(&PostParams::default(), &source(name, &fixture.url("/items"), spec)).await.unwrap();
    }
    for (name, _, reason, needle) in &cases {
        if *reason == "Ready" {
            let es = wait_ready(&api, name, "False").await;
            let (_, reason, message) = ready(&es).unwrap();
            assert_eq!(reason, "ValidationFailed", "{name}: {message}");
            assert!(message.contains("at instance path \"/x\""), "{name}: {message}");
            continue;
        }
        let message = wait_failing(&api, name, reason).await;
        assert!(message.contains(needle), "{name}: {message:?} names {needle:?}");
    }
    // Still reconciling everyone else.
    fixture.set(json_reply(r#"{"items":[{"name":"a"}]}"#));
    api.create(&PostParams::default(), &source("later", &fixture.url("/later"), json!({}))).await.unwrap();
    wait_ready(&api, "later", "True").await;
    ctl.stop().await;
}

#[tokio::test]
async fn the_worker_checks_schemas_and_reports_the_first_instance_path() {
    let sandbox = Sandbox::new(controller_binary(), test_transform_limits());
    assert_eq!(sandbox.check_schema(ITEMS_SCHEMA, br#"{"items":[{"name":"a"}]}"#).await, Ok(()));
    let got = sandbox.check_schema(ITEMS_SCHEMA, br#"{"items":[{"name":"a"},{}]}"#).await;
    assert!(matches!(&got, Err(TransformError::Invalid { path, .. }) if path == "/items/1"), "{got:?}");
    let got = sandbox.check_schema(ITEMS_SCHEMA, b"<html></html>").await;
    assert!(matches!(got, Err(TransformError::Input(_))), "{got:?}");
    let got = sandbox.check_schema("{\"type\": 7}", b"1").await;
    assert!(matches!(got, Err(TransformError::Compile(_))), "{got:?}");
    // A predicate is an ordinary filter in the same worker.
    assert_eq!(sandbox.run(".items | length > 0", br#"{"items":[1]}"#, 1024).await.unwrap(), b"true\n");
}
