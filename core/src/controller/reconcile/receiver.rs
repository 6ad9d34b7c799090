//! `spec.receiver` in the reconcile: the webhook path, derived from the Secret's token and
//! written to `status.webhookPath`, which is where the receiver listener of every replica takes
//! its paths from (see [`crate::controller::receiver`]).
//!
//! A missing Secret or `token` key stalls the source like any other Secret it names (the Secret
//! is watched, so fixing it reconciles at once).

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::controller::api::{ExternalSourceSpec, ReceiverType};
use crate::controller::context::Context;
use crate::controller::outcome::Outcome;
use crate::controller::receiver::index::{TOKEN_KEY, trimmed};
use crate::controller::receiver::signature::webhook_path;
use crate::controller::reconcile::error::Stop;
use crate::controller::reconcile::plan::Plan;
use crate::controller::reconcile::problem::ConfigProblem;
use crate::controller::reconcile::scope::Scope;
use crate::controller::reconcile::secret_data::missing_key;

const FIELD: &str = "spec.receiver.secretRef";

/// `spec.receiver`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverPlan {
    pub kind: ReceiverType,
    pub secret: String,
}

/// The receiver of `spec`, if any.
pub fn plan(spec: &ExternalSourceSpec) -> Result<Option<ReceiverPlan>, ConfigProblem> {
    let Some(receiver) = &spec.receiver else { return Ok(None) };
    let secret = receiver.secret_ref.name.trim();
    if secret.is_empty() {
        return Err(ConfigProblem::invalid("spec.receiver.secretRef.name", secret, "must name a Secret"));
    }
    Ok(Some(ReceiverPlan { kind: receiver.type_, secret: secret.to_owned() }))
}

/// The step: the path to publish in `status.webhookPath` (`None`: the source has no receiver).
pub async fn webhook_path_for(scope: &Scope<'_>, ctx: &Context, plan: &Plan) -> Result<Option<String>, Stop> {
    let Some(receiver) = &plan.receiver else { return Ok(None) };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &scope.namespace);
    let stalled = |problem| Stop::from(Outcome::Stalled { problem, recheck_at_interval: false });
    let Some(secret) = secrets.get_opt(&receiver.secret).await? else {
        let message = format!("{FIELD}: Secret {:?} not found in namespace {:?}", receiver.secret, scope.namespace);
        let reason = crate::controller::conditions::Reason::SecretNotFound;
        return Err(stalled(ConfigProblem { reason, message }));
    };
    let data = secret.data.unwrap_or_default();
    let token = data.get(TOKEN_KEY).map(|v| trimmed(&v.0)).filter(|t| !t.is_empty());
    let token = token.ok_or_else(|| stalled(missing_key(FIELD, &receiver.secret, TOKEN_KEY, "the webhook's token")))?;
    Ok(Some(webhook_path(token, &scope.name, &scope.namespace)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(receiver: serde_json::Value) -> ExternalSourceSpec {
        serde_json::from_value(json!({
            "interval": "1m",
            "generator": {"type": "http", "http": {"url": "http://example.test/"}},
            "receiver": receiver,
        }))
        .unwrap()
    }

    #[test]
    fn a_receiver_names_its_type_and_secret() {
        let plan = plan(&spec(json!({"type": "generic-hmac", "secretRef": {"name": "hook"}}))).unwrap();
        assert_eq!(plan, Some(ReceiverPlan { kind: ReceiverType::GenericHmac, secret: "hook".into() }));
        assert_eq!(super::plan(&spec(serde_json::Value::Null)).unwrap(), None);
    }

    #[test]
    fn an_empty_secret_name_is_a_problem_naming_the_field() {
        let problem = plan(&spec(json!({"type": "generic", "secretRef": {"name": " "}}))).unwrap_err();
        assert!(problem.message.starts_with("spec.receiver.secretRef.name"), "{}", problem.message);
    }

    #[test]
    fn the_types_are_flux_s_names() {
        for (name, kind) in [
            ("generic", ReceiverType::Generic),
            ("generic-hmac", ReceiverType::GenericHmac),
            ("github", ReceiverType::Github),
            ("gitlab", ReceiverType::Gitlab),
        ] {
            let parsed = plan(&spec(json!({"type": name, "secretRef": {"name": "s"}}))).unwrap();
            assert_eq!(parsed.map(|p| p.kind), Some(kind));
        }
    }
}
