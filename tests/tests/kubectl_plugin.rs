//! The kubectl plugin (`kubectl-externalsource`, plugin/) against the real kube-apiserver with the
//! real controller binary running: `get`, `reconcile` (waits, prints the revision, fails on a
//! failed reconcile and on a timeout), `suspend`, `resume`, the connection flags, kubectl finding
//! it by name, and shell completion.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::binary::{ControllerProcess, plugin_binary};
use externalsource_tests::sources::{artifact, ready, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, Upstream, eventually};
use kube::api::{Api, PostParams};
use serde_json::json;

/// Runs the plugin with `args`, `KUBECONFIG` set to `kubeconfig` (nothing else inherited but
/// PATH and HOME), off the async runtime.
async fn plugin(kubeconfig: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(plugin_binary());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", kubeconfig)
        .env("NO_PROXY", "127.0.0.1,localhost");
    tokio::task::spawn_blocking(move || cmd.output().expect("run kubectl-externalsource")).await.expect("join")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(what: &str, out: Output) -> String {
    assert!(out.status.success(), "{what}: exit {}\nstdout:\n{}\nstderr:\n{}", out.status, stdout(&out), stderr(&out));
    stdout(&out)
}

fn failed(what: &str, out: Output) -> String {
    assert!(!out.status.success(), "{what} must fail\nstdout:\n{}\nstderr:\n{}", stdout(&out), stderr(&out));
    stderr(&out)
}

/// The table's rows as cells, header first.
fn rows(table: &str) -> Vec<Vec<String>> {
    table.lines().map(|l| l.split("   ").map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()).collect()
}

/// The control plane's kubeconfig with one more context, `plugin`, whose default namespace is
/// `namespace`.
fn kubeconfig_with_context(cp: &ControlPlane, namespace: &str, dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(cp.kubeconfig_path()).expect("kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig yaml");
    let first = config["contexts"][0]["context"].clone();
    let mut context = first.clone();
    context["namespace"] = namespace.into();
    let entry: serde_yaml::Value =
        serde_yaml::from_str(&format!("name: plugin\ncontext: {}", serde_json::to_string(&context).unwrap())).unwrap();
    config["contexts"].as_sequence_mut().expect("contexts").push(entry);
    let path = dir.join("kubeconfig-contexts");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).expect("write kubeconfig");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reconcile_suspend_resume_against_the_running_controller() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("plugin").await;
    let other_ns = cp.namespace("plugin-other").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = cp.kubeconfig_path();
    let upstream = Upstream::start(Reply::ok("v1")).await;
    let ctl = ControllerProcess::start(&cp, &ns, dir.path()).await;
    let sources: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let others: Api<ExternalSource> = Api::namespaced(cp.client(), &other_ns);
    sources.create(&PostParams::default(), &source("prices", &upstream.url("/p"), json!({}))).await.expect("create");
    others.create(&PostParams::default(), &source("rates", &upstream.url("/r"), json!({}))).await.expect("create");
    let prices = wait_ready(&sources, "prices", "True").await;
    wait_ready(&others, "rates", "True").await;
    let revision = artifact(&prices).revision;

    // get: one namespace (no NAMESPACE column), one source, every namespace.
    let table = ok("get -n", plugin(&kubeconfig, &["get", "-n", &ns]).await);
    let table = rows(&table);
    assert_eq!(table[0], ["NAME", "READY", "REVISION", "SUSPENDED", "AGE", "MESSAGE"], "{table:?}");
    assert_eq!(table.len(), 2, "only {ns}'s source: {table:?}");
    assert_eq!(&table[1][..4], ["prices", "True", revision.as_str(), "false"], "{table:?}");
    assert!(table[1][4].ends_with('s'), "a young source's age in seconds: {table:?}");
    assert_eq!(table[1][5], ready(&prices).expect("Ready").2, "the Ready message");
    let one = rows(&ok("get NAME", plugin(&kubeconfig, &["get", "prices", "--namespace", &ns]).await));
    assert_eq!(one.len(), 2, "{one:?}");
    let all = rows(&ok("get -A", plugin(&kubeconfig, &["get", "-A"]).await));
    assert_eq!(all[0][0], "NAMESPACE", "{all:?}");
    let names: Vec<(&str, &str)> = all[1..].iter().map(|r| (r[0].as_str(), r[1].as_str())).collect();
    assert_eq!(names, [(ns.as_str(), "prices"), (other_ns.as_str(), "rates")]);
    let missing = failed("get a missing source", plugin(&kubeconfig, &["get", "nope", "-n", &ns]).await);
    assert!(missing.contains(&format!("ExternalSource {ns}/nope not found")), "{missing}");
    let empty = plugin(&kubeconfig, &["get", "-n", "default"]).await;
    assert!(ok("get in an empty namespace", empty).is_empty(), "no table without sources");

    // --kubeconfig wins over KUBECONFIG; --context picks the context and its namespace.
    let contexts = kubeconfig_with_context(&cp, &other_ns, dir.path());
    let nowhere = dir.path().join("no-such-kubeconfig");
    let path = contexts.to_str().expect("path");
    let by_flag =
        ok("--kubeconfig --context", plugin(&nowhere, &["--kubeconfig", path, "--context", "plugin", "get"]).await);
    assert_eq!(rows(&by_flag)[1][0], "rates", "the context's namespace: {by_flag}");
    let bad_context = failed("an unknown context", plugin(&contexts, &["--context", "absent", "get"]).await);
    assert!(bad_context.contains("absent"), "{bad_context}");

    // reconcile: a new upstream body, the request handled, the new revision printed.
    upstream.set(Reply::ok("v2"));
    let out = ok("reconcile", plugin(&kubeconfig, &["reconcile", "prices", "-n", &ns]).await);
    let prices = sources.get("prices").await.expect("get");
    let new_revision = artifact(&prices).revision;
    assert_ne!(new_revision, revision, "a new body, a new revision");
    assert_eq!(out.trim(), format!("✔ fetched revision {new_revision}"));
    let token = prices.metadata.annotations.as_ref().and_then(|a| a.get("reconcile.fluxcd.io/requestedAt")).cloned();
    assert!(token.is_some(), "the annotation is set");
    assert_eq!(prices.status.as_ref().and_then(|s| s.last_handled_reconcile_at.clone()), token, "and was handled");

    // A reconcile that fails: non-zero, with the controller's reason.
    upstream.set(Reply::status(503));
    let err = failed("reconcile of a failing upstream", plugin(&kubeconfig, &["reconcile", "prices", "-n", &ns]).await);
    assert!(err.contains(&format!("ExternalSource {ns}/prices reconciliation failed")) && err.contains("503"), "{err}");
    upstream.set(Reply::ok("v3"));

    // suspend: spec.suspend set, the controller reports it, a reconcile is refused.
    ok("suspend", plugin(&kubeconfig, &["suspend", "prices", "-n", &ns]).await);
    assert_eq!(sources.get("prices").await.expect("get").spec.suspend, Some(true));
    eventually("the controller reports Suspended", Duration::from_secs(30), || async {
        let es = sources.get("prices").await.ok()?;
        let current = es.status.as_ref()?.observed_generation == es.metadata.generation;
        (current && ready(&es)?.1 == "Suspended").then_some(())
    })
    .await;
    let table = rows(&ok("get", plugin(&kubeconfig, &["get", "prices", "-n", &ns]).await));
    assert_eq!(table[1][3], "true", "SUSPENDED: {table:?}");
    let refused = failed("reconcile while suspended", plugin(&kubeconfig, &["reconcile", "prices", "-n", &ns]).await);
    assert!(refused.contains("is suspended") && refused.contains("resume prices"), "{refused}");

    // resume: fetched again (v3), the revision printed.
    let out = ok("resume", plugin(&kubeconfig, &["resume", "prices", "-n", &ns]).await);
    let prices = sources.get("prices").await.expect("get");
    assert_eq!(prices.spec.suspend, Some(false));
    let resumed = artifact(&prices).revision;
    assert!(resumed != new_revision && out.trim() == format!("✔ fetched revision {resumed}"), "{out} vs {resumed}");
    assert_eq!(ready(&prices).map(|r| r.0), Some("True".to_owned()));

    // No controller: the request is never handled, and --timeout ends the wait.
    drop(ctl);
    let started = Instant::now();
    let err = failed(
        "reconcile without a controller",
        plugin(&kubeconfig, &["reconcile", "prices", "-n", &ns, "--timeout", "2s"]).await,
    );
    assert!(err.contains("timed out after 2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "the timeout is honoured: {:?}", started.elapsed());
}

/// kubectl runs the plugin by its name from PATH, passing the arguments after it, and completes
/// `kubectl externalsource ...` through `kubectl_complete-externalsource` (a link to the plugin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_runs_and_completes_the_plugin_from_path() {
    let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("plugin-kubectl").await;
    let sources: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    for name in ["seen", "second"] {
        let es = source(name, "http://127.0.0.1:9/x", json!({}));
        sources.create(&PostParams::default(), &es).await.expect("create");
    }
    let links = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(plugin_binary(), links.path().join("kubectl_complete-externalsource")).expect("link");
    let bin_dir = plugin_binary().parent().expect("dir").to_owned();
    let path = std::env::join_paths(
        [links.path().to_owned(), bin_dir]
            .into_iter()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("PATH");
    let kubeconfig = cp.kubeconfig_path();
    let run = |args: Vec<String>| {
        let mut cmd = Command::new(&kubectl);
        cmd.args(&args).env("PATH", &path).env("KUBECONFIG", &kubeconfig);
        let kubectl = kubectl.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join");
            out.unwrap_or_else(|e| panic!("{kubectl:?}: {e} (tests/run-all.sh installs kubectl; or set KUBECTL)"))
        }
    };
    let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();

    let table = rows(&ok("kubectl externalsource get", run(args(&format!("externalsource get -n {ns}"))).await));
    assert_eq!(table[1..].iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["second", "seen"], "{table:?}");
    assert_eq!(table[1][1], "Unknown", "no controller here: not reconciled yet");

    // `kubectl __complete ...` is what kubectl's shell completion scripts run on <TAB>.
    let candidates = |out: Output| {
        let text = ok("kubectl __complete", out);
        text.lines()
            .filter(|l| !l.starts_with(':'))
            .map(|l| l.split('\t').next().unwrap_or(l).to_owned())
            .collect::<Vec<_>>()
    };
    let subcommands = candidates(run(args("__complete externalsource re")).await);
    assert_eq!(subcommands, ["reconcile", "resume"]);
    let names = candidates(run(args(&format!("__complete externalsource reconcile -n {ns} se"))).await);
    assert_eq!(names, ["second", "seen"], "the namespace's sources");
    let namespaces = candidates(run(args("__complete externalsource get -n plugin-k")).await);
    assert_eq!(namespaces, [ns.as_str()]);
    let contexts = candidates(run(args("__complete externalsource --context ")).await);
    assert_eq!(contexts, ["test"], "the kubeconfig's contexts");
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(plugin_binary()).args(["completion", shell]).output().expect("run");
        let script = ok(&format!("completion {shell}"), out);
        // fish spells long options `-l timeout`.
        for word in
            ["kubectl-externalsource", "reconcile", "suspend", "resume", "timeout", "all-namespaces", "kubeconfig"]
        {
            assert!(script.contains(word), "{shell}: completes {word}");
        }
    }
    let bash = Command::new(plugin_binary()).args(["completion", "bash"]).output().expect("run");
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), &bash.stdout).expect("write");
    let syntax = Command::new("bash").arg("-n").arg(file.path()).output().expect("bash -n");
    assert!(syntax.status.success(), "bash parses it: {}", String::from_utf8_lossy(&syntax.stderr));
    let bad = Command::new(plugin_binary()).args(["completion", "tcsh"]).output().expect("run");
    assert!(!bad.status.success(), "an unknown shell is refused");
}
