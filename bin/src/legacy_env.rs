//! Settings of the Go predecessor that this controller does not read. Switching is an image swap,
//! so a Deployment may still set them: each one set is named once at start-up with what replaces
//! it, instead of being ignored in silence (the predecessor's own habit with invalid values).

use externalsource_core::config::{ControllerConfig, HooksConfig, OpsConfig, TransformConfig};

/// Each variable the predecessor read and this controller does not, with what to use instead.
fn unread_table() -> Vec<(&'static str, String)> {
    let backoff = "a failed fetch is retried with backoff up to 5m (docs/operations.md, Failure semantics)";
    let idle = "connections are pooled per TLS setting; there is nothing to set";
    let metrics = format!("metrics are always served on {} (/metrics)", OpsConfig::port);
    let in_file = |key: &str| format!("set {key} in the configuration file");
    vec![
        ("HTTP_MAX_IDLE_CONNS", idle.to_owned()),
        ("HTTP_MAX_IDLE_CONNS_PER_HOST", idle.to_owned()),
        (
            "HTTP_MAX_CONNS_PER_HOST",
            format!(
                "fetches at once are bounded by {} and {}",
                ControllerConfig::concurrency,
                ControllerConfig::namespace_concurrency
            ),
        ),
        ("HTTP_IDLE_CONN_TIMEOUT", "idle upstream connections close after 90s; there is nothing to set".to_owned()),
        ("RETRY_MAX_ATTEMPTS", backoff.to_owned()),
        ("RETRY_BASE_DELAY", backoff.to_owned()),
        ("RETRY_MAX_DELAY", backoff.to_owned()),
        ("RETRY_JITTER_FACTOR", backoff.to_owned()),
        ("HOOK_WHITELIST_PATH", "set HOOK_WHITELIST on the hook-executor container (a TOML file)".to_owned()),
        ("HOOK_EXECUTOR_ENDPOINT", "set HOOK_EXECUTOR_SOCKET (the executor listens on a Unix socket)".to_owned()),
        ("HOOK_DEFAULT_TIMEOUT", in_file(HooksConfig::default_timeout)),
        ("METRICS_ENABLED", metrics.clone()),
        ("METRICS_INTERVAL", metrics),
        ("TRANSFORM_TIMEOUT", in_file(TransformConfig::timeout)),
    ]
}

/// The predecessor's variables set in `env`, each with what replaces it.
pub fn unread(env: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, String)> {
    unread_table().into_iter().filter(|(name, _)| env(name).is_some()).collect()
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
        for (name, _) in unread_table() {
            let read = externalsource_core::config::ENV_KEYS.iter().any(|(var, _)| *var == name);
            assert!(!read, "{name} is read by this controller");
        }
    }
}
