//! The hook executor: a separate process, with no Kubernetes credentials, that runs `spec.hooks`
//! commands only from a whitelist and without a shell.
//!
//! - [`whitelist`] and [`env`](mod@env): what it allows, commands, arguments and environment;
//! - [`run`], [`sandbox`] and [`admission`]: how it runs one command (a private directory,
//!   rlimits, no new privileges) and how many at once, per namespace and in total; [`reaper`]:
//!   what a command leaves running outside its process group ends with its run;
//! - [`protocol`]: the Unix-socket exchange between the controller and the executor (both sides).

pub mod admission;
pub mod env;
pub mod protocol;
pub mod reaper;
pub mod run;
pub mod sandbox;
pub mod whitelist;
