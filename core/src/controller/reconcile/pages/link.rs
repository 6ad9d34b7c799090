//! The `Link` response header (RFC 8288 §3), as GitHub and GitLab page with it:
//! `Link: <https://api.example/items?page=2>; rel="next", <…?page=9>; rel="last"`.

/// The target of the first link whose relation types include `next`, across all `Link` header
/// values; `None` on the last page. Targets are URI references, resolved by the caller.
pub fn next_target(values: &[String]) -> Option<String> {
    values
        .iter()
        .flat_map(|v| links(v))
        .find(|(_, rels)| rels.iter().any(|r| r.eq_ignore_ascii_case("next")))
        .map(|(t, _)| t)
}

/// Each `<target>; params` link-value of one header value, with the relation types of its first
/// `rel` parameter (later ones are ignored, RFC 8288 §3.3).
fn links(value: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else { break };
        let target = rest[open + 1..open + close].trim().to_owned();
        rest = &rest[open + close + 1..];
        let (params, after) = split_params(rest);
        rest = after;
        let rel = params.iter().find(|(name, _)| name.eq_ignore_ascii_case("rel")).map(|(_, v)| v.as_str());
        let rels = rel.map(|r| r.split_ascii_whitespace().map(str::to_owned).collect()).unwrap_or_default();
        out.push((target, rels));
    }
    out
}

/// The `; name=value` parameters up to the `,` that ends the link-value (outside quotes), and
/// what follows it.
fn split_params(s: &str) -> (Vec<(String, String)>, &str) {
    let mut quoted = false;
    let mut escaped = false;
    let mut end = s.len();
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let params = s[..end]
        .split(';')
        .filter_map(|p| {
            let (name, value) = p.split_once('=')?;
            let value = value.trim();
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            Some((name.trim().to_owned(), value.replace("\\\"", "\"")))
        })
        .collect();
    (params, &s[(end + 1).min(s.len())..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(values: &[&str]) -> Option<String> {
        next_target(&values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn github_and_gitlab_headers() {
        let github = "<https://api.github.com/repositories/1/issues?page=2>; rel=\"next\", \
                      <https://api.github.com/repositories/1/issues?page=5>; rel=\"last\"";
        assert_eq!(next(&[github]).as_deref(), Some("https://api.github.com/repositories/1/issues?page=2"));
        let gitlab = "<https://gitlab.example.com/api/v4/projects?id_after=42&per_page=2>; rel=\"next\"";
        assert_eq!(
            next(&[gitlab]).as_deref(),
            Some("https://gitlab.example.com/api/v4/projects?id_after=42&per_page=2")
        );
    }

    #[test]
    fn the_last_page_has_no_next() {
        assert_eq!(
            next(&["<https://a.example/?page=1>; rel=\"first\", <https://a.example/?page=1>; rel=\"prev\""]),
            None
        );
        assert_eq!(next(&[]), None);
        assert_eq!(next(&["garbage"]), None);
        assert_eq!(next(&["<https://a.example/?page=2>"]), None, "a link without rel is no next link");
    }

    #[test]
    fn relation_lists_case_token_forms_and_several_headers() {
        assert_eq!(next(&["</items?page=3>; rel=\"prefetch NEXT\""]).as_deref(), Some("/items?page=3"));
        assert_eq!(next(&["</a>; rel=prev", "</b>;rel=next"]).as_deref(), Some("/b"));
        assert_eq!(
            next(&["</a>; title=\"x, rel=next\"; rel=\"prev\", </b>; rel=\"next\""]).as_deref(),
            Some("/b"),
            "a comma or rel= inside a quoted parameter does not split the link"
        );
        assert_eq!(next(&["</a>; rel=\"prev\"; rel=\"next\""]), None, "only the first rel counts");
    }
}
