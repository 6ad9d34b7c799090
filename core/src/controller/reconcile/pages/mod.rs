//! Paged upstreams (`spec.generator.http.pagination`): the pages are fetched one after the
//! other and their items merged into one JSON array (see [`merge`]) before the post-request
//! hooks and `spec.transform` see it.
//!
//! Every page is an ordinary request of the source: the egress policy, `fetch.require_https` and
//! the redirect checks apply to each. The source's credentials (the `secretRef`, OAuth2 or
//! ServiceAccount token, the `headersSecretRef` headers, the client certificate) are meant for the
//! first page's origin, so a next URL on another origin (scheme, host or port) is refused, never
//! fetched, with or without them. `spec.maxSize` bounds the bytes of all pages together, and the
//! merged array too; a page beyond `maxPages` fails the fetch rather than publishing a truncated
//! list. Any failure keeps the last good artifact, naming the page's number and (redacted) URL.
//!
//! A paged source sends no `If-None-Match` and records no ETag: one page's ETag says nothing of
//! the others. Its revision is the digest of what it packages, as for every source, so unchanged
//! pages publish no new revision.

pub mod link;
pub mod merge;
pub mod spec;

use bytes::Bytes;
use reqwest::Url;

use crate::controller::conditions::Reason;
use crate::controller::context::Context;
use crate::controller::outcome::{Failure, Outcome, Retry};
use crate::controller::reconcile::oauth2::{self, ClientCredentials};
use crate::controller::reconcile::plan::Plan;
use crate::controller::reconcile::problem::ConfigProblem;
use crate::controller::reconcile::workload_identity;
use crate::controller::runtime::memory::Reservation;
use crate::controller::upstream::client::{FetchError, FetchOutcome, FetchRequest};
use crate::controller::upstream::redact::redact_url;
use crate::isolated::transform::TransformError;
use merge::{Merged, UnexpectedOutput};
use spec::{NextPage, Pagination};

const FIELD: &str = "spec.generator.http.pagination";

/// Why a page could not be used. Each is reported with the page's number and URL.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("{0}")]
    Fetch(FetchError),
    #[error("the upstream answered 304 Not Modified to a request without If-None-Match")]
    NotModified,
    #[error("the page is not one JSON document: {0}")]
    NotJson(String),
    #[error("the next expression or items expression {0}")]
    Program(TransformError),
    #[error("{0}")]
    Output(UnexpectedOutput),
    /// `next` is shown without its query (which may carry a signature or a token) and cut short.
    #[error("its next URL {next:?} is not a URL reference: {reason}")]
    BadNext { next: String, reason: String },
    #[error(
        "its next URL {next} is on another origin than the first page's ({origin}); next pages must stay on it \
         (the source's credentials are for that origin only)"
    )]
    OtherOrigin { next: String, origin: String },
    #[error("it names a next page, beyond maxPages ({max}); a truncated list is not published")]
    TooMany { max: u32 },
    #[error("the pages together exceed the size limit of {limit} bytes (spec.maxSize)")]
    TooLarge { limit: u64 },
}

impl PageError {
    fn retry(&self) -> Retry {
        match self {
            Self::Fetch(e) if !e.is_permanent() => Retry::Backoff { after: e.retry_after() },
            Self::NotModified => Retry::Backoff { after: None },
            Self::Program(e) if e.is_transient() => Retry::Backoff { after: None },
            _ => Retry::AtInterval,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Fetch(e) => e.kind(),
            _ => "pagination",
        }
    }
}

/// Fetches every page of `request` and merges their items. `Err` is the outcome to report.
pub async fn fetch_all(
    ctx: &Context,
    namespace: &str,
    plan: &Plan,
    pagination: &Pagination,
    mut request: FetchRequest,
    oauth2: Option<&ClientCredentials>,
) -> Result<(Bytes, Option<String>), Outcome> {
    let origin = request.url.origin();
    let program = merge::page_program(
        match &pagination.next {
            NextPage::Link => None,
            NextPage::Jq(code) => Some(code),
        },
        &pagination.items,
    );
    request.if_none_match = None;
    let (mut merged, mut fetched) = (Merged::default(), 0u64);
    // `spec.validate.contentType` is checked against the first page's; every page must be JSON.
    let mut content_type = None;
    for page in 1..=pagination.max_pages {
        let failed = |e: PageError, url: &Url| failure(page, url, e);
        let remaining = plan.max_size.saturating_sub(fetched);
        if remaining == 0 {
            return Err(failed(PageError::TooLarge { limit: plan.max_size }, &request.url));
        }
        request.max_size = remaining;
        let (body, links, page_type) = match one_page(ctx, namespace, plan, &mut request, oauth2).await? {
            Ok(page) => page,
            Err(PageError::Fetch(FetchError::TooLarge { .. })) if page > 1 => {
                return Err(failed(PageError::TooLarge { limit: plan.max_size }, &request.url));
            }
            Err(e) => return Err(failed(e, &request.url)),
        };
        fetched += body.len() as u64;
        if page == 1 {
            content_type = page_type;
        }
        let output_cap = plan.max_size.saturating_sub(merged.finished_len()).max(64);
        let out = match ctx.transforms.run(&program, &body, output_cap).await {
            Ok(out) => merge::read_output(out).map_err(|e| failed(PageError::Output(e), &request.url))?,
            Err(e) if e.is_spec_error() => return Err(program_problem(&pagination.next, &e)),
            Err(TransformError::Input(reason)) => return Err(failed(PageError::NotJson(reason), &request.url)),
            Err(TransformError::TooLarge(_)) => {
                return Err(failed(PageError::TooLarge { limit: plan.max_size }, &request.url));
            }
            Err(e) => return Err(failed(PageError::Program(e), &request.url)),
        };
        drop(body);
        merged.push(&out.items);
        if merged.finished_len() > plan.max_size {
            return Err(failed(PageError::TooLarge { limit: plan.max_size }, &request.url));
        }
        let next = match &pagination.next {
            NextPage::Link => link::next_target(&links),
            NextPage::Jq(_) => out.next,
        };
        let Some(next) = next else { return Ok((merged.finish().into(), content_type)) };
        if page == pagination.max_pages {
            return Err(failed(PageError::TooMany { max: pagination.max_pages }, &request.url));
        }
        let next_url = request.url.join(&next).map_err(|e| {
            failed(PageError::BadNext { next: shown_reference(&next), reason: e.to_string() }, &request.url)
        })?;
        if next_url.origin() != origin {
            let e = PageError::OtherOrigin { next: redact_url(&next_url), origin: origin.ascii_serialization() };
            return Err(failed(e, &request.url));
        }
        request.url = next_url;
    }
    // `max_pages` is at least 1, and the last round returns.
    Err(failure(pagination.max_pages, &request.url, PageError::TooMany { max: pagination.max_pages }))
}

/// A next URL that did not parse, as a message may show it: no query, at most 200 characters.
fn shown_reference(next: &str) -> String {
    let path = next.split(['?', '#']).next().unwrap_or_default();
    let mut shown: String = path.chars().filter(|c| !c.is_control()).take(200).collect();
    if path.len() < next.len() {
        shown.push_str("?…");
    }
    shown
}

/// One page, with the OAuth2 or ServiceAccount token when the source has one. The outer `Err`
/// is a token failure (reported as for an unpaged source); the inner one the page's.
async fn one_page(
    ctx: &Context,
    namespace: &str,
    plan: &Plan,
    request: &mut FetchRequest,
    oauth2: Option<&ClientCredentials>,
) -> Result<Result<(Bytes, Vec<String>, Option<String>), PageError>, Outcome> {
    // The source's reservation counts every page; a page's declared length must not shrink it.
    let mut memory = Reservation::detached();
    let fetched = match (oauth2, &plan.identity) {
        (Some(client), _) => {
            match oauth2::fetch_with_token(&ctx.fetcher, &ctx.tokens, namespace, client, request, &mut memory).await {
                Ok(fetched) => fetched,
                Err(e) => return Err(client.failure(&e)),
            }
        }
        (None, Some(identity)) => {
            match workload_identity::fetch_with_identity(ctx, namespace, identity, request, &mut memory).await {
                Ok(fetched) => fetched,
                Err(e) => return Err(e.failure()),
            }
        }
        (None, None) => ctx.fetcher.fetch(request, &mut memory).await,
    };
    Ok(match fetched {
        Ok(FetchOutcome::Fetched { body, links, content_type, .. }) => Ok((body, links, content_type)),
        Ok(FetchOutcome::NotModified) => Err(PageError::NotModified),
        Err(e) => Err(PageError::Fetch(e)),
    })
}

/// The outcome of a failed page: `Ready=False FetchFailed` naming the page and its URL.
fn failure(page: u32, url: &Url, e: PageError) -> Outcome {
    Outcome::Failed(Failure {
        reason: Reason::FetchFailed,
        kind: e.kind(),
        message: format!("{FIELD}: page {page} ({}): {e}", redact_url(url)),
        retry: e.retry(),
    })
}

/// A `next` or `items` expression that does not compile: a spec problem, checked again at the
/// interval (the sandbox finds it only when a page arrives).
fn program_problem(next: &NextPage, e: &TransformError) -> Outcome {
    let fields = match next {
        NextPage::Link => format!("{FIELD}.items"),
        NextPage::Jq(_) => format!("{FIELD}.next or {FIELD}.items"),
    };
    let problem = ConfigProblem { reason: Reason::InvalidSpec, message: format!("{fields}: {e}") };
    Outcome::Stalled { problem, recheck_at_interval: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_page_its_redacted_url_and_the_rule() {
        let url = Url::parse("https://api.example/items?page=4&token=t0k").unwrap();
        let Outcome::Failed(f) = failure(4, &url, PageError::TooMany { max: 4 }) else { panic!("not a failure") };
        assert_eq!(
            f.message,
            "spec.generator.http.pagination: page 4 (https://api.example/items?page=redacted&token=redacted): \
             it names a next page, beyond maxPages (4); a truncated list is not published"
        );
        assert_eq!((f.reason, f.retry, f.kind), (Reason::FetchFailed, Retry::AtInterval, "pagination"));
        let transient = PageError::Fetch(FetchError::Timeout { url: "u".into(), timeout: Default::default() });
        assert!(matches!(transient.retry(), Retry::Backoff { .. }), "a timeout is retried soon");
        let e = PageError::OtherOrigin { next: "https://evil.example/x".into(), origin: "https://api.example".into() };
        assert_eq!(e.retry(), Retry::AtInterval);
    }

    #[test]
    fn an_unparsable_next_url_is_shown_without_its_query() {
        assert_eq!(shown_reference("http://[::1/x?sig=s3cret"), "http://[::1/x?…");
        assert_eq!(shown_reference("http://[::1/x"), "http://[::1/x");
        let page = Url::parse("https://api.example/items").unwrap();
        assert!(page.join("http://[::1/x?sig=s3cret").is_err(), "the case above does not parse");
    }

    #[test]
    fn an_expression_that_does_not_compile_is_a_spec_problem() {
        let compile = TransformError::Compile("1 parse error(s)".into());
        let Outcome::Stalled { problem, recheck_at_interval: true } = program_problem(&NextPage::Link, &compile) else {
            panic!("not stalled")
        };
        assert_eq!(problem.reason, Reason::InvalidSpec);
        assert_eq!(problem.message, "spec.generator.http.pagination.items: does not compile: 1 parse error(s)");
        let Outcome::Stalled { problem, .. } = program_problem(&NextPage::Jq(".n".into()), &compile) else {
            panic!("not stalled")
        };
        assert!(
            problem.message.starts_with("spec.generator.http.pagination.next or spec.generator.http.pagination.items:")
        );
    }
}
