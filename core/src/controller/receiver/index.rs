//! Which source a webhook path belongs to, from a watch of the ExternalSources: the path is the
//! one the leader's reconcile wrote to `status.webhookPath`, so every replica (leader or not)
//! answers the same paths, and a path the controller has not published is unknown.
//!
//! Only what a push needs is kept per source (names, receiver type, Secret name), not the
//! objects. The token is read from the Secret on the first push to a path and kept with it; it
//! is read again only once the path changes (a new token gives a new path), so a flood of pushes
//! costs no Secret reads.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use super::signature::{HOOK_PREFIX, constant_time_eq, webhook_path};
use crate::controller::api::{ExternalSource, ReceiverSpec, ReceiverType};

/// The key of a receiver's Secret that holds the token (Flux's).
pub const TOKEN_KEY: &str = "token";

/// A token read from a Secret; never printed.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The source behind a webhook path.
#[derive(Debug)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub kind: ReceiverType,
    pub secret: String,
    path: String,
    /// The token, once read; `None` inside when the Secret's token no longer gives this path
    /// (it changed and the leader has not published the new path yet).
    token: tokio::sync::OnceCell<Option<Token>>,
}

impl Target {
    fn same_as(&self, other: &Target) -> bool {
        (&self.namespace, &self.name, self.kind, &self.secret, &self.path)
            == (&other.namespace, &other.name, other.kind, &other.secret, &other.path)
    }

    /// The token of this path: read once (concurrent pushes wait for the one read), checked
    /// against the path. `Ok(None)`: the Secret holds another token now, or none.
    pub async fn token(&self, client: &kube::Client) -> Result<Option<Token>, kube::Error> {
        let read = self.token.get_or_try_init(|| async {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
            let data = secrets.get_opt(&self.secret).await?.and_then(|s| s.data).unwrap_or_default();
            let token = data.get(TOKEN_KEY).map(|v| Token(trimmed(&v.0).to_vec()));
            Ok::<_, kube::Error>(token.filter(|t| {
                let derived = webhook_path(t.bytes(), &self.name, &self.namespace);
                constant_time_eq(derived.as_bytes(), self.path.as_bytes())
            }))
        });
        read.await.cloned()
    }
}

/// A token as the reconcile reads it: without the trailing newline files often end with.
pub fn trimmed(token: &[u8]) -> &[u8] {
    let end = token.iter().rposition(|b| !matches!(b, b'\r' | b'\n')).map_or(0, |i| i + 1);
    &token[..end]
}

#[derive(Default)]
struct Maps {
    by_path: HashMap<String, Arc<Target>>,
    /// `namespace/name` → its path, to drop the old path when a source's changes.
    by_source: HashMap<(String, String), String>,
}

impl Maps {
    fn apply(&mut self, object: &DynamicObject) {
        let Some(key) = source_key(object) else { return };
        let target = target_of(object);
        let old_path = self.by_source.get(&key).cloned();
        if let (Some(old_path), Some(new)) = (&old_path, &target)
            && self.by_path.get(old_path).is_some_and(|old| old.same_as(new))
        {
            // Unchanged (a status write, most often): keep the token already read.
            return;
        }
        self.remove(&key);
        if let Some(target) = target {
            self.by_source.insert(key, target.path.clone());
            self.by_path.insert(target.path.clone(), Arc::new(target));
        }
    }

    fn remove(&mut self, key: &(String, String)) {
        if let Some(path) = self.by_source.remove(key) {
            self.by_path.remove(&path);
        }
    }
}

fn source_key(object: &DynamicObject) -> Option<(String, String)> {
    Some((object.metadata.namespace.clone()?, object.metadata.name.clone()?))
}

/// The receiver of a source that has one and whose path the controller published. Read
/// leniently: an object another writer got wrong is skipped, not a failed watch.
fn target_of(object: &DynamicObject) -> Option<Target> {
    let (namespace, name) = source_key(object)?;
    let spec: ReceiverSpec = serde_json::from_value(object.data.get("spec")?.get("receiver")?.clone()).ok()?;
    let path = object.data.get("status")?.get("webhookPath").and_then(Value::as_str)?;
    if !path.starts_with(HOOK_PREFIX) {
        return None;
    }
    Some(Target {
        namespace,
        name,
        kind: spec.type_,
        secret: spec.secret_ref.name,
        path: path.to_owned(),
        token: tokio::sync::OnceCell::new(),
    })
}

/// Webhook paths and their sources, kept current by [`Index::maintain`].
#[derive(Default)]
pub struct Index {
    maps: Mutex<Maps>,
}

impl Index {
    /// The source a path belongs to. The map's hash is keyed per process, so how long a lookup
    /// takes tells a sender nothing about the paths it holds.
    pub fn get(&self, path: &str) -> Option<Arc<Target>> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner()).by_path.get(path).cloned()
    }

    /// How many paths are known.
    pub fn len(&self) -> usize {
        self.maps.lock().unwrap_or_else(|e| e.into_inner()).by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows the ExternalSources (those of `selector`, when set: one shard's) until the stream
    /// ends, which it does not: the watcher retries with backoff.
    pub async fn maintain(&self, client: kube::Client, selector: Option<String>) {
        let resource = ApiResource::erase::<ExternalSource>(&());
        let api = Api::<DynamicObject>::all_with(client, &resource);
        let config = match selector {
            Some(selector) => watcher::Config::default().labels(&selector),
            None => watcher::Config::default(),
        };
        let mut events = watcher(api, config.any_semantic()).default_backoff().boxed();
        let mut relisted: Option<Maps> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => relisted = Some(Maps::default()),
                Ok(watcher::Event::InitApply(object)) => relisted.get_or_insert_with(Maps::default).apply(&object),
                Ok(watcher::Event::InitDone) => {
                    let fresh = relisted.take().unwrap_or_default();
                    tracing::debug!(paths = fresh.by_path.len(), "receiver paths listed");
                    *self.maps.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                }
                Ok(watcher::Event::Apply(object)) => self.lock().apply(&object),
                Ok(watcher::Event::Delete(object)) => {
                    if let Some(key) = source_key(&object) {
                        self.lock().remove(&key);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watching ExternalSources for the receiver failed; retrying"),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(name: &str, receiver: Value, path: Option<&str>) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "source.flux.oddkin.co/v1alpha1",
            "kind": "ExternalSource",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"receiver": receiver},
            "status": {"webhookPath": path},
        }))
        .unwrap()
    }

    fn generic() -> Value {
        json!({"type": "generic", "secretRef": {"name": "hook"}})
    }

    #[test]
    fn a_published_path_names_its_source_until_it_changes() {
        let mut maps = Maps::default();
        maps.apply(&object("a", generic(), Some("/hook/one")));
        assert_eq!(maps.by_path.get("/hook/one").map(|t| t.name.as_str()), Some("a"));
        maps.apply(&object("a", generic(), Some("/hook/two")));
        assert!(!maps.by_path.contains_key("/hook/one"));
        assert!(maps.by_path.contains_key("/hook/two"));
        maps.apply(&object("a", Value::Null, Some("/hook/two")));
        assert!(maps.by_path.is_empty() && maps.by_source.is_empty());
    }

    #[test]
    fn an_unchanged_source_keeps_its_entry_and_token() {
        let mut maps = Maps::default();
        maps.apply(&object("a", generic(), Some("/hook/one")));
        let first = maps.by_path.get("/hook/one").cloned().unwrap();
        maps.apply(&object("a", generic(), Some("/hook/one")));
        assert!(Arc::ptr_eq(&first, maps.by_path.get("/hook/one").unwrap()));
    }

    #[test]
    fn unpublished_or_malformed_receivers_are_not_served() {
        let mut maps = Maps::default();
        maps.apply(&object("a", generic(), None));
        maps.apply(&object("b", json!({"type": "carrier-pigeon", "secretRef": {"name": "x"}}), Some("/hook/b")));
        maps.apply(&object("c", generic(), Some("/elsewhere")));
        assert!(maps.by_path.is_empty());
    }

    #[test]
    fn a_token_loses_its_trailing_newline() {
        assert_eq!(trimmed(b"abc\r\n"), b"abc");
        assert_eq!(trimmed(b"\n"), b"");
        assert_eq!(trimmed(b"a\nb"), b"a\nb");
    }
}
