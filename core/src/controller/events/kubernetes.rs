//! Kubernetes Events (`events.k8s.io/v1`), with repeats folded into a series.
//!
//! kube-runtime's `Recorder` does the same job, but it scans its whole cache on every publish
//! (a tenth of the controller's CPU with 5,000 sources, under a write lock every reconcile
//! shares), keeps a full copy of each Event in it, and folds an Event into an earlier one by
//! reason alone: a second new revision within minutes became a count on the first one's note,
//! naming the old revision. Here an Event repeats an earlier one only with the same note too,
//! the cache holds a name and a count per series, and expired entries are swept at most once a
//! minute.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch};
use kube::runtime::events::{Event, EventType};
use serde_json::json;

use crate::controller::writer;

/// How long after its last occurrence an Event is still counted on rather than created anew
/// (client-go's and kube-runtime's window is of this order).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How often expired series are swept out of the cache.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Series remembered at most; past it the cache starts over (repeats then make new Events, which
/// costs API writes, never memory).
const MAX_SERIES: usize = 100_000;

/// One Event already written, counted on by its repeats.
#[derive(Debug, Clone)]
struct Series {
    /// The Event's name (in the regarding object's namespace, part of the key).
    name: String,
    count: i32,
    last_seen: Instant,
}

#[derive(Debug)]
struct Cache {
    series: HashMap<u64, Series>,
    swept: Instant,
}

/// Publishes Events as `reporting_controller`/`reporting_instance`.
pub struct EventRecorder {
    client: kube::Client,
    controller: String,
    instance: String,
    cache: Mutex<Cache>,
}

impl EventRecorder {
    pub fn new(client: kube::Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
            cache: Mutex::new(Cache { series: HashMap::new(), swept: Instant::now() }),
        }
    }

    /// Records `ev` about `regarding`: a new Event, or one more in the series of the same Event
    /// (same object, type, reason, action and note) seen within the window.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = series_key(ev, regarding);
        let now = Instant::now();
        let repeat = self.repeat_of(key, now);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(series) = repeat {
            let patch =
                json!({"series": EventSeries { count: series.count, last_observed_time: MicroTime(Timestamp::now()) }});
            match api.patch(&series.name, &writer::patch(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.remember(key, series);
                    return Ok(());
                }
                // Expired or deleted since: a new Event takes its place.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.new_event(ev, regarding, &namespace);
        let created = api.create(&writer::post(), &event).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.remember(key, Series { name, count: 1, last_seen: now });
        Ok(())
    }

    /// The series `key` continues, its count already raised, if one is in the window.
    fn repeat_of(&self, key: u64, now: Instant) -> Option<Series> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(cache.swept) >= SWEEP_EVERY {
            cache.series.retain(|_, s| now.duration_since(s.last_seen) < SERIES_WINDOW);
            cache.swept = now;
        }
        let series = cache.series.get(&key).filter(|s| now.duration_since(s.last_seen) < SERIES_WINDOW)?;
        // A series starts at 2: the Event itself was the first occurrence.
        Some(Series { count: series.count.max(1) + 1, last_seen: now, ..series.clone() })
    }

    fn remember(&self, key: u64, series: Series) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.series.len() >= MAX_SERIES && !cache.series.contains_key(&key) {
            cache.series.clear();
        }
        cache.series.insert(key, series);
    }

    fn new_event(&self, ev: &Event, regarding: &ObjectReference, namespace: &str) -> K8sEvent {
        let now = Timestamp::now();
        let object = regarding.name.as_deref().unwrap_or(&self.controller);
        K8sEvent {
            metadata: ObjectMeta {
                // Like client-go: the object's name and a unique suffix.
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            type_: Some(type_name(ev.type_).to_owned()),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }

    /// Series in the cache, expired ones not yet swept included.
    pub fn cached_series(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).series.len()
    }
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// What makes two Events the same: the object (by UID, so a recreated object starts afresh),
/// type, reason, action, note and related object.
fn series_key(ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&regarding.uid, &regarding.namespace, &regarding.name, &regarding.kind).hash(&mut h);
    type_name(ev.type_).hash(&mut h);
    (&ev.reason, &ev.action, &ev.note).hash(&mut h);
    ev.secondary.as_ref().map(|r| (&r.uid, &r.namespace, &r.name, &r.kind)).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn object(uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("ExternalSource".into()),
            namespace: Some("ns".into()),
            name: Some("s".into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_same_event_is_one_series_and_a_new_note_is_not() {
        let same = series_key(&ev("NewArtifact", "stored r1"), &object("u1"));
        assert_eq!(same, series_key(&ev("NewArtifact", "stored r1"), &object("u1")));
        assert_ne!(same, series_key(&ev("NewArtifact", "stored r2"), &object("u1")), "a new revision is news");
        assert_ne!(same, series_key(&ev("NewArtifact", "stored r1"), &object("u2")), "a recreated object");
        let mut warning = ev("NewArtifact", "stored r1");
        warning.type_ = EventType::Warning;
        assert_ne!(same, series_key(&warning, &object("u1")));
    }

    /// A client that is never called: the cache logic is tested without an API server.
    fn offline_recorder() -> EventRecorder {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        EventRecorder::new(kube::Client::try_from(config).unwrap(), "c", "i")
    }

    #[tokio::test]
    async fn repeats_count_up_within_the_window_and_expire_after_it() {
        let recorder = offline_recorder();
        let start = Instant::now();
        assert!(recorder.repeat_of(7, start).is_none(), "nothing cached yet");
        let first = Series { name: "s.1".into(), count: 1, last_seen: start };
        recorder.remember(7, first);
        let again = recorder.repeat_of(7, start + Duration::from_secs(10)).expect("a repeat");
        assert_eq!((again.name.as_str(), again.count), ("s.1", 2));
        recorder.remember(7, again);
        let third = recorder.repeat_of(7, start + Duration::from_secs(20)).expect("a repeat");
        assert_eq!(third.count, 3);
        assert!(recorder.repeat_of(7, start + Duration::from_secs(20) + SERIES_WINDOW).is_none(), "expired");
        assert_eq!(recorder.cached_series(), 0, "swept on the way");
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let recorder = offline_recorder();
        let now = Instant::now();
        for key in 0..MAX_SERIES as u64 + 5 {
            recorder.remember(key, Series { name: "n".into(), count: 1, last_seen: now });
        }
        assert!(recorder.cached_series() <= MAX_SERIES);
    }
}
