//! The Grafana dashboard (deploy/components/monitoring/dashboard.json, copied into the chart):
//! it is a Grafana dashboard, kustomize and Helm ship it as the sidecar expects, and every query
//! selects metrics and labels the real controller exports (scraped from the running binary).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::binary::ControllerProcess;
use externalsource_tests::controlplane::testenv_cache;
use externalsource_tests::process::{ChildProcess, controller_binary};
use externalsource_tests::promql::{Exported, exported, selection};
use externalsource_tests::sources::{WAIT, artifact, download, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, Upstream, eventually, repo_root};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const KUSTOMIZE_FILE: &str = "deploy/components/monitoring/dashboard.json";
const CHART_FILE: &str = "deploy/chart/externalsource-controller/files/dashboard.json";
/// The key both ConfigMaps hold the dashboard under (the sidecar writes it to a file of that name).
const CONFIGMAP_KEY: &str = "externalsource-controller.json";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(KUSTOMIZE_FILE)).unwrap_or_else(|e| panic!("{KUSTOMIZE_FILE} is not JSON: {e}"))
}

/// Every panel, the rows' nested ones included.
fn panels(board: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in board["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (panel title, refId, expr, legendFormat) of every query.
fn queries(board: &Value) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for p in panels(board) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            out.push((p["title"].as_str().unwrap_or_default().to_owned(), s("refId"), s("expr"), s("legendFormat")));
        }
    }
    out
}

#[test]
fn the_chart_ships_the_same_dashboard_file() {
    assert!(
        read(CHART_FILE) == read(KUSTOMIZE_FILE),
        "{CHART_FILE} differs from {KUSTOMIZE_FILE}: copy it (cp {KUSTOMIZE_FILE} {CHART_FILE})"
    );
}

#[test]
fn the_dashboard_has_grafanas_shape() {
    let board = dashboard();
    for key in ["title", "uid"] {
        assert!(board[key].as_str().is_some_and(|s| !s.is_empty()), "dashboard.{key}: a non-empty string");
    }
    assert!(board["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion: a number (36 or later)");
    // A board imported by the sidecar must not ask for inputs: nothing would answer them.
    assert!(board["__inputs"].as_array().is_none_or(Vec::is_empty), "no __inputs (the sidecar cannot fill them)");
    let vars = board["templating"]["list"].as_array().expect("templating.list");
    let datasource = vars.iter().find(|v| v["name"] == "datasource").expect("a `datasource` variable");
    assert_eq!((datasource["type"].as_str(), datasource["query"].as_str()), (Some("datasource"), Some("prometheus")));

    let all = panels(&board);
    let mut ids = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "every panel has a title: {p}");
        assert!(p["id"].as_u64().is_some_and(|id| ids.insert(id)), "{title}: a unique numeric id");
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        assert!(
            matches!((x, w, h, g["y"].as_u64()), (Some(x), Some(w), Some(h), Some(_)) if w > 0 && h > 0 && x + w <= 24),
            "{title}: gridPos within Grafana's 24 columns: {g}"
        );
        let kind = p["type"].as_str().unwrap_or_default();
        assert!(["row", "timeseries", "stat", "table", "gauge", "bargauge"].contains(&kind), "{title}: type {kind}");
        if kind == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: queries the chosen data source");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("{title}: at least one query"));
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{title}: a PromQL expr: {t}");
            assert!(t["refId"].as_str().is_some_and(|r| refs.insert(r.to_owned())), "{title}: unique refIds: {t}");
        }
    }
    let rows: Vec<&str> = all.iter().filter(|p| p["type"] == "row").filter_map(|p| p["title"].as_str()).collect();
    for wanted in ["Reconciles", "Fetch and store", "Artifact server", "Memory admission and budgets", "Hooks"] {
        assert!(rows.contains(&wanted), "a `{wanted}` row; rows: {rows:?}");
    }
}

/// `kubectl kustomize` of the monitoring fixture (deploy/default plus the component) renders the
/// dashboard ConfigMap the sidecar loads; `helm template` with `grafanaDashboard.enabled` too.
#[test]
fn kustomize_and_helm_render_the_dashboard_configmap() {
    let want = read(KUSTOMIZE_FILE);
    let kubectl = std::env::var_os("KUBECTL").map(PathBuf::from).unwrap_or_else(|| "kubectl".into());
    let fixture = repo_root().join("tests/deploy/fixtures/monitoring");
    let out =
        Command::new(&kubectl).arg("kustomize").arg(&fixture).output().unwrap_or_else(|e| {
            panic!("{}: {e} (tests/run-all.sh installs kubectl; or set KUBECTL)", kubectl.display())
        });
    assert!(out.status.success(), "kubectl kustomize {}: {}", fixture.display(), String::from_utf8_lossy(&out.stderr));
    let board = the_dashboard_configmap("kustomize", &String::from_utf8_lossy(&out.stdout));
    assert_eq!(board["metadata"]["name"], "externalsource-controller-dashboard", "one name across builds (no hash)");
    assert_eq!(board["metadata"]["namespace"], "flux-system");
    assert_eq!(board["data"][CONFIGMAP_KEY].as_str(), Some(want.as_str()), "kustomize: the file, unchanged");

    let helm = testenv_cache("flux").join("bin/helm");
    assert!(helm.is_file(), "{} missing: run `bash tests/testenv.sh all`", helm.display());
    let chart = repo_root().join("deploy/chart/externalsource-controller");
    let template = |values: &[&str]| {
        let mut cmd = Command::new(&helm);
        cmd.args(["template", "es", chart.to_str().expect("path"), "--namespace", "flux-system"]);
        for v in values {
            cmd.args(["--set", v]);
        }
        let out = cmd.output().expect("helm template");
        assert!(out.status.success(), "helm template {values:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!template(&[]).contains("grafana_dashboard"), "off by default");
    let rendered = template(&["grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring"]);
    let board = the_dashboard_configmap("helm", &rendered);
    assert_eq!(board["metadata"]["namespace"], "monitoring", "grafanaDashboard.namespace: where the sidecar looks");
    assert_eq!(board["data"][CONFIGMAP_KEY].as_str(), Some(want.as_str()), "helm: the file, unchanged");
}

/// The one ConfigMap labelled `grafana_dashboard: "1"` in a multi-document render.
fn the_dashboard_configmap(what: &str, yaml: &str) -> Value {
    let boards: Vec<Value> = yaml
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(boards.len(), 1, "{what}: one ConfigMap labelled grafana_dashboard: \"1\"");
    boards.into_iter().next().expect("one")
}

/// What is wrong with `expr` against the scraped page (empty: nothing).
fn problems(exported: &Exported, expr: &str, legend: &str) -> Vec<String> {
    let sel = selection(expr);
    let mut out = Vec::new();
    if sel.metrics.is_empty() {
        out.push("selects no metric".to_owned());
    }
    for m in &sel.metrics {
        if !exported.samples.contains_key(m) {
            out.push(format!("{m} is not exported"));
        }
    }
    // Labels can be checked where every selected metric has series on the page.
    let seen: Option<BTreeSet<&String>> = sel
        .metrics
        .iter()
        .map(|m| exported.samples.get(m).filter(|l| !l.is_empty()))
        .try_fold(BTreeSet::new(), |mut acc, l| {
            acc.extend(l?);
            Some(acc)
        });
    if let Some(seen) = seen {
        for l in sel.labels.iter().filter(|l| !seen.contains(l)) {
            out.push(format!("label {l} is on none of {:?}", sel.metrics));
        }
    }
    for part in legend.split("{{").skip(1) {
        let name = part.split("}}").next().unwrap_or_default().trim();
        if !sel.grouped_by.contains(name) {
            out.push(format!("legend names {name}, which the query does not group by"));
        }
    }
    out
}

/// The real hook executor (`externalsource-controller hook-executor`) allowing `tr a-z A-Z`.
fn start_hook_executor(dir: &Path) -> (PathBuf, ChildProcess) {
    let socket = dir.join("executor.sock");
    std::fs::write(dir.join("whitelist.toml"), "[[command]]\npath = \"/usr/bin/tr\"\nargs = ['a-z', 'A-Z']\n")
        .expect("whitelist");
    let config = dir.join("executor.toml");
    let toml = format!(
        "[hooks]\nsocket = \"{}\"\nwhitelist = \"{}\"\nrun_dir = \"{}\"\n",
        socket.display(),
        dir.join("whitelist.toml").display(),
        dir.join("runs").display()
    );
    std::fs::write(&config, toml).expect("executor config");
    let mut cmd = Command::new(controller_binary());
    cmd.args(["hook-executor", "--config"]).arg(&config).env_remove("KUBECONFIG").env("NO_COLOR", "1");
    let process = ChildProcess::spawn("hook-executor", cmd, &dir.join("executor.log"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        process.assert_running();
        assert!(std::time::Instant::now() < deadline, "the executor never created {}", socket.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (socket, process)
}

/// The real binary with a hook executor and an events address, one source with a hook
/// reconciled and its artifact downloaded: every family has series with their labels (the
/// encoder leaves out families without any). Scraped from `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_selects_metrics_and_labels_the_controller_exports() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("dashboard").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = Upstream::start(Reply::ok(r#"{"a":1}"#)).await;
    let events = Upstream::start(Reply::ok("")).await;
    let (socket, _executor) = start_hook_executor(dir.path());
    let events_addr = events.url("/");
    let socket = socket.display().to_string();
    let env = [("EVENTS_ADDR", events_addr.as_str()), ("HOOK_EXECUTOR_SOCKET", socket.as_str())];
    let ctl = ControllerProcess::start_with(&cp, &ns, dir.path(), &env).await;
    let sources: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let hooks =
        json!({"hooks": {"postRequest": [{"name": "upper", "command": "/usr/bin/tr", "args": ["a-z", "A-Z"]}]}});
    sources.create(&PostParams::default(), &source("board", &upstream.url("/a.json"), hooks)).await.expect("create");
    let es = wait_ready(&sources, "board", "True").await;
    let (code, _) = download(&artifact(&es).url).await;
    assert_eq!(code, 200, "the artifact is served");
    let page = eventually("every family on the page", WAIT, || async {
        let page = ctl.scrape().await;
        let ex = exported(&page);
        let all = ["reconciliation", "artifact_server_requests", "hook_execution", "flux_events"]
            .iter()
            .all(|f| ex.samples.get(&format!("externalsource_{f}_total")).is_some_and(|l| !l.is_empty()));
        all.then_some(page)
    })
    .await;
    let exported = exported(&page);

    let board = dashboard();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (panel, ref_id, expr, legend) in queries(&board) {
        for p in problems(&exported, &expr, &legend) {
            failures.push(format!("{panel} / {ref_id}: {p}\n    {expr}"));
        }
        checked += 1;
    }
    // Grafana's `label_values(metric, label)` variable queries.
    for var in board["templating"]["list"].as_array().expect("templating") {
        let Some(q) = var["query"]["query"].as_str().or(var["query"].as_str()) else { continue };
        if let Some(args) = q.strip_prefix("label_values(").and_then(|a| a.strip_suffix(')')) {
            let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
            let expr = format!("{} by ({})", metric.trim(), label.trim());
            for p in problems(&exported, &expr, "") {
                failures.push(format!("variable {}: {p}", var["name"]));
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} queries found");
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}\nfamilies on the page: {:?}",
        failures.len(),
        failures.join("\n"),
        exported.families
    );

    // Every family of ours has a place on the board: a new metric gets a panel.
    let used: BTreeSet<String> = queries(&board).iter().flat_map(|(_, _, e, _)| selection(e).metrics).collect();
    let missing: Vec<&String> = exported
        .families
        .iter()
        .filter(|(f, kind)| {
            f.starts_with("externalsource_")
                && !externalsource_tests::promql::sample_names(f, kind).iter().any(|s| used.contains(s))
        })
        .map(|(f, _)| f)
        .collect();
    assert!(missing.is_empty(), "exported but on no panel: {missing:?}");

    // The check itself: a misspelt metric or label, or a bare histogram name, is caught.
    let real = "externalsource_reconciliation_total";
    assert!(problems(&exported, &format!("sum by (kind) (rate({real}[5m]))"), "{{kind}}").is_empty());
    for (wrong, why) in [
        ("sum(rate(externalsource_reconciliations_total[5m]))", "misspelt metric"),
        ("sum(rate(process_resident_memory_bytes[5m]))", "a metric this binary does not export"),
        ("sum(externalsource_source_request_duration_seconds)", "a histogram without its suffix"),
        (&format!("sum by (reason) (rate({real}[5m]))"), "a label the metric lacks"),
        (&format!("sum by (kind) (rate({real}{{outcome=\"error\"}}[5m]))"), "a matcher on a label the metric lacks"),
    ] {
        assert!(!problems(&exported, wrong, "").is_empty(), "{why} not caught: {wrong}");
    }
    assert!(!problems(&exported, &format!("sum by (kind) (rate({real}[5m]))"), "{{result}}").is_empty());
    drop(ctl);
}
