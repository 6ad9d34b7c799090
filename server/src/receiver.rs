//! The receiver listener: `POST /hook/<digest>` of sources with `spec.receiver` (see
//! `externalsource_core::controller::receiver`).
//!
//! What an unauthenticated sender can make it do is bounded: an unknown path is a map lookup and
//! a 404 before the body is read; a body is read only for a receiver type whose signature covers
//! it, and only up to `receiver.max_body` (413 beyond, announced or not); the signature is then
//! one HMAC over at most that many bytes. Tokens and signatures appear in no response or log.

use std::convert::Infallible;
use std::sync::Arc;

use externalsource_core::controller::receiver::signature::needs_body;
use externalsource_core::controller::receiver::trigger::Requested;
use externalsource_core::controller::receiver::{Receiver, Verdict};
use futures::future::BoxFuture;
use http::header::{ALLOW, CONTENT_LENGTH};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
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
            self.0.count("too_large");
            return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
        }
        let body = if needs_body(target.kind) {
            let limit = usize::try_from(max).unwrap_or(usize::MAX);
            match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                // Too large, or the client went away mid-body.
                Err(_) => {
                    self.0.count("too_large");
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large or incomplete\n");
                }
            }
        } else {
            bytes::Bytes::new()
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

impl hyper::service::Service<Request<Incoming>> for ReceiverService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.respond(request).await) })
    }
}
