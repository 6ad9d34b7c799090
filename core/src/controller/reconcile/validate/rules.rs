//! The decisions of `spec.validate`, without I/O: which rules a spec sets, whether a
//! `Content-Type` is the one expected, what a predicate's outputs mean, and how a refusal is
//! worded (the rule, then the first offending path: the expected and received media types, the
//! jq expression, or the JSON Schema's instance path).

use std::sync::Arc;

use crate::controller::api::{ConfigMapKeyReference, ExternalSourceSpec, PayloadFormat};
use crate::controller::reconcile::problem::ConfigProblem;
use crate::isolated::transform::TransformError;

pub const CONTENT_TYPE_FIELD: &str = "spec.validate.contentType";
pub const JQ_FIELD: &str = "spec.validate.jq";
pub const SCHEMA_FIELD: &str = "spec.validate.jsonSchema";

/// Bytes a predicate may print: enough for `true` and for quoting what it yielded instead.
pub const PREDICATE_OUTPUT: u64 = 1024;

/// Characters of a received value (a media type, a predicate's output) quoted in a message.
const QUOTED: usize = 100;

/// `spec.validate` as planned; every rule is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub content_type: Option<MediaType>,
    /// Compiled and run in the sandbox only.
    pub jq: Option<Arc<str>>,
    pub json_schema: Option<ConfigMapKeyReference>,
}

impl Rules {
    /// The rules of `spec`; a problem names the field. jq and JSON Schema read JSON, so they do
    /// not apply to `format: archive`.
    pub fn from_spec(spec: &ExternalSourceSpec) -> Result<Self, ConfigProblem> {
        let Some(validate) = &spec.validate else { return Ok(Self::default()) };
        let content_type = validate
            .content_type
            .as_deref()
            .map(|raw| {
                MediaType::parse(raw).filter(|m| !m.0.contains('*')).ok_or_else(|| {
                    ConfigProblem::invalid(
                        CONTENT_TYPE_FIELD,
                        raw,
                        "must be a media type type/subtype such as application/json, without wildcards",
                    )
                })
            })
            .transpose()?;
        let jq = match validate.jq.as_deref() {
            Some(jq) if jq.trim().is_empty() => return Err(ConfigProblem::invalid(JQ_FIELD, jq, "must not be empty")),
            jq => jq.map(Arc::from),
        };
        if let Some(reference) = &validate.json_schema {
            let r = &reference.config_map_ref;
            if r.name.is_empty() || r.key.is_empty() {
                let field = format!("{SCHEMA_FIELD}.configMapRef");
                return Err(ConfigProblem::invalid(&field, &format!("{}/{}", r.name, r.key), "needs a name and a key"));
            }
        }
        let json_schema = validate.json_schema.as_ref().map(|s| s.config_map_ref.clone());
        if spec.format == Some(PayloadFormat::Archive) {
            let reads_json = [(JQ_FIELD, jq.is_some()), (SCHEMA_FIELD, json_schema.is_some())];
            if let Some((field, _)) = reads_json.into_iter().find(|(_, set)| *set) {
                return Err(ConfigProblem::invalid(field, "set", "reads JSON; it applies only with spec.format: file"));
            }
        }
        Ok(Self { content_type, jq, json_schema })
    }
}

/// A media type's essence: `type/subtype` in lower case, its parameters dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType(String);

impl MediaType {
    /// `type/subtype` with optional `; parameters`, each part an HTTP token (RFC 9110 §8.3.1).
    pub fn parse(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or_default().trim();
        let (kind, subtype) = essence.split_once('/')?;
        let token =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        (token(kind) && token(subtype)).then(|| Self(essence.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether the response's `Content-Type` (as sent, when it was) is `expected`.
pub fn check_content_type(expected: &MediaType, received: Option<&str>) -> Result<(), Rejection> {
    match received.and_then(MediaType::parse) {
        Some(got) if got == *expected => Ok(()),
        _ => Err(Rejection::ContentType { expected: expected.clone(), received: received.map(quoted_value) }),
    }
}

/// Why a predicate did not hold: it must yield exactly one value, `true`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Verdict {
    #[error("yielded no value")]
    Nothing,
    #[error("yielded {0} values; it must yield one, true")]
    Several(usize),
    #[error("yielded {0}, not true")]
    Other(String),
    #[error("yielded more than {PREDICATE_OUTPUT} bytes, not true")]
    TooLarge,
}

/// What a predicate's outputs (one compact JSON value per line, as the sandbox writes them) mean.
pub fn predicate_verdict(output: &[u8]) -> Result<(), Verdict> {
    let text = String::from_utf8_lossy(output);
    let values: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    match values.as_slice() {
        [] => Err(Verdict::Nothing),
        ["true"] => Ok(()),
        [other] => Err(Verdict::Other(cut(other))),
        several => Err(Verdict::Several(several.len())),
    }
}

/// A JSON Pointer as a message shows it: quoted, and the empty pointer said in words.
pub fn instance_path(path: &str) -> String {
    if path.is_empty() { "\"\" (the document itself)".to_owned() } else { format!("{path:?}") }
}

/// The ConfigMap key a schema was read from, as messages name it.
pub fn schema_origin(reference: &ConfigMapKeyReference) -> String {
    format!("{SCHEMA_FIELD} (ConfigMap {:?} key {:?})", reference.name, reference.key)
}

/// A payload `spec.validate` refused, or a rule that could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// `received` is the header as sent, quoted and cut; `None` when there was none.
    #[error(
        "{CONTENT_TYPE_FIELD}: expected {:?}, received {}",
        expected.as_str(),
        received.as_deref().unwrap_or("no Content-Type header")
    )]
    ContentType { expected: MediaType, received: Option<String> },
    #[error("{JQ_FIELD} {expression:?} {verdict}")]
    Predicate { expression: Arc<str>, verdict: Verdict },
    #[error(
        "{}: the payload does not hold at instance path {}: {message}",
        schema_origin(reference),
        instance_path(path)
    )]
    Schema { reference: ConfigMapKeyReference, path: String, message: String },
    /// The rule (named as in messages) did not compile, or its run failed or hit a sandbox limit.
    #[error("{rule} {error}")]
    Unchecked { rule: String, error: TransformError },
}

impl Rejection {
    /// The rule itself is wrong (it does not compile): the spec or the ConfigMap must change.
    pub fn is_spec_error(&self) -> bool {
        matches!(self, Self::Unchecked { error, .. } if error.is_spec_error())
    }

    /// The sandbox could not run it at all: worth retrying soon.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unchecked { error, .. } if error.is_transient())
    }
}

/// What a predicate run means: its verdict, or why it could not give one.
pub fn predicate_result(expression: &Arc<str>, run: Result<Vec<u8>, TransformError>) -> Result<(), Rejection> {
    let verdict = match run {
        Ok(output) => predicate_verdict(&output),
        Err(TransformError::TooLarge(_)) => Err(Verdict::TooLarge),
        Err(error) => return Err(Rejection::Unchecked { rule: format!("{JQ_FIELD} {expression:?}"), error }),
    };
    verdict.map_err(|verdict| Rejection::Predicate { expression: expression.clone(), verdict })
}

/// What a schema check means.
pub fn schema_result(reference: &ConfigMapKeyReference, run: Result<(), TransformError>) -> Result<(), Rejection> {
    match run {
        Ok(()) => Ok(()),
        Err(TransformError::Invalid { path, message }) => {
            Err(Rejection::Schema { reference: reference.clone(), path, message })
        }
        Err(error) => Err(Rejection::Unchecked { rule: schema_origin(reference), error }),
    }
}

/// `value` cut to a length that fits a condition message.
fn cut(value: &str) -> String {
    match value.char_indices().nth(QUOTED) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

/// `value` cut, in quotes.
fn quoted_value(value: &str) -> String {
    format!("{:?}", cut(value))
}

#[cfg(test)]
mod tests;
