//! The controller ↔ executor protocol over a Unix socket: one request per connection.
//!
//! A frame is a JSON header (u32 big-endian length, at most [`MAX_HEADER`] bytes) followed by a
//! body (u64 big-endian length). The request's body is the hook's stdin, the response's its
//! stdout. Lengths are checked before anything is allocated, so a peer cannot make the other side
//! hold more than its limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::isolated::hook_executor::admission::Admission;
use crate::isolated::hook_executor::run::{self, ExecutorLimits, Invocation, Ran, RunError};
use crate::isolated::hook_executor::whitelist::LiveWhitelist;

/// Largest JSON header accepted (command, arguments, environment).
pub const MAX_HEADER: usize = 64 * 1024;

/// How long a peer may take to send its request or read the response, beyond the hook's run.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a request waits for a slot ([`Admission`]) before it is refused as busy: within
/// `IO_TIMEOUT`, the margin the controller allows beyond the hook's own timeout.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Request {
    /// The source's namespace: the unit of the executor's per-namespace cap.
    #[serde(default)]
    namespace: String,
    command: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    timeout_ms: u64,
}

/// Why the executor produced no result, as it tells the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Not in the whitelist (command, argument or environment variable): retrying cannot help.
    Refused,
    /// No slot came free in time (the namespace's or the executor's): retrying later may help.
    Busy,
    TimedOut,
    OutputTooLarge,
    /// The command could not be started (missing binary) or its pipes failed.
    Spawn,
    /// The request itself was malformed or too large.
    BadRequest,
    /// The command ran and exited non-zero (or was killed by a signal).
    Exited,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Response {
    exit_code: Option<i32>,
    /// Killed by a signal: which, and the limit that most likely sent it.
    #[serde(default)]
    killed: Option<String>,
    stderr_tail: String,
    failure: Option<(FailureKind, String)>,
}

/// Why a hook call failed, seen from the controller.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the hook executor at {socket}: {source}")]
    Connect {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the hook executor failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the hook executor sent a malformed response: {0}")]
    Protocol(String),
    #[error("{message}")]
    Failed { kind: FailureKind, message: String },
}

impl CallError {
    /// Whether trying again may succeed (a refusal never does).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Failed { kind: FailureKind::Refused | FailureKind::BadRequest, .. })
    }

    /// The whitelist refused the command, an argument or an environment variable: the spec (or
    /// the whitelist) has to change.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Failed { kind: FailureKind::Refused, .. })
    }
}

async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    header: &impl serde::Serialize,
    body: &[u8],
) -> std::io::Result<()> {
    let header = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    let len = u32::try_from(header.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&header).await?;
    w.write_all(&(body.len() as u64).to_be_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}

/// Reads a frame whose body may be at most `max_body` bytes.
async fn read_frame<T: serde::de::DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
    max_body: usize,
) -> Result<(T, Bytes), String> {
    let header = read_header(r).await?;
    Ok((header, read_body(r, max_body).await?))
}

/// Reads the header of a frame (at most [`MAX_HEADER`] bytes).
async fn read_header<T: serde::de::DeserializeOwned>(r: &mut (impl AsyncRead + Unpin)) -> Result<T, String> {
    let header_len = r.read_u32().await.map_err(|e| format!("header length: {e}"))? as usize;
    if header_len > MAX_HEADER {
        return Err(format!("header of {header_len} bytes exceeds {MAX_HEADER}"));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).await.map_err(|e| format!("header: {e}"))?;
    serde_json::from_slice(&header).map_err(|e| format!("header: {e}"))
}

/// Reads the body of a frame whose header was read, at most `max_body` bytes.
async fn read_body(r: &mut (impl AsyncRead + Unpin), max_body: usize) -> Result<Bytes, String> {
    let body_len = r.read_u64().await.map_err(|e| format!("body length: {e}"))?;
    if body_len > max_body as u64 {
        return Err(format!("body of {body_len} bytes exceeds {max_body}"));
    }
    let mut body = vec![0u8; body_len as usize];
    r.read_exact(&mut body).await.map_err(|e| format!("body: {e}"))?;
    Ok(Bytes::from(body))
}

/// The controller's side: runs hooks through the executor listening on `socket`.
#[derive(Debug, Clone)]
pub struct ExecutorClient {
    socket: PathBuf,
    /// The most stdout accepted back (the payload size limit).
    max_output: usize,
}

impl ExecutorClient {
    pub fn new(socket: impl Into<PathBuf>, max_output: usize) -> Self {
        Self { socket: socket.into(), max_output }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `invocation` for a source of `namespace`; `Ok` only for a zero exit status.
    pub async fn call(&self, namespace: &str, invocation: &Invocation) -> Result<Bytes, CallError> {
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| CallError::Connect { socket: self.socket.display().to_string(), source })?;
        let request = Request {
            namespace: namespace.to_owned(),
            command: invocation.command.clone(),
            args: invocation.args.clone(),
            env: invocation.env.clone(),
            timeout_ms: u64::try_from(invocation.timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let exchange = async {
            let sent = write_frame(&mut stream, &request, &invocation.stdin).await;
            // The executor answers a refusal or a busy executor without reading the payload and
            // closes: the answer is there to read even when sending the rest failed.
            read_frame::<Response>(&mut stream, self.max_output).await.map_err(|e| match sent {
                Err(io) => CallError::Io(io),
                Ok(()) => CallError::Protocol(e),
            })
        };
        let (response, stdout) = tokio::time::timeout(invocation.timeout + IO_TIMEOUT, exchange)
            .await
            .map_err(|_| CallError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in time")))??;
        if let Some((kind, message)) = response.failure {
            return Err(CallError::Failed { kind, message });
        }
        match response.exit_code {
            Some(0) => Ok(stdout),
            code => {
                let status = match (code, response.killed) {
                    (Some(c), _) => format!("exited with code {c}"),
                    (None, Some(killed)) => killed,
                    (None, None) => "was killed by a signal".to_owned(),
                };
                let tail = response.stderr_tail.trim_end();
                let message = if tail.is_empty() {
                    format!("{} {status}", invocation.command)
                } else {
                    format!("{} {status}: {tail}", invocation.command)
                };
                Err(CallError::Failed { kind: FailureKind::Exited, message })
            }
        }
    }
}

/// The executor's side: serves requests on `listener` until `shutdown`, as many hooks at once
/// as `admission` lets through, each input at most `max_input` bytes.
pub async fn serve(
    listener: UnixListener,
    whitelist: Arc<LiveWhitelist>,
    limits: ExecutorLimits,
    max_input: usize,
    admission: Admission,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (limits, admission) = (Arc::new(limits), Arc::new(admission));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (whitelist, limits, admission) = (whitelist.clone(), limits.clone(), admission.clone());
        tokio::spawn(async move {
            handle(stream, &whitelist, &limits, max_input, &admission).await;
        });
    }
}

/// One connection: the request's header (which names the namespace), a slot, the body (so only
/// admitted runs hold a payload), the run, the response.
async fn handle(
    mut stream: UnixStream,
    whitelist: &LiveWhitelist,
    limits: &ExecutorLimits,
    max_input: usize,
    admission: &Admission,
) {
    let (response, stdout) = match serve_one(&mut stream, whitelist, limits, max_input, admission).await {
        Ok(answer) => answer,
        Err((kind, message)) => (failure(kind, message), Bytes::new()),
    };
    let _ = tokio::time::timeout(IO_TIMEOUT, write_frame(&mut stream, &response, &stdout)).await;
}

async fn serve_one(
    stream: &mut UnixStream,
    whitelist: &LiveWhitelist,
    limits: &ExecutorLimits,
    max_input: usize,
    admission: &Admission,
) -> Result<(Response, Bytes), (FailureKind, String)> {
    let bad = |e: String| (FailureKind::BadRequest, e);
    let late = |_| (FailureKind::BadRequest, "request not received in time".to_owned());
    let request: Request = tokio::time::timeout(IO_TIMEOUT, read_header(stream)).await.map_err(late)?.map_err(bad)?;
    let whitelist = whitelist.current();
    // A refusal needs no slot and no payload.
    whitelist
        .check(&request.command, &request.args, &request.env)
        .map_err(|e| (FailureKind::Refused, e.to_string()))?;
    let _slot = admission.admit(&request.namespace).await.map_err(|busy| (FailureKind::Busy, busy.to_string()))?;
    let stdin = tokio::time::timeout(IO_TIMEOUT, read_body(stream, max_input)).await.map_err(late)?.map_err(bad)?;
    let invocation = Invocation {
        command: request.command,
        args: request.args,
        env: request.env,
        timeout: Duration::from_millis(request.timeout_ms),
        stdin,
    };
    let started = std::time::Instant::now();
    let outcome = run::run(&whitelist, &invocation, limits).await;
    tracing::info!(namespace = %request.namespace, command = %invocation.command, took = ?started.elapsed(),
        result = match &outcome { Ok(r) if r.succeeded() => "success", _ => "failure" }, "hook ran");
    Ok(respond(outcome))
}

fn failure(kind: FailureKind, message: String) -> Response {
    Response { exit_code: None, killed: None, stderr_tail: String::new(), failure: Some((kind, message)) }
}

fn respond(outcome: Result<Ran, RunError>) -> (Response, Bytes) {
    match outcome {
        Ok(ran) => (
            Response { exit_code: ran.exit_code, killed: ran.killed, stderr_tail: ran.stderr_tail, failure: None },
            ran.stdout,
        ),
        Err(e) => {
            let kind = match &e {
                RunError::Refused(_) => FailureKind::Refused,
                RunError::TimedOut { .. } => FailureKind::TimedOut,
                RunError::OutputTooLarge { .. } => FailureKind::OutputTooLarge,
                RunError::RunDir { .. } | RunError::Spawn { .. } | RunError::Io { .. } => FailureKind::Spawn,
            };
            (failure(kind, e.to_string()), Bytes::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::isolated::hook_executor::sandbox::RunLimits;

    async fn executor(max_input: usize) -> (tempfile::TempDir, PathBuf, tokio::task::JoinHandle<()>) {
        executor_with(max_input, Admission::new(2, 2, MAX_QUEUE_WAIT)).await
    }

    async fn executor_with(
        max_input: usize,
        admission: Admission,
    ) -> (tempfile::TempDir, PathBuf, tokio::task::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("executor.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let path = dir.path().join("whitelist.toml");
        std::fs::write(
            &path,
            "[[command]]\npath = \"/bin/cat\"\n[[command]]\npath = \"/bin/sh\"\nargs = ['-c', '.*']\n",
        )
        .unwrap();
        let whitelist = LiveWhitelist::load(&path).unwrap();
        let limits = ExecutorLimits {
            max_output: 1 << 20,
            max_timeout: Duration::from_secs(5),
            run: RunLimits { cpu: Duration::from_secs(5), memory: 1 << 30, open_files: 64, processes: 1 << 16 },
            run_dir: dir.path().to_owned(),
        };
        let task =
            tokio::spawn(serve(listener, Arc::new(whitelist), limits, max_input, admission, std::future::pending()));
        (dir, socket, task)
    }

    fn invocation(command: &str, args: &[&str], stdin: &[u8]) -> Invocation {
        Invocation {
            command: command.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: BTreeMap::new(),
            timeout: Duration::from_secs(2),
            stdin: Bytes::copy_from_slice(stdin),
        }
    }

    #[tokio::test]
    async fn a_hook_runs_in_the_executor_and_its_stdout_comes_back() {
        let (_dir, socket, _task) = executor(1 << 20).await;
        let client = ExecutorClient::new(&socket, 1 << 20);
        let out = client.call("ns", &invocation("/bin/cat", &[], b"{\"a\":1}")).await.unwrap();
        assert_eq!(out, Bytes::from_static(b"{\"a\":1}"));
    }

    #[tokio::test]
    async fn refusals_and_failures_are_typed_and_named() {
        let (_dir, socket, _task) = executor(1 << 20).await;
        let client = ExecutorClient::new(&socket, 1 << 20);
        let err = client.call("ns", &invocation("/usr/bin/id", &[], b"")).await.unwrap_err();
        assert!(err.is_permanent(), "{err}");
        assert!(err.to_string().contains("\"/usr/bin/id\" is not in the hook whitelist"), "{err}");
        let err =
            client.call("ns", &invocation("/bin/sh", &["-c", "echo broken token >&2; exit 4"], b"")).await.unwrap_err();
        assert!(!err.is_permanent());
        assert_eq!(err.to_string(), "/bin/sh exited with code 4: broken token");
    }

    #[tokio::test]
    async fn input_and_output_beyond_the_limits_are_refused_without_holding_them() {
        let (_dir, socket, _task) = executor(1000).await;
        let err = ExecutorClient::new(&socket, 1 << 20)
            .call("ns", &invocation("/bin/cat", &[], &[b'x'; 5000]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallError::Failed { kind: FailureKind::BadRequest, .. }) || matches!(err, CallError::Io(_)),
            "{err}"
        );
        // The controller accepts at most its own limit back, whatever the executor sends.
        let small = ExecutorClient::new(&socket, 10);
        let err = small.call("ns", &invocation("/bin/sh", &["-c", "printf 0123456789abcdef"], b"")).await.unwrap_err();
        assert!(matches!(err, CallError::Protocol(_)), "{err}");
    }

    #[tokio::test]
    async fn an_environment_variable_the_entry_does_not_allow_is_a_refusal() {
        let (_dir, socket, _task) = executor(1 << 20).await;
        let client = ExecutorClient::new(&socket, 1 << 20);
        let mut inv = invocation("/bin/cat", &[], &[b'x'; 300_000]);
        inv.env.insert("LD_PRELOAD".into(), "/usr/lib/x86_64-linux-gnu/libSegFault.so".into());
        let err = client.call("ns", &inv).await.unwrap_err();
        assert!(err.is_permanent() && err.is_refusal(), "{err}");
        assert!(err.to_string().contains("environment variable \"LD_PRELOAD\" of \"/bin/cat\" is reserved"), "{err}");
    }

    /// Over its namespace's cap a run waits, then is refused as busy (retryable); another
    /// namespace runs meanwhile.
    #[tokio::test]
    async fn one_namespace_waits_for_its_own_slot_while_another_runs() {
        let (_dir, socket, _task) = executor_with(1 << 20, Admission::new(2, 1, Duration::from_millis(500))).await;
        let client = ExecutorClient::new(&socket, 1 << 20);
        let slow = {
            let client = client.clone();
            tokio::spawn(
                async move { client.call("a", &invocation("/bin/sh", &["-c", "sleep 1.5; echo slow"], b"")).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let err = client.call("a", &invocation("/bin/cat", &[], b"x")).await.unwrap_err();
        assert!(matches!(err, CallError::Failed { kind: FailureKind::Busy, .. }) && !err.is_permanent(), "{err}");
        assert!(err.to_string().contains("namespace \"a\" already runs as many hooks as it may"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(500), "it waited first");
        let started = std::time::Instant::now();
        assert_eq!(client.call("b", &invocation("/bin/cat", &[], b"b")).await.unwrap(), Bytes::from_static(b"b"));
        assert!(started.elapsed() < Duration::from_secs(1), "b did not wait for a: {:?}", started.elapsed());
        assert_eq!(slow.await.unwrap().unwrap(), Bytes::from_static(b"slow\n"));
    }

    #[tokio::test]
    async fn no_executor_is_a_clear_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let client = ExecutorClient::new(dir.path().join("missing.sock"), 1 << 20);
        let err = client.call("ns", &invocation("/bin/cat", &[], b"")).await.unwrap_err();
        assert!(matches!(err, CallError::Connect { .. }) && err.to_string().contains("missing.sock"), "{err}");
    }
}
