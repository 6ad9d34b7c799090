//! The fetch step: one request to the upstream, conditional on the recorded ETag while the
//! published artifact is the one that ETag describes, within the memory budget; or, for a paged
//! source, every page (see [`pages`]), unconditionally.

use std::time::Instant;

use bytes::Bytes;

use crate::controller::api::Artifact;
use crate::controller::context::Context;
use crate::controller::outcome::{self, Outcome, Unfetched};
use crate::controller::reconcile::credentials::Credentials;
use crate::controller::reconcile::plan::{Packaging, Plan};
use crate::controller::reconcile::scope::Scope;
use crate::controller::reconcile::{oauth2, pages, workload_identity};
use crate::controller::runtime::memory::{Reservation, UNPACK_WORKSPACE};
use crate::controller::runtime::metrics::ResultLabels;
use crate::controller::upstream::client::{FetchOutcome, FetchRequest};

/// A body to store, and the memory it (and its copies) may use until it is stored.
pub struct Fetched {
    pub body: Bytes,
    pub etag: Option<String>,
    /// The response's `Content-Type`, as sent.
    pub content_type: Option<String>,
    /// Held until the body and its copies are gone.
    pub memory: Reservation,
}

/// Fetches the payload. An answer without a body (304, or a failure) ends the reconcile with
/// what it means for `current`.
pub async fn fetch(
    scope: &Scope<'_>,
    ctx: &Context,
    plan: &Plan,
    credentials: Credentials,
    current: Option<&Artifact>,
) -> Result<Fetched, Outcome> {
    let (ns, name) = (&scope.namespace, &scope.name);
    let old = &scope.status;
    // The recorded ETag describes the published artifact only for the spec that fetched it.
    let same_spec = old.artifact_generation.is_some() && old.artifact_generation == scope.generation();
    let if_none_match = current.filter(|_| same_spec).and(old.last_handled_e_tag.clone());
    let sent_if_none_match = if_none_match.is_some();
    let Credentials { headers, tls, proxy, oauth2 } = credentials;
    let mut request = FetchRequest {
        url: plan.url.clone(),
        method: plan.method.clone(),
        headers,
        tls,
        timeout: plan.timeout,
        max_size: plan.max_size,
        if_none_match,
        proxy,
    };
    let unpacked = match plan.packaging {
        Packaging::Archive(_) => plan.max_size.saturating_add(UNPACK_WORKSPACE),
        Packaging::File(_) => 0,
    };
    let mut memory = ctx.memory.reserve_with(plan.max_size, unpacked).await;
    let started = Instant::now();
    if let Some(pagination) = &plan.pagination {
        let paged = pages::fetch_all(ctx, ns, plan, pagination, request, oauth2.as_ref()).await;
        ctx.metrics.observe_source_request(ns, name, started.elapsed());
        count_request(ctx, scope, if paged.is_ok() { "success" } else { "error" });
        return paged.map(|(body, content_type)| Fetched { body, etag: None, content_type, memory });
    }
    let fetched = match (&oauth2, &plan.identity) {
        (Some(client), _) => {
            match oauth2::fetch_with_token(&ctx.fetcher, &ctx.tokens, ns, client, &mut request, &mut memory).await {
                Ok(fetched) => fetched,
                Err(e) => return Err(client.failure(&e)),
            }
        }
        (None, Some(identity)) => {
            match workload_identity::fetch_with_identity(ctx, ns, identity, &mut request, &mut memory).await {
                Ok(fetched) => fetched,
                Err(e) => return Err(e.failure()),
            }
        }
        (None, None) => ctx.fetcher.fetch(&request, &mut memory).await,
    };
    ctx.metrics.observe_source_request(ns, name, started.elapsed());
    let result = match &fetched {
        Ok(FetchOutcome::NotModified) => "not_modified",
        Ok(_) => "success",
        Err(_) => "error",
    };
    count_request(ctx, scope, result);

    let recorded_etag = old.last_handled_e_tag.as_deref();
    match fetched {
        Ok(FetchOutcome::Fetched { body, etag, content_type, .. }) => Ok(Fetched { body, etag, content_type, memory }),
        Ok(FetchOutcome::NotModified) => {
            Err(outcome::after_fetch(current, recorded_etag, sent_if_none_match, Unfetched::NotModified))
        }
        Err(e) => Err(outcome::after_fetch(current, recorded_etag, sent_if_none_match, Unfetched::Failed(&e))),
    }
}

/// One more fetch of the source in `externalsource_source_requests_total` (a paged source's
/// pages count as one).
fn count_request(ctx: &Context, scope: &Scope<'_>, result: &str) {
    let labels = ResultLabels { namespace: scope.namespace.clone(), name: scope.name.clone(), result: result.into() };
    ctx.metrics.source_requests.get_or_create(&labels).inc();
}
