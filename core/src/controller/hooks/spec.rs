//! `spec.hooks` validated into what the reconciler runs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::controller::api::{ExternalSourceSpec, HookSpec, RetryPolicy};
use crate::controller::conditions::Reason;
use crate::controller::reconcile::problem::ConfigProblem;
use crate::units::{format_duration, parse_duration};

/// Retries shared by every hook of one reconcile when `spec.maxRetries` is unset.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// The controller's hook settings (from `[hooks]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookDefaults {
    /// Whether an executor is configured (`hooks.socket`).
    pub enabled: bool,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
}

/// One validated hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub policy: RetryPolicy,
}

/// Both hook lists and the retry budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookPlan {
    pub pre_request: Vec<Hook>,
    pub post_request: Vec<Hook>,
    pub max_retries: u32,
}

impl HookPlan {
    pub fn is_empty(&self) -> bool {
        self.pre_request.is_empty() && self.post_request.is_empty()
    }

    /// Validates `spec.hooks`; without an executor, a spec with hooks is `Unsupported` (never
    /// silently ignored: its output would differ).
    pub fn from_spec(spec: &ExternalSourceSpec, defaults: &HookDefaults) -> Result<Self, ConfigProblem> {
        let Some(hooks) = spec.hooks.as_ref().filter(|h| !h.pre_request.is_empty() || !h.post_request.is_empty())
        else {
            return Ok(Self::default());
        };
        if !defaults.enabled {
            return Err(ConfigProblem {
                reason: Reason::Unsupported,
                message: "spec.hooks: this controller runs hooks only through its hook executor, which is not \
                          configured; enable it (hooks.socket, the deploy/components/hooks component) or remove \
                          spec.hooks"
                    .into(),
            });
        }
        let parse = |list: &[HookSpec], field: &str| -> Result<Vec<Hook>, ConfigProblem> {
            let mut out: Vec<Hook> = Vec::with_capacity(list.len());
            for (i, h) in list.iter().enumerate() {
                let at = format!("spec.hooks.{field}[{i}]");
                out.push(hook(h, &at, defaults)?);
                if out[..i].iter().any(|o| o.name == h.name) {
                    return Err(ConfigProblem::invalid(
                        &format!("{at}.name"),
                        &h.name,
                        "is used by another hook of the list",
                    ));
                }
            }
            Ok(out)
        };
        let max_retries = match spec.max_retries {
            None => DEFAULT_MAX_RETRIES,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| *n <= 10)
                .ok_or_else(|| ConfigProblem::invalid("spec.maxRetries", &n.to_string(), "must be from 0 to 10"))?,
        };
        Ok(Self {
            pre_request: parse(&hooks.pre_request, "preRequest")?,
            post_request: parse(&hooks.post_request, "postRequest")?,
            max_retries,
        })
    }
}

fn hook(h: &HookSpec, at: &str, defaults: &HookDefaults) -> Result<Hook, ConfigProblem> {
    let name_ok = !h.name.is_empty()
        && h.name.len() <= 63
        && h.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(ConfigProblem::invalid(
            &format!("{at}.name"),
            &h.name,
            "must be 1 to 63 letters, digits, `-`, `_` or `.`",
        ));
    }
    if !h.command.starts_with('/') {
        return Err(ConfigProblem::invalid(
            &format!("{at}.command"),
            &h.command,
            "must be an absolute path (the executor's whitelist names commands by absolute path; there is no shell)",
        ));
    }
    let timeout = match &h.timeout {
        None => defaults.default_timeout,
        Some(t) => parse_duration(t)
            .ok()
            .filter(|d| *d >= Duration::from_secs(1) && *d <= defaults.max_timeout)
            .ok_or_else(|| {
                ConfigProblem::invalid(
                    &format!("{at}.timeout"),
                    t,
                    format!(
                        "must be a duration from 1s to the controller's limit of {}",
                        format_duration(defaults.max_timeout)
                    ),
                )
            })?,
    };
    let mut env = BTreeMap::new();
    for (j, e) in h.env.iter().enumerate() {
        let valid = e.name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && e.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(ConfigProblem::invalid(
                &format!("{at}.env[{j}].name"),
                &e.name,
                "must be a shell-style variable name",
            ));
        }
        env.insert(e.name.clone(), e.value.clone());
    }
    Ok(Hook {
        name: h.name.clone(),
        command: h.command.clone(),
        args: h.args.clone(),
        env,
        timeout,
        policy: h.retry_policy.unwrap_or(RetryPolicy::Fail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hooks: serde_json::Value, max_retries: Option<i32>) -> ExternalSourceSpec {
        let mut v = serde_json::json!({
            "interval": "1m",
            "generator": {"type": "http", "http": {"url": "https://example.com"}},
            "hooks": hooks,
        });
        if let Some(n) = max_retries {
            v["maxRetries"] = n.into();
        }
        serde_json::from_value(v).unwrap()
    }

    const ON: HookDefaults =
        HookDefaults { enabled: true, default_timeout: Duration::from_secs(30), max_timeout: Duration::from_secs(300) };

    #[test]
    fn hooks_are_validated_with_their_defaults() {
        let s = spec(
            serde_json::json!({
                "preRequest": [{"name": "token", "command": "/usr/bin/get-token", "env": [{"name": "AUDIENCE", "value": "api"}]}],
                "postRequest": [{"name": "yaml", "command": "/usr/bin/yq", "args": ["-o", "json"], "timeout": "5s", "retryPolicy": "retry"}],
            }),
            None,
        );
        let plan = HookPlan::from_spec(&s, &ON).unwrap();
        assert_eq!(plan.max_retries, 3);
        assert_eq!(plan.pre_request[0].timeout, Duration::from_secs(30));
        assert_eq!(plan.pre_request[0].policy, RetryPolicy::Fail);
        assert_eq!(plan.pre_request[0].env.get("AUDIENCE").map(String::as_str), Some("api"));
        assert_eq!(plan.post_request[0].timeout, Duration::from_secs(5));
        assert_eq!(plan.post_request[0].policy, RetryPolicy::Retry);
    }

    #[test]
    fn without_an_executor_hooks_are_unsupported_not_ignored() {
        let s = spec(serde_json::json!({"postRequest": [{"name": "a", "command": "/bin/cat"}]}), None);
        let off = HookDefaults { enabled: false, ..ON };
        let problem = HookPlan::from_spec(&s, &off).unwrap_err();
        assert_eq!(problem.reason, Reason::Unsupported);
        assert!(
            problem.message.contains("hooks.socket") && problem.message.contains("deploy/components/hooks"),
            "{}",
            problem.message
        );
        assert!(HookPlan::from_spec(&spec(serde_json::json!({}), None), &off).unwrap().is_empty());
    }

    #[test]
    fn invalid_hooks_name_field_value_and_rule() {
        let cases = [
            (
                serde_json::json!({"postRequest": [{"name": "a", "command": "jq"}]}),
                None,
                "spec.hooks.postRequest[0].command",
            ),
            (
                serde_json::json!({"preRequest": [{"name": "a b", "command": "/bin/cat"}]}),
                None,
                "spec.hooks.preRequest[0].name",
            ),
            (
                serde_json::json!({"postRequest": [{"name": "a", "command": "/bin/cat", "timeout": "1h"}]}),
                None,
                "limit of 5m",
            ),
            (
                serde_json::json!({"postRequest": [{"name": "a", "command": "/bin/cat", "env": [{"name": "1X", "value": ""}]}]}),
                None,
                "spec.hooks.postRequest[0].env[0].name",
            ),
            (
                serde_json::json!({"postRequest": [{"name": "a", "command": "/bin/cat"}, {"name": "a", "command": "/bin/cat"}]}),
                None,
                "spec.hooks.postRequest[1].name",
            ),
            (serde_json::json!({"postRequest": [{"name": "a", "command": "/bin/cat"}]}), Some(11), "spec.maxRetries"),
        ];
        for (hooks, retries, expect) in cases {
            let problem = HookPlan::from_spec(&spec(hooks.clone(), retries), &ON).unwrap_err();
            assert_eq!(problem.reason, Reason::InvalidSpec, "{hooks}");
            assert!(problem.message.contains(expect), "{hooks}: {}", problem.message);
        }
    }
}
