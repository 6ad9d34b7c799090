//! Runs one whitelisted hook command: no shell, only the environment its whitelist entry
//! allows, the payload on stdin, a private directory and kernel limits ([`crate::isolated::hook_executor::sandbox`]), a
//! wall-clock timeout that kills the whole process group, and capped output.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::config::HooksConfig;
use crate::isolated::hook_executor::sandbox::{RunDir, RunLimits};
use crate::isolated::hook_executor::whitelist::{Refusal, Whitelist};

/// The most of stderr kept for the error message (its end, where the reason usually is).
pub const STDERR_TAIL: usize = 4096;

/// `PATH` of every run: fixed, never the hook's (it decides which binary a program that starts
/// another runs), so tools that need a search path work.
pub const HOOK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// One hook to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: String,
    pub args: Vec<String>,
    /// The hook's `env`: checked against the command's whitelist entry, then the whole
    /// environment of the command besides `PATH`, `HOME` and `TMPDIR`, which the executor sets.
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub stdin: Bytes,
}

/// Limits of the executor, whatever a hook asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorLimits {
    /// Bytes of stdout kept; more fails the hook (the output would become the artifact).
    pub max_output: usize,
    /// The longest timeout a hook may ask for.
    pub max_timeout: Duration,
    /// The kernel limits of each run.
    pub run: RunLimits,
    /// Where each run's private directory is made (`hooks.run_dir`).
    pub run_dir: PathBuf,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// When killed by a signal: which, and the limit that most likely sent it.
    pub killed: Option<String>,
    pub stdout: Bytes,
    /// The last [`STDERR_TAIL`] bytes, lossily decoded.
    pub stderr_tail: String,
}

impl Ran {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Why a hook did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot make the run's private directory under {} = {dir}: {source}", HooksConfig::run_dir)]
    RunDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command:?} ran longer than its timeout of {timeout:?} and was killed")]
    TimedOut { command: String, timeout: Duration },
    #[error("{command:?} wrote more than {max} bytes to stdout and was killed")]
    OutputTooLarge { command: String, max: usize },
    #[error("reading the output of {command:?} failed: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// Checks `invocation` against `whitelist` (command, arguments, environment), then runs it in a
/// fresh private directory within `limits`, and removes the directory.
pub async fn run(whitelist: &Whitelist, invocation: &Invocation, limits: &ExecutorLimits) -> Result<Ran, RunError> {
    whitelist.check(&invocation.command, &invocation.args, &invocation.env)?;
    let dir = RunDir::create(&limits.run_dir)
        .map_err(|source| RunError::RunDir { dir: limits.run_dir.display().to_string(), source })?;
    let result = run_in(&dir, invocation, limits).await;
    // Every process of the run's group is gone by now (see `run_in`).
    dir.remove().await;
    result
}

async fn run_in(dir: &RunDir, invocation: &Invocation, limits: &ExecutorLimits) -> Result<Ran, RunError> {
    let command = invocation.command.clone();
    let timeout = invocation.timeout.min(limits.max_timeout);
    let mut cmd = tokio::process::Command::new(&invocation.command);
    cmd.args(&invocation.args)
        .env_clear()
        .envs(&invocation.env)
        // After the hook's own: the whitelist never allows these names, and these win anyway.
        .env("PATH", HOOK_PATH)
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0)
        .kill_on_drop(true);
    let run_limits = limits.run;
    // SAFETY: `apply_in_child` only makes async-signal-safe calls (prctl, setrlimit, open, write,
    // close) on values copied into the closure, as required between fork and exec.
    unsafe {
        cmd.pre_exec(move || run_limits.apply_in_child());
    }
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn { command: command.clone(), source })?;
    let group = child.id().and_then(|id| i32::try_from(id).ok());
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let source = std::io::Error::other("stdio pipes missing");
        return Err(RunError::Spawn { command, source });
    };
    let payload = invocation.stdin.clone();
    let feed = async move {
        // A command that does not read its stdin closes the pipe: not an error of the hook.
        let _ = stdin.write_all(&payload).await;
        drop(stdin);
    };
    let work = async {
        // Feeding and reading at once: a command that writes before it has read all of its
        // input would otherwise deadlock on a full pipe.
        let (_, out, err) = tokio::join!(feed, read_capped(stdout, limits.max_output), read_tail(stderr, STDERR_TAIL));
        let stdout = match out {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(RunError::OutputTooLarge { command: command.clone(), max: limits.max_output }),
            Err(source) => return Err(RunError::Io { command: command.clone(), source }),
        };
        let stderr_tail = err.map_err(|source| RunError::Io { command: command.clone(), source })?;
        Ok((stdout, stderr_tail))
    };
    let outcome = tokio::time::timeout(timeout, work).await;
    let result = match outcome {
        Err(_) => Err(RunError::TimedOut { command: command.clone(), timeout }),
        Ok(Err(e)) => Err(e),
        // The pipes closed; the command may still linger (a daemonised child keeps none open).
        Ok(Ok((stdout, stderr_tail))) => match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => Ok(Ran {
                exit_code: status.code(),
                killed: status.signal().map(|s| limits.run.explain_signal(s)),
                stdout,
                stderr_tail,
            }),
            Ok(Err(source)) => Err(RunError::Io { command: command.clone(), source }),
            Err(_) => Err(RunError::TimedOut { command: command.clone(), timeout }),
        },
    };
    // Whatever the command left running (a child that closed its pipes) ends with it. After a
    // normal exit the leader is reaped already; its group ID stays unused by new processes while
    // members remain, and the kernel hands out PIDs in order, so this reaches no one else.
    kill_group(group);
    if result.is_err() {
        let _ = child.kill().await;
    }
    result
}

/// SIGKILL to the process group `group` (the command and anything it started).
fn kill_group(group: Option<i32>) {
    if let Some(pgid) = group {
        // SAFETY: kill(2) with a negative pid signals the process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Reads all of `reader`, or `None` once it exceeds `max` bytes.
async fn read_capped(mut reader: impl AsyncRead + Unpin, max: usize) -> std::io::Result<Option<Bytes>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(Some(Bytes::from(out)));
        }
        if out.len() + n > max {
            return Ok(None);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Reads all of `reader`, keeping only its last `keep` bytes.
async fn read_tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> std::io::Result<String> {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(String::from_utf8_lossy(&tail).into_owned());
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whitelist() -> Whitelist {
        Whitelist::parse(
            "test",
            r#"
[[command]]
path = "/bin/cat"
[[command]]
path = "/usr/bin/env"
env = ["TOKEN_URL"]
[[command]]
path = "/bin/sh"
args = ['-c', '.*']
[[command]]
path = "/usr/bin/head"
args = ['-c', '[0-9]+']
"#,
        )
        .unwrap()
    }

    const RUN_LIMITS: RunLimits =
        RunLimits { cpu: Duration::from_secs(5), memory: 1 << 30, open_files: 64, processes: 1 << 16 };

    fn limits() -> (tempfile::TempDir, ExecutorLimits) {
        let dir = tempfile::tempdir().unwrap();
        let limits = ExecutorLimits {
            max_output: 1 << 20,
            max_timeout: Duration::from_secs(5),
            run: RUN_LIMITS,
            run_dir: dir.path().to_owned(),
        };
        (dir, limits)
    }

    fn invocation(command: &str, args: &[&str], stdin: &'static [u8]) -> Invocation {
        Invocation {
            command: command.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: BTreeMap::new(),
            timeout: Duration::from_secs(2),
            stdin: Bytes::from_static(stdin),
        }
    }

    #[tokio::test]
    async fn stdin_is_the_payload_and_stdout_the_result() {
        let (_dir, limits) = limits();
        let ran = run(&whitelist(), &invocation("/bin/cat", &[], b"payload"), &limits).await.unwrap();
        assert!(ran.succeeded());
        assert_eq!(ran.stdout, Bytes::from_static(b"payload"));
    }

    #[tokio::test]
    async fn the_environment_is_only_the_hooks_own() {
        // SAFETY: test-only; nothing else in this test binary reads the variable concurrently.
        unsafe { std::env::set_var("EXTERNALSOURCE_SECRET_IN_PARENT", "leaked") };
        let (dir, limits) = limits();
        let mut inv = invocation("/usr/bin/env", &[], b"");
        inv.env.insert("TOKEN_URL".into(), "https://issuer.example".into());
        let ran = run(&whitelist(), &inv, &limits).await.unwrap();
        let text = String::from_utf8_lossy(&ran.stdout).into_owned();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        let run_dir = lines[0].strip_prefix("HOME=").unwrap().to_owned();
        assert!(run_dir.starts_with(&dir.path().display().to_string()), "{run_dir}");
        assert_eq!(
            lines,
            vec![
                format!("HOME={run_dir}"),
                "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                format!("TMPDIR={run_dir}"),
                "TOKEN_URL=https://issuer.example".into()
            ]
        );
        assert!(!std::path::Path::new(&run_dir).exists(), "the run's directory is removed");
    }

    #[tokio::test]
    async fn a_variable_the_entry_does_not_allow_never_reaches_the_command() {
        let (_dir, limits) = limits();
        for name in ["PATH", "LD_PRELOAD", "OTHER"] {
            let mut inv = invocation("/usr/bin/env", &[], b"");
            inv.env.insert(name.into(), "/tmp".into());
            let err = run(&whitelist(), &inv, &limits).await.unwrap_err();
            assert!(
                matches!(&err, RunError::Refused(Refusal::EnvRefused { name: n, command, .. }) if n == name && command == "/usr/bin/env"),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn each_run_works_in_its_own_private_directory_removed_afterwards() {
        let (dir, limits) = limits();
        // A file, a directory, and a process that closed its pipes and would linger.
        let script = "pwd; stat -c %a .; echo left > file; mkdir sub; sleep 30 >/dev/null 2>&1 & echo $!";
        let inv = invocation("/bin/sh", &["-c", script], b"");
        let ran = run(&whitelist(), &inv, &limits).await.unwrap();
        let out = String::from_utf8_lossy(&ran.stdout).into_owned();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with(&dir.path().display().to_string()) && lines[1] == "700", "{out}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing of the run is left");
        let lingering = std::path::PathBuf::from(format!("/proc/{}", lines[2]));
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while lingering.exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!lingering.exists(), "what the hook left running ended with it");
        let second = run(&whitelist(), &inv, &limits).await.unwrap();
        assert_ne!(String::from_utf8_lossy(&second.stdout).lines().next().unwrap(), lines[0], "a new one each run");
    }

    #[tokio::test]
    async fn rlimits_and_no_new_privs_apply_to_the_command() {
        let (_dir, mut limits) = limits();
        limits.run = RunLimits { cpu: Duration::from_secs(1), memory: 256 << 20, open_files: 20, processes: 1 << 16 };
        let inv =
            invocation("/bin/sh", &["-c", "ulimit -t; ulimit -v; ulimit -n; grep NoNewPrivs /proc/self/status"], b"");
        let ran = run(&whitelist(), &inv, &limits).await.unwrap();
        let out = String::from_utf8_lossy(&ran.stdout).into_owned();
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["1", "262144", "20", "NoNewPrivs:", "1"], "{out}");
        // A busy loop past its CPU seconds ends by SIGXCPU, named with the limit. One CPU second
        // can take many wall seconds on a loaded machine: the wall-clock timeout stays far off.
        limits.max_timeout = Duration::from_secs(120);
        let mut inv = invocation("/bin/sh", &["-c", "while :; do :; done"], b"");
        inv.timeout = Duration::from_secs(120);
        let ran = run(&whitelist(), &inv, &limits).await.unwrap();
        assert_eq!(ran.exit_code, None);
        assert!(ran.killed.as_deref().is_some_and(|k| k.contains("SIGXCPU") && k.contains("hooks.max_cpu")), "{ran:?}");
    }

    #[tokio::test]
    async fn commands_outside_the_whitelist_never_start() {
        let (_dir, limits) = limits();
        let err = run(&whitelist(), &invocation("/usr/bin/touch", &["/tmp/x"], b""), &limits).await.unwrap_err();
        assert!(matches!(err, RunError::Refused(Refusal::NotListed(_))), "{err}");
        let err =
            run(&whitelist(), &invocation("/usr/bin/head", &["-c", "1; rm -rf /"], b""), &limits).await.unwrap_err();
        assert!(matches!(err, RunError::Refused(Refusal::ArgumentRefused { index: 1, .. })), "{err}");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_command_and_what_it_started() {
        let marker = tempfile::tempdir().unwrap();
        let file = marker.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", file.display());
        let mut inv = invocation("/bin/sh", &["-c", "x"], b"");
        inv.args[1] = script;
        inv.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let (_dir, limits) = limits();
        let err = run(&whitelist(), &inv, &limits).await.unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!file.exists(), "a child of the hook outlived the timeout");
    }

    #[tokio::test]
    async fn output_beyond_the_cap_fails_the_hook() {
        let (_dir, limits) = limits();
        let limits = ExecutorLimits { max_output: 1000, ..limits };
        let mut inv = invocation("/bin/sh", &["-c", "head -c 100000 /dev/zero"], b"");
        inv.timeout = Duration::from_secs(5);
        let err = run(&whitelist(), &inv, &limits).await.unwrap_err();
        assert!(matches!(err, RunError::OutputTooLarge { max: 1000, .. }), "{err}");
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_exit_code_and_the_end_of_stderr() {
        let mut inv = invocation("/bin/sh", &["-c", "x"], b"");
        inv.args[1] = "head -c 10000 /dev/zero | tr '\\0' a >&2; echo the-reason >&2; exit 3".into();
        let (_dir, limits) = limits();
        let ran = run(&whitelist(), &inv, &limits).await.unwrap();
        assert_eq!(ran.exit_code, Some(3));
        assert!(
            ran.stderr_tail.len() <= STDERR_TAIL && ran.stderr_tail.ends_with("the-reason\n"),
            "{}",
            ran.stderr_tail.len()
        );
    }
}
