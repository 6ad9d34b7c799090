//! Request path → storage key, refusing anything that is not plainly an artifact key.
//!
//! The decision of what a safe key is belongs to [`ObjectKey::parse`]; this module only adds what
//! is specific to URLs. The URLs handed to consumers are built by core
//! ([`served_url`](externalsource_core::key::served_url)): the base, then the key as the path. Keys never contain `%`, so the path is never percent-decoded and any `%`
//! is refused: there is no decoding step that could turn `%2e%2e` into `..` behind the check.

use externalsource_core::ObjectKey;
use externalsource_core::key::{ARTIFACT_PREFIX, KeyError, MAX_KEY_LEN};

/// What a request path addresses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A well-formed key under the artifact prefix (which may or may not exist).
    Artifact(ObjectKey),
    /// Outside the artifact tree, or a "directory": nothing is served there.
    NotFound,
    /// Malformed or traversing.
    Malformed(PathError),
}

/// Why a path under the artifact prefix was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("path is {0} bytes long")]
    TooLong(usize),
    #[error("path contains percent-encoding")]
    PercentEncoded,
    #[error("path contains a backslash or NUL")]
    ForbiddenCharacter,
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Classifies `path` (the URI path, without query).
pub(crate) fn classify(path: &str) -> Target {
    // One byte for the leading `/`.
    if path.len() > MAX_KEY_LEN + 1 {
        return Target::Malformed(PathError::TooLong(path.len()));
    }
    if path.contains('%') {
        return Target::Malformed(PathError::PercentEncoded);
    }
    if path.contains(['\\', '\0']) {
        return Target::Malformed(PathError::ForbiddenCharacter);
    }
    let Some(key) = path.strip_prefix('/') else {
        return Target::NotFound;
    };
    if !key.starts_with(ARTIFACT_PREFIX) || key.ends_with('/') {
        return Target::NotFound;
    }
    match ObjectKey::parse(key) {
        Ok(key) => Target::Artifact(key),
        Err(e) => Target::Malformed(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_keys_are_accepted() {
        let t = classify("/artifacts/ns/name/abc.tar.gz");
        assert_eq!(t, Target::Artifact(ObjectKey::parse("artifacts/ns/name/abc.tar.gz").unwrap()));
    }

    /// Core builds the URLs of served objects; this route must answer exactly those.
    #[test]
    fn the_urls_core_hands_out_map_back_to_their_keys() {
        let key = ObjectKey::parse("artifacts/ns/name/0123abcd.tar.gz").unwrap();
        for base in ["http://svc.ns.svc.cluster.local:8080", "http://svc:8080/"] {
            let url = externalsource_core::key::served_url(base, &key);
            let path = &url[url.find("://").map(|i| i + 3).unwrap()..];
            let path = &path[path.find('/').unwrap()..];
            assert_eq!(classify(path), Target::Artifact(key.clone()), "{url}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for p in
            ["/", "/healthz", "/artifacts", "/artifacts/", "/artifacts/ns/", "*", "/other/artifacts/x", "//artifacts/x"]
        {
            assert_eq!(classify(p), Target::NotFound, "{p}");
        }
        for p in [
            "/artifacts/../etc/passwd",
            "/artifacts/%2e%2e/x",
            "/artifacts/%2E%2E/x",
            "/artifacts/a\\b",
            "/artifacts/a\0b",
            "/artifacts/./x",
            "/artifacts//x",
            "/artifacts/a b",
        ] {
            assert!(matches!(classify(p), Target::Malformed(_)), "{p}");
        }
        let long = format!("/artifacts/{}", "a".repeat(2000));
        assert_eq!(classify(&long), Target::Malformed(PathError::TooLong(long.len())));
    }
}
