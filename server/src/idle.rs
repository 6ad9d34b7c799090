//! Idle timeout and minimum send rate: a connection that makes no read or write progress for a
//! while is closed, and so is one whose client takes a response slower than a minimum rate.
//!
//! Hyper's header-read timeout only covers the request head. A client that stops reading a
//! response (or a keep-alive connection left open with nothing on it) would otherwise hold a
//! connection, its buffers and a task forever. The transport records the time of its last
//! progress, and a watchdog running beside the connection ends it once that time is older than
//! the timeout. The watchdog does not depend on hyper polling the transport, so it also fires
//! while hyper waits on something else.
//!
//! A reader that takes one byte just before each idle deadline would dodge the idle timeout, so
//! the transport also counts bytes written and notes when the socket refuses a write (the client
//! is the bottleneck). A window in which a write was refused or is still waiting, and fewer than
//! `min_rate × window` bytes went out, closes the connection. Idle keep-alive connections and responses the socket
//! takes at once never trip it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last moved bytes, shared by its transport and its watchdog.
#[derive(Clone)]
pub(crate) struct Progress(Arc<ProgressInner>);

struct ProgressInner {
    opened: Instant,
    /// Milliseconds since `opened`.
    last_ms: AtomicU64,
    /// Bytes written, ever.
    written: AtomicU64,
    /// A write was refused (the socket was full) since the rate watchdog last looked.
    refused: AtomicBool,
    /// The last write was refused: a writer is waiting for the socket.
    blocked: AtomicBool,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self(Arc::new(ProgressInner {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            written: AtomicU64::new(0),
            refused: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
        }))
    }

    fn wrote(&self, n: usize) {
        self.0.written.fetch_add(n as u64, Ordering::Relaxed);
        self.0.blocked.store(false, Ordering::Relaxed);
        self.touch();
    }

    fn write_refused(&self) {
        self.0.refused.store(true, Ordering::Relaxed);
        self.0.blocked.store(true, Ordering::Relaxed);
    }

    /// Completes at the end of the first `window` in which the client held up a write and took
    /// fewer than `min_rate` bytes per second; never when `min_rate` is 0.
    pub(crate) async fn too_slow(&self, min_rate: u64, window: Duration) {
        if min_rate == 0 || window.is_zero() {
            return std::future::pending().await;
        }
        let least = (min_rate as f64 * window.as_secs_f64()) as u64;
        let mut before = self.0.written.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(window).await;
            let now = self.0.written.load(Ordering::Relaxed);
            // Refused during the window, or still waiting: the socket only wakes a writer once a
            // good part of its buffer is free, so a slow reader may see no write attempt at all.
            let held_up = self.0.refused.swap(false, Ordering::Relaxed) | self.0.blocked.load(Ordering::Relaxed);
            if held_up && now - before < least {
                return;
            }
            before = now;
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The last write was refused and none succeeded since: the peer is not reading.
    pub(crate) fn write_waiting(&self) -> bool {
        self.0.blocked.load(Ordering::Relaxed)
    }

    fn after_write(&self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Ready(Ok(n)) if *n > 0 => self.wrote(*n),
            Poll::Pending => self.write_refused(),
            _ => {}
        }
    }

    fn last(&self) -> Instant {
        self.0.opened + Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed))
    }

    /// Completes once the connection has made no progress for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = self.last() + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A transport that records progress on every successful non-empty read or write.
pub(crate) struct ProgressIo<T> {
    inner: T,
    progress: Progress,
}

impl<T> ProgressIo<T> {
    pub(crate) fn new(inner: T, progress: Progress) -> Self {
        Self { inner, progress }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProgressIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.progress.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProgressIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress.after_write(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress.after_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn progress_postpones_the_idle_deadline() {
        let (a, mut b) = tokio::io::duplex(64);
        let progress = Progress::new();
        let mut io = ProgressIo::new(a, progress.clone());
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let watchdog = tokio::spawn({
            let p = progress.clone();
            async move { p.idle_for(timeout).await }
        });
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            io.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            b.read_exact(&mut one).await.unwrap();
        }
        assert!(!watchdog.is_finished(), "progress every 100 ms must keep a 200 ms idle timeout away");
        watchdog.await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(600));
    }

    #[tokio::test]
    async fn a_reader_below_the_minimum_rate_is_found_and_a_fast_one_is_not() {
        let window = Duration::from_millis(100);
        // 64-byte pipe: the writer is held up whenever the reader lags.
        let (a, mut b) = tokio::io::duplex(64);
        let progress = Progress::new();
        let mut io = ProgressIo::new(a, progress.clone());
        let watchdog = tokio::spawn({
            let p = progress.clone();
            async move { p.too_slow(10_000, window).await }
        });
        let writer = tokio::spawn(async move { while io.write_all(&[0u8; 4096]).await.is_ok() {} });
        // Fast: everything read at once for 300 ms (far above 10 kB/s).
        let mut buf = vec![0u8; 4096];
        let fast_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < fast_until {
            assert!(b.read(&mut buf).await.unwrap() > 0);
        }
        assert!(!watchdog.is_finished(), "a fast reader is not too slow");
        // Slow: 64 bytes every 50 ms (1.3 kB/s) while the writer keeps being held up.
        let started = Instant::now();
        while !watchdog.is_finished() && started.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = b.read(&mut buf[..64]).await.unwrap();
        }
        assert!(watchdog.is_finished(), "a reader at 1.3 kB/s is below 10 kB/s");
        writer.abort();
    }

    #[tokio::test]
    async fn an_idle_connection_is_never_too_slow() {
        let progress = Progress::new();
        let slow = progress.too_slow(10_000, Duration::from_millis(50));
        assert!(tokio::time::timeout(Duration::from_millis(300), slow).await.is_err(), "nothing was held up");
        let disabled = Progress::new();
        disabled.write_refused();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), disabled.too_slow(0, Duration::from_millis(10)))
                .await
                .is_err()
        );
    }
}
