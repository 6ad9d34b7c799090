//! The plan's part of `spec.receiver`: which receiver, and the Secret holding its token.

use crate::controller::api::{ExternalSourceSpec, ReceiverType};
use crate::controller::reconcile::problem::ConfigProblem;

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
