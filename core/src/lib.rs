//! The domain of the ExternalSource controller.
//!
//! This crate knows no concrete storage backend. A backend lives in its own crate, depends on this
//! one (whose default features are empty: no Kubernetes client, no HTTP fetcher), implements
//! [`Backend`] and registers with [`register_backend!`]. The binary links whichever backend
//! crates its cargo features select; a third party's binary adds its own.

pub mod backend;
pub mod config;
pub mod digest;
pub mod key;
pub mod package;
pub mod registry;
pub mod restore;
pub mod storage;
pub mod units;
pub mod values;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use backend::{Backend, ByteSize, EnvVar, HttpUrl, Invalid, OpenContext, Secret, TimeSpan};
pub use digest::Digest;
pub use key::ObjectKey;
pub use registry::{BackendContext, BackendDescriptor, BackendSettings, BuildError};
pub use storage::{ByteRange, Capabilities, ObjectBody, ObjectMeta, ObjectSummary, Storage, StorageError};

/// Re-exported for [`register_backend!`] and so a backend needs no dependency of its own.
pub use bytes::Bytes;

/// Re-exported so a backend crate's `inventory::submit!` resolves without its own dependency.
pub use inventory;

#[cfg(feature = "controller")]
pub mod controller;
#[cfg(feature = "controller")]
pub mod isolated;
