//! `spec.receiver` in the reconcile: the webhook path, derived from the Secret's token and
//! written to `status.webhookPath`, which is where the receiver listener of every replica takes
//! its paths from (see [`crate::controller::receiver`]).
//!
//! A missing Secret or `token` key stalls the source like any other Secret it names (the Secret
//! is watched, so fixing it reconciles at once).

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::controller::context::Context;
use crate::controller::outcome::Outcome;
use crate::controller::receiver::index::{TOKEN_KEY, trimmed};
use crate::controller::receiver::signature::webhook_path;
use crate::controller::reconcile::error::Stop;
use crate::controller::reconcile::plan::Plan;
use crate::controller::reconcile::scope::Scope;
use crate::controller::reconcile::secret_data::{self, missing_key};

pub mod spec;

const FIELD: &str = "spec.receiver.secretRef";

/// The step: the path to publish in `status.webhookPath` (`None`: the source has no receiver).
pub async fn webhook_path_for(scope: &Scope<'_>, ctx: &Context, plan: &Plan) -> Result<Option<String>, Stop> {
    let Some(receiver) = &plan.receiver else { return Ok(None) };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &scope.namespace);
    let stalled = |problem| Stop::from(Outcome::Stalled { problem, recheck_at_interval: false });
    let data = secret_data::read(&secrets, &scope.namespace, FIELD, &receiver.secret).await?.map_err(stalled)?;
    let token = data.get(TOKEN_KEY).map(|v| trimmed(&v.0)).filter(|t| !t.is_empty());
    let token = token.ok_or_else(|| stalled(missing_key(FIELD, &receiver.secret, TOKEN_KEY, "the webhook's token")))?;
    Ok(Some(webhook_path(token, &scope.name, &scope.namespace)))
}
