//! Asking for a reconcile the way `flux reconcile` does: a new `reconcile.fluxcd.io/requestedAt`
//! annotation, which the leader's watch turns into a reconcile whichever replica wrote it.
//!
//! Coalesced per source: one patch in flight and at most one pending, so a flood of pushes costs
//! the API server one write at a time per source, and pushes that arrive while a patch is in
//! flight all become the single next one. The controller's queue bounds the fetches in turn (one
//! reconcile in flight per source, and one queued behind it however many requests arrive).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::controller::api::{ExternalSource, REQUESTED_AT};

/// The field manager of the receiver's annotation patches.
pub const FIELD_MANAGER: &str = "externalsource-receiver";

/// What became of a request for a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A patch was started.
    Patching,
    /// A patch is in flight: this request rides on the one that follows it.
    Coalesced,
}

/// Per source: whether another patch must follow the one in flight.
#[derive(Clone)]
pub struct Trigger {
    client: kube::Client,
    in_flight: Arc<Mutex<HashMap<(String, String), bool>>>,
}

impl Trigger {
    pub fn new(client: kube::Client) -> Self {
        Self { client, in_flight: Arc::default() }
    }

    /// Asks for a reconcile of `namespace/name` soon; never waits for the API server.
    pub fn request(&self, namespace: &str, name: &str) -> Requested {
        let key = (namespace.to_owned(), name.to_owned());
        {
            let mut in_flight = self.lock();
            if let Some(pending) = in_flight.get_mut(&key) {
                *pending = true;
                return Requested::Coalesced;
            }
            in_flight.insert(key.clone(), false);
        }
        let this = self.clone();
        tokio::spawn(async move { this.patch_until_settled(key).await });
        Requested::Patching
    }

    /// Sources with a patch in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// Patches, then again while requests arrived meanwhile; the entry goes once none did.
    async fn patch_until_settled(&self, key: (String, String)) {
        loop {
            self.patch(&key.0, &key.1).await;
            let mut in_flight = self.lock();
            match in_flight.get_mut(&key) {
                Some(pending) if *pending => *pending = false,
                _ => {
                    in_flight.remove(&key);
                    return;
                }
            }
        }
    }

    async fn patch(&self, namespace: &str, name: &str) {
        let api: Api<ExternalSource> = Api::namespaced(self.client.clone(), namespace);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let body = json!({"metadata": {"annotations": {REQUESTED_AT: now}}});
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        match api.patch_metadata(name, &params, &Patch::Merge(&body)).await {
            Ok(_) => tracing::debug!(namespace, name, requested_at = %now, "reconcile requested by a push"),
            Err(e) => tracing::warn!(namespace, name, error = %e, "cannot request the reconcile a push asked for"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), bool>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}
