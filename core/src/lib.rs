//! The domain of the ExternalSource controller.
//!
//! This crate knows no concrete storage backend. Backends live in their own crates, depend on
//! this one with `default-features = false`, and announce themselves to the [`registry`] with
//! `inventory::submit!`. The binary links whichever backend crates its cargo features select.

pub mod config;
pub mod digest;
pub mod key;
pub mod package;
pub mod registry;
pub mod restore;
pub mod storage;
pub mod units;

#[cfg(feature = "testing")]
pub mod testing;

pub use digest::Digest;
pub use key::ObjectKey;
pub use registry::{BackendContext, BackendDescriptor, BackendSettings, BuildError};
pub use storage::{ByteRange, Capabilities, ObjectBody, ObjectMeta, Storage, StorageError};

/// Re-exported so a backend crate's `inventory::submit!` resolves without its own dependency.
pub use inventory;

#[cfg(feature = "controller")]
pub mod controller;
