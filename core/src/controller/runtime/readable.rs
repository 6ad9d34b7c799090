//! Objects as the controller lists and watches them: parsed into our type, or, when one does not
//! parse, its metadata and the reason.
//!
//! A list is one JSON document: parsed into typed objects, a single object whose content we do
//! not expect fails the whole list, and a watcher that cannot list retries for ever, so one
//! ExternalSource stored under an older schema (the Go predecessor's chart shipped one) would
//! stop the controller for every tenant. Parsing each object on its own confines the failure
//! to that object, which is reported once by name and otherwise left alone.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde_json::value::RawValue;

/// One listed or watched object.
#[derive(Clone, Debug)]
pub enum Readable<K> {
    Parsed(K),
    /// The object is there, but its content does not parse as `K`.
    Unreadable {
        metadata: Box<ObjectMeta>,
        reason: String,
    },
}

impl<K> Readable<K> {
    /// The parsed object, if it parsed.
    pub fn parsed(self) -> Option<K> {
        match self {
            Self::Parsed(k) => Some(k),
            Self::Unreadable { .. } => None,
        }
    }
}

/// Just enough of an object to name it when the rest does not parse.
#[derive(Deserialize)]
struct MetadataOnly {
    #[serde(default)]
    metadata: ObjectMeta,
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Readable<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The object's own text, so a failure to parse it as `K` leaves the rest of the list
        // (or the watch event) intact. Copying it is cheap next to parsing it. It needs the
        // object straight from serde_json's parser: kube parses lists and watch lines with it,
        // and a watch event names its `type` before its `object` (a buffered object, as serde
        // makes of an adjacently tagged enum's content when it comes first, would not do).
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        match serde_json::from_str::<K>(raw.get()) {
            Ok(k) => Ok(Self::Parsed(k)),
            Err(e) => {
                let metadata = serde_json::from_str::<MetadataOnly>(raw.get()).map_err(D::Error::custom)?.metadata;
                Ok(Self::Unreadable { metadata: Box::new(metadata), reason: e.to_string() })
            }
        }
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Readable<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Parsed(k) => k.meta(),
            Self::Unreadable { metadata, .. } => metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Parsed(k) => k.meta_mut(),
            Self::Unreadable { metadata, .. } => metadata,
        }
    }
}

/// Unreadable objects already reported, by UID, with the version reported: each version is
/// reported once, however often the watch lists it again.
#[derive(Debug, Default)]
pub struct Reported {
    versions: Mutex<HashMap<String, String>>,
}

/// Objects remembered at most; past it the memory starts over (repeats are then logged again).
const MAX_REPORTED: usize = 10_000;

impl Reported {
    /// Keeps the parsed objects of a watch and reports each unreadable one once, by name.
    /// An object that could be read before and cannot now stays as it was last read.
    pub fn filter<K: Resource<DynamicType = ()>>(
        &self,
        event: watcher::Event<Readable<K>>,
    ) -> Option<watcher::Event<K>> {
        use watcher::Event;
        Some(match event {
            Event::Init => Event::Init,
            Event::InitDone => Event::InitDone,
            Event::InitApply(r) => Event::InitApply(self.readable(r)?),
            Event::Apply(r) => Event::Apply(self.readable(r)?),
            Event::Delete(r) => {
                self.forget(r.meta());
                Event::Delete(r.parsed()?)
            }
        })
    }

    /// The parsed object, or `None` after reporting why it could not be read.
    fn readable<K: Resource<DynamicType = ()>>(&self, object: Readable<K>) -> Option<K> {
        match object {
            Readable::Parsed(k) => {
                self.forget(k.meta());
                Some(k)
            }
            Readable::Unreadable { metadata, reason } => {
                if self.first_report(&metadata) {
                    tracing::warn!(
                        kind = %K::kind(&()),
                        namespace = metadata.namespace.as_deref().unwrap_or_default(),
                        name = metadata.name.as_deref().unwrap_or_default(),
                        resource_version = metadata.resource_version.as_deref().unwrap_or_default(),
                        %reason,
                        "object skipped: its content does not match this controller's schema; fix or re-apply it"
                    );
                }
                None
            }
        }
    }

    /// Whether this version of the object was not reported yet (and is from now on).
    fn first_report(&self, metadata: &ObjectMeta) -> bool {
        let (Some(uid), Some(version)) = (&metadata.uid, &metadata.resource_version) else { return true };
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        if versions.get(uid) == Some(version) {
            return false;
        }
        if versions.len() >= MAX_REPORTED {
            versions.clear();
        }
        versions.insert(uid.clone(), version.clone());
        true
    }

    fn forget(&self, metadata: &ObjectMeta) {
        if let Some(uid) = &metadata.uid {
            let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
            if !versions.is_empty() {
                versions.remove(uid);
            }
        }
    }

    /// How many unreadable objects are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.versions.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;
    use crate::controller::api::{ExternalArtifact, ExternalSource};

    fn source(name: &str, version: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "source.flux.oddkin.co/v1alpha1", "kind": "ExternalSource",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": version},
            "spec": spec,
        })
    }

    fn good_spec() -> serde_json::Value {
        json!({"interval": "1m", "generator": {"type": "http", "http": {"url": "https://example.com"}}})
    }

    #[test]
    fn one_unreadable_object_does_not_fail_its_list() {
        // The predecessor's chart CRD had a CEL-era `transform {type, expression}`.
        let cel = json!({"interval": "1m", "generator": {"type": "http", "http": {"url": "https://e.com"}},
                         "transform": {"type": "cel", "expression": "data"}});
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {},
            "items": [source("a", "1", good_spec()), source("old", "2", cel), source("b", "3", good_spec())]});
        let text = list.to_string();
        assert!(
            serde_json::from_str::<kube::core::ObjectList<ExternalSource>>(&text).is_err(),
            "typed, it fails whole"
        );
        let listed: kube::core::ObjectList<Readable<ExternalSource>> = serde_json::from_str(&text).unwrap();
        let names: Vec<_> =
            listed.items.iter().map(|r| (r.meta().name.clone().unwrap(), matches!(r, Readable::Parsed(_)))).collect();
        assert_eq!(names, [("a".into(), true), ("old".into(), false), ("b".into(), true)]);
        let Readable::Unreadable { reason, .. } = &listed.items[1] else { unreachable!() };
        assert!(reason.contains("jq"), "the reason names what is missing: {reason}");
    }

    #[test]
    fn watch_events_parse_per_object() {
        // As the API server writes a watch event: `type` first (Go encodes the struct's fields in
        // order), so the object reaches `Readable` unbuffered (see its `Deserialize`).
        let object = source("old", "7", json!({"interval": 5}));
        let line = format!(r#"{{"type":"MODIFIED","object":{object}}}"#);
        let event: kube::core::WatchEvent<Readable<ExternalSource>> = serde_json::from_str(&line).unwrap();
        let kube::core::WatchEvent::Modified(Readable::Unreadable { metadata, .. }) = event else {
            panic!("expected an unreadable MODIFIED event");
        };
        assert_eq!(metadata.name.as_deref(), Some("old"));
    }

    #[test]
    fn unreadable_objects_are_skipped_and_reported_once_per_version() {
        let reported = Reported::default();
        let parse = |v: serde_json::Value| serde_json::from_str::<Readable<ExternalSource>>(&v.to_string()).unwrap();
        let bad = parse(source("old", "1", json!({"interval": 5})));
        assert!(reported.filter(Event::Apply(bad.clone())).is_none());
        assert_eq!(reported.len(), 1);
        assert!(!reported.first_report(bad.meta()), "the same version is not reported again");
        let newer = parse(source("old", "2", json!({"interval": 5})));
        assert!(reported.first_report(newer.meta()), "a new version is");
        let fixed = parse(source("old", "3", good_spec()));
        let Some(Event::Apply(es)) = reported.filter(Event::Apply(fixed)) else { panic!("a fixed object passes") };
        assert_eq!(es.metadata.name.as_deref(), Some("old"));
        assert_eq!(reported.len(), 0, "and is forgotten");
        assert!(matches!(reported.filter::<ExternalSource>(Event::InitDone), Some(Event::InitDone)));
    }

    #[test]
    fn artifacts_other_producers_write_parse() {
        // As the Go predecessor wrote them: payload-hash digest, URL as path, bare-hex revision,
        // no size; and a sourceRef with only Flux's required fields.
        let ea: ExternalArtifact = serde_json::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "ExternalArtifact",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"sourceRef": {"kind": "ExternalSource", "name": "a"}},
            "status": {"artifact": {"url": "http://x/artifacts/ns/a/ab.tar.gz", "path": "http://x/artifacts/ns/a/ab.tar.gz",
                "revision": "ab", "digest": "sha256:ab", "lastUpdateTime": "2026-01-01T00:00:00Z",
                "metadata": {"created": "2026-01-01T00:00:00Z", "size": "10", "contentHash": "ab"}}},
        }))
        .unwrap();
        let artifact = ea.status.unwrap().artifact.unwrap();
        assert_eq!((artifact.size, artifact.revision.as_str()), (None, "ab"));
        let es: ExternalSource = serde_json::from_value(json!({
            "apiVersion": "source.flux.oddkin.co/v1alpha1", "kind": "ExternalSource",
            "metadata": {"name": "a", "namespace": "ns"}, "spec": good_spec(),
            "status": {"artifact": {"url": "http://x", "revision": "ab", "lastUpdateTime": "2026-01-01T00:00:00Z"}},
        }))
        .unwrap();
        let artifact = es.status.unwrap().artifact.unwrap();
        assert_eq!((artifact.digest.as_str(), artifact.path.as_str()), ("", ""), "absent reads as empty");
        let written = serde_json::to_value(&artifact).unwrap();
        assert_eq!(written.get("digest"), None, "and is not written back as an empty string");
    }
}
