//! The receiver listener: `POST /hook/<digest>` of sources with `spec.receiver` (see
//! `externalsource_core::controller::receiver`).
//!
//! What an unauthenticated sender can make it do is bounded: an unknown path is a map lookup and
//! a 404 before the body is read; a body is read only for a receiver type whose signature covers
//! it, and only up to `receiver.max_body` (413 beyond, announced or not; the rest of such a body
//! is read and dropped, up to 8 MiB within 5 s, so that the sender reads the 413 rather than a
//! connection reset); the signature is then one HMAC over at most that many bytes. Tokens and
//! signatures appear in no response or log.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use externalsource_core::controller::receiver::signature::needs_body;
use externalsource_core::controller::receiver::trigger::Requested;
use externalsource_core::controller::receiver::{Receiver, Verdict};
use futures::future::BoxFuture;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{Body, text};

/// The hyper service of the receiver listener; cheap to clone.
#[derive(Clone)]
pub struct ReceiverService(Arc<Receiver>);

impl ReceiverService {
    pub fn new(receiver: Arc<Receiver>) -> Self {
        Self(receiver)
    }

    async fn respond(self, request: Request<Incoming>) -> Response<Body> {
        let Some(target) = self.0.target(request.uri().path()) else {
            self.0.count("not_found");
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        if request.method() != Method::POST {
            self.0.count("method_not_allowed");
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let max = self.0.max_body();
        let (parts, body) = request.into_parts();
        let announced = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|len| len > max) {
            return self.too_large(body).await;
        }
        let body = if needs_body(target.kind) {
            match read_capped(body, usize::try_from(max).unwrap_or(usize::MAX)).await {
                Ok(body) => body,
                Err(Unread::TooLarge(rest)) => return self.too_large(rest).await,
                Err(Unread::BrokenOff) => {
                    self.0.count("incomplete");
                    return text(StatusCode::BAD_REQUEST, "incomplete body\n");
                }
            }
        } else {
            Bytes::new()
        };
        let verdict = self.0.push(&target, &parts.headers, &body).await;
        self.0.count(match verdict {
            Verdict::Accepted(Requested::Patching) => "accepted",
            Verdict::Accepted(Requested::Coalesced) => "coalesced",
            Verdict::Ping => "ping",
            Verdict::Refused(_) => "refused",
            Verdict::Stale => "not_found",
            Verdict::Unavailable => "unavailable",
        });
        match verdict {
            Verdict::Accepted(_) => text(StatusCode::ACCEPTED, "reconcile requested\n"),
            Verdict::Ping => text(StatusCode::OK, "pong\n"),
            Verdict::Refused(_) => text(StatusCode::UNAUTHORIZED, "unauthorized\n"),
            Verdict::Stale => text(StatusCode::NOT_FOUND, "not found\n"),
            Verdict::Unavailable => {
                let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "try again later\n");
                response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
        }
    }
}

/// How much of a refused body is read and dropped before the 413 goes out, and for how long: a
/// socket closed with unread data resets the connection, and the sender would see that reset
/// instead of the answer. Beyond either bound the connection is simply closed.
const DRAIN_BYTES: u64 = 8 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Why a body was not read whole.
enum Unread<B> {
    /// Over the limit; what is left of it.
    TooLarge(B),
    /// The sender went away mid-body.
    BrokenOff,
}

/// Reads `body` if it is at most `max` bytes.
async fn read_capped<B>(mut body: B, max: usize) -> Result<Bytes, Unread<B>>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| Unread::BrokenOff)?.into_data() else { continue };
        if out.len() + data.len() > max {
            return Err(Unread::TooLarge(body));
        }
        out.extend_from_slice(&data);
    }
    Ok(out.freeze())
}

/// Reads and drops up to [`DRAIN_BYTES`] of `body` within [`DRAIN_TIME`].
async fn drain(mut body: Incoming) {
    let mut left = DRAIN_BYTES;
    let reading = async {
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            left = left.saturating_sub(data.len() as u64);
            if left == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, reading).await;
}

impl ReceiverService {
    /// The answer to a body over `receiver.max_body`, once the sender can read it.
    async fn too_large(&self, rest: Incoming) -> Response<Body> {
        self.0.count("too_large");
        drain(rest).await;
        let mut response = text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

impl hyper::service::Service<Request<Incoming>> for ReceiverService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.respond(request).await) })
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use http_body::Frame;
    use http_body_util::StreamBody;

    use super::*;

    fn chunks(parts: Vec<Result<&'static [u8], &'static str>>) -> impl http_body::Body<Data = Bytes> + Unpin {
        StreamBody::new(stream::iter(
            parts.into_iter().map(|p| p.map(|b| Frame::data(Bytes::from_static(b))).map_err(std::io::Error::other)),
        ))
    }

    #[tokio::test]
    async fn a_body_is_read_whole_refused_over_the_limit_or_found_broken_off() {
        let whole = read_capped(chunks(vec![Ok(b"ab"), Ok(b"cd")]), 4).await;
        assert!(matches!(whole, Ok(ref b) if b.as_ref() == b"abcd"));
        let over = read_capped(chunks(vec![Ok(b"ab"), Ok(b"cde"), Ok(b"f")]), 4).await;
        let Err(Unread::TooLarge(rest)) = over else { panic!("over the limit") };
        let left = rest.collect().await.map(|c| c.to_bytes());
        assert_eq!(left.ok().as_deref(), Some(&b"f"[..]), "the rest is left to drain");
        let broken = read_capped(chunks(vec![Ok(b"ab"), Err("reset")]), 4).await;
        assert!(matches!(broken, Err(Unread::BrokenOff)));
    }
}
