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

use super::run::{self, Invocation, Limits, Ran, RunError};
use super::whitelist::{LiveWhitelist, Whitelist};

/// Largest JSON header accepted (command, arguments, environment).
pub const MAX_HEADER: usize = 64 * 1024;

/// How long a peer may take to send its request or read the response, beyond the hook's run.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Request {
    command: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    timeout_ms: u64,
}

/// Why the executor produced no result, as it tells the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Not in the whitelist: retrying cannot help.
    Refused,
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
    let header_len = r.read_u32().await.map_err(|e| format!("header length: {e}"))? as usize;
    if header_len > MAX_HEADER {
        return Err(format!("header of {header_len} bytes exceeds {MAX_HEADER}"));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).await.map_err(|e| format!("header: {e}"))?;
    let header: T = serde_json::from_slice(&header).map_err(|e| format!("header: {e}"))?;
    let body_len = r.read_u64().await.map_err(|e| format!("body length: {e}"))?;
    if body_len > max_body as u64 {
        return Err(format!("body of {body_len} bytes exceeds {max_body}"));
    }
    let mut body = vec![0u8; body_len as usize];
    r.read_exact(&mut body).await.map_err(|e| format!("body: {e}"))?;
    Ok((header, Bytes::from(body)))
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

    /// Runs `invocation`; `Ok` only for a zero exit status.
    pub async fn call(&self, invocation: &Invocation) -> Result<Bytes, CallError> {
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| CallError::Connect { socket: self.socket.display().to_string(), source })?;
        let request = Request {
            command: invocation.command.clone(),
            args: invocation.args.clone(),
            env: invocation.env.clone(),
            timeout_ms: u64::try_from(invocation.timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let exchange = async {
            write_frame(&mut stream, &request, &invocation.stdin).await?;
            read_frame::<Response>(&mut stream, self.max_output).await.map_err(CallError::Protocol)
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
                let status = code.map_or("was killed by a signal".to_owned(), |c| format!("exited with code {c}"));
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

/// The executor's side: serves requests on `listener` until `shutdown`, at most `concurrency`
/// hooks at once, each input at most `max_input` bytes.
pub async fn serve(
    listener: UnixListener,
    whitelist: Arc<LiveWhitelist>,
    limits: Limits,
    max_input: usize,
    concurrency: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
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
        let (whitelist, slots) = (whitelist.clone(), slots.clone());
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else { return };
            handle(stream, &whitelist.current(), limits, max_input).await;
        });
    }
}

async fn handle(mut stream: UnixStream, whitelist: &Whitelist, limits: Limits, max_input: usize) {
    let request = tokio::time::timeout(IO_TIMEOUT, read_frame::<Request>(&mut stream, max_input)).await;
    let (response, stdout) = match request {
        Err(_) => (failure(FailureKind::BadRequest, "request not received in time".into()), Bytes::new()),
        Ok(Err(e)) => (failure(FailureKind::BadRequest, e), Bytes::new()),
        Ok(Ok((request, stdin))) => {
            let invocation = Invocation {
                command: request.command,
                args: request.args,
                env: request.env,
                timeout: Duration::from_millis(request.timeout_ms),
                stdin,
            };
            let started = std::time::Instant::now();
            let outcome = run::run(whitelist, &invocation, limits).await;
            tracing::info!(command = %invocation.command, took = ?started.elapsed(),
                result = match &outcome { Ok(r) if r.succeeded() => "success", _ => "failure" }, "hook ran");
            respond(outcome)
        }
    };
    let _ = tokio::time::timeout(IO_TIMEOUT, write_frame(&mut stream, &response, &stdout)).await;
}

fn failure(kind: FailureKind, message: String) -> Response {
    Response { exit_code: None, stderr_tail: String::new(), failure: Some((kind, message)) }
}

fn respond(outcome: Result<Ran, RunError>) -> (Response, Bytes) {
    match outcome {
        Ok(ran) => (Response { exit_code: ran.exit_code, stderr_tail: ran.stderr_tail, failure: None }, ran.stdout),
        Err(e) => {
            let kind = match &e {
                RunError::Refused(_) => FailureKind::Refused,
                RunError::TimedOut { .. } => FailureKind::TimedOut,
                RunError::OutputTooLarge { .. } => FailureKind::OutputTooLarge,
                RunError::Spawn { .. } | RunError::Io { .. } => FailureKind::Spawn,
            };
            (failure(kind, e.to_string()), Bytes::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn executor(max_input: usize) -> (tempfile::TempDir, PathBuf, tokio::task::JoinHandle<()>) {
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
        let limits = Limits { max_output: 1 << 20, max_timeout: Duration::from_secs(5) };
        let task = tokio::spawn(serve(listener, Arc::new(whitelist), limits, max_input, 2, std::future::pending()));
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
        let out = client.call(&invocation("/bin/cat", &[], b"{\"a\":1}")).await.unwrap();
        assert_eq!(out, Bytes::from_static(b"{\"a\":1}"));
    }

    #[tokio::test]
    async fn refusals_and_failures_are_typed_and_named() {
        let (_dir, socket, _task) = executor(1 << 20).await;
        let client = ExecutorClient::new(&socket, 1 << 20);
        let err = client.call(&invocation("/usr/bin/id", &[], b"")).await.unwrap_err();
        assert!(err.is_permanent(), "{err}");
        assert!(err.to_string().contains("\"/usr/bin/id\" is not in the hook whitelist"), "{err}");
        let err = client.call(&invocation("/bin/sh", &["-c", "echo broken token >&2; exit 4"], b"")).await.unwrap_err();
        assert!(!err.is_permanent());
        assert_eq!(err.to_string(), "/bin/sh exited with code 4: broken token");
    }

    #[tokio::test]
    async fn input_and_output_beyond_the_limits_are_refused_without_holding_them() {
        let (_dir, socket, _task) = executor(1000).await;
        let err =
            ExecutorClient::new(&socket, 1 << 20).call(&invocation("/bin/cat", &[], &[b'x'; 5000])).await.unwrap_err();
        assert!(
            matches!(err, CallError::Failed { kind: FailureKind::BadRequest, .. }) || matches!(err, CallError::Io(_)),
            "{err}"
        );
        // The controller accepts at most its own limit back, whatever the executor sends.
        let small = ExecutorClient::new(&socket, 10);
        let err = small.call(&invocation("/bin/sh", &["-c", "printf 0123456789abcdef"], b"")).await.unwrap_err();
        assert!(matches!(err, CallError::Protocol(_)), "{err}");
    }

    #[tokio::test]
    async fn no_executor_is_a_clear_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let client = ExecutorClient::new(dir.path().join("missing.sock"), 1 << 20);
        let err = client.call(&invocation("/bin/cat", &[], b"")).await.unwrap_err();
        assert!(matches!(err, CallError::Connect { .. }) && err.to_string().contains("missing.sock"), "{err}");
    }
}
