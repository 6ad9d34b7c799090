//! Hooks (the predecessor's `spec.hooks`), the reconciler's side: [`spec`] validates
//! `spec.hooks` and [`chain`] runs a list through the executor with the retry policy. The
//! executor itself, a separate process with no Kubernetes credentials that runs whitelisted
//! commands without a shell, is [`hook_executor`](crate::isolated::hook_executor).

pub mod chain;
pub mod spec;
