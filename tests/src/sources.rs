//! ExternalSource helpers shared by the integration tests: build a source, wait for its Ready
//! condition, ask for a reconcile, download what it publishes.

use std::time::Duration;

use externalsource_core::controller::api::{Artifact, ExternalSource};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::eventually;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn source(name: &str, url: &str, extra: serde_json::Value) -> ExternalSource {
    let mut spec = json!({
        "interval": "1h",
        "generator": {"type": "http", "http": {"url": url}},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "source.flux.oddkin.co/v1alpha1",
        "kind": "ExternalSource",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("ExternalSource")
}

pub fn ready(es: &ExternalSource) -> Option<(String, String, String)> {
    let status = es.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits for Ready=False with `reason` for the current generation and returns the message.
pub async fn wait_failing(api: &Api<ExternalSource>, name: &str, reason: &str) -> String {
    eventually(&format!("{name} Ready=False {reason}"), WAIT, || async {
        let es = api.get(name).await.ok()?;
        let current = es.status.as_ref()?.observed_generation == es.metadata.generation;
        let (s, r, m) = ready(&es)?;
        (s == "False" && r == reason && current).then_some(m)
    })
    .await
}

/// Waits until the source's Ready condition has `status` for the current generation.
pub async fn wait_ready(api: &Api<ExternalSource>, name: &str, status: &str) -> ExternalSource {
    eventually(&format!("{name} Ready={status}"), WAIT, || async {
        let es = api.get(name).await.ok()?;
        let (s, _, _) = ready(&es)?;
        let current = es.status.as_ref()?.observed_generation == es.metadata.generation;
        (s == status && current).then_some(es)
    })
    .await
}

/// Asks for an immediate reconcile (Flux's annotation) and waits until it was handled.
pub async fn request_reconcile(api: &Api<ExternalSource>, name: &str, token: &str) -> ExternalSource {
    let patch = json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotate");
    eventually(&format!("{name} handled {token}"), WAIT, || async {
        let es = api.get(name).await.ok()?;
        (es.status.as_ref()?.last_handled_reconcile_at.as_deref() == Some(token)).then_some(es)
    })
    .await
}

pub async fn download(url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::get(url).await.expect("download");
    let status = r.status().as_u16();
    (status, r.bytes().await.expect("body").to_vec())
}

pub fn artifact(es: &ExternalSource) -> Artifact {
    es.status.as_ref().and_then(|s| s.artifact.clone()).expect("status.artifact")
}
