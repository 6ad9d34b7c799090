//! [`S3Storage`]: a [`Backend`] over one bucket (and optional key prefix) with aws-sdk-s3.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use externalsource_core::config::ConfigError;
use externalsource_core::digest::DigestHasher;
use externalsource_core::storage::check_range;
use externalsource_core::{
    Backend, BuildError, ByteRange, Bytes, Capabilities, Digest, EnvVar, Invalid, ObjectBody, ObjectKey, ObjectMeta,
    ObjectSummary, OpenContext, StorageError,
};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::error::{Target, map};
use crate::settings::{ENV_VARS, Mode, S3Config, S3Settings};

/// User-metadata name of our digest (`x-amz-meta-sha256`, lowercase hex without the algorithm).
pub const DIGEST_METADATA: &str = "sha256";

/// Digests computed for objects that lack our metadata, at most this many remembered.
const FOREIGN_DIGEST_CACHE: usize = 1024;

/// Objects in one S3 bucket.
pub struct S3Storage {
    client: Client,
    settings: S3Settings,
    /// Where consumers fetch `key` from the bucket (or `public_url`), minus the key.
    url_base: String,
    /// Digests of objects written by someone else (no `sha256` metadata), keyed by key and ETag
    /// so a replaced object is hashed again.
    foreign_digests: Mutex<HashMap<(ObjectKey, String), Digest>>,
    /// Keys per ListObjectsV2 page; `None` leaves S3's default (and maximum) of 1000.
    page_size: Option<i32>,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage").field("settings", &self.settings).field("url_base", &self.url_base).finish()
    }
}

impl S3Storage {
    /// Builds the client. No request is made: a store that is down at start-up shows up as
    /// `Unavailable` on the first operation, like an outage later on.
    ///
    /// `artifact_server`: the controller's artifact server runs; proxy mode needs it.
    pub async fn new(settings: S3Settings, artifact_server: bool) -> Result<Self, BuildError> {
        if settings.mode == Mode::Proxy && !artifact_server {
            return Err(BuildError::Config(ConfigError::Invalid {
                key: "storage.s3.mode".to_owned(),
                value: "\"proxy\"".to_owned(),
                rule: "serves objects through the controller's artifact server, which is disabled \
                       (server.enabled = false); enable it or use mode = \"direct\""
                    .to_owned(),
            }));
        }
        let url_base = direct_url_base(&settings);
        let client = build_client(&settings).await;
        Ok(Self { client, settings, url_base, foreign_digests: Mutex::new(HashMap::new()), page_size: None })
    }

    /// Lists in pages of `keys` (1 to 1000) instead of S3's default 1000, so tests can exercise
    /// continuation tokens without writing a thousand objects.
    pub fn with_page_size(mut self, keys: i32) -> Self {
        self.page_size = Some(keys.clamp(1, 1000));
        self
    }

    /// The settings this storage was built with.
    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// The SDK client, for callers that manage the bucket themselves (tests, tooling).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The S3 key of an object: the configured prefix, then the key.
    fn s3_key(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.settings.prefix, key)
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(self.s3_key(key))
            .send()
            .await
            .map_err(|e| map("stat", Target::Object(key), e))?;
        let raw = RawMeta {
            size: out.content_length(),
            last_modified: out.last_modified(),
            digest: out.metadata().and_then(|m| m.get(DIGEST_METADATA)).cloned(),
            etag: out.e_tag().map(str::to_owned),
        };
        self.meta_of(key, raw, None).await
    }

    /// Turns what a HEAD or GET returned into [`ObjectMeta`]; `size` overrides the response's
    /// Content-Length (a ranged GET's length is the range's, the size is in Content-Range).
    async fn meta_of(&self, key: &ObjectKey, raw: RawMeta<'_>, size: Option<u64>) -> Result<ObjectMeta, StorageError> {
        let size = match size.or_else(|| raw.size.and_then(|s| u64::try_from(s).ok())) {
            Some(s) => s,
            None => {
                return Err(StorageError::Unavailable {
                    operation: "stat",
                    key: key.to_string(),
                    message: "the store sent no object size".to_owned(),
                });
            }
        };
        // A store without modification times is odd but harmless: "now" only delays garbage collection.
        let last_modified =
            raw.last_modified.and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or_else(SystemTime::now);
        let digest = match raw.digest {
            Some(hex) => Digest::parse(&format!("sha256:{hex}")).ok_or_else(|| StorageError::Corrupt {
                key: key.clone(),
                message: format!("metadata {DIGEST_METADATA}={hex:?} is not a sha256 hex digest"),
            })?,
            None => self.foreign_digest(key, raw.etag.unwrap_or_default()).await?,
        };
        Ok(ObjectMeta { key: key.clone(), size, digest, last_modified })
    }

    /// The digest of an object written by someone else (an operator's upload, a migration), which
    /// carries no `sha256` metadata: computed by streaming the object once and remembered by ETag.
    /// Hashing is preferred to refusing the object as corrupt, because its bytes are fine and the
    /// alternative (rewriting it to add metadata) would change an object we do not own.
    async fn foreign_digest(&self, key: &ObjectKey, etag: String) -> Result<Digest, StorageError> {
        let cache_key = (key.clone(), etag);
        if let Some(d) = self.lock_cache().get(&cache_key) {
            return Ok(d.clone());
        }
        tracing::info!(key = %key, "object has no sha256 metadata; hashing it");
        let out = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(self.s3_key(key))
            .send()
            .await
            .map_err(|e| map("hash", Target::Object(key), e))?;
        let mut hasher = DigestHasher::default();
        let mut body = out.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StorageError::Unavailable {
                operation: "hash",
                key: key.to_string(),
                message: io::Error::from(e).to_string(),
            })?;
            hasher.update(&chunk);
        }
        let digest = hasher.finish();
        let mut cache = self.lock_cache();
        if cache.len() >= FOREIGN_DIGEST_CACHE {
            cache.clear();
        }
        cache.insert(cache_key, digest.clone());
        Ok(digest)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<(ObjectKey, String), Digest>> {
        // The map holds plain values; a panic elsewhere cannot leave it inconsistent.
        self.foreign_digests.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The error for a range the object cannot satisfy, with its real size (needs a HEAD because
    /// the 416 answer does not carry the size in a typed field).
    async fn unsatisfiable(&self, key: &ObjectKey, range: ByteRange) -> StorageError {
        match self.head(key).await {
            Ok(meta) => match check_range(&meta, Some(range.clone())) {
                Err(e) => e,
                Ok(_) => StorageError::Io {
                    operation: "get",
                    key: key.to_string(),
                    source: io::Error::other(format!(
                        "the store refused range {}-{} of an object of {} bytes",
                        range.start(),
                        range.end(),
                        meta.size
                    )),
                },
            },
            Err(e) => e,
        }
    }
}

/// What HEAD and GET responses both carry.
struct RawMeta<'a> {
    size: Option<i64>,
    last_modified: Option<&'a DateTime>,
    digest: Option<String>,
    etag: Option<String>,
}

/// The URL prefix of direct-mode object URLs, ending in `/` plus the key prefix.
///
/// `public_url` wins; otherwise the endpoint in the addressing style the client uses (so a URL
/// works wherever the client works); otherwise AWS's regional virtual-host URL. Never presigned:
/// Flux re-downloads on every reconcile, so a signature would expire, and a host rewrite by
/// `SOURCE_CONTROLLER_LOCALHOST` would break it.
pub fn direct_url_base(s: &S3Settings) -> String {
    let root = match (&s.public_url, &s.endpoint) {
        (Some(public), _) => public.clone(),
        (None, Some(endpoint)) if s.path_style => format!("{endpoint}/{}", s.bucket),
        (None, Some(endpoint)) => match endpoint.split_once("://") {
            Some((scheme, host)) => format!("{scheme}://{}.{host}", s.bucket),
            None => format!("{endpoint}/{}", s.bucket),
        },
        (None, None) if s.path_style => format!("https://s3.{}.amazonaws.com/{}", s.region, s.bucket),
        (None, None) => format!("https://{}.s3.{}.amazonaws.com", s.bucket, s.region),
    };
    format!("{root}/{}", s.prefix)
}

/// The SDK client: our region, endpoint and credentials over aws-config's defaults (so without
/// static keys the standard chain applies: `AWS_*` variables, profile, web identity/IRSA, IMDS).
async fn build_client(s: &S3Settings) -> Client {
    // The operation timeout bounds every attempt and the backoff between them, up to the response
    // headers; reading a body is bounded by the SDK's stalled-stream protection instead, so a slow
    // consumer of a large download is not cut off.
    let timeouts = TimeoutConfig::builder().operation_timeout(s.timeout).connect_timeout(s.connect_timeout).build();
    let retries = RetryConfig::standard()
        .with_max_attempts(s.max_attempts)
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(1));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(s.region.clone()))
        .timeout_config(timeouts.clone())
        .retry_config(retries.clone());
    if let Some(c) = &s.credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.expose().clone(),
            None,
            None,
            "externalsource-config",
        ));
    }
    let shared = loader.load().await;
    let mut conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(s.path_style)
        .timeout_config(timeouts)
        .retry_config(retries)
        // Non-AWS servers (Garage, older MinIO, SeaweedFS) reject or mishandle the CRC trailers
        // newer SDKs add by default; our own sha256 metadata is the integrity check we rely on.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(endpoint) = &s.endpoint {
        conf = conf.endpoint_url(endpoint);
    }
    Client::from_conf(conf.build())
}

/// Content type of stored objects: artifacts are gzipped tarballs; anything else is opaque.
fn content_type(key: &ObjectKey) -> &'static str {
    if key.as_str().ends_with(".gz") { "application/gzip" } else { "application/octet-stream" }
}

/// Parses `bytes <start>-<end>/<size>`, the Content-Range of a 206 answer.
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, size) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?, size.trim().parse().ok()?))
}

/// The SDK's body as the trait's stream; chunks are passed on as they arrive, never collected.
fn body_stream(body: ByteStream) -> BoxStream<'static, io::Result<Bytes>> {
    stream::unfold(body, |mut body| async move { body.next().await.map(|r| (r.map_err(io::Error::from), body)) })
        .boxed()
}

/// Keeps `len` bytes after skipping `skip`, for a store that ignored the Range header and sent
/// the whole object.
fn slice_stream(
    inner: BoxStream<'static, io::Result<Bytes>>,
    skip: u64,
    len: u64,
) -> BoxStream<'static, io::Result<Bytes>> {
    inner
        .scan((skip, len), |(skip, len), chunk| {
            if *len == 0 {
                // Everything wanted has been sent; stop reading the rest of the body.
                return futures::future::ready(None);
            }
            let out = chunk.map(|mut bytes| {
                let drop = (*skip).min(bytes.len() as u64) as usize;
                *skip -= drop as u64;
                let mut tail = bytes.split_off(drop);
                let keep = (*len).min(tail.len() as u64) as usize;
                *len -= keep as u64;
                tail.truncate(keep);
                tail
            });
            futures::future::ready(Some(out))
        })
        .try_filter(|b| futures::future::ready(!b.is_empty()))
        .boxed()
}

impl Backend for S3Storage {
    const NAME: &'static str = "s3";
    const CAPABILITIES: Capabilities = Capabilities { serves_http: false, shared: true };
    const NOTE: &'static str = "serves_http in mode=proxy";
    const ENV: &'static [EnvVar] = ENV_VARS;
    type Settings = S3Config;

    fn check(config: &S3Config) -> Result<(), Invalid> {
        S3Settings::resolve(config).map(drop)
    }

    async fn open(config: &S3Config, ctx: &OpenContext) -> Result<Self, BuildError> {
        let settings = S3Settings::resolve(config).map_err(|bad| ConfigError::Invalid {
            key: format!("storage.s3.{}", bad.key),
            value: format!("{:?}", bad.value),
            rule: bad.rule,
        })?;
        Self::new(settings, ctx.artifact_server).await
    }

    fn capabilities(&self) -> Capabilities {
        match self.settings.mode {
            Mode::Direct => Capabilities { serves_http: false, shared: true },
            Mode::Proxy => Capabilities { serves_http: true, shared: true },
        }
    }

    /// One PutObject with a known Content-Length: S3 makes the object visible only once it is
    /// complete, so an interrupted put leaves the old object (or none), never a torn one.
    async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<(), StorageError> {
        let size = body.len() as u64;
        let length = i64::try_from(size).map_err(|_| StorageError::Io {
            operation: "put",
            key: key.to_string(),
            source: io::Error::other("object too large"),
        })?;
        let out = self
            .client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(self.s3_key(key))
            .content_length(length)
            .content_type(content_type(key))
            .metadata(DIGEST_METADATA, digest.hex())
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| map("put", Target::Object(key), e))?;
        tracing::debug!(key = %key, size, etag = ?out.e_tag(), "stored in s3");
        Ok(())
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        if let Some(r) = &range
            && r.start() > r.end()
        {
            // Not expressible as a Range header; decided locally against the real size.
            return Err(self.unsatisfiable(key, r.clone()).await);
        }
        let mut request = self.client.get_object().bucket(&self.settings.bucket).key(self.s3_key(key));
        if let Some(r) = &range {
            request = request.range(format!("bytes={}-{}", r.start(), r.end()));
        }
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                return Err(match (status, &range) {
                    (Some(416), Some(r)) => self.unsatisfiable(key, r.clone()).await,
                    _ => map("get", Target::Object(key), e),
                });
            }
        };
        let content_range = out.content_range().and_then(parse_content_range);
        let size = content_range.map(|(_, _, size)| size);
        let raw = RawMeta {
            size: out.content_length(),
            last_modified: out.last_modified(),
            digest: out.metadata().and_then(|m| m.get(DIGEST_METADATA)).cloned(),
            etag: out.e_tag().map(str::to_owned),
        };
        let meta = self.meta_of(key, raw, size).await?;
        // S3 clips a range that runs past the end (`bytes=10-5000` of 4096 bytes gives 10-4095);
        // the trait refuses it, like every other backend.
        let range = check_range(&meta, range)?;
        let stream = body_stream(out.body);
        let stream = match (&range, content_range) {
            (Some(r), Some((start, end, _))) if start == *r.start() && end == *r.end() => stream,
            (Some(r), None) => slice_stream(stream, *r.start(), r.end() - r.start() + 1),
            (Some(r), Some((start, end, _))) => {
                return Err(StorageError::Io {
                    operation: "get",
                    key: key.to_string(),
                    source: io::Error::other(format!(
                        "asked for bytes {}-{}, the store sent {start}-{end}",
                        r.start(),
                        r.end()
                    )),
                });
            }
            (None, _) => stream,
        };
        Ok(ObjectBody { meta, range, stream })
    }

    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.head(key).await
    }

    /// DeleteObject answers 204 whether or not the key existed; a 404 (some servers) is success too.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match self.client.delete_object().bucket(&self.settings.bucket).key(self.s3_key(key)).send().await {
            Ok(_) => Ok(()),
            Err(e) => match map("delete", Target::Object(key), e) {
                StorageError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// ListObjectsV2, page by page: keys, sizes and times, no request per object. Keys are
    /// returned without the configured prefix; S3 keys that are not valid [`ObjectKey`]s (someone
    /// else's objects) are skipped with a warning, since nothing could address them anyway.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        let full_prefix = format!("{}{prefix}", self.settings.prefix);
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.settings.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .set_max_keys(self.page_size)
                .send()
                .await
                .map_err(|e| map("list", Target::Prefix(prefix), e))?;
            for object in out.contents() {
                let Some(s3_key) = object.key() else { continue };
                let Some(relative) = s3_key.strip_prefix(&self.settings.prefix) else { continue };
                match ObjectKey::parse(relative) {
                    Ok(key) => found.push(ObjectSummary {
                        key,
                        size: object.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                        last_modified: object
                            .last_modified()
                            .and_then(|t| SystemTime::try_from(*t).ok())
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    }),
                    Err(e) => tracing::warn!(key = s3_key, error = %e, "skipping an S3 object that is not a valid key"),
                }
            }
            match (out.is_truncated(), out.next_continuation_token()) {
                (Some(true), Some(next)) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found.dedup_by(|a, b| a.key == b.key);
        Ok(found)
    }

    fn direct_url(&self, key: &ObjectKey) -> String {
        format!("{}{key}", self.url_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 0-4/5"), Some((0, 4, 5)));
        assert_eq!(parse_content_range("bytes */5"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[tokio::test]
    async fn slicing_a_whole_body_keeps_exactly_the_range() {
        let chunks = [Bytes::from_static(b"0123"), Bytes::from_static(b"4567"), Bytes::from_static(b"89")];
        for (skip, len, want) in [(0, 10, "0123456789"), (2, 3, "234"), (3, 5, "34567"), (9, 1, "9"), (4, 4, "4567")] {
            let s = slice_stream(stream::iter(chunks.clone().map(Ok)).boxed(), skip, len);
            let got: Vec<Bytes> = s.try_collect().await.unwrap();
            assert_eq!(got.concat(), want.as_bytes(), "skip {skip} len {len}");
        }
    }
}
