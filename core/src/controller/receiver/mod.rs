//! Push instead of poll: the receiver listener's side of `spec.receiver`.
//!
//! A push reaches `status.webhookPath` on any replica. [`index`] knows which source that path
//! belongs to (an unknown path costs one map lookup and a 404, before any body is read),
//! [`signature`] checks what the receiver type asks for (the body, read only up to
//! `receiver.max_body`, is only read when a signature covers it), and [`trigger`] asks for the
//! reconcile through the API, coalesced per source. The leader reconciles it like any
//! `reconcile.fluxcd.io/requestedAt` request, so nothing depends on which replica was pushed.

pub mod index;
pub mod signature;
pub mod trigger;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use reqwest::header::HeaderMap;

use self::index::{Index, Target};
use self::signature::{Authenticated, Refused, verify};
use self::trigger::{Requested, Trigger};
use crate::controller::runtime::metrics::PushLabels;

/// What the receiver answers to a push at a known path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated: a reconcile was requested (or joined the one about to be).
    Accepted(Requested),
    /// Authenticated, and nothing to do (GitHub's `ping`).
    Ping,
    /// Not authenticated.
    Refused(Refused),
    /// The path is no longer the token's (the Secret changed; the leader has not yet published
    /// the new path): as unknown as any other.
    Stale,
    /// The Secret could not be read; the sender should retry.
    Unavailable,
}

/// The receiver's state: the paths, the coalescing of requests, the API client.
pub struct Receiver {
    index: Index,
    trigger: Trigger,
    client: kube::Client,
    max_body: u64,
    pushes: Family<PushLabels, Counter>,
}

impl Receiver {
    /// Counts pushes into `pushes` (`externalsource_receiver_pushes_total`).
    pub fn new(client: kube::Client, max_body: u64, pushes: Family<PushLabels, Counter>) -> Arc<Self> {
        let trigger = Trigger::new(client.clone());
        Arc::new(Self { index: Index::default(), trigger, client, max_body, pushes })
    }

    /// Counts one push by its answer (`accepted`, `not_found`, `too_large`, …).
    pub fn count(&self, result: &'static str) {
        self.pushes.get_or_create(&PushLabels { result }).inc();
    }

    /// Keeps the paths current; run it beside the listener (it never returns by itself).
    pub async fn maintain(self: Arc<Self>, selector: Option<String>) {
        self.index.maintain(self.client.clone(), selector).await;
    }

    /// The source behind `path`, if the controller published that path.
    pub fn target(&self, path: &str) -> Option<Arc<Target>> {
        self.index.get(path)
    }

    /// The largest body read (`receiver.max_body`).
    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    /// How many sources have a published webhook path.
    pub fn paths(&self) -> usize {
        self.index.len()
    }

    /// Sources with a reconcile request in flight.
    pub fn requests_in_flight(&self) -> usize {
        self.trigger.in_flight()
    }

    /// Authenticates a push to `target` and, when it holds, asks for the reconcile.
    pub async fn push(&self, target: &Target, headers: &HeaderMap, body: &[u8]) -> Verdict {
        let (ns, name) = (target.namespace.as_str(), target.name.as_str());
        let token = match target.token(&self.client).await {
            Ok(Some(token)) => token,
            Ok(None) => {
                tracing::info!(namespace = ns, name, "push to a path the receiver Secret's token no longer gives");
                return Verdict::Stale;
            }
            Err(e) => {
                tracing::warn!(namespace = ns, name, secret = %target.secret, error = %e, "cannot read the receiver Secret");
                return Verdict::Unavailable;
            }
        };
        match verify(target.kind, token.bytes(), headers, body) {
            Ok(Authenticated::Reconcile) => Verdict::Accepted(self.trigger.request(ns, name)),
            Ok(Authenticated::Ping) => Verdict::Ping,
            Err(refused) => {
                tracing::info!(namespace = ns, name, reason = %refused, "push refused");
                Verdict::Refused(refused)
            }
        }
    }
}
