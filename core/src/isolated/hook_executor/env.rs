//! Which environment variables a hook may pass to its command: the whitelist entry's `env`.
//!
//! A whitelisted program is only as confined as its environment. `LD_PRELOAD`, `LD_AUDIT` or
//! `LD_LIBRARY_PATH` make the dynamic loader run a library of the caller's choosing before the
//! program's `main`; `PYTHONSTARTUP`, `PYTHONPATH` or `PERL5OPT` make an interpreter run code;
//! `PAGER`, `EDITOR` or `GIT_SSH` make programs start a helper command; `PATH` decides which
//! binary a program that runs another finds. Any of them turns "only `/usr/bin/jq` with these
//! arguments" into "anything", in a sidecar every tenant shares. So a hook passes only the names
//! its command's entry allows (none unless the entry says), and the names in [`RESERVED`] can
//! never be allowed: the executor sets some itself, the others load or run code.
//!
//! ```toml
//! [[command]]
//! path = "/usr/local/bin/get-token"
//! env = ["TOKEN_AUDIENCE", "TOKEN_SCOPE_*"]   # exact names, or a prefix ending in `*`
//! ```

use std::collections::BTreeMap;

/// Names no whitelist may allow, and why. An entry ending in `*` covers every name it prefixes.
pub const RESERVED: &[(&str, &str)] = &[
    ("PATH", "the executor sets PATH itself to a fixed search path"),
    ("HOME", "the executor sets HOME to the run's private directory"),
    ("TMPDIR", "the executor sets TMPDIR to the run's private directory"),
    ("LD_*", "the dynamic loader loads and runs the libraries these name, in any program"),
    ("GCONV_PATH", "glibc loads character-set converter libraries from it"),
    ("GLIBC_TUNABLES", "it changes how glibc itself behaves in any program"),
    ("LOCPATH", "glibc reads locale data from it"),
    ("NLSPATH", "glibc reads message catalogues from it"),
    ("MALLOC_*", "it changes glibc's allocator in any program"),
    ("BASH_ENV", "shells run the file it names"),
    ("ENV", "shells run the file it names"),
    ("SHELL", "programs start the shell it names"),
    ("PAGER", "programs start the command it names"),
    ("EDITOR", "programs start the command it names"),
    ("VISUAL", "programs start the command it names"),
    ("BROWSER", "programs start the command it names"),
    ("GIT_*", "git runs the commands several of these name"),
    ("SSH_ASKPASS", "programs start the command it names"),
    ("PYTHON*", "Python runs or imports code these name"),
    ("PERL*", "Perl runs or loads code these name"),
    ("RUBY*", "Ruby runs or loads code these name"),
    ("NODE_*", "Node.js runs or loads code these name"),
    ("JAVA_TOOL_OPTIONS", "the JVM loads agents it names"),
    ("JDK_JAVA_OPTIONS", "the JVM loads agents it names"),
    ("_JAVA_OPTIONS", "the JVM loads agents it names"),
];

/// One entry of a command's `env`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Name(String),
    Prefix(String),
}

impl Rule {
    fn covers(&self, name: &str) -> bool {
        match self {
            Self::Name(n) => n == name,
            Self::Prefix(p) => name.starts_with(p.as_str()),
        }
    }

    /// Whether some name both this rule and `reserved` (a [`RESERVED`] entry) cover.
    fn overlaps(&self, reserved: &str) -> bool {
        let reserved = match reserved.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Name(reserved.to_owned()),
        };
        match (self, &reserved) {
            (Self::Name(a), r) => r.covers(a),
            (r, Self::Name(b)) => r.covers(b),
            (Self::Prefix(a), Self::Prefix(b)) => a.starts_with(b.as_str()) || b.starts_with(a.as_str()),
        }
    }
}

/// Why an `env` entry of the whitelist was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvEntryError {
    #[error("is not a variable name (letters, digits and `_`, not starting with a digit) optionally ending in `*`")]
    Syntax,
    #[error("can never be allowed: it covers {reserved}, and {reason}")]
    Reserved { reserved: &'static str, reason: &'static str },
}

/// The variables one command may be given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvPolicy {
    rules: Vec<Rule>,
}

/// Why a hook's environment was refused: the variable and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvRefusal {
    #[error("is reserved ({reason}); no whitelist entry can allow it")]
    Reserved { reason: &'static str },
    #[error("is not allowed: the command's whitelist entry allows no environment variables (its `env` is empty)")]
    NoneAllowed,
    #[error("is not allowed: the command's whitelist entry allows only env = {allowed:?}")]
    NotListed { allowed: Vec<String> },
}

impl EnvPolicy {
    /// Parses a whitelist entry's `env`; the error names the index of the entry refused.
    pub fn parse(entries: &[String]) -> Result<Self, (usize, EnvEntryError)> {
        let mut rules = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let (name, prefix) = match entry.strip_suffix('*') {
                Some(stem) => (stem, true),
                None => (entry.as_str(), false),
            };
            // An empty stem (`*` alone) is a prefix of everything; it is refused below as
            // covering every reserved name.
            let whole = name.is_empty() && prefix;
            if !whole && !is_variable_name(name) {
                return Err((i, EnvEntryError::Syntax));
            }
            let rule = if prefix { Rule::Prefix(name.to_owned()) } else { Rule::Name(name.to_owned()) };
            if let Some((reserved, reason)) = RESERVED.iter().find(|(r, _)| rule.overlaps(r)) {
                return Err((i, EnvEntryError::Reserved { reserved, reason }));
            }
            rules.push(rule);
        }
        Ok(Self { rules })
    }

    /// `Ok` when every name in `requested` is allowed; else the first name refused and why.
    pub fn check<'a>(&self, requested: &'a BTreeMap<String, String>) -> Result<(), (&'a str, EnvRefusal)> {
        for name in requested.keys() {
            if let Some((_, reason)) = reserved(name) {
                return Err((name, EnvRefusal::Reserved { reason }));
            }
            if !self.rules.iter().any(|r| r.covers(name)) {
                let refusal = if self.rules.is_empty() {
                    EnvRefusal::NoneAllowed
                } else {
                    EnvRefusal::NotListed { allowed: self.rules.iter().map(Rule::to_string).collect() }
                };
                return Err((name, refusal));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// The [`RESERVED`] entry covering `name`, if any.
pub fn reserved(name: &str) -> Option<&'static (&'static str, &'static str)> {
    RESERVED.iter().find(|(r, _)| match r.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == *r,
    })
}

fn is_variable_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> Result<EnvPolicy, (usize, EnvEntryError)> {
        EnvPolicy::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn by_default_no_variable_is_allowed() {
        let none = policy(&[]).unwrap();
        assert_eq!(none.check(&env(&[])), Ok(()));
        let requested = env(&[("TOKEN_URL", "x")]);
        assert_eq!(none.check(&requested), Err(("TOKEN_URL", EnvRefusal::NoneAllowed)));
    }

    #[test]
    fn exact_names_and_prefixes_allow_what_they_name_only() {
        let p = policy(&["AUDIENCE", "TOKEN_*"]).unwrap();
        assert_eq!(p.check(&env(&[("AUDIENCE", "api"), ("TOKEN_SCOPE", "read"), ("TOKEN_", "")])), Ok(()));
        let requested = env(&[("AUDIENCE2", "x")]);
        let refused = p.check(&requested).unwrap_err();
        assert_eq!(
            refused,
            ("AUDIENCE2", EnvRefusal::NotListed { allowed: vec!["AUDIENCE".into(), "TOKEN_*".into()] })
        );
        assert!(refused.1.to_string().contains("allows only env = [\"AUDIENCE\", \"TOKEN_*\"]"), "{}", refused.1);
    }

    /// Each class of variable that makes a program run other code is refused by name, whatever
    /// the entry allows.
    #[test]
    fn code_loading_and_executor_variables_are_refused_even_where_a_prefix_would_allow_them() {
        let p = policy(&["A*"]).unwrap();
        for (name, because) in [
            ("LD_PRELOAD", "dynamic loader"),
            ("LD_LIBRARY_PATH", "dynamic loader"),
            ("LD_AUDIT", "dynamic loader"),
            ("PYTHONSTARTUP", "Python"),
            ("PYTHONPATH", "Python"),
            ("PAGER", "start the command"),
            ("EDITOR", "start the command"),
            ("PATH", "fixed search path"),
            ("TMPDIR", "private directory"),
            ("GCONV_PATH", "converter libraries"),
        ] {
            let requested = env(&[(name, "/tmp/x")]);
            let (refused, why) = p.check(&requested).unwrap_err();
            assert_eq!(refused, name);
            assert!(matches!(why, EnvRefusal::Reserved { .. }) && why.to_string().contains(because), "{name}: {why}");
        }
    }

    #[test]
    fn an_entry_covering_a_reserved_name_is_refused_at_load() {
        for (entries, index, reserved) in [
            (&["OK", "LD_PRELOAD"][..], 1, "LD_*"),
            (&["LD_*"], 0, "LD_*"),
            (&["L*"], 0, "LD_*"),
            (&["*"], 0, "PATH"),
            (&["PATH"], 0, "PATH"),
            (&["PYTHONSTARTUP"], 0, "PYTHON*"),
            (&["P*"], 0, "PATH"),
            (&["GIT_SSH_COMMAND"], 0, "GIT_*"),
        ] {
            let (i, e) = policy(entries).unwrap_err();
            assert_eq!(i, index, "{entries:?}");
            assert!(matches!(e, EnvEntryError::Reserved { reserved: r, .. } if r == reserved), "{entries:?}: {e}");
        }
        for bad in ["1ABC", "A-B", "A*B", "", "A=B"] {
            assert_eq!(policy(&[bad]).unwrap_err(), (0, EnvEntryError::Syntax), "{bad:?}");
        }
        // Near misses of reserved names stay allowable.
        assert!(policy(&["PATHFINDER_URL", "HOMEPAGE", "TOKEN_*", "ENVIRONMENT"]).is_ok());
    }
}
