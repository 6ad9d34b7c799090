//! The hook steps: `spec.hooks.preRequest` (their output adds request headers) and
//! `spec.hooks.postRequest` (a pipeline over the fetched body), run by the hook executor.

use bytes::Bytes;
use reqwest::header::HeaderMap;

use crate::config::HooksConfig;
use crate::controller::context::Context;
use crate::controller::hooks::chain::{self, HookFailure, Phase};
use crate::controller::hooks::spec::Hook;
use crate::controller::outcome::{self, Outcome};
use crate::controller::reconcile::plan::Plan;
use crate::controller::reconcile::scope::Scope;
use crate::isolated::hook_executor::protocol::{CallError, FailureKind};
use crate::isolated::hook_executor::run::Invocation;

/// `headers` with the pre-request hooks' output added. Hook headers win over the headers
/// Secret's: they are the fresher credential.
pub async fn pre_request(
    scope: &Scope<'_>,
    ctx: &Context,
    plan: &Plan,
    mut headers: HeaderMap,
    retries_left: &mut u32,
) -> Result<HeaderMap, Outcome> {
    let hooks = &plan.hooks.pre_request;
    if hooks.is_empty() {
        return Ok(headers);
    }
    let output = run(scope, ctx, Phase::PreRequest, hooks, Bytes::new(), retries_left).await?;
    let extra = chain::parse_headers(&output).map_err(|e| Outcome::Failed(outcome::hook_output_failure(&e)))?;
    for (name, value) in extra.iter() {
        headers.insert(name.clone(), value.clone());
    }
    Ok(headers)
}

/// The fetched body after the post-request hooks.
pub async fn post_request(
    scope: &Scope<'_>,
    ctx: &Context,
    plan: &Plan,
    body: Bytes,
    retries_left: &mut u32,
) -> Result<Bytes, Outcome> {
    let hooks = &plan.hooks.post_request;
    if hooks.is_empty() {
        return Ok(body);
    }
    run(scope, ctx, Phase::PostRequest, hooks, body, retries_left).await
}

/// Runs one list of hooks through the executor, counting each attempt in the metrics.
async fn run(
    scope: &Scope<'_>,
    ctx: &Context,
    phase: Phase,
    hooks: &[Hook],
    input: Bytes,
    retries_left: &mut u32,
) -> Result<Bytes, Outcome> {
    let (namespace, name) = (scope.namespace.as_str(), scope.name.as_str());
    let Some(client) = &ctx.hooks else {
        // The plan refuses hooks without an executor; this only guards a wiring mistake.
        let error = CallError::Failed {
            kind: FailureKind::BadRequest,
            message: format!("no hook executor is configured ({})", HooksConfig::socket),
        };
        let hook = hooks.first().map(|h| h.name.clone()).unwrap_or_default();
        return Err(outcome::hook_failure(&HookFailure { hook, phase, attempts: 0, error }));
    };
    let call = |invocation: Invocation| {
        let client = client.clone();
        async move { client.call(namespace, &invocation).await }
    };
    let record = |a: chain::Attempt<'_>| ctx.metrics.hook_attempt(namespace, name, &a);
    chain::run_chain(hooks, phase, input, retries_left, call, record).await.map_err(|e| outcome::hook_failure(&e))
}
