//! The JSON Schema check of `spec.validate.jsonSchema`, run by the sandbox worker only.
//!
//! The schema is tenant input like a jq filter: it may be huge, nest deeply or hold a pattern
//! written to take forever. So it is compiled and applied in the worker, under the same CPU,
//! memory and wall-clock limits. Patterns are compiled by the `regex` crate (through boon), whose
//! matching is linear in the input: no pattern backtracks catastrophically. No other document is
//! ever loaded: a `$ref` to another file or URL fails to compile instead of reading this
//! machine's files or reaching the network (only the drafts' own metaschemas, built into boon,
//! are known).

use boon::{Compiler, Draft, Schemas, UrlLoader, ValidationError};
use serde_json::Value;

use crate::isolated::transform::TransformError;

/// The location the schema is compiled at. Relative references resolve against it, and are
/// refused by [`NoLoader`].
const SCHEMA_URL: &str = "https://schema.invalid/schema.json";

/// Refuses every document but the schema itself.
struct NoLoader;

impl UrlLoader for NoLoader {
    fn load(&self, _url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err("references to other documents are not followed; keep every definition in this schema (`$defs`)".into())
    }
}

/// Checks `payload` against `schema`: `Compile` when the schema is not a schema, `Input` when the
/// payload is not JSON, `Invalid` naming the first error's instance path when it does not hold.
pub fn check(schema: &str, payload: &[u8]) -> Result<(), TransformError> {
    // serde_json refuses input nested deeper than 128 levels, schema and payload alike.
    let document: Value =
        serde_json::from_str(schema).map_err(|e| TransformError::Compile(format!("the schema is not JSON: {e}")))?;
    let instance: Value = serde_json::from_slice(payload).map_err(|e| TransformError::Input(e.to_string()))?;
    let mut compiler = Compiler::new();
    compiler.use_loader(Box::new(NoLoader));
    compiler.set_default_draft(Draft::V2020_12);
    let mut schemas = Schemas::new();
    let not_compiled = |e: boon::CompileError| TransformError::Compile(format!("{e:#}"));
    compiler.add_resource(SCHEMA_URL, document).map_err(not_compiled)?;
    let index = compiler.compile(SCHEMA_URL, &mut schemas).map_err(not_compiled)?;
    schemas.validate(&instance, index).map_err(|e| first_error(&e))
}

/// The first leaf of boon's error tree: the innermost error on the first path that failed.
fn first_error(error: &ValidationError<'_, '_>) -> TransformError {
    let mut leaf = error;
    while let Some(first) = leaf.causes.first() {
        leaf = first;
    }
    TransformError::Invalid { path: leaf.instance_location.to_string(), message: leaf.kind.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEMS: &str = r#"{
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name"], "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}}
        }}}
    }"#;

    fn invalid(payload: &str) -> (String, String) {
        match check(ITEMS, payload.as_bytes()) {
            Err(TransformError::Invalid { path, message }) => (path, message),
            other => panic!("{payload}: {other:?}"),
        }
    }

    #[test]
    fn a_payload_that_holds_passes() {
        assert_eq!(check(ITEMS, br#"{"items":[{"name":"a"},{"name":"bc"}]}"#), Ok(()));
        assert_eq!(check("true", b"[1]"), Ok(()), "the schema `true` accepts anything");
    }

    #[test]
    fn the_first_error_names_its_instance_path() {
        assert_eq!(invalid(r#"{"items":[{"name":"a"},{"name":7}]}"#).0, "/items/1/name");
        assert_eq!(invalid(r#"{"items":[{"name":"a"},{"name":"B"}]}"#).0, "/items/1/name");
        assert_eq!(invalid(r#"{"items":[{}]}"#).0, "/items/0");
        assert_eq!(invalid(r#"{"items":[]}"#).0, "/items");
        let (path, message) = invalid(r#"{"things":[]}"#);
        assert_eq!(path, "", "the document itself");
        assert!(message.contains("items"), "{message}");
        // Object keys are escaped as JSON Pointer tokens.
        let schema = r#"{"properties": {"a/b": {"type": "string"}}}"#;
        let got = check(schema, br#"{"a/b": 1}"#);
        assert!(matches!(got, Err(TransformError::Invalid { ref path, .. }) if path == "/a~1b"), "{got:?}");
    }

    #[test]
    fn schemas_and_payloads_that_are_not_json_are_told_apart() {
        assert!(matches!(check("{", b"1"), Err(TransformError::Compile(m)) if m.starts_with("the schema is not JSON")));
        assert!(matches!(check(r#"{"type": 7}"#, b"1"), Err(TransformError::Compile(_))), "not a valid schema");
        assert!(matches!(check(r#"{"pattern": "("}"#, b"\"x\""), Err(TransformError::Compile(_))), "bad regex");
        assert!(matches!(check(ITEMS, b"<html></html>"), Err(TransformError::Input(_))));
    }

    #[test]
    fn other_documents_are_never_loaded() {
        for reference in ["file:///etc/hostname", "other.json", "https://example.invalid/s.json"] {
            let schema = format!(r#"{{"$ref": "{reference}"}}"#);
            let got = check(&schema, b"1");
            assert!(
                matches!(&got, Err(TransformError::Compile(m)) if m.contains("references to other documents")),
                "{reference}: {got:?}"
            );
        }
        let got = check(r#"{"$schema": "https://example.invalid/meta", "type": "object"}"#, b"1");
        assert!(matches!(got, Err(TransformError::Compile(_))), "{got:?}");
        // The drafts' own metaschemas are built in.
        let draft7 = r#"{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}"#;
        assert!(matches!(check(draft7, b"1"), Err(TransformError::Invalid { .. })));
    }

    #[test]
    fn patterns_match_in_linear_time() {
        // Catastrophic for a backtracking engine; instant for the regex crate.
        let schema = r#"{"type": "string", "pattern": "^(a+)+$"}"#;
        let payload = format!("\"{}b\"", "a".repeat(10_000));
        let started = std::time::Instant::now();
        assert!(matches!(check(schema, payload.as_bytes()), Err(TransformError::Invalid { .. })));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    }
}
