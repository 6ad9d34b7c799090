//! Conditional and range requests (RFC 9110 §13 and §14) against one object's validators.
//!
//! Our artifacts are content-addressed, so the strong ETag (the digest) is the validator that
//! matters; `Last-Modified` is only consulted when the client sent no entity tag.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use externalsource_core::{ByteRange, ObjectMeta};
use http::HeaderMap;
use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, RANGE};
use http_range_header::{StartPosition, SyntacticallyCorrectRange};

/// The validators of one stored object, as sent in responses.
pub(crate) struct Validators {
    /// The quoted strong entity tag, `"sha256:<hex>"`.
    pub(crate) etag: String,
    /// Last modification, truncated to whole seconds as HTTP dates are.
    pub(crate) last_modified: SystemTime,
}

impl Validators {
    pub(crate) fn of(meta: &ObjectMeta) -> Self {
        Self { etag: format!("\"{}\"", meta.digest), last_modified: whole_seconds(meta.last_modified) }
    }

    pub(crate) fn last_modified_http(&self) -> String {
        httpdate::fmt_http_date(self.last_modified)
    }

    /// Whether a GET or HEAD should be answered `304 Not Modified`.
    ///
    /// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): `W/"x"` matches `"x"`.
    /// `If-Modified-Since` is evaluated only when there is no `If-None-Match`.
    pub(crate) fn not_modified(&self, headers: &HeaderMap) -> bool {
        let mut inm = headers.get_all(IF_NONE_MATCH).iter().peekable();
        if inm.peek().is_some() {
            return inm
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag);
        }
        headers
            .get(IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| self.last_modified <= since)
    }

    /// Whether `If-Range` (if any) lets the `Range` header apply.
    ///
    /// An entity tag must match strongly (a weak tag never does); a date must equal
    /// `Last-Modified` exactly. Anything else means "send the whole object".
    fn range_applies(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(IF_RANGE) else {
            return true;
        };
        let Ok(value) = value.to_str() else {
            return false;
        };
        let value = value.trim();
        if value.starts_with('"') || value.starts_with("W/") {
            return value == self.etag;
        }
        httpdate::parse_http_date(value).is_ok_and(|date| date == self.last_modified)
    }

    /// What part of an object of `size` bytes a GET should return.
    pub(crate) fn range(&self, headers: &HeaderMap, size: u64) -> RangeDecision {
        let Some(value) = headers.get(RANGE) else {
            return RangeDecision::Full;
        };
        if !self.range_applies(headers) {
            return RangeDecision::Full;
        }
        // A Range header we cannot parse is ignored (RFC 9110 §14.2), as is a multi-range
        // request: one full response is simpler than multipart/byteranges and equally valid.
        let Ok(text) = value.to_str() else {
            return RangeDecision::Full;
        };
        // The range set is a list, so optional whitespace may surround its elements (§5.6.1).
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        // A zero-length suffix (`bytes=-0`) is well-formed but selects nothing (RFC 9110
        // §14.1.3); the parser rejects it, so it is recognised here.
        if compact.strip_prefix("bytes=-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b == b'0')) {
            return RangeDecision::Unsatisfiable;
        }
        let Ok(parsed) = http_range_header::parse_range_header(&compact) else {
            return RangeDecision::Full;
        };
        if parsed.ranges.len() != 1 {
            return RangeDecision::Full;
        }
        // A suffix longer than the object selects all of it (RFC 9110 §14.1.3); only a zero
        // suffix, or any range of an empty object, cannot be satisfied.
        if let [SyntacticallyCorrectRange { start: StartPosition::FromLast(n), .. }] = parsed.ranges.as_slice()
            && *n > size
        {
            return if size > 0 { RangeDecision::Partial(0..=size - 1) } else { RangeDecision::Unsatisfiable };
        }
        match parsed.validate(size).as_deref() {
            Ok([range]) if size > 0 && range.start() <= range.end() => RangeDecision::Partial(range.clone()),
            _ => RangeDecision::Unsatisfiable,
        }
    }
}

/// The outcome of evaluating `Range` and `If-Range`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeDecision {
    Full,
    Partial(ByteRange),
    Unsatisfiable,
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use externalsource_core::{Digest, ObjectKey};
    use http::HeaderValue;

    fn validators() -> Validators {
        Validators::of(&ObjectMeta {
            key: ObjectKey::parse("artifacts/a/b/c.tar.gz").unwrap(),
            size: 100,
            digest: Digest::of(b"x"),
            last_modified: UNIX_EPOCH + Duration::from_millis(1_700_000_000_700),
        })
    }

    fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn if_none_match_lists_wildcards_and_weak_tags() {
        let v = validators();
        let tag = v.etag.clone();
        assert!(v.not_modified(&headers(&[(IF_NONE_MATCH, &tag)])));
        assert!(v.not_modified(&headers(&[(IF_NONE_MATCH, &format!("\"other\", W/{tag}"))])));
        assert!(v.not_modified(&headers(&[(IF_NONE_MATCH, "\"a\""), (IF_NONE_MATCH, &tag)])));
        assert!(v.not_modified(&headers(&[(IF_NONE_MATCH, "*")])));
        assert!(!v.not_modified(&headers(&[(IF_NONE_MATCH, "\"other\"")])));
        assert!(!v.not_modified(&headers(&[])));
    }

    #[test]
    fn if_modified_since_only_without_if_none_match() {
        let v = validators();
        let lm = v.last_modified_http();
        let earlier = httpdate::fmt_http_date(v.last_modified - Duration::from_secs(10));
        assert!(v.not_modified(&headers(&[(IF_MODIFIED_SINCE, &lm)])));
        assert!(!v.not_modified(&headers(&[(IF_MODIFIED_SINCE, &earlier)])));
        assert!(!v.not_modified(&headers(&[(IF_MODIFIED_SINCE, &lm), (IF_NONE_MATCH, "\"other\"")])));
        assert!(!v.not_modified(&headers(&[(IF_MODIFIED_SINCE, "yesterday")])));
    }

    #[test]
    fn ranges() {
        let v = validators();
        let r = |s: &str| v.range(&headers(&[(RANGE, s)]), 100);
        assert_eq!(r("bytes=0-9"), RangeDecision::Partial(0..=9));
        assert_eq!(r("bytes=-5"), RangeDecision::Partial(95..=99));
        assert_eq!(r("bytes=10-"), RangeDecision::Partial(10..=99));
        assert_eq!(r("bytes=90-500"), RangeDecision::Partial(90..=99));
        assert_eq!(r("bytes=100-"), RangeDecision::Unsatisfiable);
        assert_eq!(r("bytes=-500"), RangeDecision::Partial(0..=99), "a longer suffix is the whole object");
        assert_eq!(r("bytes=-100"), RangeDecision::Partial(0..=99));
        assert_eq!(r("bytes=-0"), RangeDecision::Unsatisfiable, "a zero-length suffix");
        assert_eq!(r("bytes=99-99"), RangeDecision::Partial(99..=99));
        assert_eq!(r("bytes=5-2"), RangeDecision::Unsatisfiable, "last before first: an invalid range (§15.5.17)");
        assert_eq!(r("bytes= 0-9"), RangeDecision::Partial(0..=9), "whitespace around the range");
        assert_eq!(v.range(&headers(&[(RANGE, "bytes=-5")]), 0), RangeDecision::Unsatisfiable, "empty object");
        assert_eq!(r("bytes=0-1,5-6"), RangeDecision::Full);
        assert_eq!(r("bytes=garbage"), RangeDecision::Full);
        assert_eq!(r("lines=1-2"), RangeDecision::Full);
        assert_eq!(v.range(&headers(&[(RANGE, "bytes=0-0")]), 0), RangeDecision::Unsatisfiable);
        assert_eq!(v.range(&headers(&[]), 100), RangeDecision::Full);
    }

    #[test]
    fn if_range_needs_a_strong_match_or_the_exact_date() {
        let v = validators();
        let tag = v.etag.clone();
        let lm = v.last_modified_http();
        let with = |ir: &str| v.range(&headers(&[(RANGE, "bytes=0-9"), (IF_RANGE, ir)]), 100);
        assert_eq!(with(&tag), RangeDecision::Partial(0..=9));
        assert_eq!(with(&lm), RangeDecision::Partial(0..=9));
        assert_eq!(with(&format!("W/{tag}")), RangeDecision::Full);
        assert_eq!(with("\"other\""), RangeDecision::Full);
        assert_eq!(with(&httpdate::fmt_http_date(v.last_modified + Duration::from_secs(1))), RangeDecision::Full);
    }
}
