//! The commands, each against the API server the connection flags name.

use std::io::Write;
use std::time::Duration;

use externalsource_core::controller::api::ExternalSource;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::error::PluginError;
use crate::status;

/// Flux's "reconcile now" annotation; the controller copies the value into
/// `status.lastHandledReconcileAt` once it has reconciled with it.
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";

/// How often `reconcile` and `resume` read the source while waiting.
const POLL: Duration = Duration::from_millis(500);

/// The source or `NotFound`.
async fn fetch(api: &Api<ExternalSource>, namespace: &str, name: &str) -> Result<ExternalSource, PluginError> {
    match api.get_opt(name).await {
        Ok(Some(es)) => Ok(es),
        Ok(None) => Err(PluginError::NotFound { namespace: namespace.into(), name: name.into() }),
        Err(source) => {
            Err(PluginError::Api { action: "reading", namespace: namespace.into(), name: name.into(), source })
        }
    }
}

/// `get [NAME]` / `get -A`: the table, or a note on stderr when there is nothing to show.
pub async fn get(client: Client, namespace: &str, name: Option<&str>, all: bool) -> Result<(), PluginError> {
    let sources = match (name, all) {
        (Some(name), _) => vec![fetch(&Api::namespaced(client, namespace), namespace, name).await?],
        (None, true) => {
            Api::<ExternalSource>::all(client)
                .list(&ListParams::default())
                .await
                .map_err(|source| PluginError::List { scope: "all namespaces".into(), source })?
                .items
        }
        (None, false) => {
            Api::<ExternalSource>::namespaced(client, namespace)
                .list(&ListParams::default())
                .await
                .map_err(|source| PluginError::List { scope: format!("namespace {namespace}"), source })?
                .items
        }
    };
    if sources.is_empty() {
        let scope = if all { "any namespace".to_owned() } else { format!("namespace {namespace}") };
        eprintln!("no ExternalSources found in {scope}");
        return Ok(());
    }
    let mut sources = sources;
    sources.sort_by_key(|es| (es.namespace(), es.name_any()));
    let text = crate::table::render(&sources, all, jiff::Timestamp::now());
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

/// `suspend NAME`: `spec.suspend: true`.
pub async fn suspend(client: Client, namespace: &str, name: &str) -> Result<(), PluginError> {
    let api: Api<ExternalSource> = Api::namespaced(client, namespace);
    fetch(&api, namespace, name).await?;
    eprintln!("► suspending ExternalSource {name} in {namespace} namespace");
    let patch = json!({"spec": {"suspend": true}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|source| PluginError::Api {
        action: "suspending",
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    eprintln!("✔ ExternalSource suspended");
    Ok(())
}

/// `reconcile NAME` (and `resume NAME`, which also clears `spec.suspend`): sets the
/// requestedAt annotation to a fresh token, waits until the controller reports having handled
/// it for the current generation, and returns the revision when the source is Ready.
pub async fn reconcile(
    client: Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    resume: bool,
) -> Result<String, PluginError> {
    let api: Api<ExternalSource> = Api::namespaced(client, namespace);
    let es = fetch(&api, namespace, name).await?;
    if !resume && es.spec.suspend.unwrap_or(false) {
        return Err(PluginError::Suspended { namespace: namespace.into(), name: name.into() });
    }
    // RFC 3339 with nanoseconds, as the flux CLI writes it: unique per request.
    let token = jiff::Timestamp::now().to_string();
    let mut patch = json!({"metadata": {"annotations": {REQUESTED_AT: token}}});
    if resume {
        eprintln!("► resuming ExternalSource {name} in {namespace} namespace");
        patch["spec"] = json!({"suspend": false});
    } else {
        eprintln!("► annotating ExternalSource {name} in {namespace} namespace");
    }
    let action = if resume { "resuming" } else { "annotating" };
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|source| PluginError::Api {
        action,
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    eprintln!("✔ ExternalSource {}", if resume { "resumed" } else { "annotated" });
    eprintln!("◎ waiting for ExternalSource reconciliation");
    let deadline = tokio::time::Instant::now() + timeout;
    let es = loop {
        let es = fetch(&api, namespace, name).await?;
        if status::handled(&es, &token) {
            break es;
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return Err(PluginError::Timeout { namespace: namespace.into(), name: name.into(), token, timeout });
        }
        tokio::time::sleep(POLL).await;
    };
    match status::ready(&es) {
        Some(c) if c.status == "True" => {
            eprintln!("✔ ExternalSource reconciliation completed");
            Ok(status::revision(&es).unwrap_or_default().to_owned())
        }
        other => Err(PluginError::NotReady {
            namespace: namespace.into(),
            name: name.into(),
            reason: other.map_or_else(|| "NoReadyCondition".to_owned(), |c| c.reason.clone()),
            message: other.map(|c| c.message.clone()).unwrap_or_default(),
        }),
    }
}
