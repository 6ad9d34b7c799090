//! Code that runs outside the controller process, in children with no Kubernetes credentials:
//! tenant code must never run where the controller's credentials live.
//!
//! - [`hook_executor`]: the hook executor sidecar, which runs `spec.hooks` commands from a
//!   whitelist, and the protocol the controller speaks to it;
//! - [`transform`]: the jq engine, the worker process it runs in and the sandbox that starts it;
//! - [`child`]: the process limits both apply.

pub mod child;
pub mod hook_executor;
pub mod transform;
