//! Which hook commands may run: the executor's whitelist.
//!
//! The predecessor matched a command by its base name (so `/tmp/evil/jq` passed as `jq`),
//! matched argument patterns unanchored, and allowed any argument when no pattern was given.
//! Here a command is its absolute path, compared exactly; every pattern must match a whole
//! argument; a command without patterns takes no arguments; and a command is given only the
//! environment variables its `env` allows (none by default; see [`crate::isolated::hook_executor::env`]).
//!
//! ```toml
//! [[command]]
//! path = "/usr/bin/jq"
//! args = ['-[cr]+', '\.[A-Za-z0-9_.\[\]]*']
//! max_args = 4
//! env = ["JQ_COLORS"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use regex::Regex;

use crate::isolated::hook_executor::env::{EnvEntryError, EnvPolicy, EnvRefusal};

/// Most arguments a whitelist entry may allow when it does not say.
pub const DEFAULT_MAX_ARGS: usize = 16;

/// Why a whitelist file was refused.
#[derive(Debug, thiserror::Error)]
pub enum WhitelistError {
    #[error("cannot read the hook whitelist {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hook whitelist {file}: {source}")]
    Syntax {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("hook whitelist {file}: command[{index}].path = {path:?}: must be an absolute path without `..`")]
    RelativePath { file: String, index: usize, path: String },
    #[error(
        "hook whitelist {file}: command[{index}].args[{arg}] = {pattern:?} is not a valid regular expression: {source}"
    )]
    Pattern {
        file: String,
        index: usize,
        arg: usize,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("hook whitelist {file}: command[{index}].path = {path:?} is listed twice")]
    Duplicate { file: String, index: usize, path: String },
    #[error("hook whitelist {file}: command[{index}].env[{entry}] = {name:?} {source}")]
    Env {
        file: String,
        index: usize,
        entry: usize,
        name: String,
        #[source]
        source: EnvEntryError,
    },
}

/// Why a hook may not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("command {0:?} is not in the hook whitelist (commands are absolute paths, compared exactly)")]
    NotListed(String),
    #[error("command {command:?} takes at most {max} arguments under the hook whitelist; {given} given")]
    TooManyArgs { command: String, max: usize, given: usize },
    #[error("argument {index} ({arg:?}) of {command:?} matches none of the whitelisted patterns")]
    ArgumentRefused { command: String, index: usize, arg: String },
    /// Never quotes the value: it may hold a credential.
    #[error("environment variable {name:?} of {command:?} {rule}")]
    EnvRefused { command: String, name: String, rule: EnvRefusal },
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhitelist {
    #[serde(default)]
    command: Vec<RawCommand>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    path: String,
    #[serde(default)]
    args: Vec<String>,
    max_args: Option<usize>,
    #[serde(default)]
    env: Vec<String>,
}

#[derive(Debug)]
struct Allowed {
    path: PathBuf,
    patterns: Vec<Regex>,
    max_args: usize,
    env: EnvPolicy,
}

/// A parsed whitelist.
#[derive(Debug, Default)]
pub struct Whitelist {
    commands: Vec<Allowed>,
}

impl Whitelist {
    /// Parses `text` (from `file`, named in errors).
    pub fn parse(file: &str, text: &str) -> Result<Self, WhitelistError> {
        let raw: RawWhitelist =
            toml::from_str(text).map_err(|source| WhitelistError::Syntax { file: file.to_owned(), source })?;
        let mut commands: Vec<Allowed> = Vec::with_capacity(raw.command.len());
        for (index, c) in raw.command.into_iter().enumerate() {
            let path = PathBuf::from(&c.path);
            let clean = path.is_absolute() && path.components().all(|p| !matches!(p, std::path::Component::ParentDir));
            if !clean {
                return Err(WhitelistError::RelativePath { file: file.to_owned(), index, path: c.path });
            }
            if commands.iter().any(|a| a.path == path) {
                return Err(WhitelistError::Duplicate { file: file.to_owned(), index, path: c.path });
            }
            let mut patterns = Vec::with_capacity(c.args.len());
            for (arg, pattern) in c.args.iter().enumerate() {
                // Anchored: a pattern describes a whole argument, never a part of one.
                let anchored = Regex::new(&format!("^(?:{pattern})$")).map_err(|source| WhitelistError::Pattern {
                    file: file.to_owned(),
                    index,
                    arg,
                    pattern: pattern.clone(),
                    source,
                })?;
                patterns.push(anchored);
            }
            let max_args = if patterns.is_empty() { 0 } else { c.max_args.unwrap_or(DEFAULT_MAX_ARGS) };
            let env = EnvPolicy::parse(&c.env).map_err(|(entry, source)| WhitelistError::Env {
                file: file.to_owned(),
                index,
                entry,
                name: c.env[entry].clone(),
                source,
            })?;
            commands.push(Allowed { path, patterns, max_args, env });
        }
        Ok(Self { commands })
    }

    /// Whether `command` may run with `args` and the environment `env`.
    pub fn check(&self, command: &str, args: &[String], env: &BTreeMap<String, String>) -> Result<(), Refusal> {
        let Some(allowed) = self.commands.iter().find(|a| a.path == Path::new(command)) else {
            return Err(Refusal::NotListed(command.to_owned()));
        };
        if args.len() > allowed.max_args {
            return Err(Refusal::TooManyArgs { command: command.to_owned(), max: allowed.max_args, given: args.len() });
        }
        for (index, arg) in args.iter().enumerate() {
            if !allowed.patterns.iter().any(|p| p.is_match(arg)) {
                return Err(Refusal::ArgumentRefused { command: command.to_owned(), index, arg: arg.clone() });
            }
        }
        allowed.env.check(env).map_err(|(name, rule)| Refusal::EnvRefused {
            command: command.to_owned(),
            name: name.to_owned(),
            rule,
        })
    }

    /// How many commands are listed.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// The whitelist in force, replaced when its file changes (a ConfigMap update), so the executor
/// needs no restart. A change that does not parse is logged and the previous list stays.
pub struct LiveWhitelist {
    path: PathBuf,
    current: RwLock<(String, Arc<Whitelist>)>,
}

impl LiveWhitelist {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, WhitelistError> {
        let text = read(path)?;
        let list = Whitelist::parse(&path.display().to_string(), &text)?;
        Ok(Self { path: path.to_owned(), current: RwLock::new((text, Arc::new(list))) })
    }

    /// The list to check a request against.
    pub fn current(&self) -> Arc<Whitelist> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).1.clone()
    }

    /// Re-reads the file; `Ok(true)` when a changed list took effect.
    pub fn reload(&self) -> Result<bool, WhitelistError> {
        let text = read(&self.path)?;
        if self.current.read().unwrap_or_else(PoisonError::into_inner).0 == text {
            return Ok(false);
        }
        let list = Whitelist::parse(&self.path.display().to_string(), &text)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (text, Arc::new(list));
        Ok(true)
    }

    /// Reloads every `every` until the task is dropped, logging what happened.
    pub async fn watch(self: Arc<Self>, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.reload() {
                Ok(true) => {
                    tracing::info!(whitelist = %self.path.display(), commands = self.current().len(), "hook whitelist reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "hook whitelist changed but is invalid; the previous one stays in force")
                }
            }
        }
    }
}

fn read(path: &Path) -> Result<String, WhitelistError> {
    std::fs::read_to_string(path).map_err(|source| WhitelistError::Read { file: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a command and arguments with no environment.
    fn check(w: &Whitelist, command: &str, args: &[String]) -> Result<(), Refusal> {
        w.check(command, args, &BTreeMap::new())
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    const LIST: &str = r#"
[[command]]
path = "/usr/bin/jq"
args = ['-[cr]+', '\.[A-Za-z0-9_.]*']
max_args = 3

[[command]]
path = "/usr/bin/date"
"#;

    #[test]
    fn commands_are_exact_absolute_paths() {
        let w = Whitelist::parse("w.toml", LIST).unwrap();
        assert_eq!(w.len(), 2);
        assert!(check(&w, "/usr/bin/jq", &args(&["-c", ".items"])).is_ok());
        for other in ["jq", "/tmp/evil/jq", "/usr/bin/../bin/jq", "/usr/bin/jq2"] {
            assert_eq!(check(&w, other, &[]), Err(Refusal::NotListed(other.into())), "{other}");
        }
    }

    #[test]
    fn patterns_match_whole_arguments() {
        let w = Whitelist::parse("w.toml", LIST).unwrap();
        // Unanchored, `\.[A-Za-z0-9_.]*` would accept these.
        for bad in [".a; rm -rf /", "x.items", ".items\n.evil", "-c -r"] {
            let refused = check(&w, "/usr/bin/jq", &args(&[bad]));
            assert!(matches!(refused, Err(Refusal::ArgumentRefused { index: 0, .. })), "{bad:?}: {refused:?}");
        }
        assert!(matches!(
            check(&w, "/usr/bin/jq", &args(&["-c", "-r", ".a", ".b"])),
            Err(Refusal::TooManyArgs { max: 3, given: 4, .. })
        ));
    }

    #[test]
    fn a_command_gets_only_the_variables_its_entry_allows() {
        let w = Whitelist::parse(
            "w.toml",
            "[[command]]\npath = \"/usr/bin/get-token\"\nenv = [\"AUDIENCE\"]\n[[command]]\npath = \"/usr/bin/date\"\n",
        )
        .unwrap();
        let env = |name: &str| BTreeMap::from([(name.to_owned(), "secret-value".to_owned())]);
        assert!(w.check("/usr/bin/get-token", &[], &env("AUDIENCE")).is_ok());
        let refused = w.check("/usr/bin/date", &[], &env("AUDIENCE")).unwrap_err();
        assert!(matches!(&refused, Refusal::EnvRefused { name, .. } if name == "AUDIENCE"), "{refused}");
        let message = refused.to_string();
        assert!(
            message.contains("\"AUDIENCE\" of \"/usr/bin/date\"")
                && message.contains("allows no environment variables"),
            "{message}"
        );
        assert!(!message.contains("secret-value"), "the value is never quoted: {message}");
        let refused = w.check("/usr/bin/get-token", &[], &env("LD_PRELOAD")).unwrap_err();
        assert!(refused.to_string().contains("\"LD_PRELOAD\" of \"/usr/bin/get-token\" is reserved"), "{refused}");
    }

    #[test]
    fn a_command_without_patterns_takes_no_arguments() {
        let w = Whitelist::parse("w.toml", LIST).unwrap();
        assert!(check(&w, "/usr/bin/date", &[]).is_ok());
        assert!(matches!(
            check(&w, "/usr/bin/date", &args(&["-s", "2020-01-01"])),
            Err(Refusal::TooManyArgs { max: 0, .. })
        ));
    }

    /// The example `deploy/components/hooks` ships parses, and keeps jq from reading files.
    #[test]
    fn the_shipped_whitelist_parses_and_refuses_file_reading_options() {
        let text = include_str!("../../../../deploy/components/hooks/whitelist.toml");
        let w = Whitelist::parse("deploy/components/hooks/whitelist.toml", text).unwrap();
        assert!(check(&w, "/usr/bin/jq", &args(&["-c", ".items | map(.name)"])).is_ok());
        assert!(check(&w, "/usr/bin/yq", &[]).is_err(), "yq (a Python program in Debian) is not shipped");
        for bad in [&["--rawfile", "x", "/etc/passwd"][..], &["-f", "/etc/passwd"], &["-c", "--slurpfile"]] {
            assert!(check(&w, "/usr/bin/jq", &args(bad)).is_err(), "{bad:?}");
        }
        let env = BTreeMap::from([("LD_PRELOAD".to_owned(), "/tmp/x.so".to_owned())]);
        assert!(matches!(w.check("/usr/bin/jq", &args(&["-c", "."]), &env), Err(Refusal::EnvRefused { .. })));
    }

    #[test]
    fn a_changed_file_takes_effect_and_a_broken_one_keeps_the_old_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whitelist.toml");
        std::fs::write(&path, "[[command]]\npath = \"/usr/bin/date\"\n").unwrap();
        let live = LiveWhitelist::load(&path).unwrap();
        assert!(check(&live.current(), "/usr/bin/date", &[]).is_ok());
        assert!(!live.reload().unwrap(), "unchanged");
        std::fs::write(&path, "[[command]]\npath = \"/usr/bin/id\"\n").unwrap();
        assert!(live.reload().unwrap());
        assert!(
            check(&live.current(), "/usr/bin/date", &[]).is_err() && check(&live.current(), "/usr/bin/id", &[]).is_ok()
        );
        std::fs::write(&path, "[[command]]\npath = \"relative\"\n").unwrap();
        assert!(matches!(live.reload(), Err(WhitelistError::RelativePath { .. })));
        assert!(check(&live.current(), "/usr/bin/id", &[]).is_ok(), "the previous list stays");
    }

    #[test]
    fn bad_files_are_refused_naming_entry_and_rule() {
        let cases = [
            ("[[command]]\npath = \"jq\"\n", "command[0].path = \"jq\": must be an absolute path"),
            ("[[command]]\npath = \"/bin/../tmp/x\"\n", "without `..`"),
            (
                "[[command]]\npath = \"/usr/bin/jq\"\nargs = ['(']\n",
                "command[0].args[0] = \"(\" is not a valid regular expression",
            ),
            ("[[command]]\npath = \"/a\"\n[[command]]\npath = \"/a\"\n", "command[1].path = \"/a\" is listed twice"),
            ("[[command]]\npath = \"/a\"\nshell = true\n", "unknown field `shell`"),
            (
                "[[command]]\npath = \"/a\"\nenv = [\"TOKEN\", \"LD_PRELOAD\"]\n",
                "command[0].env[1] = \"LD_PRELOAD\" can never be allowed: it covers LD_*",
            ),
            ("[[command]]\npath = \"/a\"\nenv = [\"A-B\"]\n", "command[0].env[0] = \"A-B\" is not a variable name"),
        ];
        for (text, expect) in cases {
            let err = Whitelist::parse("w.toml", text).unwrap_err().to_string();
            assert!(err.contains("hook whitelist w.toml") && err.contains(expect), "{text:?}: {err}");
        }
    }
}
