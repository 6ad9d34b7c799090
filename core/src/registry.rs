//! The backend registry: backend crates announce themselves with `inventory::submit!`, the binary
//! links the ones its cargo features select, and start-up builds the one the configuration names.
//!
//! A backend crate that nothing references is not linked and its submission silently vanishes, so
//! the binary keeps one `use <crate> as _;` per enabled backend (see `bin/src/backends.rs`).
//!
//! A backend registers with [`register_backend!`](crate::register_backend) (see
//! [`backend`](crate::backend) for what it implements), which records the crate it comes from: two crates claiming one name would make `storage.backend` ambiguous, so
//! [`check_unique`] refuses that at start-up, naming both crates.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::Backend;
use crate::config::ConfigError;
use crate::storage::{Capabilities, Storage, StorageError};

/// A linked backend, as submitted by its crate.
pub struct BackendDescriptor {
    /// The name `storage.backend` selects and the TOML table `[storage.<name>]` is read from.
    pub name: &'static str,
    /// The cargo package that registered it (filled in by [`register_backend!`](crate::register_backend)).
    pub crate_name: &'static str,
    /// What the backend offers in its default mode.
    pub capabilities: Capabilities,
    /// A word on capabilities that depend on settings (printed by `--list-backends`).
    pub note: &'static str,
    /// Parses and validates the backend's own table and environment.
    pub parse: fn(&BackendContext<'_>) -> Result<Box<dyn BackendSettings>, ConfigError>,
}

inventory::collect!(BackendDescriptor);

impl BackendDescriptor {
    /// The descriptor of backend `B` from crate `crate_name`; what [`register_backend!`](crate::register_backend) submits.
    pub const fn of<B: Backend>(crate_name: &'static str) -> Self {
        Self {
            name: B::NAME,
            crate_name,
            capabilities: B::CAPABILITIES,
            note: B::NOTE,
            parse: crate::backend::parse::<B>,
        }
    }
}

/// Registers a backend type of the calling crate (one that implements
/// [`Backend`](crate::backend::Backend)):
///
/// ```ignore
/// externalsource_core::register_backend!(WebDav);
/// ```
///
/// The binary must link the crate (`use my_backend as _;`) for the registration to exist.
#[macro_export]
macro_rules! register_backend {
    ($backend:ty) => {
        $crate::inventory::submit! {
            $crate::registry::BackendDescriptor::of::<$backend>(env!("CARGO_PKG_NAME"))
        }
    };
}

/// Two linked crates register one backend name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage backend {name:?} is registered by more than one linked crate: {crates}; link only one of them")]
pub struct DuplicateBackend {
    pub name: &'static str,
    /// The crates, comma-separated, sorted.
    pub crates: String,
}

/// Fails when two linked crates register the same name (the first such name, by name order).
pub fn check_unique() -> Result<(), DuplicateBackend> {
    duplicates(&backends())
}

fn duplicates(sorted: &[&BackendDescriptor]) -> Result<(), DuplicateBackend> {
    for pair in sorted.windows(2) {
        if pair[0].name == pair[1].name {
            let mut crates: Vec<&str> =
                sorted.iter().filter(|d| d.name == pair[0].name).map(|d| d.crate_name).collect();
            crates.sort_unstable();
            return Err(DuplicateBackend { name: pair[0].name, crates: crates.join(", ") });
        }
    }
    Ok(())
}

/// A snapshot of the process environment, so configuration is a pure function of its inputs.
#[derive(Debug, Clone, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The environment of this process.
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// A variable's value; an empty variable counts as unset, as in the predecessor.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// What a backend's parser sees.
pub struct BackendContext<'a> {
    /// The `[storage.<name>]` table (empty when the file has none).
    pub table: &'a toml::Table,
    /// The environment, for the backend's own variables (`PVC_STORAGE_PATH`, `S3_*`, …).
    pub env: &'a Env,
}

/// Why a backend could not be built from its validated settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The settings conflict with the rest of the configuration (fix the configuration; the
    /// binary exits 2 as for any configuration error).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened (an unreadable root, …).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A backend's validated settings, ready to build the storage (core implements it for every
/// [`Backend`]).
#[async_trait]
pub trait BackendSettings: Send + Sync + fmt::Debug {
    /// The effective settings as TOML, secrets replaced by `"<redacted>"`.
    fn redacted(&self) -> toml::Table;

    /// Bytes the store may keep in the controller's own memory and the full key bounding them
    /// (`storage.memory.max_bytes`), for the start-up check against the container's memory limit.
    fn resident_memory(&self) -> Option<(String, u64)> {
        None
    }

    /// Builds the storage. `base_url` is where the controller's artifact server is reached by
    /// consumers, or `None` when the server is disabled.
    async fn build(&self, base_url: Option<&str>) -> Result<Arc<dyn Storage>, BuildError>;
}

/// Every linked backend, sorted by name (then crate).
pub fn backends() -> Vec<&'static BackendDescriptor> {
    let mut all: Vec<_> = inventory::iter::<BackendDescriptor>.into_iter().collect();
    all.sort_by_key(|d| (d.name, d.crate_name));
    all
}

/// The names of the linked backends, sorted.
pub fn backend_names() -> Vec<&'static str> {
    backends().into_iter().map(|d| d.name).collect()
}

/// The descriptor for `name`, or an error listing what is linked (or naming the crates that
/// both register it).
pub fn find(name: &str) -> Result<&'static BackendDescriptor, ConfigError> {
    let all = backends();
    let matching: Vec<_> = all.iter().copied().filter(|d| d.name == name).collect();
    duplicates(&matching)?;
    matching
        .first()
        .copied()
        .ok_or_else(|| ConfigError::UnknownBackend { name: name.to_owned(), linked: backend_names().join(", ") })
}

/// One line per linked backend: name, capabilities, and the note if any.
pub fn describe_backends() -> String {
    backends()
        .into_iter()
        .map(|d| {
            let note = if d.note.is_empty() { String::new() } else { format!(" ({})", d.note) };
            format!("{} {}{} [{}]\n", d.name, d.capabilities, note, d.crate_name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(_: &BackendContext<'_>) -> Result<Box<dyn BackendSettings>, ConfigError> {
        Err(ConfigError::Invalid { key: "storage.x".into(), value: String::new(), rule: "never built".into() })
    }

    const fn descriptor(name: &'static str, crate_name: &'static str) -> BackendDescriptor {
        BackendDescriptor {
            name,
            crate_name,
            capabilities: Capabilities { serves_http: false, shared: false },
            note: "",
            parse,
        }
    }

    #[test]
    fn a_name_two_crates_register_is_refused_naming_both() {
        let (a, b, c) = (
            descriptor("alpha", "one-crate"),
            descriptor("webdav", "vendor-b-backend"),
            descriptor("webdav", "vendor-a-backend"),
        );
        let mut all = vec![&a, &b, &c];
        all.sort_by_key(|d| (d.name, d.crate_name));
        let err = duplicates(&all).unwrap_err();
        assert_eq!(err, DuplicateBackend { name: "webdav", crates: "vendor-a-backend, vendor-b-backend".into() });
        assert!(err.to_string().contains("\"webdav\""), "{err}");
        assert_eq!(duplicates(&[&a, &b]), Ok(()));
    }
}
