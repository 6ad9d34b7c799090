//! The `flux` CLI (built from flux2 by `tests/testenv.sh flux`) on our objects: a real
//! kube-apiserver, our `externalsource-controller` binary, and a real kustomize-controller
//! applying one of our ExternalArtifacts.
//!
//! - `flux get sources external -A` (and `get sources all`, `--status-selector`) lists our
//!   ExternalArtifacts with their Ready state, revision, message and the ExternalSource behind
//!   them;
//! - `flux trace` from a ConfigMap the Kustomization applied leads to the Kustomization, our
//!   ExternalArtifact (with the upstream URL as "Origin Source") and, through its
//!   `spec.sourceRef`, names the ExternalSource;
//! - `flux events` lists Kubernetes Events only for the kinds flux2 knows (neither ExternalArtifact
//!   nor ExternalSource is one of them), so ours are left out although they are there;
//! - `flux reconcile kustomization` works, `--with-source` refuses an ExternalArtifact source.
//!
//! docs/usage.md ("With the flux CLI") says the same to users. Needs the controller binary
//! (`cargo build -p externalsource-controller --all-features`) and `tests/testenv.sh flux`.

use std::process::Output;
use std::time::Duration;

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::binary::ControllerProcess;
use externalsource_tests::controlplane::testenv_cache;
use externalsource_tests::flux::{cli, start_controller, table_rows};
use externalsource_tests::process::{target_dir, wait_http_ok};
use externalsource_tests::sources::{request_reconcile, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, Upstream, eventually};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::{Value, json};

/// Longest wait for kustomize-controller or our controller to act.
const WAIT: Duration = Duration::from_secs(60);
const CONFIGMAP_YAML: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-api\ndata:\n  greeting: hello from an API\n";

fn dynamic(client: &kube::Client, ns: &str, group: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, "v1", kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, plural))
}

fn ready_condition(obj: &DynamicObject) -> Option<&Value> {
    obj.data.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == "Ready")
}

fn text(obj: &DynamicObject, pointer: &str) -> String {
    obj.data.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(what: &str, out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: exit {}\nstdout:\n{}\nstderr:\n{err}", out.status, stdout(&out));
    stdout(&out)
}

/// What flux2's `utils.TruncateHex` makes of `s`: every word of 40 to 128 lowercase hex digits
/// cut to its first 8 (digests in revisions and messages).
fn truncate_hex(s: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let hex = word.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if hex && (40..=128).contains(&word.len()) {
            out.push_str(&word[..8]);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in s.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `Key: value` lines of `flux trace`, in order (the value trimmed).
fn trace_fields(report: &str) -> Vec<(String, String)> {
    report.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect()
}

/// The ExternalArtifact `name` once Ready has `status` (and, when Ready, an artifact).
async fn artifact_ready(api: &Api<DynamicObject>, name: &str, status: &str) -> DynamicObject {
    eventually(&format!("ExternalArtifact {name} Ready={status}"), WAIT, || async {
        let ea = api.get_opt(name).await.ok()??;
        let ready = ready_condition(&ea)?["status"] == status;
        let has_artifact = ea.data.pointer("/status/artifact/revision").is_some();
        (ready && has_artifact).then_some(ea)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_cli_lists_traces_and_reconciles_our_artifacts() {
    let cache = testenv_cache("flux");
    let logs = target_dir().join("flux-cli");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).expect("log dir");
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let kubeconfig = cp.kubeconfig_path();
    let ns = cp.namespace("flux-cli").await;
    let other = cp.namespace("flux-cli-other").await;
    let (kc, kc_health) = start_controller(&cache, "kustomize-controller", &kubeconfig, &logs.join("kc.log"));
    let _ours = ControllerProcess::start(&cp, &ns, &logs).await;
    wait_http_ok(&kc, &format!("http://127.0.0.1:{kc_health}/readyz"), WAIT).await;

    let manifests = Upstream::start(Reply::ok(CONFIGMAP_YAML)).await;
    let api_doc = Upstream::start(Reply::ok(r#"{"rates":{"EUR":1.0}}"#)).await;
    let flaky = Upstream::start(Reply::ok(r#"{"ok":true}"#)).await;
    let sources: Api<ExternalSource> = Api::namespaced(client.clone(), &ns);
    let other_sources: Api<ExternalSource> = Api::namespaced(client.clone(), &other);
    let extra = json!({"destinationPath": "configmap.yaml"});
    sources
        .create(&PostParams::default(), &source("app-config", &manifests.url("/cm.yaml"), extra))
        .await
        .expect("create");
    other_sources
        .create(&PostParams::default(), &source("rates", &api_doc.url("/rates"), json!({})))
        .await
        .expect("create");
    other_sources.create(&PostParams::default(), &source("flaky", &flaky.url("/x"), json!({}))).await.expect("create");
    let kustomizations = dynamic(&client, &ns, "kustomize.toolkit.fluxcd.io", "Kustomization", "kustomizations");
    let kustomization: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": "app", "namespace": ns},
        "spec": {
            "interval": "10m",
            "timeout": "30s",
            "sourceRef": {"kind": "ExternalArtifact", "name": "app-config"},
            "path": "./",
            "prune": true,
            "targetNamespace": ns,
        },
    }))
    .expect("Kustomization");
    kustomizations.create(&PostParams::default(), &kustomization).await.expect("create Kustomization");

    // A source that published once and then fails: Flux shows Ready=False with the last revision.
    wait_ready(&other_sources, "flaky", "True").await;
    flaky.set(Reply::status(503));
    request_reconcile(&other_sources, "flaky", "fail-once").await;
    let artifacts = dynamic(&client, &ns, "source.toolkit.fluxcd.io", "ExternalArtifact", "externalartifacts");
    let other_artifacts = dynamic(&client, &other, "source.toolkit.fluxcd.io", "ExternalArtifact", "externalartifacts");
    let app = artifact_ready(&artifacts, "app-config", "True").await;
    let rates = artifact_ready(&other_artifacts, "rates", "True").await;
    let failing = artifact_ready(&other_artifacts, "flaky", "False").await;
    let revision = text(&app, "/status/artifact/revision");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    eventually("Kustomization app Ready at our revision", WAIT, || async {
        let ks = kustomizations.get("app").await.ok()?;
        let ready = ready_condition(&ks)?["status"] == "True";
        (ready && text(&ks, "/status/lastAppliedRevision") == revision).then_some(ks)
    })
    .await;
    configmaps.get("from-api").await.expect("the Kustomization applied the ConfigMap");

    // flux get sources external -A: one row per ExternalArtifact, digests cut to 8 hex digits.
    let row = |ns: &str, ea: &DynamicObject| {
        let ready = ready_condition(ea).expect("Ready");
        vec![
            ns.to_owned(),
            ea.metadata.name.clone().unwrap_or_default(),
            truncate_hex(&text(ea, "/status/artifact/revision")),
            format!("ExternalSource/{ns}/{}", ea.metadata.name.as_deref().unwrap_or_default()),
            ready["status"].as_str().unwrap_or_default().to_owned(),
            truncate_hex(ready["message"].as_str().unwrap_or_default()),
        ]
    };
    let table =
        table_rows(&ok("flux get sources external -A", cli(&kubeconfig, &["get", "sources", "external", "-A"]).await));
    assert_eq!(table[0], ["NAMESPACE", "NAME", "REVISION", "SOURCE", "READY", "MESSAGE"], "{table:?}");
    let mut listed = table[1..].to_vec();
    listed.sort();
    let mut expected = vec![row(&ns, &app), row(&other, &failing), row(&other, &rates)];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(revision.starts_with("latest@sha256:") && revision.len() == "latest@sha256:".len() + 64, "{revision}");
    let failing_row = &expected.iter().find(|r| r[1] == "flaky").expect("flaky")[..];
    assert_eq!(failing_row[4], "False", "the failing source's artifact is not Ready: {failing_row:?}");
    assert!(!failing_row[2].is_empty(), "it still shows the last good revision: {failing_row:?}");

    // One namespace (no NAMESPACE column), the status selector, and `get sources all`.
    let one = table_rows(&ok("get -n", cli(&kubeconfig, &["get", "sources", "external", "-n", &ns]).await));
    assert_eq!(one[0], ["NAME", "REVISION", "SOURCE", "READY", "MESSAGE"], "{one:?}");
    assert_eq!(one[1..], [row(&ns, &app)[1..].to_vec()], "only {ns}'s artifact");
    let not_ready = table_rows(&ok(
        "get --status-selector",
        cli(&kubeconfig, &["get", "sources", "external", "-A", "--status-selector", "ready=false"]).await,
    ));
    assert_eq!(not_ready[1..], [row(&other, &failing)], "only the failing one");
    let all = ok("get sources all", cli(&kubeconfig, &["get", "sources", "all", "-n", &other]).await);
    let kinds: Vec<String> = table_rows(&all)[1..].iter().map(|r| r[0].clone()).collect();
    assert_eq!(kinds, ["externalartifact/flaky", "externalartifact/rates"], "{all}");

    // flux trace: ConfigMap -> Kustomization -> ExternalArtifact -> (named) ExternalSource.
    let report = ok("flux trace", cli(&kubeconfig, &["trace", "configmap", "from-api", "-n", &ns]).await);
    let fields = trace_fields(&report);
    let want: Vec<(String, String)> = [
        ("Object", "ConfigMap/from-api".to_owned()),
        ("Namespace", ns.clone()),
        ("Status", "Managed by Flux".to_owned()),
        ("Kustomization", "app".to_owned()),
        ("Namespace", ns.clone()),
        ("Target", ns.clone()),
        ("Path", "./".to_owned()),
        ("Revision", revision.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(fields[..want.len()], want[..], "{report}");
    let artifact_at = fields.iter().position(|(k, _)| k == "ExternalArtifact").unwrap_or_else(|| panic!("{report}"));
    let tail = &fields[artifact_at..];
    assert_eq!(tail[0].1, "app-config", "{report}");
    assert_eq!(tail[1], ("Namespace".to_owned(), ns.clone()), "{report}");
    assert_eq!(tail[2], ("Source".to_owned(), format!("ExternalSource/{ns}/app-config")), "{report}");
    assert_eq!(tail[3], ("Revision".to_owned(), revision.clone()), "{report}");
    // The artifact's `org.opencontainers.image.source` metadata: the upstream URL.
    assert_eq!(tail[4], ("Origin Source".to_owned(), manifests.url("/cm.yaml")), "{report}");
    assert!(tail[5].0 == "Status" && tail[5].1.starts_with("Last reconciled at"), "{report}");
    let ea_message = ready_condition(&app).expect("Ready")["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(tail[6], ("Message".to_owned(), ea_message), "{report}");
    assert_eq!(tail.len(), 7, "nothing past the ExternalArtifact: the CLI does not read the ExternalSource\n{report}");

    // flux reconcile: the Kustomization yes; `--with-source` does not know ExternalArtifact.
    let reconciled = cli(&kubeconfig, &["reconcile", "kustomization", "app", "-n", &ns]).await;
    let said = String::from_utf8_lossy(&reconciled.stderr).into_owned();
    ok("reconcile kustomization", reconciled);
    assert!(said.contains(&format!("applied revision {revision}")), "{said}");
    let with_source = cli(&kubeconfig, &["reconcile", "kustomization", "app", "--with-source", "-n", &ns]).await;
    assert!(!with_source.status.success(), "--with-source cannot reconcile an ExternalArtifact");
    let refused = String::from_utf8_lossy(&with_source.stderr);
    assert!(refused.contains("cannot reconcile source of kind ExternalArtifact"), "{refused}");

    // flux events: our Events are there (regarding the ExternalSource)...
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let ours = eventually("our NewArtifact Event for app-config", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let ours: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some("ExternalSource")))
            .collect();
        ours.iter().any(|e| e.reason.as_deref() == Some("NewArtifact")).then_some(ours)
    })
    .await;
    assert!(ours.iter().all(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("app-config")));
    // ...but the CLI shows only the kinds it knows: kustomize-controller's Kustomization events.
    let listed = table_rows(&ok("flux events -A", cli(&kubeconfig, &["events", "-A"]).await));
    assert_eq!(listed[0], ["NAMESPACE", "LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], "{listed:?}");
    let objects: Vec<&str> = listed[1..].iter().map(|r| r[4].as_str()).collect();
    assert!(objects.contains(&"Kustomization/app"), "{listed:?}");
    assert!(
        objects.iter().all(|o| !o.starts_with("ExternalSource/") && !o.starts_with("ExternalArtifact/")),
        "flux events lists no ExternalSource/ExternalArtifact Event: {listed:?}"
    );
    let for_kustomization = table_rows(&ok(
        "flux events --for Kustomization/app",
        cli(&kubeconfig, &["events", "--for", "Kustomization/app", "-n", &ns]).await,
    ));
    assert!(for_kustomization[1..].iter().all(|r| r[3] == "Kustomization/app"), "{for_kustomization:?}");
    let for_artifact = cli(&kubeconfig, &["events", "--for", "ExternalArtifact/app-config", "-n", &ns]).await;
    assert!(!for_artifact.status.success(), "ExternalArtifact is not one of flux events' kinds");
    let refused = String::from_utf8_lossy(&for_artifact.stderr);
    assert!(refused.contains("'ExternalArtifact' is not a recognized Flux kind"), "{refused}");
    kc.assert_running();
}
