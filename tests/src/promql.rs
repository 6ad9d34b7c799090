//! Just enough PromQL and Prometheus text format to check a dashboard against a live metrics
//! page: which metric names an expression selects and which labels it groups and matches by, and
//! which sample names (with their labels) a scraped page exports.

use std::collections::{BTreeMap, BTreeSet};

/// What one PromQL expression refers to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Metric names, as written (`foo_bucket`, `foo_total`, ...).
    pub metrics: BTreeSet<String>,
    /// Label names in `by`/`without`/`on`/`ignoring`/`group_*` lists and in `{...}` matchers.
    pub labels: BTreeSet<String>,
    /// Label names in `by (...)` lists: what a legend can name.
    pub grouped_by: BTreeSet<String>,
}

/// Aggregation operators: followed by `by`/`without` or `(`, never a metric.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
/// Binary operators and modifiers spelt as words.
const WORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN"];

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

struct Lexer<'a> {
    chars: Vec<char>,
    at: usize,
    expr: &'a str,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn ident(&mut self) -> String {
        let start = self.at;
        while self.peek().is_some_and(ident_char) {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn skip_string(&mut self, quote: char) {
        self.at += 1;
        while let Some(c) = self.peek() {
            self.at += 1;
            if c == '\\' && quote != '`' {
                self.at += 1;
            } else if c == quote {
                return;
            }
        }
        panic!("unterminated string in {:?}", self.expr);
    }

    /// `(a, b)` after a label-list keyword.
    fn label_list(&mut self) -> Vec<String> {
        self.skip_space();
        if self.peek() != Some('(') {
            return Vec::new();
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                Some(')') => {
                    self.at += 1;
                    return out;
                }
                Some(',') => self.at += 1,
                Some(c) if ident_start(c) => out.push(self.ident()),
                other => panic!("unexpected {other:?} in a label list of {:?}", self.expr),
            }
        }
    }

    /// `{name="v", other=~"x"}`: the label names.
    fn matchers(&mut self) -> Vec<String> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                Some('}') => {
                    self.at += 1;
                    return out;
                }
                Some(',' | '=' | '!' | '~') => self.at += 1,
                Some(q @ ('"' | '\'' | '`')) => self.skip_string(q),
                Some(c) if ident_start(c) => out.push(self.ident()),
                other => panic!("unexpected {other:?} in the matchers of {:?}", self.expr),
            }
        }
    }
}

/// The metric names and label names `expr` refers to. Grafana's variables (`$namespace`,
/// `$__rate_interval`, `${x}`) are skipped; they never name a metric.
pub fn selection(expr: &str) -> Selection {
    let mut lx = Lexer { chars: expr.chars().collect(), at: 0, expr };
    let mut sel = Selection::default();
    while let Some(c) = lx.peek() {
        match c {
            q @ ('"' | '\'' | '`') => lx.skip_string(q),
            '{' => sel.labels.extend(lx.matchers()),
            '[' => {
                while lx.peek().is_some_and(|c| c != ']') {
                    lx.at += 1;
                }
                lx.at += 1;
            }
            '$' => {
                lx.at += 1;
                if lx.peek() == Some('{') {
                    while lx.peek().is_some_and(|c| c != '}') {
                        lx.at += 1;
                    }
                    lx.at += 1;
                } else {
                    lx.ident();
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while lx.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '.') {
                    lx.at += 1;
                }
            }
            c if ident_start(c) => {
                let word = lx.ident();
                if LABEL_LISTS.contains(&word.as_str()) {
                    let labels = lx.label_list();
                    if word == "by" {
                        sel.grouped_by.extend(labels.iter().cloned());
                    }
                    sel.labels.extend(labels);
                    continue;
                }
                if AGGREGATIONS.contains(&word.as_str()) || WORDS.contains(&word.as_str()) {
                    continue;
                }
                lx.skip_space();
                if lx.peek() != Some('(') {
                    sel.metrics.insert(word);
                }
            }
            _ => lx.at += 1,
        }
    }
    sel
}

/// A scraped metrics page: every sample name a query may select, with the labels its series
/// carry, derived from the `# TYPE` lines (so families without series yet are known too).
#[derive(Debug, Default)]
pub struct Exported {
    /// Family name (as in `# TYPE`) to its type.
    pub families: BTreeMap<String, String>,
    /// Selectable sample name to the label names seen on its series (empty: no series yet).
    pub samples: BTreeMap<String, BTreeSet<String>>,
}

/// The sample names a family of `kind` exposes (OpenMetrics and Prometheus text conventions);
/// `_created` samples only count when the page has them.
pub fn sample_names(family: &str, kind: &str) -> Vec<String> {
    let with = |suffixes: &[&str]| suffixes.iter().map(|s| format!("{family}{s}")).collect();
    match kind {
        "counter" if family.ends_with("_total") => vec![family.to_owned()],
        "counter" => with(&["_total"]),
        "histogram" | "gaugehistogram" => with(&["_bucket", "_sum", "_count"]),
        "summary" => with(&["", "_sum", "_count"]),
        "info" => with(&["_info"]),
        _ => vec![family.to_owned()],
    }
}

/// Parses a text-format page. Panics on a sample whose name no `# TYPE` line accounts for:
/// that would mean the suffix rules above are wrong, and so would be every check built on them.
pub fn exported(page: &str) -> Exported {
    let mut out = Exported::default();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.families.insert(name.to_owned(), kind.to_owned());
                for sample in sample_names(name, kind) {
                    out.samples.entry(sample).or_default();
                }
            }
        }
    }
    for line in page.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let name: String = line.chars().take_while(|c| ident_char(*c)).collect();
        let labels = match line[name.len()..].strip_prefix('{') {
            Some(rest) => {
                let inside = &rest[..rest.find('}').unwrap_or(rest.len())];
                selection(&format!("{{{inside}}}")).labels
            }
            None => BTreeSet::new(),
        };
        let created = name.strip_suffix("_created").is_some_and(|f| out.families.contains_key(f));
        if created {
            out.samples.entry(name.clone()).or_default();
        }
        match out.samples.get_mut(&name) {
            Some(seen) => seen.extend(labels),
            None => panic!("sample {name} is not accounted for by any # TYPE line: {line}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn finds_metrics_not_functions_keywords_labels_or_variables() {
        let sel = selection(
            r#"histogram_quantile(0.95, sum by (le, hook) (rate(a_seconds_bucket{namespace=~"$namespace", x!="y}"}[$__rate_interval])))
               / on (job) group_left(pod) b_total offset 5m > bool 0.1 * count(c == 0) or vector(0) unless ${d}"#,
        );
        assert_eq!(sel.metrics, set(&["a_seconds_bucket", "b_total", "c"]));
        assert_eq!(sel.labels, set(&["le", "hook", "namespace", "x", "job", "pod"]));
        assert_eq!(sel.grouped_by, set(&["le", "hook"]));
    }

    #[test]
    fn aggregation_with_trailing_by_and_topk() {
        let sel = selection(r#"topk(20, sum(increase(m_total{result="error"}[$__range])) by (name)) > 0"#);
        assert_eq!(sel.metrics, set(&["m_total"]));
        assert_eq!(sel.grouped_by, set(&["name"]));
    }

    #[test]
    fn page_samples_follow_the_type_lines() {
        let page = "# HELP r Reconciles.\n# TYPE r counter\nr_total{namespace=\"ns\",kind=\"none\"} 1\n\
                    # TYPE d histogram\nd_bucket{le=\"0.1\"} 1\nd_sum 0.05\nd_count 1\n# TYPE g gauge\n# EOF\n";
        let ex = exported(page);
        assert_eq!(ex.samples["r_total"], set(&["namespace", "kind"]));
        assert_eq!(ex.samples["d_bucket"], set(&["le"]));
        assert!(ex.samples["g"].is_empty(), "a family without series is still known");
        assert!(!ex.samples.contains_key("r"), "a counter is selected with its _total");
    }

    #[test]
    #[should_panic(expected = "not accounted for")]
    fn a_sample_without_a_type_line_is_refused() {
        exported("# TYPE r counter\nr 1\n");
    }
}
