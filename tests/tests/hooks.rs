//! `spec.hooks` end to end: the controller (in this process, against a real kube-apiserver)
//! calls the real hook executor (`externalsource-controller hook-executor`, a separate process
//! with a whitelist) over its Unix socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use externalsource_core::controller::api::ExternalSource;
use externalsource_core::package::{DestinationPath, package};
use externalsource_tests::controller::Options;
use externalsource_tests::process::{ChildProcess, controller_binary};
use externalsource_tests::sources::{artifact, ready, source, wait_ready};
use externalsource_tests::{ControlPlane, Fixture, Reply, TestController, eventually};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const WHITELIST: &str = r#"
[[command]]
path = "/usr/bin/tr"
args = ['a-z', 'A-Z']

[[command]]
path = "/usr/bin/echo"
args = ['X-Token: [a-z0-9-]+']

[[command]]
path = "/usr/bin/false"

[[command]]
path = "/usr/bin/jq"
args = ['-c', '\.items']

[[command]]
path = "/usr/bin/sed"
args = ['s/[a-z]+/[a-z]+/']

[[command]]
path = "/usr/bin/sleep"
args = ['[0-9]+']

[[command]]
path = "/usr/bin/yes"

[[command]]
path = "/usr/bin/env"
"#;

/// The executor process and its socket.
struct Executor {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    _process: ChildProcess,
}

fn start_executor() -> Executor {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("executor.sock");
    std::fs::write(dir.path().join("whitelist.toml"), WHITELIST).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[hooks]\nsocket = \"{}\"\nwhitelist = \"{}\"\n[log]\nlevel = \"info\"\n",
            socket.display(),
            dir.path().join("whitelist.toml").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(controller_binary());
    cmd.args(["hook-executor", "--config"]).arg(&config).env_remove("KUBECONFIG").env("NO_COLOR", "1");
    let process = ChildProcess::spawn("hook-executor", cmd, &dir.path().join("executor.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        process.assert_running();
        assert!(std::time::Instant::now() < deadline, "the executor never created {}", socket.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    Executor { _dir: dir, socket, _process: process }
}

fn options(socket: Option<&Path>) -> Options {
    Options { hook_socket: socket.map(Path::to_path_buf), ..Options::default() }
}

fn packaged_digest(payload: &[u8]) -> String {
    package(payload, &DestinationPath::parse("data").unwrap()).unwrap().digest.to_string()
}

#[tokio::test]
async fn pre_request_hooks_add_headers_and_post_request_hooks_reshape_the_payload() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("hooks").await;
    let executor = start_executor();
    let ctl = TestController::start(cp.client(), options(Some(&executor.socket))).await;
    let upstream = Fixture::start(Reply::ok("key: value\n")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let hooks = json!({"hooks": {
        "preRequest": [{"name": "token", "command": "/usr/bin/echo", "args": ["X-Token: hook-issued-42"]}],
        "postRequest": [{"name": "upper", "command": "/usr/bin/tr", "args": ["a-z", "A-Z"]}],
    }});
    api.create(&PostParams::default(), &source("hooked", &upstream.url("/data"), hooks)).await.unwrap();
    let es = wait_ready(&api, "hooked", "True").await;
    assert_eq!(artifact(&es).digest, packaged_digest(b"KEY: VALUE\n"), "the artifact holds the hook's output");
    let sent = upstream.requests();
    assert_eq!(sent.last().unwrap().headers.get("x-token").unwrap(), "hook-issued-42", "the pre-request hook's header");

    // A failing hook (fail policy) is HookFailed naming it; the last good artifact stays.
    let published = artifact(&es);
    let failing = json!({"spec": {"hooks": {"postRequest": [
        {"name": "upper", "command": "/usr/bin/tr", "args": ["a-z", "A-Z"]},
        {"name": "broken", "command": "/usr/bin/false"},
    ]}}});
    api.patch("hooked", &PatchParams::default(), &Patch::Merge(&failing)).await.unwrap();
    let es = wait_ready(&api, "hooked", "False").await;
    let (_, reason, message) = ready(&es).unwrap();
    assert_eq!(reason, "HookFailed");
    assert!(message.contains("hook \"broken\" (postRequest) failed after 1 attempt(s)"), "{message}");
    assert!(message.contains("/usr/bin/false exited with code 1"), "{message}");
    assert_eq!(artifact(&es).digest, published.digest, "the last good artifact is kept");

    // A command the whitelist refuses is named too; with `ignore` the chain goes on without it.
    let refused = json!({"spec": {"hooks": {"postRequest": [
        {"name": "sneaky", "command": "/usr/bin/id", "retryPolicy": "retry"},
    ]}}});
    api.patch("hooked", &PatchParams::default(), &Patch::Merge(&refused)).await.unwrap();
    let es = eventually("the refusal is reported", Duration::from_secs(30), || async {
        let es = api.get("hooked").await.ok()?;
        let (status, _, message) = ready(&es)?;
        (status == "False" && message.contains("sneaky")).then_some(es)
    })
    .await;
    let (_, _, message) = ready(&es).unwrap();
    assert!(message.contains("\"/usr/bin/id\" is not in the hook whitelist"), "{message}");
    assert!(message.contains("after 1 attempt(s)"), "a refusal is not retried: {message}");
    let ignored = json!({"spec": {"hooks": {"postRequest": [
        {"name": "sneaky", "command": "/usr/bin/id", "retryPolicy": "ignore"},
        {"name": "upper", "command": "/usr/bin/tr", "args": ["a-z", "A-Z"]},
    ]}}});
    api.patch("hooked", &PatchParams::default(), &Patch::Merge(&ignored)).await.unwrap();
    let es = wait_ready(&api, "hooked", "True").await;
    assert_eq!(artifact(&es).digest, packaged_digest(b"KEY: VALUE\n"));

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &ctl.registry).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("externalsource_hook_execution_total{")
            && l.contains("hook=\"broken\"")
            && l.contains("result=\"failure\"")),
        "hook metrics:\n{}",
        text.lines().filter(|l| l.contains("hook")).collect::<Vec<_>>().join("\n")
    );
    ctl.stop().await;
}

#[tokio::test]
async fn without_an_executor_a_source_with_hooks_is_not_ready_and_says_how_to_enable_them() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("no-executor").await;
    let ctl = TestController::start(cp.client(), options(None)).await;
    let upstream = Fixture::start(Reply::ok("a")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let hooks =
        json!({"hooks": {"postRequest": [{"name": "upper", "command": "/usr/bin/tr", "args": ["a-z", "A-Z"]}]}});
    api.create(&PostParams::default(), &source("hooked", &upstream.url("/data"), hooks)).await.unwrap();
    let es = wait_ready(&api, "hooked", "False").await;
    let (_, reason, message) = ready(&es).unwrap();
    assert_eq!(reason, "Unsupported");
    assert!(message.contains("hooks.socket") && message.contains("deploy/components/hooks"), "{message}");
    assert_eq!(upstream.request_count(), 0, "nothing is fetched for a source whose output would differ");
    ctl.stop().await;
}

/// Real tools chained (jq, then sed); then each hostile hook is refused or stopped with its own
/// message while the last good artifact stays published; hooks see only their own environment.
#[tokio::test]
async fn real_tools_chain_and_hostile_hooks_are_stopped() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("hostile-hooks").await;
    let executor = start_executor();
    let ctl = TestController::start(cp.client(), options(Some(&executor.socket))).await;
    let upstream = Fixture::start(Reply::ok(r#"{"items": [{"name": "alpha"}], "noise": true}"#)).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let chain = json!({"hooks": {"postRequest": [
        {"name": "pick", "command": "/usr/bin/jq", "args": ["-c", ".items"]},
        {"name": "rename", "command": "/usr/bin/sed", "args": ["s/alpha/omega/"]},
    ]}});
    api.create(&PostParams::default(), &source("chained", &upstream.url("/data"), chain)).await.unwrap();
    let es = wait_ready(&api, "chained", "True").await;
    let good = artifact(&es).digest;
    assert_eq!(good, packaged_digest(b"[{\"name\":\"omega\"}]\n"), "jq then sed shaped the artifact");

    let cases = [
        // GNU sed's `e` command would run a shell: the argument pattern is anchored, so it never starts.
        (
            json!([{"name": "shell", "command": "/usr/bin/sed", "args": ["s/a/b/;e id"]}]),
            "argument 0 (\"s/a/b/;e id\") of \"/usr/bin/sed\" matches none of the whitelisted patterns",
        ),
        (
            json!([{"name": "slow", "command": "/usr/bin/sleep", "args": ["30"], "timeout": "1s"}]),
            "\"/usr/bin/sleep\" ran longer than its timeout of 1s and was killed",
        ),
        (json!([{"name": "flood", "command": "/usr/bin/yes"}]), "\"/usr/bin/yes\" wrote more than"),
        (
            json!([{"name": "flaky", "command": "/usr/bin/false", "retryPolicy": "retry"}]),
            "hook \"flaky\" (postRequest) failed after 3 attempt(s)",
        ),
    ];
    for (hooks, expected) in cases {
        let patch = json!({"spec": {"maxRetries": 2, "hooks": {"postRequest": hooks}}});
        api.patch("chained", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let es = wait_ready(&api, "chained", "False").await;
        let (_, reason, message) = ready(&es).unwrap();
        assert_eq!(reason, "HookFailed", "{message}");
        assert!(message.contains(expected), "expected {expected:?} in {message:?}");
        assert_eq!(artifact(&es).digest, good, "the last good artifact is kept ({expected})");
    }

    // A hook's environment is its `env` and a fixed PATH, nothing else: no Kubernetes variables,
    // nothing of the executor's or the controller's (`/usr/bin/env` prints them in order).
    let env = json!({"spec": {"hooks": {"postRequest": [
        {"name": "environment", "command": "/usr/bin/env", "env": [{"name": "ONLY", "value": "this"}]},
    ]}}});
    api.patch("chained", &PatchParams::default(), &Patch::Merge(&env)).await.unwrap();
    let es = wait_ready(&api, "chained", "True").await;
    assert_eq!(
        artifact(&es).digest,
        packaged_digest(b"ONLY=this\nPATH=/usr/local/bin:/usr/bin:/bin\n"),
        "the hook saw exactly its own env"
    );
    ctl.stop().await;
}
