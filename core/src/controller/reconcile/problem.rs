//! A problem in the spec (or the Secrets it names) that retrying cannot fix.

use crate::controller::conditions::Reason;

/// A configuration problem: the condition reason and a message naming field, value and rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigProblem {
    pub reason: Reason,
    pub message: String,
}

impl ConfigProblem {
    pub fn invalid(field: &str, value: &str, rule: impl std::fmt::Display) -> Self {
        Self { reason: Reason::InvalidSpec, message: format!("{field}: {value:?} {rule}") }
    }
}
