//! The first pass of a new leader over a store that is not shared: which published artifacts it
//! must store again before it may call itself Ready.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::controller::api::ExternalSource;
use crate::controller::runtime::readable::Readable;
use crate::key::ARTIFACT_PREFIX;
use crate::restore::Restoring;
use crate::{ObjectKey, Storage, StorageError};

/// Why the published artifacts could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot list ExternalSources: {0}")]
    List(#[source] kube::Error),
    #[error("cannot list the store: {0}")]
    Store(#[source] StorageError),
}

/// Sources whose published artifact is missing from this replica's store, each waiting for its
/// first reconcile here.
pub struct RestorePass {
    waiting: Mutex<HashMap<(String, String), ObjectKey>>,
    restoring: Restoring,
    remaining: tokio::sync::watch::Sender<usize>,
    total: usize,
}

impl RestorePass {
    /// Lists every published artifact (each ExternalSource's `status.artifact.path`) that the
    /// store lacks, and marks those keys as being restored. Runs before the controller starts, so
    /// no reconcile can finish before its source is counted.
    pub async fn begin(
        client: &kube::Client,
        storage: &dyn Storage,
        restoring: Restoring,
        selector: Option<&str>,
    ) -> Result<Self, RestoreError> {
        let params = match selector {
            Some(s) => ListParams::default().labels(s),
            None => ListParams::default(),
        };
        // Parsed one by one: a source that does not parse is skipped here as by the watch.
        let listed = Api::<Readable<ExternalSource>>::all(client.clone()).list(&params).await;
        let sources = listed.map_err(RestoreError::List)?;
        let stored: std::collections::HashSet<ObjectKey> =
            storage.list(ARTIFACT_PREFIX).await.map_err(RestoreError::Store)?.into_iter().map(|m| m.key).collect();
        let waiting: HashMap<(String, String), ObjectKey> = sources
            .items
            .iter()
            .filter_map(|listed| match listed {
                Readable::Parsed(es) => Some(es),
                Readable::Unreadable { .. } => None,
            })
            .filter_map(|es| {
                let path = &es.status.as_ref()?.artifact.as_ref()?.path;
                let key = ObjectKey::parse(path).ok().filter(|k| !stored.contains(k))?;
                Some(((es.namespace().unwrap_or_default(), es.name_any()), key))
            })
            .collect();
        restoring.expect(waiting.values().cloned());
        let total = waiting.len();
        let (remaining, _) = tokio::sync::watch::channel(total);
        Ok(Self { waiting: Mutex::new(waiting), restoring, remaining, total })
    }

    /// How many artifacts the pass started with.
    pub fn total(&self) -> usize {
        self.total
    }

    /// How many sources have not been reconciled here yet.
    pub fn remaining(&self) -> usize {
        *self.remaining.borrow()
    }

    /// Resolves once every counted source was reconciled once (whatever the outcome).
    pub async fn finished(&self) {
        let mut rx = self.remaining.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// A reconcile of `namespace/name` ended: its artifact is restored if the store now holds
    /// it. A failed fetch leaves the key pending (503) until the restore times out.
    pub async fn attempted(&self, namespace: &str, name: &str, storage: &dyn Storage) {
        // Every reconcile ends here: once the pass is done, at the cost of one atomic read.
        if self.remaining() == 0 {
            return;
        }
        let key = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(key) = waiting.remove(&(namespace.to_owned(), name.to_owned())) else { return };
            self.remaining.send_replace(waiting.len());
            key
        };
        match storage.stat(&key).await {
            Ok(_) => self.restoring.restored(&key),
            Err(e) => tracing::info!(key = %key, error = %e, "a published artifact was not restored by the first pass"),
        }
    }
}
