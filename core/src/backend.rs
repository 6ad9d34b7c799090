//! The backend SDK: everything a storage backend crate writes is one [`Backend`] impl and one
//! [`register_backend!`](crate::register_backend) line.
//!
//! A backend declares its name, capabilities and serde settings once, opens itself from those
//! settings, and implements five storage operations as plain `async fn`s. Core does the rest, the
//! same way for every backend:
//! - reads `[storage.<name>]` and the environment variables of [`Backend::ENV`] (one parser for
//!   booleans, integers, [sizes](ByteSize), [durations](TimeSpan) and [URLs](HttpUrl)), and names
//!   the key, the value, where it came from and the rule when one is wrong;
//! - prints the effective settings with every [`Secret`] redacted;
//! - builds the URL of every object the controller's server serves, from the server's route, so
//!   only a backend that does not serve says where its objects are ([`Backend::direct_url`]);
//! - records a put's metadata from the digest packaging already computed, so no backend hashes
//!   the bytes again;
//! - turns the backend into the dynamic [`Storage`] the controller and the server call.
//!
//! # Writing a backend
//!
//! A backend is one crate: a type implementing [`Backend`] and one line registering it.
//! `examples/nginx-backend` in this repository is a complete one, written the way a third party
//! would, against the public SDK only (146 lines of code): artifacts on an nginx file server,
//! written with WebDAV `PUT`/`DELETE`, listed with nginx's JSON autoindex, and downloaded by Flux
//! straight from nginx. No change to core, the server or the other backends is needed. Walking
//! through it:
//!
//! ## 1. Depend on core, nothing heavy
//!
//! `externalsource-core`'s default features are empty: no kube, no fetcher, no jq in your build.
//! Core re-exports [`Bytes`], so `[dependencies]` is core, your client (here
//! `reqwest`), `serde`, and `externalsource-controller` only for the distribution binary.
//!
//! ## 2. Declare the settings once, with serde
//!
//! `[storage.nginx]` is a plain struct; core reads it from the file, lays the environment
//! variables you list over it, and names the key, the value, where it came from and the rule
//! when one is wrong. Field types from this module parse like every other setting of the
//! controller ([`ByteSize`] `64MiB`, [`TimeSpan`] `30s`, [`HttpUrl`]), and a [`Secret`] prints as
//! `<redacted>` in `--print-config`, logs and errors:
//!
//! ```
//! use externalsource_core::backend::{HttpUrl, Secret, TimeSpan};
//!
//! #[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct NginxSettings {
//!     pub url: HttpUrl, // required: no default
//!     pub public_url: Option<HttpUrl>,
//!     pub username: Option<String>,
//!     pub password: Option<Secret>,
//!     pub timeout: Option<TimeSpan>,
//! }
//!
//! let table = r#"url = "http://nginx.example/artifacts"
//! password = "hunter2""#;
//! let settings: NginxSettings = toml::from_str(table).unwrap();
//! assert!(!format!("{settings:?}").contains("hunter2"), "a Secret never prints its value");
//! assert!(toml::from_str::<NginxSettings>(r#"urll = "http://x""#).is_err(), "unknown keys are refused");
//! ```
//!
//! ## 3. Implement `Backend`
//!
//! Name, capabilities and environment variables are constants, [`Backend::open`] builds the store
//! from the settings, and the five storage operations are plain `async fn`s (no `async_trait`).
//! A sketch; the bodies are in `examples/nginx-backend/src/lib.rs`:
//!
//! ```ignore
//! impl Backend for Nginx {
//!     const NAME: &'static str = "nginx";
//!     const CAPABILITIES: Capabilities = Capabilities { serves_http: false, shared: true };
//!     const ENV: &'static [EnvVar] = &[EnvVar::text("NGINX_URL", "url"), /* … */];
//!     type Settings = NginxSettings;
//!
//!     async fn open(settings: &NginxSettings, ctx: &OpenContext) -> Result<Self, BuildError> { /* … */ }
//!     async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<(), StorageError> { /* … */ }
//!     async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> { /* … */ }
//!     async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> { /* … */ }
//!     async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> { /* … */ }
//!     async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> { /* … */ }
//!     fn direct_url(&self, key: &ObjectKey) -> String { /* … */ }
//! }
//! externalsource_core::register_backend!(Nginx);
//! ```
//!
//! What core does so you don't: [`Backend::put`] receives the sha256 packaging computed (never
//! hash again); [`Backend::list`] returns keys, sizes and times, all that garbage collection and
//! quotas need; the URL of an object the controller serves is built by core from the server's
//! route, so only a backend that does not serve says where its objects are
//! ([`Backend::direct_url`]); an object held in memory becomes a ranged body with
//! [`ObjectBody::from_bytes`].
//!
//! Optional items: [`Backend::check`] (rules across fields), [`Backend::resident_memory`]
//! (memory the store holds and the key bounding it, for the start-up limit check),
//! [`Backend::capabilities`] when they depend on settings, [`Backend::NOTE`] for
//! `--list-backends`. `open` returns [`BuildError::Config`] for settings that conflict with the
//! rest of the configuration (exit 2, like any configuration error) and [`BuildError::Storage`]
//! when the store cannot be opened. Errors are typed [`StorageError`]s: `NotFound`,
//! `AccessDenied`, `Unavailable`, `NoSpace`… drive the reconciler's retry policy.
//!
//! ## 4. Run the behaviour suite
//!
//! The suite (put/get/range/stat/list/delete/overwrite/concurrency/path safety/URLs, and the
//! byte budget if you have one) runs against the real thing. The example starts a real nginx on
//! loopback per case (`examples/nginx-backend/tests/behaviour.rs`):
//!
//! ```ignore
//! async fn fixture() -> Fixture {
//!     let server = nginx("PUT DELETE");
//!     let storage = open(&server.url).await; // Hosted::new(Nginx::open(…), None)
//!     Fixture::new(Arc::new(storage)).with_url_base(format!("{}/", server.url)).with_guard(server)
//! }
//! externalsource_core::behaviour_suite!(fixture);
//! ```
//!
//! `Fixture` and `behaviour_suite!` come with `externalsource-core = { …, features = ["testing"] }`
//! as a dev-dependency. A backend the controller serves uses `Fixture::hosted(backend, Some(base))`
//! and needs no URL base.
//!
//! ## 5. Ship a distribution
//!
//! rustc drops crates nothing references, and their registration with them, so the binary
//! references yours (`examples/nginx-backend/src/main.rs`):
//!
//! ```ignore
//! use nginx_backend as _;
//! fn main() -> std::process::ExitCode { externalsource_controller::main() }
//! ```
//!
//! ```text
//! $ externalsource-controller-nginx --list-backends
//! memory serves_http [externalsource-backend-memory]
//! nginx shared [example-nginx-backend]
//! ```
//!
//! The bracket names the crate; a name two linked crates register stops start-up (exit 2)
//! naming both (`tests/tests/registry.rs`). `bash tests/run-all.sh` builds the example, runs its
//! suite against nginx and checks its binary (`examples/nginx-backend/tests/distribution.rs`).
//!
//! The nginx side of the example, for a try-out:
//!
//! ```text
//! location /artifacts/ {
//!     dav_methods PUT DELETE;        # the controller writes
//!     create_full_put_path on;
//!     dav_access user:rw group:r all:r;
//!     autoindex on;                  # the controller lists
//!     autoindex_format json;
//!     client_max_body_size 0;
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::ConfigError;
use crate::config::reader::Layered;
use crate::digest::Digest;
use crate::key::{ObjectKey, served_url};
use crate::registry::{BackendContext, BackendSettings, BuildError};
use crate::storage::{ByteRange, Capabilities, ObjectBody, ObjectMeta, ObjectSummary, Storage, StorageError};

pub use crate::values::{ByteSize, HttpUrl, REDACTED, Secret, TimeSpan};

/// A storage backend. Implementations must be safe to call concurrently; a put of an existing key
/// replaces it atomically (readers see the old or the new object, never a mix).
pub trait Backend: Sized + Send + Sync + 'static {
    /// The name `storage.backend` selects, and the table `[storage.<NAME>]` settings come from.
    const NAME: &'static str;
    /// What the backend offers in its default mode (printed by `--list-backends`).
    const CAPABILITIES: Capabilities;
    /// A word on capabilities that depend on settings, for `--list-backends`.
    const NOTE: &'static str = "";
    /// Environment variables that override keys of the table.
    const ENV: &'static [EnvVar] = &[];

    /// `[storage.<NAME>]`. Unknown keys should be refused (`#[serde(deny_unknown_fields)]`), a
    /// required key is a field without a default; credentials are [`Secret`]s so printing the
    /// settings never shows them.
    type Settings: serde::de::DeserializeOwned + serde::Serialize + fmt::Debug + Send + Sync + 'static;

    /// Rules across fields, or beyond what a field's type says.
    fn check(_settings: &Self::Settings) -> Result<(), Invalid> {
        Ok(())
    }

    /// Bytes the store may keep in the controller's own memory (a memory store's objects, a
    /// cache) and the key of the table that bounds them, for the start-up check that the
    /// configuration fits the container's memory limit.
    fn resident_memory(_settings: &Self::Settings) -> Option<(&'static str, u64)> {
        None
    }

    /// Opens the store. A conflict with the rest of the configuration is [`BuildError::Config`].
    fn open(settings: &Self::Settings, ctx: &OpenContext) -> impl Future<Output = Result<Self, BuildError>> + Send;

    /// What this instance, as configured, can do.
    fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }

    /// Stores `body` under `key`; `digest` is its sha256, computed when it was packaged.
    fn put(
        &self,
        key: &ObjectKey,
        body: Bytes,
        digest: &Digest,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Reads an object, or an inclusive byte range of it ([`ObjectBody::from_bytes`] slices one
    /// held in memory).
    fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
    ) -> impl Future<Output = Result<ObjectBody, StorageError>> + Send;

    /// Metadata of an object, its digest included.
    fn stat(&self, key: &ObjectKey) -> impl Future<Output = Result<ObjectMeta, StorageError>> + Send;

    /// Removes an object; removing a missing object succeeds.
    fn delete(&self, key: &ObjectKey) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Every object whose key starts with `prefix`, in key order: keys, sizes and times, which is
    /// all garbage collection and quotas need.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<ObjectSummary>, StorageError>> + Send;

    /// Where a consumer downloads `key` when the controller's server does not serve it (the
    /// backend does not serve over HTTP, or the server is disabled).
    fn direct_url(&self, key: &ObjectKey) -> String;
}

/// What [`Backend::open`] knows of the rest of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenContext {
    /// The controller's artifact server runs, so objects of a serving backend are downloaded
    /// from it.
    pub artifact_server: bool,
}

/// An environment variable overriding a settings key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    pub name: &'static str,
    pub key: &'static str,
    pub kind: EnvKind,
}

/// How an environment value becomes a settings value. Sizes, durations, URLs and secrets are
/// [`EnvKind::Text`]: their field types parse text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    Text,
    /// `true/false`, `t/f`, `1/0`, `yes/no`, in any case ([`crate::units::parse_bool`]).
    Bool,
    Integer,
}

impl EnvVar {
    pub const fn text(name: &'static str, key: &'static str) -> Self {
        Self { name, key, kind: EnvKind::Text }
    }

    pub const fn bool(name: &'static str, key: &'static str) -> Self {
        Self { name, key, kind: EnvKind::Bool }
    }

    pub const fn integer(name: &'static str, key: &'static str) -> Self {
        Self { name, key, kind: EnvKind::Integer }
    }
}

/// A settings value [`Backend::check`] refuses: the key (within the backend's table), the value
/// as written, and the rule. Core adds the table and where the value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: &'static str,
    pub value: String,
    pub rule: String,
}

impl Invalid {
    pub fn new(key: &'static str, value: impl fmt::Display, rule: impl Into<String>) -> Self {
        Self { key, value: value.to_string(), rule: rule.into() }
    }
}

/// Reads a backend's settings: the table, the environment over it, then the backend's checks.
/// What start-up does for the configured backend; public so a backend's tests read settings the
/// same way.
pub fn read<B: Backend>(ctx: &BackendContext<'_>) -> Result<B::Settings, ConfigError> {
    let mut layered = Layered::new(format!("storage.{}", B::NAME), ctx.table.clone(), "file");
    layered.apply_env(B::ENV, ctx.env)?;
    let settings: B::Settings = layered.read()?;
    B::check(&settings).map_err(|bad| {
        // A secret prints redacted, in the settings as in this error.
        let printed = toml::Table::try_from(&settings).ok().and_then(|t| t.get(bad.key).cloned());
        let secret = printed.is_some_and(|v| v.as_str() == Some(REDACTED));
        layered.invalid(bad.key, (!secret).then(|| format!("{:?}", bad.value)), bad.rule)
    })?;
    Ok(settings)
}

/// [`read`], boxed as the registry holds it (printable with secrets redacted, buildable).
pub fn parse<B: Backend>(ctx: &BackendContext<'_>) -> Result<Box<dyn BackendSettings>, ConfigError> {
    Ok(Box::new(Parsed::<B> { settings: read::<B>(ctx)? }))
}

/// A backend's validated settings.
struct Parsed<B: Backend> {
    settings: B::Settings,
}

impl<B: Backend> fmt::Debug for Parsed<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.settings.fmt(f)
    }
}

#[async_trait]
impl<B: Backend> BackendSettings for Parsed<B> {
    fn redacted(&self) -> toml::Table {
        toml::Table::try_from(&self.settings).unwrap_or_default()
    }

    fn resident_memory(&self) -> Option<(String, u64)> {
        B::resident_memory(&self.settings).map(|(key, bytes)| (format!("storage.{}.{key}", B::NAME), bytes))
    }

    async fn build(&self, base_url: Option<&str>) -> Result<Arc<dyn Storage>, BuildError> {
        let backend = B::open(&self.settings, &OpenContext { artifact_server: base_url.is_some() }).await?;
        Ok(Arc::new(Hosted::new(backend, base_url)))
    }
}

/// `backend` as the controller calls it, its artifact server at `base_url` (`None`: disabled).
pub fn host<B: Backend>(backend: B, base_url: Option<&str>) -> Arc<dyn Storage> {
    Arc::new(Hosted::new(backend, base_url))
}

/// A [`Backend`] as the controller calls it: the dynamic [`Storage`], with URLs and put metadata
/// supplied by core.
pub struct Hosted<B> {
    backend: B,
    /// The artifact server's base URL, when it runs.
    base_url: Option<String>,
}

impl<B: Backend> Hosted<B> {
    pub fn new(backend: B, base_url: Option<&str>) -> Self {
        Self { backend, base_url: base_url.map(str::to_owned) }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
}

#[async_trait]
impl<B: Backend> Storage for Hosted<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<ObjectMeta, StorageError> {
        let size = body.len() as u64;
        self.backend.put(key, body, digest).await?;
        Ok(ObjectMeta { key: key.clone(), size, digest: digest.clone(), last_modified: SystemTime::now() })
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        self.backend.get(key, range).await
    }

    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.backend.stat(key).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.backend.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        self.backend.list(prefix).await
    }

    fn url(&self, key: &ObjectKey) -> String {
        match &self.base_url {
            Some(base) if self.backend.capabilities().serves_http => served_url(base, key),
            _ => self.backend.direct_url(key),
        }
    }
}
