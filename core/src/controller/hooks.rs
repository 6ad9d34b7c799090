//! Hooks (the predecessor's `spec.hooks`): commands run by a separate executor process with no
//! Kubernetes credentials, only from a whitelist, without a shell.
//!
//! This module holds the executor's decisions and its runner; the socket protocol between the
//! controller and the executor, and the reconciler's use of hooks, are not built yet (a source
//! with hooks stays `Ready=False` with reason `Unsupported`).

pub mod run;
pub mod whitelist;
