//! In-process jq transforms (jaq): reshape a JSON payload before packaging, with no shell, no
//! process and no access to the controller's environment.
//!
//! `env` is not registered (the controller's environment holds credentials) and `$ENV` is not
//! defined. Outputs are written like `jq -c`: one compact JSON value per line. The output is capped at the
//! payload size limit and the run at a time budget, both checked between outputs; a filter that
//! loops without producing output is not interruptible, which is why only cluster users allowed
//! to create ExternalSources can submit one.

use std::time::{Duration, Instant};

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

/// Builtins a transform may not call: the controller's environment holds credentials.
const FORBIDDEN: &[&str] = &["env"];

/// A compiled transform.
pub struct Transform {
    filter: jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transform")
    }
}

/// Why a transform could not be compiled or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error("does not compile: {0}")]
    Compile(String),
    #[error("the payload is not JSON: {0}")]
    Input(String),
    #[error("failed at run time: {0}")]
    Run(String),
    #[error("its output exceeds the size limit of {0} bytes")]
    TooLarge(u64),
    #[error("did not finish within {0:?}")]
    TimedOut(Duration),
}

impl Transform {
    /// Parses and compiles `code`.
    pub fn compile(code: &str) -> Result<Self, TransformError> {
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !FORBIDDEN.contains(name));
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errors| TransformError::Compile(format!("{} parse error(s): {errors:?}", errors.len())))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| TransformError::Compile(format!("{errors:?}")))?;
        Ok(Self { filter })
    }

    /// Runs the filter over `payload`.
    pub fn apply(&self, payload: &[u8], max_size: u64, budget: Duration) -> Result<Vec<u8>, TransformError> {
        // jaq's reader accepts a leading value and ignores what follows; insist on one JSON document.
        serde_json::from_slice::<serde::de::IgnoredAny>(payload).map_err(|e| TransformError::Input(e.to_string()))?;
        let input = jaq_json::read::parse_single(payload).map_err(|e| TransformError::Input(e.to_string()))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let started = Instant::now();
        let mut out = Vec::new();
        for value in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            let value = value.map_err(|e| TransformError::Run(e.to_string()))?;
            let text = value.to_string();
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
            if out.len() as u64 > max_size {
                return Err(TransformError::TooLarge(max_size));
            }
            if started.elapsed() > budget {
                return Err(TransformError::TimedOut(budget));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1 << 20;
    const BUDGET: Duration = Duration::from_secs(5);

    fn run(code: &str, input: &str) -> Result<String, TransformError> {
        Transform::compile(code)?.apply(input.as_bytes(), LIMIT, BUDGET).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn reshapes_json() {
        assert_eq!(run(".items | map(.name)", r#"{"items":[{"name":"a"},{"name":"b"}]}"#).unwrap(), "[\"a\",\"b\"]\n");
        assert_eq!(run(".[]", "[1,2]").unwrap(), "1\n2\n");
        assert_eq!(run("{n: (.x | length)}", r#"{"x":"abc"}"#).unwrap(), "{\"n\":3}\n");
    }

    #[test]
    fn errors_are_reported() {
        assert!(matches!(Transform::compile(".[ |"), Err(TransformError::Compile(_))));
        assert!(matches!(run(".", "not json"), Err(TransformError::Input(_))));
        assert!(matches!(run("error(\"boom\")", "1"), Err(TransformError::Run(_))));
    }

    #[test]
    fn the_environment_is_not_reachable() {
        assert!(Transform::compile(".").is_ok(), "the standard library compiles without env");
        assert!(Transform::compile("env").is_err(), "env must not be available");
        assert!(Transform::compile("$ENV").is_err(), "$ENV must not be available");
        assert!(Transform::compile("env.HOME").is_err());
    }

    #[test]
    fn output_is_capped() {
        let t = Transform::compile("repeat(.)").unwrap();
        assert_eq!(t.apply(b"\"xxxxxxxx\"", 1000, BUDGET), Err(TransformError::TooLarge(1000)));
    }
}
