//! Running a list of hooks with the predecessor's retry semantics.
//!
//! `spec.maxRetries` (default 3) is one budget of failed attempts shared by every hook of a
//! reconcile. Per hook, `retryPolicy`:
//! - `fail` (the default): one attempt; a failure fails the reconcile;
//! - `ignore`: one attempt; a failure keeps the data as it was and goes on to the next hook;
//! - `retry`: attempts until success or the budget is spent, pausing 1 s, 2 s, … between them.
//!
//! A refusal by the whitelist is never retried. Unlike the predecessor, the pause is
//! cancellable with the reconcile, and an explicit `maxRetries: 0` means no retry.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::controller::api::RetryPolicy;
use crate::controller::hooks::spec::Hook;
use crate::isolated::hook_executor::protocol::CallError;
use crate::isolated::hook_executor::run::Invocation;

/// Which list a hook belongs to, as in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    PreRequest,
    PostRequest,
}

impl Phase {
    pub fn field(self) -> &'static str {
        match self {
            Self::PreRequest => "preRequest",
            Self::PostRequest => "postRequest",
        }
    }
}

/// A hook that failed the reconcile.
#[derive(Debug, thiserror::Error)]
#[error("hook {hook:?} ({phase}) failed after {attempts} attempt(s): {error}", phase = phase.field())]
pub struct HookFailure {
    pub hook: String,
    pub phase: Phase,
    pub attempts: u32,
    #[source]
    pub error: CallError,
}

impl HookFailure {
    /// A whitelist refusal or a bad request fails again however often it is tried.
    pub fn is_permanent(&self) -> bool {
        self.error.is_permanent()
    }

    /// The executor's whitelist refused the command, an argument or an environment variable.
    pub fn is_refusal(&self) -> bool {
        self.error.is_refusal()
    }
}

/// One finished attempt, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub hook: &'a str,
    pub policy: RetryPolicy,
    pub ok: bool,
    pub took: Duration,
}

/// Runs `hooks` in order over `data` (each hook's stdout is the next one's stdin), calling the
/// executor through `call`. `budget` is what is left of `spec.maxRetries` for this reconcile.
pub async fn run_chain<F, Fut>(
    hooks: &[crate::controller::hooks::spec::Hook],
    phase: Phase,
    mut data: Bytes,
    budget: &mut u32,
    mut call: F,
    mut record: impl FnMut(Attempt<'_>),
) -> Result<Bytes, HookFailure>
where
    F: FnMut(Invocation) -> Fut,
    Fut: Future<Output = Result<Bytes, CallError>>,
{
    for hook in hooks {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let started = Instant::now();
            let result = call(invocation(hook, data.clone())).await;
            record(Attempt { hook: &hook.name, policy: hook.policy, ok: result.is_ok(), took: started.elapsed() });
            let error = match result {
                Ok(output) => {
                    data = output;
                    break;
                }
                Err(error) => error,
            };
            match hook.policy {
                RetryPolicy::Ignore => {
                    tracing::info!(hook = %hook.name, error = %error, "hook failed; ignored (retryPolicy: ignore)");
                    break;
                }
                RetryPolicy::Retry if *budget > 0 && !error.is_permanent() => {
                    *budget -= 1;
                    tokio::time::sleep(Duration::from_secs(u64::from(attempts))).await;
                }
                RetryPolicy::Retry | RetryPolicy::Fail => {
                    return Err(HookFailure { hook: hook.name.clone(), phase, attempts, error });
                }
            }
        }
    }
    Ok(data)
}

fn invocation(hook: &Hook, stdin: Bytes) -> Invocation {
    Invocation {
        command: hook.command.clone(),
        args: hook.args.clone(),
        env: hook.env.clone(),
        timeout: hook.timeout,
        stdin,
    }
}

/// Why pre-request output could not become headers. Never quotes the line: it may hold a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the preRequest hooks' output is not a `Name: value` header: {rule}")]
pub struct HeaderLineError {
    pub line: usize,
    pub rule: &'static str,
}

/// Pre-request hooks print `Name: value` lines (empty lines are skipped); they become request
/// headers, a later line replacing an earlier one of the same name.
pub fn parse_headers(output: &[u8]) -> Result<HeaderMap, HeaderLineError> {
    let text = std::str::from_utf8(output).map_err(|_| HeaderLineError { line: 0, rule: "the output is not UTF-8" })?;
    let mut headers = HeaderMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (name, value) =
            line.split_once(':').ok_or(HeaderLineError { line: line_no, rule: "there is no `:` after the name" })?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| HeaderLineError { line: line_no, rule: "the name is not a valid header name" })?;
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| HeaderLineError { line: line_no, rule: "the value has characters a header cannot hold" })?;
        // Dynamic tokens are what these headers are for: never print them.
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolated::hook_executor::protocol::FailureKind;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    fn hook(name: &str, policy: RetryPolicy) -> Hook {
        Hook {
            name: name.into(),
            command: format!("/bin/{name}"),
            args: vec![],
            env: BTreeMap::new(),
            timeout: Duration::from_secs(1),
            policy,
        }
    }

    fn failed(kind: FailureKind) -> CallError {
        CallError::Failed { kind, message: "boom".into() }
    }

    type Answer = std::future::Ready<Result<Bytes, CallError>>;
    type Calls = Arc<Mutex<Vec<String>>>;
    type Script = Vec<(&'static str, Vec<Result<&'static str, FailureKind>>)>;

    /// Scripted executor: each command answers from its queue (the last answer repeats).
    fn scripted(script: Script) -> (impl FnMut(Invocation) -> Answer, Calls) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let mut script: BTreeMap<String, Vec<Result<&'static str, FailureKind>>> =
            script.into_iter().map(|(k, v)| (format!("/bin/{k}"), v)).collect();
        let call = move |inv: Invocation| {
            seen.lock().unwrap().push(format!("{}<{}", inv.command, String::from_utf8_lossy(&inv.stdin)));
            let answers = script.get_mut(&inv.command).unwrap();
            let answer = if answers.len() > 1 { answers.remove(0) } else { answers[0] };
            std::future::ready(answer.map(|s| Bytes::from_static(s.as_bytes())).map_err(failed))
        };
        (call, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn hooks_chain_their_output_in_order() {
        let (call, calls) = scripted(vec![("a", vec![Ok("A")]), ("b", vec![Ok("B")])]);
        let hooks = [hook("a", RetryPolicy::Fail), hook("b", RetryPolicy::Fail)];
        let mut budget = 3;
        let out =
            run_chain(&hooks, Phase::PostRequest, Bytes::from_static(b"in"), &mut budget, call, |_| {}).await.unwrap();
        assert_eq!(out, Bytes::from_static(b"B"));
        assert_eq!(*calls.lock().unwrap(), vec!["/bin/a<in", "/bin/b<A"]);
    }

    #[tokio::test(start_paused = true)]
    async fn ignore_keeps_the_data_and_goes_on() {
        let (call, calls) = scripted(vec![("a", vec![Err(FailureKind::Spawn)]), ("b", vec![Ok("B")])]);
        let hooks = [hook("a", RetryPolicy::Ignore), hook("b", RetryPolicy::Fail)];
        let mut budget = 3;
        let out =
            run_chain(&hooks, Phase::PostRequest, Bytes::from_static(b"in"), &mut budget, call, |_| {}).await.unwrap();
        assert_eq!(out, Bytes::from_static(b"B"));
        assert_eq!(*calls.lock().unwrap(), vec!["/bin/a<in", "/bin/b<in"], "b saw the data a failed on");
        assert_eq!(budget, 3, "an ignored failure spends no retry");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_spends_a_budget_shared_by_all_hooks_and_backs_off_linearly() {
        let (call, calls) = scripted(vec![
            ("a", vec![Err(FailureKind::TimedOut), Err(FailureKind::TimedOut), Ok("A")]),
            ("b", vec![Err(FailureKind::TimedOut)]),
        ]);
        let hooks = [hook("a", RetryPolicy::Retry), hook("b", RetryPolicy::Retry)];
        let mut budget = 3;
        let mut attempts = Vec::new();
        let started = tokio::time::Instant::now();
        let err = run_chain(&hooks, Phase::PostRequest, Bytes::new(), &mut budget, call, |a| {
            attempts.push((a.hook.to_owned(), a.ok))
        })
        .await
        .unwrap_err();
        // a: fail, sleep 1 s, fail, sleep 2 s, ok (2 retries spent); b: fail, sleep 1 s, fail (budget gone).
        assert_eq!(calls.lock().unwrap().len(), 5);
        assert_eq!(budget, 0);
        assert_eq!((err.hook.as_str(), err.attempts), ("b", 2));
        assert_eq!(started.elapsed(), Duration::from_secs(4));
        assert_eq!(attempts.iter().filter(|(_, ok)| *ok).count(), 1);
        assert_eq!(err.to_string(), "hook \"b\" (postRequest) failed after 2 attempt(s): boom");
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_not_retried_and_fail_is_one_attempt() {
        let (call, calls) = scripted(vec![("a", vec![Err(FailureKind::Refused)])]);
        let mut budget = 3;
        let err =
            run_chain(&[hook("a", RetryPolicy::Retry)], Phase::PreRequest, Bytes::new(), &mut budget, call, |_| {})
                .await
                .unwrap_err();
        assert!(err.is_permanent());
        assert_eq!((calls.lock().unwrap().len(), budget), (1, 3));
        let (call, calls) = scripted(vec![("a", vec![Err(FailureKind::Spawn)])]);
        let err =
            run_chain(&[hook("a", RetryPolicy::Fail)], Phase::PreRequest, Bytes::new(), &mut budget, call, |_| {})
                .await
                .unwrap_err();
        assert!(!err.is_permanent());
        assert_eq!(calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn pre_request_output_becomes_sensitive_headers() {
        let headers = parse_headers(b"Authorization: Bearer abc\r\n\nX-Tenant: t1\nx-tenant: t2\n").unwrap();
        assert_eq!(headers.get("authorization").unwrap(), "Bearer abc");
        assert!(headers.get("authorization").unwrap().is_sensitive());
        assert_eq!(headers.get("x-tenant").unwrap(), "t2", "a later line replaces an earlier one");
        let err = parse_headers(b"Authorization: ok\nsecret-token-without-colon\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(!err.to_string().contains("secret-token"), "{err}");
        assert_eq!(parse_headers(b"Bad Name: x").unwrap_err().line, 1);
    }
}
