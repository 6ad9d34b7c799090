//! Flux events: what a Flux controller posts to notification-controller (`--events-addr`), so
//! Flux `Alert`s and `Provider`s work for our sources as they do for Flux's own.
//!
//! The body is `fluxcd/pkg/apis/event/v1beta1.Event`, with the ExternalArtifact as involved
//! object: notification-controller matches an Alert's `eventSources` by kind, and its Alert API
//! accepts `ExternalArtifact` (notification-controller #1237) but not our ExternalSource kind.
//! Metadata keys carry the involved object's API group as prefix (`source.toolkit.fluxcd.io/
//! revision`), which is what notification-controller keeps and passes on to providers.
//!
//! Sending never slows a reconcile: events go through a bounded queue to one worker, which
//! drops the queue's overflow (counted) rather than hold memory for an unreachable receiver.
//! Like Flux's recorder the worker retries connection errors and 5xx a few times and takes 429
//! as "duplicate" (notification-controller's rate limiter); unlike it, the worker also drops an
//! event identical to one sent within the dedup window itself, by the key notification-controller
//! rate-limits on (object, message, revision), so a source failing the same way at every backoff
//! step costs the receiver one request per window, not one per attempt.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::controller::api::REPORTING_CONTROLLER;

const ARTIFACT_API_VERSION: &str = "source.toolkit.fluxcd.io/v1";
/// The revision's metadata key: the involved object's group, then `revision` (Flux's convention,
/// which notification-controller strips to `revision` for providers).
const REVISION_KEY: &str = "source.toolkit.fluxcd.io/revision";
/// Prefix of the annotations Flux copies from an object into its events' metadata.
const EVENT_ANNOTATION_PREFIX: &str = "event.toolkit.fluxcd.io/";
/// How long an identical event is not sent again: notification-controller's default
/// `--rate-limit-interval`, within which it would answer 429 anyway.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(300);
/// Events waiting for the worker; more are dropped (and counted).
const QUEUE: usize = 1024;
/// Flux's recorder: retryablehttp's defaults (4 retries, 1 s doubling to 30 s) and a 5 s timeout.
const RETRIES: u32 = 4;
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `info` for news, `error` for failures (Flux sends no `trace` events to the receiver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Error,
}

/// `corev1.ObjectReference` as Flux fills it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvolvedObject {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub api_version: &'static str,
}

/// The wire form of one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FluxEvent {
    pub involved_object: InvolvedObject,
    pub severity: Severity,
    pub timestamp: Time,
    pub message: String,
    pub reason: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub reporting_controller: String,
    pub reporting_instance: String,
}

/// What a reconcile has to say about one source.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub severity: Severity,
    pub reason: &'a str,
    pub message: &'a str,
    /// The revision a new artifact has; `None` for failures (the last good revision is not
    /// what they are about).
    pub revision: Option<&'a str>,
    /// The ExternalSource's annotations: those under `event.toolkit.fluxcd.io/` go into the
    /// metadata, as Flux does with an object's own.
    pub annotations: &'a BTreeMap<String, String>,
}

/// Labels of `externalsource_flux_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventResultLabels {
    /// `sent`, `duplicate` (dropped by us or answered 429), `dropped` (queue full), `failed`.
    pub result: &'static str,
}

/// Handle to the worker that posts events; cheap to share.
#[derive(Clone)]
pub struct FluxEvents {
    queue: mpsc::Sender<FluxEvent>,
    results: Family<EventResultLabels, Counter>,
    reporting_instance: String,
}

impl FluxEvents {
    /// Starts the worker posting to `address` (a notification-controller event URL such as
    /// `http://notification-controller.flux-system.svc.cluster.local./`) on behalf of
    /// `reporting_instance` (the pod); needs a tokio runtime.
    pub fn start(address: String, reporting_instance: String, results: Family<EventResultLabels, Counter>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let worker = Worker { address, dedup: Dedup::new(DEDUP_WINDOW), results: results.clone() };
        tokio::spawn(worker.run(receiver));
        Self { queue, results, reporting_instance }
    }

    /// Queues `notice`; never waits.
    pub fn notify(&self, notice: &Notice<'_>) {
        let event = build_event(notice, REPORTING_CONTROLLER, &self.reporting_instance);
        if self.queue.try_send(event).is_err() {
            self.results.get_or_create(&EventResultLabels { result: "dropped" }).inc();
            tracing::debug!(namespace = notice.namespace, name = notice.name, "Flux event queue full; event dropped");
        }
    }
}

/// The Flux event for `notice`.
pub fn build_event(notice: &Notice<'_>, reporting_controller: &str, reporting_instance: &str) -> FluxEvent {
    let mut metadata: BTreeMap<String, String> = notice
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with(EVENT_ANNOTATION_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(revision) = notice.revision {
        metadata.insert(REVISION_KEY.to_owned(), revision.to_owned());
    }
    FluxEvent {
        involved_object: InvolvedObject {
            kind: "ExternalArtifact",
            namespace: notice.namespace.to_owned(),
            name: notice.name.to_owned(),
            api_version: ARTIFACT_API_VERSION,
        },
        severity: notice.severity,
        timestamp: Time(k8s_openapi::jiff::Timestamp::now()),
        message: notice.message.to_owned(),
        reason: notice.reason.to_owned(),
        metadata,
        reporting_controller: reporting_controller.to_owned(),
        reporting_instance: reporting_instance.to_owned(),
    }
}

/// Remembers recently sent events by notification-controller's rate-limit key.
pub struct Dedup {
    window: Duration,
    sent: HashMap<[u8; 32], Instant>,
    /// The same entries in the order they were sent, so expiry looks only at the oldest.
    order: VecDeque<([u8; 32], Instant)>,
}

impl Dedup {
    pub fn new(window: Duration) -> Self {
        Self { window, sent: HashMap::new(), order: VecDeque::new() }
    }

    /// notification-controller's `eventKeyFunc`: object, message and revision.
    fn key(event: &FluxEvent) -> [u8; 32] {
        let o = &event.involved_object;
        let mut h = Sha256::new();
        for part in [o.name.as_str(), o.namespace.as_str(), o.kind, event.message.as_str()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        if let Some(revision) = event.metadata.get(REVISION_KEY) {
            h.update(revision.as_bytes());
        }
        h.finalize().into()
    }

    /// True when `event` is new within the window (and records it as sent at `now`).
    pub fn admit(&mut self, event: &FluxEvent, now: Instant) -> bool {
        // Forget what has aged out, so the map holds at most one window of distinct events.
        while let Some((key, at)) = self.order.front().copied() {
            if now.duration_since(at) < self.window {
                break;
            }
            self.order.pop_front();
            // Only if not forgotten and sent again since.
            if self.sent.get(&key) == Some(&at) {
                self.sent.remove(&key);
            }
        }
        let key = Self::key(event);
        if self.sent.contains_key(&key) {
            return false;
        }
        self.sent.insert(key, now);
        self.order.push_back((key, now));
        true
    }

    /// Forgets `event`, so a later identical one is sent (after a delivery that failed).
    pub fn forget(&mut self, event: &FluxEvent) {
        self.sent.remove(&Self::key(event));
    }
}

/// How one POST went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    /// 429: the receiver has seen it within its rate-limit window.
    Duplicate,
    /// Connection error, timeout or 5xx: worth another try.
    Retry,
    /// Any other status: the receiver refuses it; trying again would not help.
    Refused,
}

/// Classifies a response status as Flux's recorder does.
pub fn classify(status: reqwest::StatusCode) -> Delivery {
    match status.as_u16() {
        200..=299 => Delivery::Accepted,
        429 => Delivery::Duplicate,
        500..=599 => Delivery::Retry,
        _ => Delivery::Refused,
    }
}

struct Worker {
    address: String,
    dedup: Dedup,
    results: Family<EventResultLabels, Counter>,
}

impl Worker {
    async fn run(mut self, mut receiver: mpsc::Receiver<FluxEvent>) {
        // Events go to the cluster's own notification-controller: no proxy from the environment.
        let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).no_proxy().build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the Flux event client; events are not sent");
                return;
            }
        };
        while let Some(event) = receiver.recv().await {
            if !self.dedup.admit(&event, Instant::now()) {
                self.count("duplicate");
                continue;
            }
            let result = self.deliver(&client, &event).await;
            if result != "sent" && result != "duplicate" {
                self.dedup.forget(&event);
            }
            self.count(result);
        }
    }

    async fn deliver(&self, client: &reqwest::Client, event: &FluxEvent) -> &'static str {
        let o = &event.involved_object;
        let body = match serde_json::to_vec(event) {
            Ok(body) => bytes::Bytes::from(body),
            Err(e) => {
                tracing::warn!(namespace = %o.namespace, name = %o.name, error = %e, "cannot encode a Flux event");
                return "failed";
            }
        };
        let mut pause = FIRST_PAUSE;
        for attempt in 0..=RETRIES {
            let request =
                client.post(&self.address).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
            let outcome = match request.send().await {
                Ok(response) => (classify(response.status()), response.status().to_string()),
                Err(e) => (Delivery::Retry, e.without_url().to_string()),
            };
            match outcome {
                (Delivery::Accepted, _) => return "sent",
                (Delivery::Duplicate, _) => return "duplicate",
                (Delivery::Refused, why) => {
                    tracing::warn!(namespace = %o.namespace, name = %o.name, answer = %why, "the event receiver refused a Flux event");
                    return "failed";
                }
                (Delivery::Retry, why) if attempt == RETRIES => {
                    tracing::warn!(namespace = %o.namespace, name = %o.name, error = %why, attempts = RETRIES + 1, "cannot post a Flux event");
                    return "failed";
                }
                (Delivery::Retry, _) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
        "failed"
    }

    fn count(&self, result: &'static str) {
        self.results.get_or_create(&EventResultLabels { result }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn notice<'a>(
        annotations: &'a BTreeMap<String, String>,
        message: &'a str,
        revision: Option<&'a str>,
    ) -> Notice<'a> {
        Notice {
            namespace: "team-a",
            name: "prices",
            severity: if revision.is_some() { Severity::Info } else { Severity::Error },
            reason: if revision.is_some() { "NewArtifact" } else { "FetchFailed" },
            message,
            revision,
            annotations,
        }
    }

    #[test]
    fn the_body_is_what_notification_controller_decodes() {
        let annotations = BTreeMap::from([
            ("event.toolkit.fluxcd.io/team".to_owned(), "payments".to_owned()),
            ("unrelated.example/x".to_owned(), "no".to_owned()),
        ]);
        let event = build_event(
            &notice(&annotations, "stored artifact for revision latest@sha256:ab", Some("latest@sha256:ab")),
            "externalsource-controller",
            "pod-1",
        );
        let mut body = serde_json::to_value(&event).unwrap();
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "RFC 3339 in UTC: {body}");
        body.as_object_mut().unwrap().remove("timestamp");
        assert_eq!(
            body,
            json!({
                "involvedObject": {
                    "kind": "ExternalArtifact", "namespace": "team-a", "name": "prices",
                    "apiVersion": "source.toolkit.fluxcd.io/v1",
                },
                "severity": "info",
                "message": "stored artifact for revision latest@sha256:ab",
                "reason": "NewArtifact",
                "metadata": {
                    "source.toolkit.fluxcd.io/revision": "latest@sha256:ab",
                    "event.toolkit.fluxcd.io/team": "payments",
                },
                "reportingController": "externalsource-controller",
                "reportingInstance": "pod-1",
            })
        );
        let failure = build_event(&notice(&BTreeMap::new(), "GET returned 503", None), "c", "i");
        let body = serde_json::to_value(&failure).unwrap();
        assert_eq!(body["severity"], "error");
        assert!(body.get("metadata").is_none(), "no revision on a failure: {body}");
    }

    #[test]
    fn identical_events_pass_once_per_window_and_a_new_revision_always_passes() {
        let none = BTreeMap::new();
        let mut dedup = Dedup::new(Duration::from_secs(300));
        let t0 = Instant::now();
        let failing = build_event(&notice(&none, "GET returned 503", None), "c", "i");
        assert!(dedup.admit(&failing, t0));
        assert!(!dedup.admit(&failing, t0 + Duration::from_secs(10)), "same failure within the window");
        let other = build_event(&notice(&none, "GET returned 404", None), "c", "i");
        assert!(dedup.admit(&other, t0 + Duration::from_secs(11)), "another message is news");
        let v1 = build_event(&notice(&none, "stored", Some("latest@sha256:01")), "c", "i");
        let v2 = build_event(&notice(&none, "stored", Some("latest@sha256:02")), "c", "i");
        assert!(dedup.admit(&v1, t0));
        assert!(dedup.admit(&v2, t0), "same message, new revision");
        assert!(dedup.admit(&failing, t0 + Duration::from_secs(300)), "the window has passed");
        dedup.forget(&v2);
        assert!(dedup.admit(&v2, t0 + Duration::from_secs(301)), "a failed delivery is not remembered");
        assert!(
            !dedup.admit(&v2, t0 + Duration::from_secs(302)),
            "sent again: remembered from then, though its first sending has aged out"
        );
    }

    #[test]
    fn statuses_are_classified_like_fluxs_recorder() {
        use reqwest::StatusCode as S;
        assert_eq!(classify(S::ACCEPTED), Delivery::Accepted);
        assert_eq!(classify(S::TOO_MANY_REQUESTS), Delivery::Duplicate);
        assert_eq!(classify(S::SERVICE_UNAVAILABLE), Delivery::Retry);
        assert_eq!(classify(S::BAD_REQUEST), Delivery::Refused);
    }
}
