//! `spec.hooks` end to end: the controller (in this process, against a real kube-apiserver)
//! calls the real hook executor (`externalsource-controller hook-executor`, a separate process
//! with a whitelist) over its Unix socket. Run as root, the executor is started as user 65532,
//! as in the deployment, so the kernel enforces its process limit (it does not for root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use externalsource_core::controller::api::ExternalSource;
use externalsource_core::package::{DestinationPath, package};
use externalsource_tests::controller::Options;
use externalsource_tests::process::{ChildProcess, controller_binary};
use externalsource_tests::sources::{artifact, ready, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, eventually};
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
args = ['-c', '-n', '\.', '\.items', '\[range\(1e9\)\]']
max_args = 2

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
args = ['-u', 'HOME|TMPDIR']
env = ["ONLY"]

# Debian's yq is a Python script: PYTHON* variables would make it run any code.
[[command]]
path = "/usr/bin/yq"
args = ['\.']

# TEST ONLY, never in a real whitelist: an interpreter taking its code as an argument, to play
# the hostile program the limits have to contain.
[[command]]
path = "/usr/bin/python3"
args = ['-c', '(?s).*']
"#;

/// The executor's settings in these tests: small limits a hostile hook hits quickly.
const LIMITS: &str =
    "concurrency = 2\nnamespace_concurrency = 1\nmax_cpu = \"3s\"\nmax_memory = \"256MiB\"\nmax_processes = 48\n";

/// The executor's user when the tests run as root (the deployment's).
const EXECUTOR_UID: u32 = 65532;

/// The executor process and its socket.
struct Executor {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    _process: ChildProcess,
}

fn start_executor() -> Executor {
    let (dir, socket, process) = spawn_executor(WHITELIST);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        process.assert_running();
        assert!(std::time::Instant::now() < deadline, "the executor never created {}", socket.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    Executor { _dir: dir, socket, _process: process }
}

/// Starts `hook-executor` with `whitelist` and the test limits, as user 65532 when root.
fn spawn_executor(whitelist: &str) -> (tempfile::TempDir, PathBuf, ChildProcess) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("executor.sock");
    std::fs::write(dir.path().join("whitelist.toml"), whitelist).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[hooks]\nsocket = \"{}\"\nwhitelist = \"{}\"\nrun_dir = \"{}\"\n{LIMITS}[log]\nlevel = \"info\"\n",
            socket.display(),
            dir.path().join("whitelist.toml").display(),
            dir.path().join("runs").display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(controller_binary());
    cmd.args(["hook-executor", "--config"]).arg(&config).env_remove("KUBECONFIG").env("NO_COLOR", "1");
    if running_as_root() {
        std::os::unix::fs::chown(dir.path(), Some(EXECUTOR_UID), Some(EXECUTOR_UID)).unwrap();
        std::os::unix::process::CommandExt::uid(&mut cmd, EXECUTOR_UID);
        std::os::unix::process::CommandExt::gid(&mut cmd, EXECUTOR_UID);
    }
    let process = ChildProcess::spawn("hook-executor", cmd, &dir.path().join("executor.log"));
    (dir, socket, process)
}

/// A whitelist allowing a variable that loads code is refused at start-up, naming the entry.
#[test]
fn an_executor_whose_whitelist_allows_a_code_loading_variable_does_not_start() {
    let whitelist = "[[command]]\npath = \"/usr/bin/jq\"\nenv = [\"TOKEN\", \"LD_*\"]\n";
    let (_dir, socket, process) = spawn_executor(whitelist);
    let status = process.wait_exit(Duration::from_secs(20)).expect("the executor exits");
    assert!(!status.success());
    let log = process.log_text();
    assert!(
        log.contains("command[0].env[1] = \"LD_*\" can never be allowed: it covers LD_*, and the dynamic loader"),
        "{log}"
    );
    assert!(!socket.exists(), "it never listened");
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// The status of condition `type_`, if set.
fn condition(es: &ExternalSource, type_: &str) -> Option<String> {
    es.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.clone())
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
    let upstream = Upstream::start(Reply::ok("key: value\n")).await;
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
    let upstream = Upstream::start(Reply::ok("a")).await;
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
    let upstream = Upstream::start(Reply::ok(r#"{"items": [{"name": "alpha"}], "noise": true}"#)).await;
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

    // A hook's environment is the `env` its entry allows, a fixed PATH, and HOME and TMPDIR
    // (its private directory, left out here): no Kubernetes variables, nothing of the executor's
    // or the controller's (`/usr/bin/env` prints them in order).
    let env = json!({"spec": {"hooks": {"postRequest": [
        {"name": "environment", "command": "/usr/bin/env", "args": ["-u", "HOME", "-u", "TMPDIR"],
         "env": [{"name": "ONLY", "value": "this"}]},
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

/// Each class of variable that would make a whitelisted program run code of the hook's choosing
/// is refused by name before anything starts: the source is Stalled, not retried, and keeps its
/// last good artifact. (Before, `LD_PRELOAD` with a library Debian ships, or `PYTHONSTARTUP`
/// for Debian's yq, ran and the source reported Ready=True.)
#[tokio::test]
async fn environment_variables_that_run_other_code_are_refused_by_name() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("hook-env").await;
    let executor = start_executor();
    let ctl = TestController::start(cp.client(), options(Some(&executor.socket))).await;
    let upstream = Upstream::start(Reply::ok(r#"{"items": [1]}"#)).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let good =
        json!({"hooks": {"postRequest": [{"name": "pick", "command": "/usr/bin/jq", "args": ["-c", ".items"]}]}});
    api.create(&PostParams::default(), &source("env", &upstream.url("/data"), good)).await.unwrap();
    let published = artifact(&wait_ready(&api, "env", "True").await).digest;

    let cases = [
        (
            "/usr/bin/jq",
            vec!["-c", "."],
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0",
            "is reserved (the dynamic loader",
        ),
        ("/usr/bin/jq", vec!["-c", "."], "LD_LIBRARY_PATH", "/tmp", "is reserved (the dynamic loader"),
        ("/usr/bin/yq", vec!["."], "PYTHONPATH", "/tmp", "is reserved (Python runs or imports code"),
        (
            "/usr/bin/python3",
            vec!["-c", "print(1)"],
            "PYTHONSTARTUP",
            "/tmp/x.py",
            "is reserved (Python runs or imports code",
        ),
        ("/usr/bin/tr", vec!["a-z", "A-Z"], "PAGER", "/bin/sh", "is reserved (programs start the command it names"),
        ("/usr/bin/tr", vec!["a-z", "A-Z"], "PATH", "/tmp/evil", "is reserved (the executor sets PATH itself"),
        (
            "/usr/bin/jq",
            vec!["-c", "."],
            "JQ_COLORS",
            "1",
            "is not allowed: the command's whitelist entry allows no environment variables",
        ),
    ];
    for (command, args, name, value, rule) in cases {
        let patch = json!({"spec": {"hooks": {"postRequest": [
            {"name": "sneaky", "command": command, "args": args, "retryPolicy": "retry", "env": [{"name": name, "value": value}]},
        ]}}});
        api.patch("env", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let es = wait_ready(&api, "env", "False").await;
        let (_, reason, message) = ready(&es).unwrap();
        assert_eq!(reason, "HookFailed", "{message}");
        let expected = format!("environment variable {name:?} of {command:?} {rule}");
        assert!(message.contains(&expected), "expected {expected:?} in {message:?}");
        assert!(message.contains("after 1 attempt(s)"), "a refusal is not retried: {message}");
        assert!(!message.contains(value) || value == "1", "the value is not shown: {message}");
        assert_eq!(condition(&es, "Stalled").as_deref(), Some("True"), "{name}: a spec problem, Stalled");
        assert_eq!(artifact(&es).digest, published, "the last good artifact is kept ({name})");
    }
    ctl.stop().await;
}

/// A hook that allocates without bound, one that computes without end and a fork bomb (Python,
/// in this test's whitelist only) each end at their limit with a message naming it, and the
/// executor serves the next hook as before.
#[tokio::test]
async fn runaway_hooks_are_stopped_by_their_limits_and_the_executor_keeps_serving() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("hook-limits").await;
    let executor = start_executor();
    let ctl = TestController::start(cp.client(), options(Some(&executor.socket))).await;
    let upstream = Upstream::start(Reply::ok(r#"{"items": [1]}"#)).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let good =
        json!({"hooks": {"postRequest": [{"name": "pick", "command": "/usr/bin/jq", "args": ["-c", ".items"]}]}});
    api.create(&PostParams::default(), &source("limits", &upstream.url("/data"), good.clone())).await.unwrap();
    let published = artifact(&wait_ready(&api, "limits", "True").await).digest;

    // Forks until the kernel refuses, children keeping still (their pipes closed), then reports.
    let bomb = "import os, sys, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError as e:\n        \
                print(f'fork-bomb refused after {n} forks: {e}', file=sys.stderr)\n        sys.exit(3)\n    if pid == 0:\n        \
                os.close(0); os.close(1); os.close(2); time.sleep(120); os._exit(0)\n    n += 1\n";
    let cases = [
        (
            json!({"name": "hog", "command": "/usr/bin/jq", "args": ["-n", "[range(1e9)]"], "timeout": "60s"}),
            vec![
                "/usr/bin/jq was killed by SIGABRT",
                "address-space limit of 256 MiB (hooks.max_memory)",
                "cannot allocate memory",
            ],
        ),
        (
            json!({"name": "spin", "command": "/usr/bin/python3", "args": ["-c", "while True: pass"], "timeout": "60s"}),
            vec!["/usr/bin/python3 was killed by SIGXCPU: it used its CPU time limit of 3s (hooks.max_cpu)"],
        ),
        (
            json!({"name": "bomb", "command": "/usr/bin/python3", "args": ["-c", bomb], "timeout": "60s"}),
            vec!["/usr/bin/python3 exited with code 3: fork-bomb refused after", "Resource temporarily unavailable"],
        ),
    ];
    for (hook, expected) in cases {
        let started = std::time::Instant::now();
        let patch = json!({"spec": {"hooks": {"postRequest": [hook]}}});
        api.patch("limits", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let es = wait_ready(&api, "limits", "False").await;
        let (_, reason, message) = ready(&es).unwrap();
        assert_eq!(reason, "HookFailed", "{message}");
        for part in expected {
            assert!(message.contains(part), "expected {part:?} in {message:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "stopped by its limit, not its 60 s timeout");
        assert_eq!(artifact(&es).digest, published);
        if message.contains("fork-bomb") {
            let forks: u64 =
                message.split("refused after ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok()).unwrap();
            assert!(forks < 48, "hooks.max_processes bounds the forks ({forks})");
            if running_as_root() {
                eventually("the bomb's processes are gone", Duration::from_secs(5), || async {
                    (processes_of(EXECUTOR_UID, "fork-bomb") == 0).then_some(())
                })
                .await;
            }
        }
    }
    // The executor still serves: the good hook runs again.
    let patch = json!({"spec": good});
    api.patch("limits", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let es = wait_ready(&api, "limits", "True").await;
    assert_eq!(artifact(&es).digest, published);
    executor._process.assert_running();
    ctl.stop().await;
}

/// A hook whose child detaches into a new session (and whose grandchild does so again) leaves
/// the run's process group, which the end of the run kills: the executor, their reaper, kills
/// them too, while the hook itself succeeds.
#[tokio::test]
async fn processes_a_hook_detaches_into_a_new_session_end_with_its_run() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("hook-setsid").await;
    let executor = start_executor();
    let ctl = TestController::start(cp.client(), options(Some(&executor.socket))).await;
    let upstream = Upstream::start(Reply::ok(r#"{"items": [1]}"#)).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    // The marker is in each process's command line (python3 -c CODE).
    let escape = "import os, sys, time\n\
                  def detach():\n    os.setsid()\n    [os.close(fd) for fd in (0, 1, 2)]\n\
                  if os.fork() == 0:\n    detach()\n    if os.fork() == 0:\n        os.setsid()\n    \
                  time.sleep(600)  # detached-from-the-run\n    os._exit(0)\n\
                  sys.stdout.write(sys.stdin.read())\n";
    let hook = json!({"name": "detach", "command": "/usr/bin/python3", "args": ["-c", escape], "timeout": "20s"});
    let spec = json!({"hooks": {"postRequest": [hook]}});
    api.create(&PostParams::default(), &source("detach", &upstream.url("/data"), spec)).await.unwrap();
    let es = wait_ready(&api, "detach", "True").await;
    assert_eq!(artifact(&es).digest, packaged_digest(br#"{"items": [1]}"#), "the hook itself passed its input on");
    let own_uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let uid = if running_as_root() { EXECUTOR_UID } else { own_uid };
    eventually("the detached processes to be gone", Duration::from_secs(10), || async {
        (processes_of(uid, "detached-from-the-run") == 0).then_some(())
    })
    .await;
    executor._process.assert_running();
    ctl.stop().await;
}

/// Processes of `uid` whose command line contains `marker`.
fn processes_of(uid: u32, marker: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == uid))
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker)))
        .count()
}

/// One namespace's hooks hang (each holds its run for 20 s, more wait); another namespace's
/// hook still runs at once: the executor gives one namespace at most `namespace_concurrency`
/// of its `concurrency` slots.
#[tokio::test]
async fn a_namespace_whose_hooks_hang_does_not_hold_up_another() {
    let cp = ControlPlane::start().await;
    let hostile_ns = cp.namespace("hooks-hostile").await;
    let good_ns = cp.namespace("hooks-good").await;
    let executor = start_executor();
    // Two of the controller's four reconcile slots for the hostile namespace: enough to fill the
    // executor's two slots were it not for its own per-namespace cap.
    let ctl =
        TestController::start(cp.client(), Options { namespace_concurrency: 2, ..options(Some(&executor.socket)) })
            .await;
    let upstream = Upstream::start(Reply::ok(r#"{"items": [1]}"#)).await;
    let hostile: Api<ExternalSource> = Api::namespaced(cp.client(), &hostile_ns);
    let hang = json!({"hooks": {"postRequest": [{"name": "hang", "command": "/usr/bin/sleep", "args": ["20"], "timeout": "25s"}]}});
    for name in ["hang-1", "hang-2", "hang-3"] {
        hostile.create(&PostParams::default(), &source(name, &upstream.url("/data"), hang.clone())).await.unwrap();
    }
    // Both hostile reconciles the controller allows are at the executor.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let good: Api<ExternalSource> = Api::namespaced(cp.client(), &good_ns);
    let pick =
        json!({"hooks": {"postRequest": [{"name": "pick", "command": "/usr/bin/jq", "args": ["-c", ".items"]}]}});
    let started = std::time::Instant::now();
    good.create(&PostParams::default(), &source("good", &upstream.url("/data"), pick)).await.unwrap();
    let es = wait_ready(&good, "good", "True").await;
    let took = started.elapsed();
    assert_eq!(artifact(&es).digest, packaged_digest(b"[1]\n"));
    assert!(took < Duration::from_secs(8), "the good namespace's hook waited for the hostile one's: {took:?}");
    for name in ["hang-1", "hang-2", "hang-3"] {
        let es = hostile.get(name).await.unwrap();
        assert_ne!(ready(&es).map(|r| r.0).as_deref(), Some("True"), "{name} is still hanging");
    }
    ctl.stop().await;
}
