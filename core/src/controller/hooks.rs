//! Hooks (the predecessor's `spec.hooks`): commands run by a separate executor process with no
//! Kubernetes credentials, only from a whitelist, without a shell.
//!
//! - [`whitelist`] and [`env`]: what the executor allows, commands, arguments and environment;
//! - [`run`], [`sandbox`] and [`admission`]: how it runs one command (a private directory,
//!   rlimits, no new privileges) and how many at once, per namespace and in total;
//! - [`protocol`]: the Unix-socket exchange between the controller and the executor;
//! - [`spec`] and [`chain`]: the reconciler's side, validating `spec.hooks` and running a list
//!   with the retry policy.

pub mod admission;
pub mod chain;
pub mod env;
pub mod protocol;
pub mod run;
pub mod sandbox;
pub mod spec;
pub mod whitelist;
