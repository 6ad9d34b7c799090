//! End to end with Flux: a real kube-apiserver, our `externalsource-controller` binary run out of
//! cluster (memory backend, then filesystem backend), and Flux's kustomize-controller consuming the
//! `ExternalArtifact` we publish. The upstream API is a loopback HTTP fixture serving a ConfigMap
//! manifest (and a release zip); a third test has helm-controller install a chart tarball served
//! on loopback through a HelmRelease `chartRef: {kind: ExternalArtifact}`.
//!
//! Needs the binary: `cargo build -p externalsource-controller --features filesystem`.
//! Run: `cargo test -p externalsource-tests --test flux_e2e -- --nocapture`.
//!
//! Each test prints `kustomization ready: revision=<rev> …` straight to the process's stderr, so the
//! line shows in CI logs with or without `--nocapture`. Child logs are kept under
//! `target/flux-e2e/<backend>/` and their last lines are printed when a test fails.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use externalsource_tests::controlplane::testenv_cache;
use externalsource_tests::process::{ChildProcess, controller_binary, linked_backends, target_dir, wait_http_ok};
use externalsource_tests::{ControlPlane, Reply, Upstream, free_port, sha256};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// One scenario at a time: the machine running CI may have 2 cores, and each scenario runs its own
/// apiserver, etcd, kustomize-controller and our controller.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest wait for any single step.
const STEP_TIMEOUT: Duration = Duration::from_secs(45);
const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
const SOURCE: &str = "app-config";
const KUSTOMIZATION: &str = "app";
const CONFIGMAP: &str = "e2e-config";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Filesystem,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Filesystem => "filesystem",
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_applies_artifacts_from_memory_backend() {
    let _serial = SERIAL.lock().await;
    scenario(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_applies_artifacts_from_filesystem_backend() {
    let _serial = SERIAL.lock().await;
    scenario(Backend::Filesystem).await;
}

/// A Helm chart tarball at a URL, published with `format: archive` and installed by a real
/// helm-controller (`--feature-gates=ExternalArtifact=true`) through a HelmRelease `chartRef`;
/// a new chart version upstream upgrades the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_controller_installs_a_chart_from_a_url() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let cache = testenv_cache("flux");
    let (logs, work, config) = scenario_dirs("helm");

    let cp = ControlPlane::start().await;
    let client = cp.client();
    let ns = cp.namespace("flux-e2e-helm").await;
    let upstream = Upstream::start(Reply::ok(chart_tgz(work.path(), "1.0.0", "one"))).await;
    let (helm_controller, hc_health) =
        start_flux_controller(&cache, "helm-controller", &cp.kubeconfig_path(), &logs.join("helm-controller.log"));
    let ours = OurController {
        bin: controller_binary(),
        config,
        kubeconfig: cp.kubeconfig_path(),
        log: logs.join("externalsource-controller.log"),
        namespace: ns.clone(),
        backend: Backend::Memory,
        storage_root: work.path().join("pvc"),
        server_port: free_port(),
        ops_port: free_port(),
    };
    let controller = ours.start().await;
    wait_http_ok(&helm_controller, &format!("http://127.0.0.1:{hc_health}/readyz"), STEP_TIMEOUT).await;
    let procs = [&helm_controller, &controller];

    let sources = dynamic_api(&client, &ns, "source.flux.oddkin.co", "v1alpha1", "ExternalSource", "externalsources");
    let artifacts =
        dynamic_api(&client, &ns, "source.toolkit.fluxcd.io", "v1", "ExternalArtifact", "externalartifacts");
    let releases = dynamic_api(&client, &ns, "helm.toolkit.fluxcd.io", "v2", "HelmRelease", "helmreleases");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);

    let spec = json!({
        "interval": "1h",
        "format": "archive",
        "generator": {"type": "http", "http": {"url": upstream.url("/greeter-1.0.0.tgz")}},
    });
    create_source(&sources, &ns, "chart", spec).await;
    let release: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": {"name": "greeter", "namespace": ns},
        "spec": {
            "interval": "5s",
            "chartRef": {"kind": "ExternalArtifact", "name": "chart"},
            "values": {"greeting": "hello from a HelmRelease"},
        },
    }))
    .expect("HelmRelease");
    releases.create(&PostParams::default(), &release).await.expect("create HelmRelease");

    let first = published(&artifacts, &procs, "chart", "the chart's artifact", |r| !r.is_empty()).await.revision;
    let cm = poll("the ConfigMap the chart renders", &procs, || async {
        configmaps.get_opt("greeter").await.map_err(|e| e.to_string())?.ok_or_else(|| "not installed yet".to_owned())
    })
    .await;
    let data = cm.data.unwrap_or_default();
    assert_eq!(
        data.get("greeting").map(String::as_str),
        Some("hello from a HelmRelease"),
        "the values reached the chart"
    );
    assert_eq!(data.get("chart").map(String::as_str), Some("one"));
    poll("the Helm release secret", &procs, || async {
        secrets
            .get_opt("sh.helm.release.v1.greeter.v1")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_owned())
    })
    .await;
    release_ready(&releases, &procs, &first).await;
    say(&format!("helmrelease ready: revision={first} (chart from a URL, after {:.1?})", started.elapsed()));

    // A new chart upstream: a new revision, and helm-controller upgrades the release.
    upstream.set(Reply::ok(chart_tgz(work.path(), "1.1.0", "two")));
    request_reconcile(&sources, "chart", &token("chart-1.1.0")).await;
    let second = published(&artifacts, &procs, "chart", "the new chart's artifact", |r| r != first).await.revision;
    poll("the upgraded ConfigMap", &procs, || async {
        let cm = configmaps.get("greeter").await.map_err(|e| e.to_string())?;
        let chart = cm.data.unwrap_or_default().get("chart").cloned();
        (chart.as_deref() == Some("two")).then_some(()).ok_or_else(|| format!("chart {chart:?}"))
    })
    .await;
    release_ready(&releases, &procs, &second).await;
    say(&format!("helmrelease upgraded: revision={second} (after {:.1?})", started.elapsed()));
}

/// A chart directory tarred by GNU tar: `greeter/` with a ConfigMap template.
fn chart_tgz(dir: &Path, version: &str, marker: &str) -> Vec<u8> {
    let chart = dir.join(format!("chart-{version}/greeter"));
    std::fs::create_dir_all(chart.join("templates")).expect("chart dir");
    std::fs::write(chart.join("Chart.yaml"), format!("apiVersion: v2\nname: greeter\nversion: {version}\n"))
        .expect("Chart.yaml");
    std::fs::write(chart.join("values.yaml"), "greeting: hello\n").expect("values.yaml");
    std::fs::write(
        chart.join("templates/configmap.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{ .Release.Name }}}}\ndata:\n  \
             greeting: {{{{ .Values.greeting | quote }}}}\n  chart: {marker:?}\n"
        ),
    )
    .expect("template");
    let tgz = dir.join(format!("greeter-{version}.tgz"));
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(chart.parent().expect("parent"))
        .arg("greeter")
        .status()
        .expect("tar");
    assert!(status.success(), "tar failed");
    std::fs::read(tgz).expect("chart tarball")
}

/// The HelmRelease Ready, its last attempted revision carrying our artifact's digest.
async fn release_ready(releases: &Api<DynamicObject>, procs: &[&ChildProcess], revision: &str) {
    let digest = revision.rsplit_once('@').map_or(revision, |(_, d)| d).to_owned();
    poll(&format!("HelmRelease greeter Ready at {revision}"), procs, || async {
        let hr = releases.get("greeter").await.map_err(|e| e.to_string())?;
        // helm-controller records the digest, and appends its first 12 hex digits to the chart
        // version as build metadata (`1.0.0+<hex>`).
        let attempted_digest = text(&hr, "/status/lastAttemptedRevisionDigest").unwrap_or_default();
        let attempted = text(&hr, "/status/lastAttemptedRevision").unwrap_or_default();
        let short = digest.trim_start_matches("sha256:").get(..12).unwrap_or_default().to_owned();
        if is_ready(&hr) && (attempted_digest == digest || attempted.ends_with(&format!("+{short}"))) {
            Ok(())
        } else {
            Err(format!("lastAttemptedRevision {attempted:?} (digest {attempted_digest:?}), {}", ready_summary(&hr)))
        }
    })
    .await
}

async fn create_source(sources: &Api<DynamicObject>, ns: &str, name: &str, spec: Value) {
    let source: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "source.flux.oddkin.co/v1alpha1",
        "kind": "ExternalSource",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .expect("ExternalSource");
    sources.create(&PostParams::default(), &source).await.expect("create ExternalSource");
}

/// A Kustomization applying the root of the ExternalArtifact `source` into `ns`, pruning.
async fn create_kustomization(kustomizations: &Api<DynamicObject>, ns: &str, name: &str, source: &str) {
    let kustomization: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "interval": "5s",
            "retryInterval": "2s",
            "timeout": "30s",
            "sourceRef": {"kind": "ExternalArtifact", "name": source},
            "path": "./",
            "prune": true,
            "wait": false,
            "targetNamespace": ns,
        },
    }))
    .expect("Kustomization");
    kustomizations.create(&PostParams::default(), &kustomization).await.expect("create Kustomization");
}

/// A fresh log directory `target/flux-e2e/<label>`, a temporary work directory, and in it our
/// controller's config file (everything on loopback).
fn scenario_dirs(label: &str) -> (PathBuf, tempfile::TempDir, PathBuf) {
    let logs = target_dir().join("flux-e2e").join(label);
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).expect("log dir");
    let work = tempfile::Builder::new().prefix(&format!("externalsource-flux-{label}-")).tempdir().expect("tempdir");
    let config = work.path().join("config.toml");
    std::fs::write(&config, "[server]\nbind_address = \"127.0.0.1\"\n\n[ops]\nbind_address = \"127.0.0.1\"\n")
        .expect("config file");
    (logs, work, config)
}

/// A line in the test output that libtest does not capture (written to fd 2 directly).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A value no earlier `requestedAt` had.
fn token(label: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{label}-{nanos}")
}

/// The upstream payload: a ConfigMap manifest without a namespace (the Kustomization sets it).
fn configmap_yaml(content: &str, backend: Backend) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {CONFIGMAP}\n  labels:\n    app.kubernetes.io/part-of: flux-e2e\n\
         data:\n  content: \"{content}\"\n  backend: {}\n",
        backend.name()
    )
}

fn dynamic_api(
    client: &kube::Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// `pointer` of the object as a string.
fn text(obj: &DynamicObject, pointer: &str) -> Option<String> {
    obj.data.pointer(pointer).and_then(Value::as_str).map(str::to_owned)
}

fn condition<'a>(obj: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    obj.data.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == type_)
}

/// `Ready=<status> (<reason>): <message>`, for progress and failure messages.
fn ready_summary(obj: &DynamicObject) -> String {
    match condition(obj, "Ready") {
        Some(c) => format!("Ready={} ({}): {}", c["status"], c["reason"], c["message"]),
        None => "no Ready condition".to_owned(),
    }
}

fn is_ready(obj: &DynamicObject) -> bool {
    condition(obj, "Ready").is_some_and(|c| c["status"] == "True")
}

/// Polls `check` every 200 ms until it returns `Ok`, checking that the child processes keep
/// running; on timeout panics with the last `Err` (what was seen instead).
async fn poll<T, F, Fut>(what: &str, procs: &[&ChildProcess], mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        for p in procs {
            p.assert_running();
        }
        let last = match check().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() > deadline {
            panic!("timed out after {STEP_TIMEOUT:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Our controller as a child process, with everything on loopback.
struct OurController {
    bin: PathBuf,
    config: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
    namespace: String,
    backend: Backend,
    storage_root: PathBuf,
    server_port: u16,
    ops_port: u16,
}

impl OurController {
    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server_port)
    }

    fn spawn(&self) -> ChildProcess {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--artifact-server-port")
            .arg(self.server_port.to_string())
            .arg("--ops-port")
            .arg(self.ops_port.to_string())
            .arg("--advertise-url")
            .arg(self.base_url());
        // Only the settings given here: nothing inherited from the shell that runs the tests.
        for var in [
            "RUST_LOG",
            "ARTIFACT_SERVER_ENABLED",
            "ARTIFACT_SERVER_PORT",
            "ARTIFACT_SERVER_ADVERTISE_URL",
            "SERVICE_NAME",
            "OPS_PORT",
            "CONTROLLER_CONCURRENCY",
            "POD_NAME",
            "HTTP_TIMEOUT",
            "HTTP_USER_AGENT",
            "FETCH_MAX_SIZE",
            "LOG_FORMAT",
            "PVC_STORAGE_PATH",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("LEADER_ELECTION", "false")
            .env("MIN_INTERVAL", "1s")
            .env("POD_NAMESPACE", &self.namespace)
            .env("STORAGE_BACKEND", self.backend.name())
            .env("LOG_LEVEL", "info,externalsource_core=debug,externalsource_controller=debug")
            .env("NO_COLOR", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        if self.backend == Backend::Filesystem {
            cmd.env("PVC_STORAGE_PATH", &self.storage_root);
        }
        ChildProcess::spawn("externalsource-controller", cmd, &self.log)
    }

    async fn start(&self) -> ChildProcess {
        let process = self.spawn();
        wait_http_ok(&process, &format!("http://127.0.0.1:{}/readyz", self.ops_port), STEP_TIMEOUT).await;
        process
    }
}

fn start_kustomize_controller(cache: &Path, kubeconfig: &Path, log: &Path) -> (ChildProcess, u16) {
    start_flux_controller(cache, "kustomize-controller", kubeconfig, log)
}

/// kustomize-controller or helm-controller, with the ExternalArtifact gate on, on loopback.
fn start_flux_controller(cache: &Path, name: &str, kubeconfig: &Path, log: &Path) -> (ChildProcess, u16) {
    externalsource_tests::flux::start_controller(cache, name, kubeconfig, log)
}

/// What the ExternalArtifact says.
#[derive(Debug, Clone, PartialEq)]
struct Published {
    revision: String,
    digest: String,
    url: String,
    path: String,
    size: u64,
    artifact: Value,
    resource_version: String,
}

/// The ExternalArtifact `name` when Ready=True with an artifact whose revision satisfies `accept`.
async fn published(
    artifacts: &Api<DynamicObject>,
    procs: &[&ChildProcess],
    name: &str,
    what: &str,
    accept: impl Fn(&str) -> bool,
) -> Published {
    poll(what, procs, || async {
        let ea = artifacts.get_opt(name).await.map_err(|e| e.to_string())?.ok_or("no ExternalArtifact")?;
        let revision = text(&ea, "/status/artifact/revision").unwrap_or_default();
        if !is_ready(&ea) || !accept(&revision) {
            return Err(format!("revision {revision:?}, {}", ready_summary(&ea)));
        }
        Ok(Published {
            revision,
            digest: text(&ea, "/status/artifact/digest").unwrap_or_default(),
            url: text(&ea, "/status/artifact/url").unwrap_or_default(),
            path: text(&ea, "/status/artifact/path").unwrap_or_default(),
            size: ea.data.pointer("/status/artifact/size").and_then(Value::as_u64).unwrap_or_default(),
            artifact: ea.data.pointer("/status/artifact").cloned().unwrap_or_default(),
            resource_version: ea.metadata.resource_version.clone().unwrap_or_default(),
        })
    })
    .await
}

/// Downloads the artifact as Flux does and checks its digest and size against the status.
async fn check_download(p: &Published) {
    let bytes = reqwest::get(&p.url)
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET {}: {e}", p.url))
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("GET {}: {e}", p.url));
    assert_eq!(sha256(&bytes), p.digest, "the served bytes hash to the published digest ({})", p.url);
    assert_eq!(bytes.len() as u64, p.size, "the served size is the published size ({})", p.url);
}

/// The Kustomization once kustomize-controller has handled `requested_at` (when given), is Ready
/// for the current generation and applied `revision`; returns it.
async fn kustomization_ready(
    kustomizations: &Api<DynamicObject>,
    procs: &[&ChildProcess],
    revision: &str,
    requested_at: Option<&str>,
) -> DynamicObject {
    let what = format!("Kustomization {KUSTOMIZATION} Ready with lastAppliedRevision {revision}");
    poll(&what, procs, || async {
        let ks = kustomizations.get(KUSTOMIZATION).await.map_err(|e| e.to_string())?;
        let applied = text(&ks, "/status/lastAppliedRevision").unwrap_or_default();
        let handled = text(&ks, "/status/lastHandledReconcileAt");
        let observed = ks.data.pointer("/status/observedGeneration").and_then(Value::as_i64);
        let current = observed.is_some() && observed == ks.metadata.generation;
        let handled_ok = requested_at.is_none_or(|t| handled.as_deref() == Some(t));
        if is_ready(&ks) && current && applied == revision && handled_ok {
            Ok(ks)
        } else {
            Err(format!(
                "lastAppliedRevision {applied:?}, lastHandledReconcileAt {handled:?}, observedGeneration {observed:?} \
                 (generation {:?}), {}",
                ks.metadata.generation,
                ready_summary(&ks)
            ))
        }
    })
    .await
}

/// The ConfigMap once its `content` is `content`.
async fn configmap_with(configmaps: &Api<ConfigMap>, procs: &[&ChildProcess], content: &str) -> ConfigMap {
    poll(&format!("ConfigMap {CONFIGMAP} with content {content:?}"), procs, || async {
        let cm = configmaps.get_opt(CONFIGMAP).await.map_err(|e| e.to_string())?.ok_or("no ConfigMap")?;
        let data = cm.data.clone().unwrap_or_default();
        if data.get("content").map(String::as_str) == Some(content) { Ok(cm) } else { Err(format!("data {data:?}")) }
    })
    .await
}

async fn request_reconcile(api: &Api<DynamicObject>, name: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {REQUESTED_AT: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("annotating {name} with {REQUESTED_AT}: {e}"));
}

/// Waits until our controller has handled `value` (status.lastHandledReconcileAt) with Ready=True.
async fn source_handled(sources: &Api<DynamicObject>, procs: &[&ChildProcess], value: &str) {
    poll(&format!("ExternalSource {SOURCE} to handle requestedAt {value}"), procs, || async {
        let es = sources.get(SOURCE).await.map_err(|e| e.to_string())?;
        let handled = text(&es, "/status/lastHandledReconcileAt");
        if handled.as_deref() == Some(value) && is_ready(&es) {
            Ok(())
        } else {
            Err(format!("lastHandledReconcileAt {handled:?}, {}", ready_summary(&es)))
        }
    })
    .await
}

async fn wait_gone<K>(api: &Api<K>, name: &str, procs: &[&ChildProcess], what: &str)
where
    K: Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    poll(&format!("{what} to be deleted"), procs, || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("still present".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

fn stored_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

async fn scenario(backend: Backend) {
    let started = Instant::now();
    let bin = controller_binary();
    let linked = linked_backends(&bin);
    assert!(
        linked.iter().any(|b| b == backend.name()),
        "{} links only {linked:?}, not {:?}: rebuild it with `cargo build -p externalsource-controller --features filesystem`",
        bin.display(),
        backend.name()
    );
    // Builds kustomize-controller into the testenv cache if needed (a no-op once cached).
    let cache = testenv_cache("flux");
    let (logs, work, config) = scenario_dirs(backend.name());
    say(&format!("flux-e2e[{}]: child logs in {}", backend.name(), logs.display()));

    let cp = ControlPlane::start().await;
    let client = cp.client();
    let ns = cp.namespace(&format!("flux-e2e-{}", backend.name())).await;

    // Upstream: with an ETag on the filesystem run (revision `<etag>@sha256:…`, conditional GETs),
    // without on the memory run (revision `latest@sha256:…`, full downloads of identical bytes).
    let etag = |n: u32| (backend == Backend::Filesystem).then(|| format!("\"cm-{n}\""));
    let reply = |content: &str, n: u32| {
        let reply = Reply::ok(configmap_yaml(content, backend));
        match etag(n) {
            Some(tag) => reply.with_etag(&tag),
            None => reply,
        }
    };
    let fixture = Upstream::start(reply("v1", 1)).await;

    let (kustomize_controller, kc_health) =
        start_kustomize_controller(&cache, &cp.kubeconfig_path(), &logs.join("kustomize-controller.log"));
    let ours = OurController {
        bin,
        config,
        kubeconfig: cp.kubeconfig_path(),
        log: logs.join("externalsource-controller.log"),
        namespace: ns.clone(),
        backend,
        storage_root: work.path().join("pvc"),
        server_port: free_port(),
        ops_port: free_port(),
    };
    let mut controller = ours.start().await;
    wait_http_ok(&kustomize_controller, &format!("http://127.0.0.1:{kc_health}/readyz"), STEP_TIMEOUT).await;

    let sources = dynamic_api(&client, &ns, "source.flux.oddkin.co", "v1alpha1", "ExternalSource", "externalsources");
    let artifacts =
        dynamic_api(&client, &ns, "source.toolkit.fluxcd.io", "v1", "ExternalArtifact", "externalartifacts");
    let kustomizations =
        dynamic_api(&client, &ns, "kustomize.toolkit.fluxcd.io", "v1", "Kustomization", "kustomizations");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    let spec = json!({
        "interval": "2s",
        "destinationPath": "configmap.yaml",
        "generator": {"type": "http", "http": {"url": fixture.url("/configmap.yaml")}},
    });
    create_source(&sources, &ns, SOURCE, spec).await;
    create_kustomization(&kustomizations, &ns, KUSTOMIZATION, SOURCE).await;

    // 1. First revision: published, served, applied.
    let procs = [&kustomize_controller, &controller];
    let first = published(&artifacts, &procs, SOURCE, "the first artifact", |r| !r.is_empty()).await;
    let id = etag(1).map_or_else(|| "latest".to_owned(), |t| t.trim_matches('"').to_owned());
    assert_eq!(first.revision, format!("{id}@{}", first.digest), "revision is <id>@<digest>");
    assert!(first.url.starts_with(&ours.base_url()), "artifact URL {} is on the advertised URL", first.url);
    assert_eq!(first.path, format!("artifacts/{ns}/{SOURCE}/{}.tar.gz", first.digest.trim_start_matches("sha256:")));
    check_download(&first).await;
    let ea = artifacts.get(SOURCE).await.expect("ExternalArtifact");
    assert_eq!(ea.data.pointer("/spec/sourceRef/kind"), Some(&json!("ExternalSource")), "{:?}", ea.data);
    assert_eq!(ea.data.pointer("/spec/sourceRef/name"), Some(&json!(SOURCE)), "{:?}", ea.data);
    let cm = configmap_with(&configmaps, &procs, "v1").await;
    assert_eq!(cm.data.unwrap_or_default().get("backend").map(String::as_str), Some(backend.name()));
    kustomization_ready(&kustomizations, &procs, &first.revision, None).await;
    say(&format!(
        "kustomization ready: revision={} (backend={}, kustomization={ns}/{KUSTOMIZATION}, after {:.1?})",
        first.revision,
        backend.name(),
        started.elapsed()
    ));

    // 2. Upstream changes: a new revision, and the ConfigMap follows.
    fixture.set(reply("v2", 2));
    let t = token("change");
    request_reconcile(&sources, SOURCE, &t).await;
    let second =
        published(&artifacts, &procs, SOURCE, "a new revision after the upstream changed", |r| r != first.revision)
            .await;
    assert_ne!(second.digest, first.digest);
    check_download(&second).await;
    request_reconcile(&kustomizations, KUSTOMIZATION, &t).await;
    let cm = configmap_with(&configmaps, &procs, "v2").await;
    kustomization_ready(&kustomizations, &procs, &second.revision, Some(&t)).await;
    say(&format!(
        "kustomization ready: revision={} (backend={}, kustomization={ns}/{KUSTOMIZATION}, after {:.1?})",
        second.revision,
        backend.name(),
        started.elapsed()
    ));

    // 3. Upstream unchanged: same revision, nothing re-applied, across several reconciles of both.
    let cm_version = cm.metadata.resource_version.clone().expect("ConfigMap resourceVersion");
    let requests_before = fixture.request_count();
    for round in 0..2 {
        let t = token(&format!("steady{round}"));
        request_reconcile(&sources, SOURCE, &t).await;
        source_handled(&sources, &procs, &t).await;
        request_reconcile(&kustomizations, KUSTOMIZATION, &t).await;
        kustomization_ready(&kustomizations, &procs, &second.revision, Some(&t)).await;
    }
    assert!(fixture.request_count() >= requests_before + 2, "our controller fetched upstream again");
    if backend == Backend::Filesystem {
        let last = fixture.requests().pop().expect("a request");
        assert_eq!(last.status, 304, "an unchanged upstream with an ETag answers 304 to a conditional GET");
    }
    let now = published(&artifacts, &procs, SOURCE, "the unchanged artifact", |_| true).await;
    assert_eq!(now, second, "the ExternalArtifact did not change while upstream did not");
    let cm = configmaps.get(CONFIGMAP).await.expect("ConfigMap");
    assert_eq!(cm.metadata.resource_version.as_deref(), Some(cm_version.as_str()), "the ConfigMap was not re-applied");

    // 4. Restart of our controller: the memory backend lost its artifacts and rebuilds the same
    //    bytes; the filesystem backend still holds them. Either way Flux sees the same revision.
    controller.kill();
    drop(controller);
    controller = ours.start().await;
    let procs = [&kustomize_controller, &controller];
    let t = token("restart");
    request_reconcile(&sources, SOURCE, &t).await;
    source_handled(&sources, &procs, &t).await;
    let after = published(&artifacts, &procs, SOURCE, "the artifact after a restart", |_| true).await;
    assert_eq!(after.revision, second.revision, "a restart does not change the revision");
    if backend == Backend::Filesystem {
        assert_eq!(after, second, "the filesystem backend kept the artifact across the restart");
    }
    check_download(&after).await;
    request_reconcile(&kustomizations, KUSTOMIZATION, &t).await;
    kustomization_ready(&kustomizations, &procs, &second.revision, Some(&t)).await;
    let cm = configmaps.get(CONFIGMAP).await.expect("ConfigMap");
    assert_eq!(cm.metadata.resource_version.as_deref(), Some(cm_version.as_str()), "nothing re-applied after restart");
    let dir = ours.storage_root.join(format!("artifacts/{ns}/{SOURCE}"));
    if backend == Backend::Filesystem {
        let files = stored_files(&dir);
        let current = ours.storage_root.join(&second.path);
        assert!(files.contains(&current), "{} is stored on disk (found {files:?})", current.display());
    }

    // 5. A release zip (`format: archive`): its manifests directory is what Flux applies.
    if backend == Backend::Memory {
        release_zip_is_applied(&ns, &sources, &artifacts, &kustomizations, &configmaps, &procs).await;
    }

    // 6. Deletion: Flux prunes the ConfigMap; our finalizer removes the artifacts and the ExternalArtifact.
    kustomizations.delete(KUSTOMIZATION, &DeleteParams::default()).await.expect("delete Kustomization");
    wait_gone(&kustomizations, KUSTOMIZATION, &procs, "the Kustomization").await;
    wait_gone(&configmaps, CONFIGMAP, &procs, "the pruned ConfigMap").await;
    sources.delete(SOURCE, &DeleteParams::default()).await.expect("delete ExternalSource");
    wait_gone(&sources, SOURCE, &procs, "the ExternalSource").await;
    wait_gone(&artifacts, SOURCE, &procs, "the ExternalArtifact").await;
    if backend == Backend::Filesystem {
        assert_eq!(stored_files(&dir), Vec::<PathBuf>::new(), "stored artifacts are deleted with the source");
    }
    say(&format!("flux-e2e[{}]: passed in {:.1?}", backend.name(), started.elapsed()));
}

/// A zip made by Python's zipfile, served on loopback as a release asset; the source strips its
/// top directory and keeps `deploy/`, and kustomize-controller applies the ConfigMap in it.
async fn release_zip_is_applied(
    ns: &str,
    sources: &Api<DynamicObject>,
    artifacts: &Api<DynamicObject>,
    kustomizations: &Api<DynamicObject>,
    configmaps: &Api<ConfigMap>,
    procs: &[&ChildProcess],
) {
    const NAME: &str = "release";
    let work = tempfile::tempdir().expect("tempdir");
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-zip\ndata:\n  origin: release-zip\n";
    let script = format!(
        "import zipfile\n\
         with zipfile.ZipFile('release.zip', 'w', zipfile.ZIP_DEFLATED) as z:\n\
         \x20   z.writestr('app-1.0.0/README.md', 'not a manifest')\n\
         \x20   z.writestr('app-1.0.0/deploy/configmap.yaml', {manifest:?})\n"
    );
    let out = Command::new("python3").arg("-c").arg(script).current_dir(work.path()).output().expect("python3");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let zip = std::fs::read(work.path().join("release.zip")).expect("release.zip");
    let fixture = Upstream::start(Reply::ok(zip)).await;
    let spec = json!({
        "interval": "1h",
        "format": "archive",
        "archive": {"stripComponents": 1, "path": "deploy"},
        "generator": {"type": "http", "http": {"url": fixture.url("/app-1.0.0.zip")}},
    });
    create_source(sources, ns, NAME, spec).await;
    create_kustomization(kustomizations, ns, NAME, NAME).await;
    let revision = published(artifacts, procs, NAME, "the release zip's artifact", |r| !r.is_empty()).await.revision;
    let cm = poll("the ConfigMap from the zip", procs, || async {
        configmaps.get_opt("from-zip").await.map_err(|e| e.to_string())?.ok_or_else(|| "not applied yet".to_owned())
    })
    .await;
    assert_eq!(cm.data.unwrap_or_default().get("origin").map(String::as_str), Some("release-zip"));
    poll("the release Kustomization Ready at our revision", procs, || async {
        let k = kustomizations.get(NAME).await.map_err(|e| e.to_string())?;
        let applied = text(&k, "/status/lastAppliedRevision").unwrap_or_default();
        (is_ready(&k) && applied == revision)
            .then_some(())
            .ok_or_else(|| format!("applied {applied:?}, {}", ready_summary(&k)))
    })
    .await;
    say(&format!("flux-e2e: kustomization {NAME} applied the release zip at {revision}"));
    kustomizations.delete(NAME, &DeleteParams::default()).await.expect("delete Kustomization");
    wait_gone(kustomizations, NAME, procs, "the release Kustomization").await;
    sources.delete(NAME, &DeleteParams::default()).await.expect("delete ExternalSource");
    wait_gone(sources, NAME, procs, "the release ExternalSource").await;
}
