//! The validate step: `spec.validate`'s rules over the payload as received (after the
//! post-request hooks, before `spec.transform`, since the content type describes the response),
//! so that a 200 carrying an HTML login page or an empty list never replaces a good artifact.
//!
//! The content type is compared here; the jq predicate and the JSON Schema are tenant code and
//! run in the transform sandbox, never in the controller. The schema is read from its ConfigMap
//! before the fetch (a missing one stalls the source like a missing Secret, and ConfigMaps are
//! watched like Secrets) and is capped at `transform.max_schema_size`. A payload that fails a
//! rule ends the reconcile with `ValidationFailed` before anything is packaged, stored or
//! published.

pub mod rules;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use self::rules::{Rules, check_content_type, predicate_result, schema_result};
use crate::config::TransformConfig;
use crate::controller::api::ConfigMapKeyReference;
use crate::controller::conditions::Reason;
use crate::controller::context::Context;
use crate::controller::outcome::{self, Outcome};
use crate::controller::reconcile::error::Stop;
use crate::controller::reconcile::plan::Plan;
use crate::controller::reconcile::problem::ConfigProblem;
use crate::controller::reconcile::scope::Scope;

/// Reads the JSON Schema document `plan` names, if any. A missing ConfigMap or key, or a schema
/// over the size limit, stalls the source until the ConfigMap (or the spec) changes.
pub async fn read_for(scope: &Scope<'_>, ctx: &Context, plan: &Plan) -> Result<Option<String>, Stop> {
    let Some(reference) = &plan.validation.json_schema else { return Ok(None) };
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &scope.namespace);
    let config_map = config_maps.get_opt(&reference.name).await?;
    match schema_document(config_map.as_ref(), &scope.namespace, reference, ctx.transforms.limits()) {
        Ok(schema) => Ok(Some(schema)),
        Err(problem) => Err(Outcome::Stalled { problem, recheck_at_interval: false }.into()),
    }
}

/// The schema text of `reference` in `config_map` (`data`, or UTF-8 `binaryData`).
fn schema_document(
    config_map: Option<&ConfigMap>,
    namespace: &str,
    reference: &ConfigMapKeyReference,
    limits: &TransformConfig,
) -> Result<String, ConfigProblem> {
    let field = format!("{}.configMapRef", rules::SCHEMA_FIELD);
    let (name, key) = (&reference.name, &reference.key);
    let Some(config_map) = config_map else {
        let message = format!("{field}: ConfigMap {name:?} not found in namespace {namespace:?}");
        return Err(ConfigProblem { reason: Reason::ConfigMapNotFound, message });
    };
    let text = config_map.data.as_ref().and_then(|d| d.get(key)).map(|s| Ok(s.as_str()));
    let binary = || config_map.binary_data.as_ref().and_then(|d| d.get(key)).map(|b| std::str::from_utf8(&b.0));
    let document = match text.or_else(binary) {
        Some(Ok(document)) => document,
        Some(Err(_)) => {
            let message = format!("{field}: ConfigMap {name:?} key {key:?} is not UTF-8 text");
            return Err(ConfigProblem { reason: Reason::InvalidSpec, message });
        }
        None => {
            let message = format!("{field}: ConfigMap {name:?} has no key {key:?}");
            return Err(ConfigProblem { reason: Reason::ConfigMapNotFound, message });
        }
    };
    if document.len() as u64 > limits.max_schema_size {
        let message = format!(
            "{field}: ConfigMap {name:?} key {key:?} holds {} bytes, over the limit of {} ({})",
            document.len(),
            crate::units::format_size(limits.max_schema_size),
            TransformConfig::max_schema_size,
        );
        return Err(ConfigProblem { reason: Reason::InvalidSpec, message });
    }
    Ok(document.to_owned())
}

/// Runs `rules` in order (content type, jq, JSON Schema, whose document [`read_for`] read) and
/// stops at the first that fails.
pub async fn validate(
    ctx: &Context,
    rules: &Rules,
    schema: Option<&str>,
    body: &[u8],
    content_type: Option<&str>,
) -> Result<(), Outcome> {
    let refused = |rejection| {
        tracing::debug!(error = %rejection, "payload refused by spec.validate");
        outcome::validation_failure(&rejection)
    };
    if let Some(expected) = &rules.content_type {
        check_content_type(expected, content_type).map_err(refused)?;
    }
    if let Some(expression) = &rules.jq {
        let run = ctx.transforms.run(expression, body, rules::PREDICATE_OUTPUT).await;
        predicate_result(expression, run).map_err(refused)?;
    }
    if let (Some(reference), Some(schema)) = (&rules.json_schema, schema) {
        let run = ctx.transforms.check_schema(schema, body).await;
        schema_result(reference, run).map_err(refused)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn limits() -> TransformConfig {
        TransformConfig { max_schema_size: 1024, ..Default::default() }
    }

    fn reference() -> ConfigMapKeyReference {
        ConfigMapKeyReference { name: "schemas".into(), key: "items.json".into() }
    }

    fn config_map(data: &[(&str, &str)], binary: &[(&str, &[u8])]) -> ConfigMap {
        ConfigMap {
            data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            binary_data: Some(binary.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn the_schema_is_read_from_data_or_binary_data() {
        let read = |cm: &ConfigMap| schema_document(Some(cm), "ns", &reference(), &limits());
        assert_eq!(read(&config_map(&[("items.json", "{}")], &[])).unwrap(), "{}");
        assert_eq!(read(&config_map(&[], &[("items.json", b"true")])).unwrap(), "true");
        let e = read(&config_map(&[], &[("items.json", &[0xff, 0xfe])])).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSpec);
        assert!(e.message.contains("is not UTF-8"), "{}", e.message);
    }

    #[test]
    fn a_missing_config_map_or_key_names_both() {
        let e = schema_document(None, "team-a", &reference(), &limits()).unwrap_err();
        assert_eq!(e.reason, Reason::ConfigMapNotFound);
        assert_eq!(
            e.message,
            "spec.validate.jsonSchema.configMapRef: ConfigMap \"schemas\" not found in namespace \"team-a\""
        );
        let cm = ConfigMap { data: Some(BTreeMap::new()), ..Default::default() };
        let e = schema_document(Some(&cm), "team-a", &reference(), &limits()).unwrap_err();
        assert_eq!(e.reason, Reason::ConfigMapNotFound);
        assert_eq!(e.message, "spec.validate.jsonSchema.configMapRef: ConfigMap \"schemas\" has no key \"items.json\"");
    }

    #[test]
    fn a_schema_over_the_limit_is_refused_naming_the_key() {
        let big = format!("{{\"description\": \"{}\"}}", "x".repeat(2000));
        let cm = config_map(&[("items.json", &big)], &[]);
        let e = schema_document(Some(&cm), "ns", &reference(), &limits()).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSpec);
        assert!(e.message.ends_with("over the limit of 1KiB (transform.max_schema_size)"), "{}", e.message);
    }
}
