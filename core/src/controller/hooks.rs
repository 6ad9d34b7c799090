//! Hooks (the predecessor's `spec.hooks`): commands run by a separate executor process with no
//! Kubernetes credentials, only from a whitelist, without a shell.
//!
//! - [`whitelist`] and [`run`]: what the executor allows and how it runs one command;
//! - [`protocol`]: the Unix-socket exchange between the controller and the executor;
//! - [`spec`] and [`chain`]: the reconciler's side, validating `spec.hooks` and running a list
//!   with the retry policy.

pub mod chain;
pub mod protocol;
pub mod run;
pub mod spec;
pub mod whitelist;
