//! jq transforms (jaq): reshape a JSON payload before packaging, with no shell and no access to
//! the controller's environment.
//!
//! A filter is tenant input that can loop, allocate or recurse without bound, and jaq cannot be
//! interrupted from outside. So filters never run in the controller: [`sandbox`] runs them in a
//! child process (the controller binary re-executed as `transform-worker`, see [`worker`]) under
//! CPU, address-space, wall-clock and output limits, and this module is the engine that child
//! runs. `env` is not registered and `$ENV` is not defined (the controller's environment holds
//! credentials, and the child starts with an empty one anyway). Outputs are written like
//! `jq -c`: one compact JSON value per line.
//!
//! The same sandbox runs `spec.validate`: its jq predicate like any filter, and its JSON Schema
//! check ([`schema`]), whose schema is tenant input too.

pub mod sandbox;
pub mod schema;
pub mod worker;

use crate::config::{FetchConfig, TransformConfig};
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Exn, Vars, data};
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

/// Why a transform could not be compiled or run. The messages name the limit and its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error("does not compile: {0}")]
    Compile(String),
    #[error("the payload is not JSON: {0}")]
    Input(String),
    #[error("failed at run time: {0}")]
    Run(String),
    #[error("its output exceeds the size limit of {0} bytes (spec.maxSize / {key})", key = FetchConfig::max_size)]
    TooLarge(u64),
    #[error("its output nests deeper than {0} levels ({key})", key = TransformConfig::max_depth)]
    TooDeep(u32),
    #[error("exceeded {0}s CPU ({key})", key = TransformConfig::max_cpu)]
    CpuExceeded(u64),
    #[error("exceeded {} of memory ({})", crate::units::format_size(*.0), TransformConfig::max_memory)]
    MemoryExceeded(u64),
    #[error("recursed deeper than the worker's stack allows")]
    StackExceeded,
    #[error("did not finish within {0:?} ({key})", key = TransformConfig::timeout)]
    TimedOut(std::time::Duration),
    #[error("was killed ({0}), most likely by the kernel for lack of memory")]
    Killed(String),
    #[error("could not be run: {0}")]
    Worker(String),
    /// A JSON Schema check found the payload invalid: the instance path (a JSON Pointer, empty
    /// for the document itself) of the first error, and the error.
    #[error("does not hold at instance path {path:?}: {message}")]
    Invalid { path: String, message: String },
}

impl TransformError {
    /// A problem of the filter itself: retrying the same spec gives the same answer.
    pub fn is_spec_error(&self) -> bool {
        matches!(self, Self::Compile(_))
    }

    /// A problem of the controller, not of the filter or payload: worth retrying soon.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Worker(_))
    }
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

    /// Runs the filter over `payload`; the output is capped at `max_size` bytes and each output
    /// value at `max_depth` levels of nesting (checked before it is written, which would recurse).
    pub fn apply(&self, payload: &[u8], max_size: u64, max_depth: u32) -> Result<Vec<u8>, TransformError> {
        // jaq's reader accepts a leading value and ignores what follows; insist on one JSON
        // document (serde_json also refuses input nested deeper than 128 levels).
        serde_json::from_slice::<serde::de::IgnoredAny>(payload).map_err(|e| TransformError::Input(e.to_string()))?;
        let input = jaq_json::read::parse_single(payload).map_err(|e| TransformError::Input(e.to_string()))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = Vec::new();
        for value in self.filter.id.run((ctx, input)) {
            let value = value.map_err(run_error)?;
            if depth_exceeds(&value, max_depth) {
                // Dropping the value would recurse as deep as it nests: leave it to the process exit.
                std::mem::forget(value);
                return Err(TransformError::TooDeep(max_depth));
            }
            let text = value.to_string();
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
            if out.len() as u64 > max_size {
                return Err(TransformError::TooLarge(max_size));
            }
        }
        Ok(out)
    }
}

/// An exception that escaped the filter. jaq's own `unwrap_valr` would `exit` the process on
/// `halt`; here it is an error like any other.
fn run_error(e: Exn<'_, Val>) -> TransformError {
    match e.get_err() {
        Ok(error) => TransformError::Run(error.to_string()),
        Err(e) => match e.get_halt() {
            Ok(code) => TransformError::Run(format!("called halt (exit code {code}), which a transform cannot do")),
            Err(_) => TransformError::Run("an internal jq exception escaped the filter".into()),
        },
    }
}

/// Whether `value` nests deeper than `max` arrays and objects, walked without recursion.
fn depth_exceeds(value: &Val, max: u32) -> bool {
    let mut pending = vec![(value, 0u32)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Val>> = match value {
            Val::Arr(items) => Box::new(items.iter()),
            Val::Obj(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth >= max {
            return true;
        }
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1 << 20;
    const DEPTH: u32 = 64;

    fn run(code: &str, input: &str) -> Result<String, TransformError> {
        Transform::compile(code)?.apply(input.as_bytes(), LIMIT, DEPTH).map(|b| String::from_utf8(b).unwrap())
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
        // halt would end the process that runs the filter.
        assert!(matches!(run("halt", "1"), Err(TransformError::Run(m)) if m.contains("halt")));
        assert!(matches!(run("\"bye\" | halt_error", "1"), Err(TransformError::Run(m)) if m.contains("exit code 5")));
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
        assert_eq!(t.apply(b"\"xxxxxxxx\"", 1000, DEPTH), Err(TransformError::TooLarge(1000)));
    }

    #[test]
    fn output_nesting_is_capped() {
        // 64 levels of arrays or objects pass, 65 do not; scalars add no level.
        let nested = |n: usize| format!("reduce range({n}) as $i (0; [.])");
        assert!(run(&nested(64), "null").is_ok());
        assert_eq!(run(&nested(65), "null"), Err(TransformError::TooDeep(DEPTH)));
        assert_eq!(run(&format!("{} | {{a: .}}", nested(64)), "null"), Err(TransformError::TooDeep(DEPTH)));
        assert!(run("[[], {}, 1]", "null").is_ok());
    }
}
