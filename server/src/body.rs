//! The response body of every service in this crate.
//!
//! A hand-written [`http_body::Body`] rather than a boxed combinator so that a streamed artifact is
//! pulled from storage only when hyper asks for the next frame. Hyper asks only when its write
//! buffer has room, so a slow reader holds at most hyper's buffer plus one storage chunk, never
//! the whole object.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};

use crate::metrics::RequestObserver;

/// A response body: empty, one buffer, or a stream of storage chunks of a known length.
pub struct Body {
    kind: Kind,
    /// Records the request in the metrics when the body is finished or dropped, so the duration
    /// covers the whole download and aborted downloads are counted too.
    observer: Option<RequestObserver>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream { stream: BoxStream<'static, io::Result<Bytes>>, remaining: u64 },
}

impl Body {
    /// A body without bytes (HEAD, 304).
    pub fn empty() -> Self {
        Self { kind: Kind::Empty, observer: None }
    }

    /// A body of one buffer (short texts, metrics).
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let kind = if bytes.is_empty() { Kind::Empty } else { Kind::Full(Some(bytes)) };
        Self { kind, observer: None }
    }

    /// A body of exactly `len` bytes read from `stream`. A stream yielding more or fewer bytes is
    /// turned into a body error, so hyper aborts the connection instead of sending a response
    /// that disagrees with its `Content-Length`.
    pub(crate) fn stream(stream: BoxStream<'static, io::Result<Bytes>>, len: u64) -> Self {
        Self { kind: Kind::Stream { stream, remaining: len }, observer: None }
    }

    pub(crate) fn observed(mut self, observer: RequestObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn sent(&mut self, n: usize) {
        if let Some(o) = &self.observer {
            o.sent(n as u64);
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Stream { .. } => "stream",
        };
        f.debug_struct("Body").field("kind", &kind).finish_non_exhaustive()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => match bytes.take() {
                Some(b) => {
                    this.sent(b.len());
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                None => Poll::Ready(None),
            },
            Kind::Stream { stream, remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let chunk = match Pin::new(stream).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(chunk))) => chunk,
                    Poll::Ready(Some(Err(e))) => {
                        tracing::warn!(error = %e, "reading an artifact from storage failed mid-response");
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(None) => {
                        tracing::warn!(missing = *remaining, "storage stream ended before the announced length");
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "storage stream ended early",
                        ))));
                    }
                };
                let n = chunk.len() as u64;
                if n > *remaining {
                    tracing::warn!(extra = n - *remaining, "storage stream is longer than the announced length");
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "storage stream is longer than announced",
                    ))));
                }
                *remaining -= n;
                this.sent(chunk.len());
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Stream { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

/// A short plain-text response (errors, probes); details of failures belong in the log.
pub(crate) fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(message));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use http_body::Body as _;

    async fn drain(mut body: Body) -> Result<Vec<u8>, io::Error> {
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(data) = frame?.into_data() {
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn stream_bodies_must_match_their_length() {
        let chunks = || vec![Ok(Bytes::from_static(b"abc")), Ok(Bytes::from_static(b"def"))];
        let ok = Body::stream(Box::pin(stream::iter(chunks())), 6);
        assert_eq!(ok.size_hint().exact(), Some(6));
        assert_eq!(drain(ok).await.unwrap(), b"abcdef");
        let short = drain(Body::stream(Box::pin(stream::iter(chunks())), 7)).await.unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        let long = drain(Body::stream(Box::pin(stream::iter(chunks())), 5)).await.unwrap_err();
        assert_eq!(long.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn empty_and_full_bodies() {
        assert!(Body::empty().is_end_stream());
        assert!(Body::full("").is_end_stream());
        assert_eq!(drain(Body::full("ok\n")).await.unwrap(), b"ok\n");
    }
}
