//! Revisions: `<id>@sha256:<hex>`, where `<id>` is the upstream ETag when it is a plain token.

use crate::digest::Digest;

/// Longest ETag kept in a revision.
const MAX_ID_LEN: usize = 64;

/// The revision of an artifact with `digest`, fetched with `etag`.
pub fn revision(etag: Option<&str>, digest: &Digest) -> String {
    format!("{}@{digest}", etag.and_then(plain_etag).unwrap_or("latest"))
}

/// The ETag without `W/` and quotes, if what is left is a plain token.
fn plain_etag(etag: &str) -> Option<&str> {
    let t = etag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    let t = t.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(t);
    let plain = !t.is_empty()
        && t.len() <= MAX_ID_LEN
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    plain.then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_forms() {
        let d = Digest::of(b"x");
        assert_eq!(revision(None, &d), format!("latest@{d}"));
        assert_eq!(revision(Some("\"abc-1.2\""), &d), format!("abc-1.2@{d}"));
        assert_eq!(revision(Some("W/\"v7\""), &d), format!("v7@{d}"));
        assert_eq!(revision(Some("\"a:b\""), &d), format!("latest@{d}"));
        assert_eq!(revision(Some("\"a b\""), &d), format!("latest@{d}"));
        assert_eq!(revision(Some(&format!("\"{}\"", "x".repeat(65))), &d), format!("latest@{d}"));
        assert_eq!(revision(Some("\"\""), &d), format!("latest@{d}"));
    }
}
