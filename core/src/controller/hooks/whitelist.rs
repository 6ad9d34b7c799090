//! Which hook commands may run: the executor's whitelist.
//!
//! The predecessor matched a command by its base name (so `/tmp/evil/jq` passed as `jq`),
//! matched argument patterns unanchored, and allowed any argument when no pattern was given.
//! Here a command is its absolute path, compared exactly; every pattern must match a whole
//! argument; and a command without patterns takes no arguments.
//!
//! ```toml
//! [[command]]
//! path = "/usr/bin/jq"
//! args = ['-[cr]+', '\.[A-Za-z0-9_.\[\]]*']
//! max_args = 4
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use regex::Regex;

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
}

#[derive(Debug)]
struct Allowed {
    path: PathBuf,
    patterns: Vec<Regex>,
    max_args: usize,
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
            commands.push(Allowed { path, patterns, max_args });
        }
        Ok(Self { commands })
    }

    /// Whether `command` may run with `args`.
    pub fn check(&self, command: &str, args: &[String]) -> Result<(), Refusal> {
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
        Ok(())
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
        assert!(w.check("/usr/bin/jq", &args(&["-c", ".items"])).is_ok());
        for other in ["jq", "/tmp/evil/jq", "/usr/bin/../bin/jq", "/usr/bin/jq2"] {
            assert_eq!(w.check(other, &[]), Err(Refusal::NotListed(other.into())), "{other}");
        }
    }

    #[test]
    fn patterns_match_whole_arguments() {
        let w = Whitelist::parse("w.toml", LIST).unwrap();
        // Unanchored, `\.[A-Za-z0-9_.]*` would accept these.
        for bad in [".a; rm -rf /", "x.items", ".items\n.evil", "-c -r"] {
            let refused = w.check("/usr/bin/jq", &args(&[bad]));
            assert!(matches!(refused, Err(Refusal::ArgumentRefused { index: 0, .. })), "{bad:?}: {refused:?}");
        }
        assert!(matches!(
            w.check("/usr/bin/jq", &args(&["-c", "-r", ".a", ".b"])),
            Err(Refusal::TooManyArgs { max: 3, given: 4, .. })
        ));
    }

    #[test]
    fn a_command_without_patterns_takes_no_arguments() {
        let w = Whitelist::parse("w.toml", LIST).unwrap();
        assert!(w.check("/usr/bin/date", &[]).is_ok());
        assert!(matches!(
            w.check("/usr/bin/date", &args(&["-s", "2020-01-01"])),
            Err(Refusal::TooManyArgs { max: 0, .. })
        ));
    }

    /// The example `deploy/components/hooks` ships parses, and keeps jq from reading files.
    #[test]
    fn the_shipped_whitelist_parses_and_refuses_file_reading_options() {
        let text = include_str!("../../../../deploy/components/hooks/whitelist.toml");
        let w = Whitelist::parse("deploy/components/hooks/whitelist.toml", text).unwrap();
        assert!(w.check("/usr/bin/jq", &args(&["-c", ".items | map(.name)"])).is_ok());
        assert!(w.check("/usr/bin/yq", &args(&["-o", "json"])).is_ok());
        for bad in [&["--rawfile", "x", "/etc/passwd"][..], &["-f", "/etc/passwd"], &["-c", "--slurpfile"]] {
            assert!(w.check("/usr/bin/jq", &args(bad)).is_err(), "{bad:?}");
        }
        assert!(w.check("/usr/bin/yq", &args(&["load(\"/etc/passwd\")"])).is_err());
    }

    #[test]
    fn a_changed_file_takes_effect_and_a_broken_one_keeps_the_old_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whitelist.toml");
        std::fs::write(&path, "[[command]]\npath = \"/usr/bin/date\"\n").unwrap();
        let live = LiveWhitelist::load(&path).unwrap();
        assert!(live.current().check("/usr/bin/date", &[]).is_ok());
        assert!(!live.reload().unwrap(), "unchanged");
        std::fs::write(&path, "[[command]]\npath = \"/usr/bin/id\"\n").unwrap();
        assert!(live.reload().unwrap());
        assert!(
            live.current().check("/usr/bin/date", &[]).is_err() && live.current().check("/usr/bin/id", &[]).is_ok()
        );
        std::fs::write(&path, "[[command]]\npath = \"relative\"\n").unwrap();
        assert!(matches!(live.reload(), Err(WhitelistError::RelativePath { .. })));
        assert!(live.current().check("/usr/bin/id", &[]).is_ok(), "the previous list stays");
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
        ];
        for (text, expect) in cases {
            let err = Whitelist::parse("w.toml", text).unwrap_err().to_string();
            assert!(err.contains("hook whitelist w.toml") && err.contains(expect), "{text:?}: {err}");
        }
    }
}
