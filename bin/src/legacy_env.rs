//! Settings of the Go predecessor that this controller does not read. Switching is an image swap,
//! so a Deployment may still set them: each one set is named once at start-up with what replaces
//! it, instead of being ignored in silence (the predecessor's own habit with invalid values).

/// Each variable the predecessor read and this controller does not, with what to use instead.
const UNREAD: &[(&str, &str)] = &[
    ("HTTP_MAX_IDLE_CONNS", "connections are pooled per TLS setting; there is nothing to set"),
    ("HTTP_MAX_IDLE_CONNS_PER_HOST", "connections are pooled per TLS setting; there is nothing to set"),
    ("HTTP_MAX_CONNS_PER_HOST", "fetches at once are bounded by controller.concurrency and namespace_concurrency"),
    ("HTTP_IDLE_CONN_TIMEOUT", "idle upstream connections close after 90s; there is nothing to set"),
    ("RETRY_MAX_ATTEMPTS", "a failed fetch is retried with backoff up to 5m (docs/operations.md, Failure semantics)"),
    ("RETRY_BASE_DELAY", "a failed fetch is retried with backoff up to 5m (docs/operations.md, Failure semantics)"),
    ("RETRY_MAX_DELAY", "a failed fetch is retried with backoff up to 5m (docs/operations.md, Failure semantics)"),
    ("RETRY_JITTER_FACTOR", "a failed fetch is retried with backoff up to 5m (docs/operations.md, Failure semantics)"),
    ("HOOK_WHITELIST_PATH", "set HOOK_WHITELIST on the hook-executor container (a TOML file)"),
    ("HOOK_EXECUTOR_ENDPOINT", "set HOOK_EXECUTOR_SOCKET (the executor listens on a Unix socket)"),
    ("HOOK_DEFAULT_TIMEOUT", "set hooks.default_timeout in the configuration file"),
    ("METRICS_ENABLED", "metrics are always served on ops.port (/metrics)"),
    ("METRICS_INTERVAL", "metrics are always served on ops.port (/metrics)"),
    ("TRANSFORM_TIMEOUT", "set transform.timeout in the configuration file"),
];

/// The predecessor's variables set in `env`, each with what replaces it.
pub fn unread(env: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, &'static str)> {
    UNREAD.iter().copied().filter(|(name, _)| env(name).is_some()).collect()
}

/// Logs each of the predecessor's variables that is set, once.
pub fn warn_unread() {
    for (name, instead) in unread(|name| std::env::var(name).ok()) {
        tracing::warn!(variable = name, "set but not read by this controller (a Go predecessor setting): {instead}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only_the_variables_that_are_set() {
        let set = |name: &str| {
            matches!(name, "RETRY_MAX_ATTEMPTS" | "HOOK_EXECUTOR_ENDPOINT" | "S3_BUCKET").then(String::new)
        };
        let names: Vec<_> = unread(set).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["RETRY_MAX_ATTEMPTS", "HOOK_EXECUTOR_ENDPOINT"], "S3_BUCKET is read: not named");
        assert!(unread(|_| None).is_empty());
    }

    #[test]
    fn no_variable_listed_is_one_this_controller_reads() {
        for (name, _) in UNREAD {
            let read = externalsource_core::config::ENV_KEYS.iter().any(|(var, _)| var == name);
            assert!(!read, "{name} is read by this controller");
        }
    }
}
