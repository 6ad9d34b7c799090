//! Checks that values meant to stay secret (client secrets, tokens) appear nowhere a user or an
//! operator can read: the sources' statuses, their Events, the controller's metrics and its log.

use externalsource_core::controller::api::ExternalSource;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use prometheus_client::registry::Registry;

/// Asserts that none of `hidden` appears in the statuses of the ExternalSources of `namespace`,
/// its Events, `registry` or `log`. Returns the Events (note and reason), for the caller's own
/// assertions on what was reported.
pub async fn assert_never_shown(
    client: &kube::Client,
    namespace: &str,
    registry: &Registry,
    log: &str,
    hidden: &[String],
) -> Vec<String> {
    let sources = Api::<ExternalSource>::namespaced(client.clone(), namespace);
    let statuses: Vec<String> = sources
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|es| serde_json::to_string(&es.status).unwrap())
        .collect();
    let events: Vec<String> = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|e| format!("{} {}", e.note.clone().unwrap_or_default(), e.reason.clone().unwrap_or_default()))
        .collect();
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, registry).unwrap();
    let shown = [
        ("a status", statuses.join("\n")),
        ("an Event", events.join("\n")),
        ("metrics", metrics),
        ("the log", log.to_owned()),
    ];
    for value in hidden {
        for (what, text) in &shown {
            assert!(!text.contains(value.as_str()), "a hidden value ({} chars) appears in {what}", value.len());
        }
    }
    events
}
