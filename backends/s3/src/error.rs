//! SDK errors to core's typed [`StorageError`], decided by the SDK's error variant, the HTTP status
//! of the raw response and the S3 error code (`ProvideErrorMetadata::code`), never by matching text.

use std::io;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use externalsource_core::{ObjectKey, StorageError};

/// What the caller was doing, so the mapping can name the object when it is missing.
pub(crate) enum Target<'a> {
    /// An operation on one object: a 404 means that object is missing.
    Object(&'a ObjectKey),
    /// A listing or bucket operation: a 404 means the bucket is missing, which is an outage of the
    /// configured store rather than a missing object.
    Prefix(&'a str),
}

impl Target<'_> {
    fn name(&self) -> &str {
        match self {
            Self::Object(k) => k.as_str(),
            Self::Prefix(p) => p,
        }
    }
}

/// The coarse class of a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    NotFound,
    NoSuchBucket,
    AccessDenied,
    Unavailable,
    Other,
}

/// Classifies an SDK error. `status` and `code` come from the raw response and the parsed S3
/// error document; both are absent when no response was received.
pub(crate) fn classify<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>, status: Option<u16>) -> Class {
    match err {
        // No response at all: timeouts, refused or reset connections, DNS, TLS handshakes.
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Class::Unavailable,
        // A response that could not be read (cut off mid-way, garbled): the store misbehaved.
        SdkError::ResponseError(_) => Class::Unavailable,
        // The request could not even be built (credentials could not be resolved, bad input).
        SdkError::ConstructionFailure(_) => Class::Other,
        SdkError::ServiceError(service) => {
            let code = service.err().code();
            match (status, code) {
                (_, Some("NoSuchBucket")) => Class::NoSuchBucket,
                (_, Some("NoSuchKey" | "NotFound")) | (Some(404), _) => Class::NotFound,
                (_, Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")) | (Some(401 | 403), _) => {
                    Class::AccessDenied
                }
                (_, Some("SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout"))
                | (Some(408 | 429), _) => Class::Unavailable,
                (Some(s), _) if s >= 500 => Class::Unavailable,
                _ => Class::Other,
            }
        }
        _ => Class::Other,
    }
}

/// Maps a failed SDK call on `target` during `operation` to a [`StorageError`].
pub(crate) fn map<E>(
    operation: &'static str,
    target: Target<'_>,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let class = classify(&err, status);
    let message = describe(&err, status);
    let key = target.name().to_owned();
    match (class, target) {
        (Class::NotFound, Target::Object(k)) => StorageError::NotFound(k.clone()),
        (Class::NoSuchBucket, _) => {
            StorageError::StoreMissing { operation, key, message: format!("the bucket does not exist: {message}") }
        }
        (Class::AccessDenied, _) => StorageError::AccessDenied { key, message },
        (Class::Unavailable, _) | (Class::NotFound, Target::Prefix(_)) => {
            StorageError::Unavailable { operation, key, message }
        }
        (Class::Other, _) => StorageError::Io { operation, key, source: io::Error::other(message) },
    }
}

/// A one-line description: status, S3 code and message when the store answered, otherwise the
/// whole error chain (which names the timeout or the connection failure).
fn describe<E, R>(err: &SdkError<E, R>, status: Option<u16>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let mut out = match status {
                Some(s) => format!("HTTP {s}"),
                None => "error".to_owned(),
            };
            if let Some(code) = e.code() {
                out.push_str(&format!(" {code}"));
            }
            if let Some(message) = e.message() {
                out.push_str(&format!(": {message}"));
            }
            out
        }
        other => DisplayErrorContext(other).to_string(),
    }
}
