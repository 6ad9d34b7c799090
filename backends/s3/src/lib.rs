//! The `s3` backend: artifacts as objects in an S3 bucket (AWS or any S3-compatible server).
//!
//! Two modes (`storage.s3.mode`):
//! - `direct` (default, the seed's design): the URL handed to Flux is the object's own URL
//!   (`public_url`, the endpoint, or AWS's virtual-host URL), so the controller's artifact routes
//!   are not mounted and Flux needs read access to the bucket;
//! - `proxy`: the controller streams objects from S3 through its own artifact server, so Flux
//!   needs no S3 access and every replica can serve (`shared` and `serves_http`).
//!
//! Each object carries its sha256 in user metadata (`x-amz-meta-sha256`), written on put, so stat
//! and list report digests without reading bodies. Objects without it (written by someone else)
//! are hashed once by streaming them.
//!
//! # Settings (`[storage.s3]`; the environment overrides the file)
//!
//! | key | env | default |
//! |---|---|---|
//! | `bucket` | `S3_BUCKET` | required |
//! | `region` | `S3_REGION` | `us-east-1` (`AWS_REGION` is not consulted) |
//! | `endpoint` | `S3_ENDPOINT` | AWS; a bare host gets `https://` (or `http://` with `use_ssl = false`) |
//! | `path_style` | `S3_PATH_STYLE` | true with an endpoint, false on AWS |
//! | `use_ssl` | `S3_USE_SSL` | true; only picks the scheme of a bare-host endpoint |
//! | `prefix` | `S3_PREFIX` | none; objects live at `<prefix>/<key>` |
//! | `mode` | `S3_MODE` | `direct` |
//! | `public_url` | `S3_PUBLIC_URL` | none; direct-mode URLs become `<public_url>/<prefix>/<key>` |
//! | `timeout` | `S3_TIMEOUT` | `30s`, per operation including retries, up to the response headers |
//! | `connect_timeout` | `S3_CONNECT_TIMEOUT` | `5s` |
//! | `max_attempts` | `S3_MAX_ATTEMPTS` | 2 (one retry) |
//! | `access_key_id`, `secret_access_key` | `S3_ACCESS_KEY_ID`, `S3_SECRET_ACCESS_KEY` | the standard AWS chain |
//!
//! The SDK is built with `default-features = false` so only rustls with aws-lc-rs (the provider
//! kube uses) is linked: two rustls providers in one binary make rustls refuse to pick one.

mod error;
mod settings;
mod storage;

pub use settings::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_ATTEMPTS, DEFAULT_REGION, DEFAULT_TIMEOUT, ENV_VARS, Mode, S3Config,
    S3Settings, StaticCredentials,
};
pub use storage::{DIGEST_METADATA, S3Storage, direct_url_base};

externalsource_core::register_backend!(S3Storage);
