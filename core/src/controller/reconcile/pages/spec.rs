//! `spec.generator.http.pagination`, validated: how the next page is found, which part of each
//! page is kept, and how many pages may be fetched.

use std::sync::Arc;

use crate::config::FetchConfig;
use crate::controller::api::{ExternalSourceSpec, PaginationType, PayloadFormat};
use crate::controller::reconcile::problem::ConfigProblem;

const FIELD: &str = "spec.generator.http.pagination";

/// Pages fetched at most when `maxPages` is not set.
pub const DEFAULT_MAX_PAGES: u32 = 10;

/// Where the next page's URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextPage {
    /// The `Link: <url>; rel="next"` response header (RFC 8288).
    Link,
    /// A jq expression over the page, run in the transform sandbox.
    Jq(Arc<str>),
}

/// A validated pagination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagination {
    pub next: NextPage,
    /// The jq expression selecting a page's items; `.` when unset.
    pub items: Arc<str>,
    pub max_pages: u32,
}

impl Pagination {
    /// The spec's pagination, if any. `ceiling` is the operator's `fetch.max_pages`.
    pub fn from_spec(spec: &ExternalSourceSpec, ceiling: u32) -> Result<Option<Self>, ConfigProblem> {
        let Some(p) = spec.generator.http.as_ref().and_then(|h| h.pagination.as_ref()) else { return Ok(None) };
        if spec.format.unwrap_or_default() == PayloadFormat::Archive {
            return Err(ConfigProblem::invalid(
                FIELD,
                "set",
                "merges JSON pages; it applies only with spec.format: file",
            ));
        }
        let expression = |name: &str, value: &str| -> Result<Arc<str>, ConfigProblem> {
            if value.trim().is_empty() {
                return Err(ConfigProblem::invalid(&format!("{FIELD}.{name}"), value, "must be a jq expression"));
            }
            Ok(Arc::from(value))
        };
        let next = match (p.type_, p.next.as_deref()) {
            (PaginationType::Link, None) => NextPage::Link,
            (PaginationType::Link, Some(_)) => {
                return Err(ConfigProblem::invalid(
                    &format!("{FIELD}.next"),
                    "set",
                    "applies only with type: jq (type: link reads the Link header)",
                ));
            }
            (PaginationType::Jq, None) => {
                return Err(ConfigProblem::invalid(&format!("{FIELD}.next"), "", "is required with type: jq"));
            }
            (PaginationType::Jq, Some(code)) => NextPage::Jq(expression("next", code)?),
        };
        let items = p.items.as_deref().map(|code| expression("items", code)).transpose()?.unwrap_or(Arc::from("."));
        let max_pages = p.max_pages.unwrap_or(DEFAULT_MAX_PAGES.min(ceiling));
        if max_pages == 0 || max_pages > ceiling {
            return Err(ConfigProblem::invalid(
                &format!("{FIELD}.maxPages"),
                &max_pages.to_string(),
                format!("must be from 1 to the controller's limit of {ceiling} ({})", FetchConfig::max_pages),
            ));
        }
        Ok(Some(Self { next, items, max_pages }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pagination: serde_json::Value) -> ExternalSourceSpec {
        serde_json::from_value(serde_json::json!({
            "interval": "5m",
            "generator": {"type": "http", "http": {"url": "https://api.example/items", "pagination": pagination}},
        }))
        .unwrap()
    }

    #[test]
    fn link_and_jq_with_their_defaults() {
        let p = Pagination::from_spec(&spec(serde_json::json!({"type": "link"})), 100).unwrap().unwrap();
        assert_eq!(p, Pagination { next: NextPage::Link, items: ".".into(), max_pages: DEFAULT_MAX_PAGES });
        let p = Pagination::from_spec(
            &spec(serde_json::json!({"type": "jq", "next": ".next", "items": ".data", "maxPages": 50})),
            100,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p, Pagination { next: NextPage::Jq(".next".into()), items: ".data".into(), max_pages: 50 });
        let small = Pagination::from_spec(&spec(serde_json::json!({"type": "link"})), 3).unwrap().unwrap();
        assert_eq!(small.max_pages, 3, "the default never exceeds the operator's ceiling");
    }

    #[test]
    fn problems_name_the_field_the_value_and_the_rule() {
        let e = |p: serde_json::Value| Pagination::from_spec(&spec(p), 100).unwrap_err().message;
        assert_eq!(
            e(serde_json::json!({"type": "jq"})),
            "spec.generator.http.pagination.next: \"\" is required with type: jq"
        );
        assert!(e(serde_json::json!({"type": "link", "next": ".n"})).contains("applies only with type: jq"));
        assert_eq!(
            e(serde_json::json!({"type": "link", "maxPages": 101})),
            "spec.generator.http.pagination.maxPages: \"101\" must be from 1 to the controller's limit of 100 \
             (fetch.max_pages)"
        );
        assert!(e(serde_json::json!({"type": "link", "maxPages": 0})).contains("maxPages: \"0\""));
        assert!(e(serde_json::json!({"type": "jq", "next": " "})).starts_with("spec.generator.http.pagination.next:"));
        let mut archive = spec(serde_json::json!({"type": "link"}));
        archive.format = Some(PayloadFormat::Archive);
        assert!(Pagination::from_spec(&archive, 100).unwrap_err().message.contains("spec.format: file"));
    }
}
