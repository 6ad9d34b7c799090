//! Child processes for end-to-end tests: our `externalsource-controller` binary and Flux's
//! kustomize-controller, run out of cluster. Output goes to a log file; the process is killed when
//! the value is dropped (also while a failing test unwinds), and then the tail of its log is printed
//! so the test output explains the failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::repo_root;

/// Lines of a child's log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 60;

/// A running child process whose output is captured in a log file.
pub struct ChildProcess {
    name: String,
    child: Mutex<Child>,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts `command` with stdin closed and stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{name}: cannot open log file {}: {e}", log.display()));
        let stderr = file.try_clone().unwrap_or_else(|e| panic!("{name}: log file: {e}"));
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", command.get_program()));
        Self { name: name.to_owned(), child: Mutex::new(child), log: log.to_owned() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics, with the tail of the log, if the process has exited.
    pub fn assert_running(&self) {
        let status = self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait();
        match status {
            Ok(None) => {}
            Ok(Some(status)) => panic!(
                "{} exited unexpectedly ({status}); last {LOG_TAIL_LINES} lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES)
            ),
            Err(e) => panic!("{}: cannot query the process: {e}", self.name),
        }
    }

    /// Sends `signal` (a name such as `TERM`) without waiting.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.lock().unwrap_or_else(|e| e.into_inner()).id();
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "{}: kill -{signal} {pid} failed", self.name);
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log (last {LOG_TAIL_LINES} lines of {}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES),
                self.name
            );
        }
    }
}

/// The workspace's target directory (`CARGO_TARGET_DIR`, relative to the workspace, or `target/`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// Path of the `externalsource-controller` binary built by
/// `cargo build -p externalsource-controller --features filesystem`, or `EXTERNALSOURCE_CONTROLLER_BIN`.
/// Panics with the build command when it is missing. Cargo does not rebuild it for this test
/// crate: a stale binary tests stale code.
pub fn controller_binary() -> PathBuf {
    let path = std::env::var_os("EXTERNALSOURCE_CONTROLLER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("externalsource-controller"));
    assert!(
        path.is_file(),
        "{} not found: build it first with `cargo build -p externalsource-controller --features filesystem` \
         (or point EXTERNALSOURCE_CONTROLLER_BIN at a binary)",
        path.display()
    );
    path
}

/// Names of the storage backends linked into the binary at `bin` (`--list-backends`).
pub fn linked_backends(bin: &Path) -> Vec<String> {
    let out = Command::new(bin)
        .arg("--list-backends")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --list-backends: {e}", bin.display()));
    assert!(out.status.success(), "{} --list-backends failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Polls `url` until it answers 200, checking that `process` keeps running.
pub async fn wait_http_ok(process: &ChildProcess, url: &str, timeout: Duration) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("http client");
    crate::eventually(&format!("{} to answer 200 on {url}", process.name()), timeout, || {
        process.assert_running();
        let request = client.get(url).send();
        async move { request.await.ok().filter(|r| r.status() == reqwest::StatusCode::OK).map(|_| ()) }
    })
    .await;
}
