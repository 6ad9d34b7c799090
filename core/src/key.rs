//! Storage keys: the one place where path safety is decided.
//!
//! Every backend and the HTTP server build keys through [`ObjectKey::parse`], so a key that could
//! escape a filesystem root or address something outside the artifact tree never exists as a value.

use std::fmt;

use crate::digest::Digest;

/// Longest key accepted, in bytes. Kubernetes names are at most 253 characters, so real keys are
/// far shorter; the limit keeps hostile input cheap to reject.
pub const MAX_KEY_LEN: usize = 1024;

/// Prefix under which every artifact lives, and the only prefix the HTTP server exposes.
pub const ARTIFACT_PREFIX: &str = "artifacts/";

/// The URL the controller's artifact server serves `key` at: the server's base, then the key as
/// the path (the route `server` maps back with its path classifier).
pub fn served_url(base: &str, key: &ObjectKey) -> String {
    format!("{}/{key}", base.trim_end_matches('/'))
}

/// A validated, relative, `/`-separated storage key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {0} bytes long; the limit is {MAX_KEY_LEN}")]
    TooLong(usize),
    #[error("key {0:?} is absolute; keys are relative to the store")]
    Absolute(String),
    #[error("key {0:?} has an empty, `.` or `..` segment")]
    BadSegment(String),
    #[error("key {key:?} contains {found:?}; allowed are ASCII letters, digits, `.`, `_`, `-` and `/`")]
    BadCharacter { key: String, found: char },
}

impl ObjectKey {
    /// Accepts only `[A-Za-z0-9._-]` segments joined by `/`, none of them empty, `.` or `..`.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(key.len()));
        }
        if key.starts_with('/') {
            return Err(KeyError::Absolute(key.to_owned()));
        }
        if let Some(found) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))) {
            return Err(KeyError::BadCharacter { key: key.to_owned(), found });
        }
        if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            return Err(KeyError::BadSegment(key.to_owned()));
        }
        Ok(Self(key.to_owned()))
    }

    /// The key of an artifact: `artifacts/<namespace>/<name>/<digest-hex>.tar.gz`.
    pub fn artifact(namespace: &str, name: &str, digest: &Digest) -> Result<Self, KeyError> {
        Self::parse(&format!("{}{}.tar.gz", artifact_dir(namespace, name), digest.hex()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment, used as the download file name.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// The prefix holding every artifact of one namespace: `artifacts/<namespace>/`.
pub fn namespace_dir(namespace: &str) -> String {
    format!("{ARTIFACT_PREFIX}{namespace}/")
}

/// The prefix holding every revision of one source: `artifacts/<namespace>/<name>/`.
pub fn artifact_dir(namespace: &str, name: &str) -> String {
    format!("{ARTIFACT_PREFIX}{namespace}/{name}/")
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Keys compare, order and hash as their text, so ordered indexes of keys can be searched by a
/// `str` prefix.
impl std::borrow::Borrow<str> for ObjectKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_artifact_keys() {
        let d = Digest::of(b"x");
        let k = ObjectKey::artifact("flux-system", "my-source", &d).unwrap();
        assert_eq!(k.as_str(), format!("artifacts/flux-system/my-source/{}.tar.gz", d.hex()));
        assert_eq!(k.file_name(), format!("{}.tar.gz", d.hex()));
    }

    #[test]
    fn refuses_escapes_and_odd_characters() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "a/./b", "a//b", "a/", "a\\b", "a\0b", "a%2e%2e", "a b", "é"] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(ObjectKey::parse(&"a".repeat(MAX_KEY_LEN + 1)), Err(KeyError::TooLong(MAX_KEY_LEN + 1)));
    }
}
