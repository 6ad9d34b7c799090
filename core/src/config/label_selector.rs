//! Kubernetes label selectors, checked at start-up so a typo is a configuration error rather than
//! a watch that fails later.

/// What is wrong with a label selector, if anything (the API server's grammar, checked at
/// start-up so a typo is a configuration error rather than a watch that fails later).
pub fn problem(text: &str) -> Option<String> {
    let label_key = |k: &str| {
        let (prefix, name) = k.rsplit_once('/').unwrap_or(("", k));
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
        let prefix_ok = prefix.len() <= 253
            && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'));
        name_ok && prefix_ok && (k.matches('/').count() <= 1) && (!k.contains('/') || !prefix.is_empty())
    };
    let label_value = |v: &str| {
        v.is_empty()
            || (v.len() <= 63
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
    };
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    for part in parts.iter().map(|p| p.trim()) {
        if part.is_empty() {
            return Some("an empty requirement".into());
        }
        let words: Vec<&str> = part.split_whitespace().collect();
        let bad_key = |k: &str| Some(format!("{k:?} is not a valid label key"));
        let bad_value = |v: &str| Some(format!("{v:?} is not a valid label value"));
        if let Some(op) = words.get(1).filter(|w| **w == "in" || **w == "notin") {
            // After the key and the operator words (a key may itself contain "in").
            let set = part[words[0].len()..].trim_start()[op.len()..].trim();
            let Some(inner) = set.strip_prefix('(').and_then(|s| s.strip_suffix(')')) else {
                return Some(format!("`{op}` needs a parenthesised list in {part:?}"));
            };
            if !label_key(words[0]) {
                return bad_key(words[0]);
            }
            if let Some(v) = inner.split(',').map(str::trim).find(|v| !label_value(v)) {
                return bad_value(v);
            }
            continue;
        }
        let (k, v) = if let Some((k, v)) = part.split_once("!=") {
            (k, Some(v))
        } else if let Some((k, v)) = part.split_once("==") {
            (k, Some(v))
        } else if let Some((k, v)) = part.split_once('=') {
            (k, Some(v))
        } else {
            (part.strip_prefix('!').unwrap_or(part), None)
        };
        if !label_key(k.trim()) {
            return bad_key(k.trim());
        }
        if let Some(v) = v.map(str::trim).filter(|v| !label_value(v)) {
            return bad_value(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::problem as label_selector_problem;

    #[test]
    fn label_selectors_follow_the_api_servers_grammar() {
        for ok in [
            "sharding.fluxcd.io/key=shard1",
            "team==a,tier!=2",
            "team in (a, b),!legacy",
            "ingress in (x)",
            "env notin (dev),app.kubernetes.io/part-of",
            "key=",
        ] {
            assert_eq!(label_selector_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("team in a", "parenthesised list"),
            ("Team/x=y", "not a valid label key"),
            ("a=b c", "not a valid label value"),
            ("a=b,,c=d", "empty requirement"),
            ("-a=b", "not a valid label key"),
        ] {
            let problem = label_selector_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(problem.contains(why), "{bad}: {problem}");
        }
    }
}
