//! The accept loop shared by the artifact and ops listeners.
//!
//! HTTP/1.1 only: Flux's source fetchers and the kubelet speak it, and it keeps the slowloris
//! defences simple. Each connection runs in its own task beside an idle watchdog; all of them are
//! watched by hyper-util's [`GracefulShutdown`] so a shutdown lets responses in flight finish.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::time::Duration;

use externalsource_core::config::ServerConfig;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::idle::{Progress, ProgressIo};

/// Timeouts of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Longest time a client may take to send a request head; a connection that dribbles a
    /// request line (slowloris) is closed when it passes. Also bounds how long an idle
    /// keep-alive connection waits for its next request.
    pub header_read_timeout: Duration,
    /// A connection that neither reads nor writes a byte for this long is closed: a client that
    /// stopped reading a download cannot hold its connection and buffers forever.
    pub idle_timeout: Duration,
    /// After shutdown is signalled, in-flight responses may finish within this time; then the
    /// remaining connections are closed. Keep it below the pod's termination grace period.
    pub shutdown_grace: Duration,
    /// Open connections at most. Beyond it a new connection gets an immediate `503` with
    /// `Retry-After` and is closed, so a flood of idle clients costs them, not the process (its
    /// memory and file descriptors stay bounded) nor the clients already being served.
    pub max_connections: usize,
    /// A response the client takes slower than this many bytes per second (measured over
    /// `send_rate_window`, while it holds up the server's writes) is cut; 0 disables. A reader
    /// that dribbles one byte per idle timeout cannot hold a connection for hours.
    pub min_send_rate: u64,
    pub send_rate_window: Duration,
}

/// The window `min_send_rate` is measured over.
const SEND_RATE_WINDOW: Duration = Duration::from_secs(10);

impl Default for ServeOptions {
    /// The defaults of the `[server]` configuration keys.
    fn default() -> Self {
        Self::from(&ServerConfig::default())
    }
}

impl From<&ServerConfig> for ServeOptions {
    fn from(server: &ServerConfig) -> Self {
        Self {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            shutdown_grace: server.shutdown_grace,
            max_connections: server.max_connections as usize,
            min_send_rate: server.min_send_rate,
            send_rate_window: SEND_RATE_WINDOW,
        }
    }
}

/// What a connection beyond `max_connections` is told before it is closed.
const SHED_RESPONSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The largest read buffer of a connection, which also bounds a request head.
const READ_BUFFER_MAX: usize = 16 * 1024;

/// Pause after a failed `accept` (out of file descriptors, typically) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops accepting (the listener
/// is closed, so new connections are refused), lets in-flight requests finish for at most
/// `options.shutdown_grace`, closes whatever is left and returns.
///
/// Failed accepts are logged and retried: none of them is a reason to stop serving.
pub async fn serve<S, B>(listener: TcpListener, service: S, options: ServeOptions, shutdown: impl Future<Output = ()>)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true)
        // Requests here are a GET line and a few headers: a small read buffer keeps each of
        // thousands of connections cheap (hyper's default may grow to ~400 KiB).
        .max_buf_size(READ_BUFFER_MAX);
    let graceful = GracefulShutdown::new();
    // Tells connections still waiting for their first byte that the server is stopping.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    let local = listener.local_addr().ok();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if connections.len() >= options.max_connections => {
                    // Non-blocking: a fresh socket's send buffer takes these few bytes at once,
                    // and a peer that cannot take them is not waited for.
                    let _ = stream.try_write(SHED_RESPONSE);
                    tracing::debug!(%peer, max = options.max_connections, "connection limit reached; answered 503");
                }
                Ok((stream, peer)) => {
                    // Headers and the first body chunk are written separately; without NODELAY the
                    // body waits for the client's delayed ACK (~40 ms per response).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    let conn = connection(builder.clone(), graceful.watcher(), stopping.clone(), stream, peer, service.clone(), &options);
                    connections.spawn(conn);
                }
                Err(e) => {
                    tracing::warn!(listener = ?local, error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    tracing::info!(listener = ?local, connections = connections.len(), "stopped accepting; draining connections");
    let drain = async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    };
    if tokio::time::timeout(options.shutdown_grace, drain).await.is_err() {
        tracing::warn!(listener = ?local, connections = connections.len(), "shutdown grace period over; closing connections");
    }
    connections.shutdown().await;
}

/// One connection: hyper's HTTP/1 state machine over a progress-recording transport, raced
/// against the idle and send-rate watchdogs (dropping the connection closes the socket).
///
/// Hyper allocates an 8 KiB read buffer per connection as soon as it serves one, so the
/// connection is handed to it only once a first byte arrives (within `header_read_timeout`):
/// thousands of connections that send nothing cost a socket and a small task each.
fn connection<S, B>(
    builder: http1::Builder,
    watcher: Watcher,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    options: &ServeOptions,
) -> impl Future<Output = ()> + Send + 'static
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let options = options.clone();
    let header_read_timeout = options.header_read_timeout;
    async move {
        let mut first_byte = [0u8; 1];
        tokio::select! {
            // A peek, not `readable()`: a fresh socket reports itself readable before any data.
            first = tokio::time::timeout(header_read_timeout, stream.peek(&mut first_byte)) => match first {
                Ok(Ok(0)) => return,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "connection failed before its first request");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, timeout = ?header_read_timeout, "closing a connection that sent nothing");
                    return;
                }
            },
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
        // Boxed: the task's own future stays small (a socket and a timer) for connections that
        // never get here; hyper's state is allocated only for those that do.
        Box::pin(serve_http(builder, watcher, stream, peer, service, options)).await;
    }
}

/// The HTTP phase of a connection, raced against the idle and send-rate watchdogs.
async fn serve_http<S, B>(
    builder: http1::Builder,
    watcher: Watcher,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    options: ServeOptions,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (idle_timeout, min_rate, window) = (options.idle_timeout, options.min_send_rate, options.send_rate_window);
    let fd = stream.as_raw_fd();
    let progress = Progress::new();
    let io = TokioIo::new(ProgressIo::new(stream, progress.clone()));
    let mut conn = pin!(watcher.watch(builder.serve_connection(io, service)));
    tokio::select! {
        result = &mut conn => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = progress.idle_for(idle_timeout) => {
            tracing::debug!(%peer, timeout = ?idle_timeout, "closing a connection without progress");
            // A stalled download is reset; an idle keep-alive connection just closed.
            if progress.write_waiting() {
                reset_on_close(fd);
            }
        }
        () = progress.too_slow(min_rate, window) => {
            tracing::debug!(%peer, min_rate, ?window, "closing a connection whose client reads below the minimum rate");
            reset_on_close(fd);
        }
    }
}

/// Makes closing the socket a reset that discards what is still queued for the peer. A plain
/// close would leave the kernel delivering megabytes of send buffer to the very reader that was
/// cut for being too slow (or stalled), holding its memory long after the connection is gone.
fn reset_on_close(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` belongs to the connection future, which is still alive (pinned in the caller
    // and dropped only after this returns); setsockopt reads the struct it is given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot set SO_LINGER before a reset");
    }
}
