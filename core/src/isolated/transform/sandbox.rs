//! The parent side of the transform sandbox: each run (a `spec.transform` filter, or one check of
//! `spec.validate`) is a fresh `transform-worker` child with an empty environment, no inherited
//! descriptors but its pipes, and these limits:
//! - CPU time (`RLIMIT_CPU`, `transform.max_cpu`): the kernel sends SIGXCPU;
//! - address space (`RLIMIT_AS`, `transform.max_memory`): an allocation fails and the worker aborts;
//! - wall-clock time (`transform.timeout`): the parent kills it, which also covers a filter that
//!   sleeps or waits rather than computes;
//! - output size (the source's max size) and nesting (`transform.max_depth`), checked by the worker
//!   and again here;
//! - `transform.concurrency` runs at once, so filters cannot take every core or all the memory.
//!
//! The child is also the first the OOM killer picks (`oom_score_adj` 1000), dies with the
//! controller (`PR_SET_PDEATHSIG`) and is killed when its reconcile is dropped.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

use crate::config::TransformConfig;
use crate::isolated::child::{die_first, set_rlimit};
use crate::isolated::transform::TransformError;
use crate::isolated::transform::worker::{Job, MAX_MESSAGE, Request, exit};

/// The subcommand that runs [`crate::isolated::transform::worker::main`].
pub const WORKER_SUBCOMMAND: &str = "transform-worker";

/// Runs filters in child processes.
#[derive(Debug)]
pub struct Sandbox {
    program: PathBuf,
    limits: TransformConfig,
    slots: Semaphore,
}

impl Sandbox {
    /// Workers are `program transform-worker`: normally the running controller binary.
    pub fn new(program: PathBuf, limits: TransformConfig) -> Self {
        let slots = Semaphore::new(limits.concurrency.max(1));
        Self { program, limits, slots }
    }

    /// Runs the jq filter `code` over `payload`; the output is at most `max_output` bytes.
    pub async fn run(&self, code: &str, payload: &[u8], max_output: u64) -> Result<Vec<u8>, TransformError> {
        self.run_job(Job::Jq, code, payload, max_output).await
    }

    /// Checks `payload` against the JSON Schema `schema`: `Invalid` names the first error.
    pub async fn check_schema(&self, schema: &str, payload: &[u8]) -> Result<(), TransformError> {
        self.run_job(Job::Schema, schema, payload, 0).await.map(drop)
    }

    /// The sandbox's limits, which also bound what is sent to it.
    pub fn limits(&self) -> &TransformConfig {
        &self.limits
    }

    async fn run_job(&self, job: Job, code: &str, payload: &[u8], max_output: u64) -> Result<Vec<u8>, TransformError> {
        let _slot = self.slots.acquire().await.map_err(|_| TransformError::Worker("the sandbox is closed".into()))?;
        let cpu_secs = self.limits.max_cpu.as_secs_f64().ceil().max(1.0) as u64;
        let memory = self.limits.max_memory;
        let mut command = Command::new(&self.program);
        command
            .arg(WORKER_SUBCOMMAND)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: `confine` only makes async-signal-safe calls (setrlimit, prctl, open, write,
        // close) on values copied into the closure, as required between fork and exec.
        unsafe {
            command.pre_exec(move || confine(cpu_secs, memory));
        }
        let mut child = command.spawn().map_err(|e| {
            TransformError::Worker(format!("cannot start {} {WORKER_SUBCOMMAND}: {e}", self.program.display()))
        })?;
        let header = Request::encode_header(job, max_output, self.limits.max_depth, code);
        let exchanged = tokio::time::timeout(self.limits.timeout, exchange(&mut child, &header, payload, max_output));
        match exchanged.await {
            Ok(Ok(answer)) => classify(answer, &self.limits, cpu_secs, max_output),
            Ok(Err(e)) => {
                let _ = child.kill().await;
                Err(e)
            }
            Err(_) => {
                let _ = child.kill().await;
                Err(TransformError::TimedOut(self.limits.timeout))
            }
        }
    }
}

/// Applied in the child between fork and exec.
fn confine(cpu_secs: u64, memory: u64) -> std::io::Result<()> {
    // SIGXCPU at the soft limit; SIGKILL one second later should the worker survive it.
    set_rlimit!(libc::RLIMIT_CPU, cpu_secs, cpu_secs + 1)?;
    set_rlimit!(libc::RLIMIT_AS, memory, memory)?;
    // SIGXCPU and SIGABRT would otherwise dump core into the controller's working directory.
    set_rlimit!(libc::RLIMIT_CORE, 0, 0)?;
    set_rlimit!(libc::RLIMIT_NOFILE, 16, 16)?;
    die_first();
    Ok(())
}

struct Answer {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Writes the request, reads both pipes (capped) and waits for the exit.
async fn exchange(child: &mut Child, header: &[u8], payload: &[u8], max_output: u64) -> Result<Answer, TransformError> {
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(TransformError::Worker("the worker's pipes are missing".into()));
    };
    let write = async move {
        // A worker that dies early (a limit) closes its stdin: its exit status tells why.
        if stdin.write_all(header).await.is_ok() {
            let _ = stdin.write_all(payload).await;
        }
    };
    let (_, stdout, stderr) =
        tokio::join!(write, capped(&mut stdout, max_output), capped(&mut stderr, MAX_MESSAGE as u64));
    let stdout = stdout.map_err(|e| TransformError::Worker(format!("cannot read the worker's output: {e}")))?;
    if stdout.len() as u64 > max_output {
        return Err(TransformError::TooLarge(max_output));
    }
    let stderr = stderr.unwrap_or_default();
    let status = child.wait().await.map_err(|e| TransformError::Worker(format!("cannot wait for the worker: {e}")))?;
    Ok(Answer { status, stdout, stderr })
}

/// Reads at most `max + 1` bytes (one more tells the cap was passed) and discards the rest, so
/// the child never blocks on a full pipe.
async fn capped(pipe: &mut (impl AsyncRead + Unpin), max: u64) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    (&mut *pipe).take(max + 1).read_to_end(&mut kept).await?;
    tokio::io::copy(pipe, &mut tokio::io::sink()).await?;
    Ok(kept)
}

/// What the worker's exit status and output mean.
fn classify(
    answer: Answer,
    limits: &TransformConfig,
    cpu_secs: u64,
    max_output: u64,
) -> Result<Vec<u8>, TransformError> {
    let Answer { status, stdout, stderr } = answer;
    let message = || String::from_utf8_lossy(&stderr).into_owned();
    if let Some(signal) = status.signal() {
        return Err(match signal {
            libc::SIGXCPU => TransformError::CpuExceeded(cpu_secs),
            // Rust aborts when an allocation fails, which the address-space limit makes happen.
            libc::SIGABRT => TransformError::MemoryExceeded(limits.max_memory),
            libc::SIGSEGV | libc::SIGBUS => TransformError::StackExceeded,
            other => TransformError::Killed(signal_name(other)),
        });
    }
    match status.code() {
        Some(0) => Ok(stdout),
        Some(code) if code == i32::from(exit::COMPILE) => Err(TransformError::Compile(message())),
        Some(code) if code == i32::from(exit::INPUT) => Err(TransformError::Input(message())),
        Some(code) if code == i32::from(exit::RUN) => Err(TransformError::Run(message())),
        Some(code) if code == i32::from(exit::TOO_LARGE) => Err(TransformError::TooLarge(max_output)),
        Some(code) if code == i32::from(exit::TOO_DEEP) => Err(TransformError::TooDeep(limits.max_depth)),
        Some(code) if code == i32::from(exit::INVALID) => {
            let message = message();
            let (path, message) = message.split_once('\n').unwrap_or(("", &message));
            Err(TransformError::Invalid { path: path.to_owned(), message: message.to_owned() })
        }
        Some(exit::STACK) => Err(TransformError::StackExceeded),
        Some(code) => Err(TransformError::Worker(format!("the worker exited with code {code}: {}", message()))),
        None => Err(TransformError::Worker("the worker ended without an exit status".into())),
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}
