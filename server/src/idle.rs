//! Idle timeout: a connection that makes no read or write progress for a while is closed.
//!
//! Hyper's header-read timeout only covers the request head. A client that stops reading a
//! response (or a keep-alive connection left open with nothing on it) would otherwise hold a
//! connection, its buffers and a task forever. The transport records the time of its last
//! progress, and a watchdog running beside the connection ends it once that time is older than
//! the timeout. The watchdog does not depend on hyper polling the transport, so it also fires
//! while hyper waits on something else.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self(Arc::new(ProgressInner { opened: Instant::now(), last_ms: AtomicU64::new(0) }))
    }

    fn touch(&self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.store(ms, Ordering::Relaxed);
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
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.touch();
        }
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
}
