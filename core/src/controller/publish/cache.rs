//! The last version of each ExternalArtifact this process read or wrote, so that a reconcile
//! whose ExternalArtifact has not changed since does not read it again.
//!
//! A version is trusted only while the metadata watch reports the same `resourceVersion`: any
//! write by anyone since gives a newer one, and the reconcile reads the object as before. The
//! watch can lag, so a write made from a remembered version carries that `resourceVersion` as a
//! precondition (a 409 if the object moved on), and the caller reads again. What garbage
//! collection keeps is therefore never decided from a version older than the one written over.
//!
//! A version is kept as its JSON, not as the parsed object: one allocation of about a kilobyte
//! instead of dozens of small ones (strings, maps, conditions) several times that size. With one
//! entry per source that is the difference between a few and many KiB of memory per source;
//! parsing it back costs microseconds, once per reconcile.

use std::collections::HashMap;

use dashmap::DashMap;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;

use crate::controller::api::ExternalArtifact;

type Key = (String, String);

/// What the watch reports of one object: its `resourceVersion` and `generation`.
type Seen = (Option<String>, Option<i64>);

#[derive(Default)]
struct Entry {
    /// The `resourceVersion` the metadata watch last reported.
    observed: Option<String>,
    /// The `generation` the metadata watch last reported; `None` before its first report.
    generation: Option<i64>,
    /// The object as last read or written, without managed fields.
    known: Option<Known>,
}

/// A remembered version: its `resourceVersion`, and the object as JSON.
struct Known {
    version: String,
    json: Box<[u8]>,
}

/// See the module documentation. One entry per watched ExternalArtifact.
#[derive(Default)]
pub struct ArtifactCache {
    entries: DashMap<Key, Entry>,
    /// Versions and generations seen during a watch (re)list, which replace all observed ones at
    /// its end: an object deleted while the watch was down gets no delete event.
    relist: std::sync::Mutex<Option<HashMap<Key, Seen>>>,
}

fn key_of(ea: &impl ResourceExt) -> Key {
    (ea.namespace().unwrap_or_default(), ea.name_any())
}

impl ArtifactCache {
    /// The remembered ExternalArtifact, if the watch reports no change since it was read or
    /// written.
    pub fn current(&self, namespace: &str, name: &str) -> Option<ExternalArtifact> {
        let entry = self.entries.get(&(namespace.to_owned(), name.to_owned()))?;
        let known = entry.known.as_ref().filter(|k| entry.observed.as_ref() == Some(&k.version))?;
        // It was serialised from this very type, so it parses; if it ever did not, reading the
        // object again is the answer, as for any version not remembered.
        serde_json::from_slice(&known.json).ok()
    }

    /// Remembers `ea` as read from or returned by the API server.
    pub fn remember(&self, mut ea: ExternalArtifact) {
        ea.metadata.managed_fields = None;
        let known = match (ea.resource_version(), serde_json::to_vec(&ea)) {
            (Some(version), Ok(json)) => Some(Known { version, json: json.into_boxed_slice() }),
            _ => None,
        };
        self.entries.entry(key_of(&ea)).or_default().known = known;
    }

    /// Drops the remembered version of one ExternalArtifact (found changed, or deleted by us):
    /// the next reconcile reads it. What the watch reported stays until the watch reports more.
    pub fn forget(&self, namespace: &str, name: &str) {
        if let Some(mut entry) = self.entries.get_mut(&(namespace.to_owned(), name.to_owned())) {
            entry.known = None;
        }
    }

    /// A version reported by the watch. True when it is a new generation of an object the watch
    /// reported before: someone edited its spec. An object's first report is not a change (after
    /// start-up, it is the one a reconcile just created), nor are status writes, which keep the
    /// generation.
    pub fn observed(&self, ea: &PartialObjectMeta<ExternalArtifact>) -> bool {
        let mut entry = self.entries.entry(key_of(ea)).or_default();
        entry.observed = ea.resource_version();
        let before = std::mem::replace(&mut entry.generation, ea.metadata.generation);
        before.is_some_and(|generation| Some(generation) != ea.metadata.generation)
    }

    /// A deletion reported by the watch.
    pub fn deleted(&self, ea: &PartialObjectMeta<ExternalArtifact>) {
        self.entries.remove(&key_of(ea));
    }

    /// The watch begins a (re)list.
    pub fn relist_started(&self) {
        *self.relist_buffer() = Some(HashMap::new());
    }

    /// An object of the (re)list in progress.
    pub fn relisted(&self, ea: &PartialObjectMeta<ExternalArtifact>) {
        if let Some(seen) = self.relist_buffer().as_mut() {
            seen.insert(key_of(ea), (ea.resource_version(), ea.metadata.generation));
        }
    }

    /// The (re)list is complete: its versions replace every observed one, and entries of
    /// objects it did not list go.
    pub fn relist_done(&self) {
        let Some(mut seen) = self.relist_buffer().take() else { return };
        self.entries.retain(|key, entry| match seen.remove(key) {
            Some((version, generation)) => {
                (entry.observed, entry.generation) = (version, generation);
                true
            }
            None => false,
        });
        for (key, (observed, generation)) in seen {
            self.entries.insert(key, Entry { observed, generation, known: None });
        }
    }

    fn relist_buffer(&self) -> std::sync::MutexGuard<'_, Option<HashMap<Key, Seen>>> {
        // A panic while holding it cannot leave the buffer half-updated in a way that matters:
        // the next relist replaces it.
        self.relist.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::api::ExternalArtifactSpec;

    fn artifact(version: &str) -> ExternalArtifact {
        let mut ea = ExternalArtifact::new("a", ExternalArtifactSpec::default());
        ea.metadata.namespace = Some("ns".into());
        ea.metadata.resource_version = Some(version.into());
        ea
    }

    fn meta(version: &str) -> PartialObjectMeta<ExternalArtifact> {
        meta_at(version, 1)
    }

    fn meta_at(version: &str, generation: i64) -> PartialObjectMeta<ExternalArtifact> {
        use kube::core::{ObjectMeta, PartialObjectMetaExt};
        ObjectMeta {
            name: Some("a".into()),
            namespace: Some("ns".into()),
            resource_version: Some(version.into()),
            generation: Some(generation),
            ..Default::default()
        }
        .into_response_partial()
    }

    #[test]
    fn a_version_is_trusted_only_while_the_watch_reports_it() {
        let cache = ArtifactCache::default();
        cache.remember(artifact("5"));
        assert!(cache.current("ns", "a").is_none(), "the watch has not reported it yet");
        cache.observed(&meta("5"));
        assert_eq!(cache.current("ns", "a").unwrap().metadata.resource_version.as_deref(), Some("5"));
        cache.observed(&meta("6"));
        assert!(cache.current("ns", "a").is_none(), "someone wrote since");
        cache.remember(artifact("6"));
        assert!(cache.current("ns", "a").is_some());
        cache.deleted(&meta("6"));
        assert!(cache.current("ns", "a").is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_relist_drops_objects_deleted_while_the_watch_was_down() {
        let cache = ArtifactCache::default();
        cache.remember(artifact("5"));
        cache.observed(&meta("5"));
        cache.relist_started();
        assert!(cache.current("ns", "a").is_some(), "the old version holds until the relist ends");
        cache.relist_done();
        assert!(cache.current("ns", "a").is_none(), "not listed: deleted meanwhile");
        assert!(cache.is_empty());

        cache.remember(artifact("7"));
        cache.relist_started();
        cache.relisted(&meta("7"));
        cache.relist_done();
        assert!(cache.current("ns", "a").is_some(), "listed at the remembered version");
    }

    #[test]
    fn only_a_new_generation_of_a_reported_object_is_a_change() {
        let cache = ArtifactCache::default();
        cache.remember(artifact("1"));
        assert!(!cache.observed(&meta_at("1", 1)), "first report: the object a reconcile just created");
        assert!(!cache.observed(&meta_at("2", 1)), "a status write keeps the generation");
        assert!(cache.observed(&meta_at("3", 2)), "a spec edit");
        cache.forget("ns", "a");
        assert!(cache.current("ns", "a").is_none(), "forgotten: read again");
        assert!(cache.observed(&meta_at("4", 3)), "forgetting the version keeps what the watch said");
        cache.deleted(&meta_at("4", 3));
        assert!(!cache.observed(&meta_at("5", 1)), "created again: a first report");
    }

    #[test]
    fn a_relist_brings_generations_up_to_date() {
        let cache = ArtifactCache::default();
        cache.observed(&meta_at("1", 1));
        cache.relist_started();
        cache.relisted(&meta_at("4", 2));
        cache.relist_done();
        assert!(!cache.observed(&meta_at("5", 2)), "the edit was listed, not missed");
        assert!(cache.observed(&meta_at("6", 3)));

        // Seen only in a relist, never before: its later edits are changes.
        let cache = ArtifactCache::default();
        cache.relist_started();
        cache.relisted(&meta_at("1", 1));
        cache.relist_done();
        assert!(cache.observed(&meta_at("2", 2)));
    }

    #[test]
    fn a_remembered_version_comes_back_whole() {
        let cache = ArtifactCache::default();
        let mut ea = artifact("3");
        ea.metadata.labels = Some([("team".to_owned(), "a".to_owned())].into());
        ea.status = Some(
            serde_json::from_value(serde_json::json!({
                "artifact": {"path": "p", "url": "http://x/p", "revision": "r", "digest": "sha256:00",
                             "lastUpdateTime": "2026-12-05T00:00:00Z", "size": 7},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "m",
                                "lastTransitionTime": "2026-12-05T00:00:00Z"}],
            }))
            .unwrap(),
        );
        cache.remember(ea.clone());
        cache.observed(&meta("3"));
        let back = cache.current("ns", "a").unwrap();
        assert_eq!(serde_json::to_value(back).unwrap(), serde_json::to_value(ea).unwrap());
    }

    #[test]
    fn managed_fields_are_not_kept() {
        let cache = ArtifactCache::default();
        let mut ea = artifact("1");
        ea.metadata.managed_fields = Some(vec![Default::default()]);
        cache.remember(ea);
        cache.observed(&meta("1"));
        assert!(cache.current("ns", "a").unwrap().metadata.managed_fields.is_none_or(|f| f.is_empty()));
    }
}
