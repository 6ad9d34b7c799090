//! The ExternalSource finalizer, added in the same pass that does the first reconcile.
//!
//! kube-runtime's `finalizer` helper adds the finalizer and ends the reconcile, leaving the work
//! to the reconcile its own write triggers: one more trip through the queue and the watch for
//! every new source. Here the finalizer is added, and the object the API returns (finalizer on,
//! new resourceVersion) goes straight on to [`Step::Apply`]. Nothing is stored before the
//! finalizer is on, so a deletion can never miss an artifact; and the watch predicate
//! (`controller::trigger_hash`) ignores our own addition, so it does not echo back as a reconcile.
//!
//! Both writes are JSON patches that test what they change (the finalizer list as read), so a
//! concurrent edit of the list by someone else fails the write instead of being overwritten.

use std::sync::Arc;

use kube::api::{Api, Patch};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::controller::api::ExternalSource;
use crate::controller::writer;

/// What a reconcile of `es` is to do, given its finalizer and deletion state.
#[derive(Debug)]
pub enum Step {
    /// Live, finalizer on: reconcile this object.
    Apply(Arc<ExternalSource>),
    /// Being deleted with our finalizer on: clean up, then [`release`].
    Cleanup(Arc<ExternalSource>),
    /// Being deleted and our finalizer is already off: nothing left to do.
    Done,
}

/// Where `finalizer` sits in the object's list, if it is there.
fn position(es: &ExternalSource, finalizer: &str) -> Option<usize> {
    es.finalizers().iter().position(|f| f == finalizer)
}

/// The step for `es`, adding `finalizer` first when a live object lacks it.
pub async fn step(api: &Api<ExternalSource>, finalizer: &str, es: Arc<ExternalSource>) -> Result<Step, kube::Error> {
    let deleting = es.meta().deletion_timestamp.is_some();
    match (position(&es, finalizer), deleting) {
        (Some(_), false) => Ok(Step::Apply(es)),
        (Some(_), true) => Ok(Step::Cleanup(es)),
        (None, true) => Ok(Step::Done),
        (None, false) => {
            let patch = add_patch(es.finalizers(), finalizer)?;
            let updated = api.patch(&es.name_any(), &writer::patch(), &Patch::Json::<()>(patch)).await?;
            Ok(Step::Apply(Arc::new(updated)))
        }
    }
}

/// Removes `finalizer` from `es` after its cleanup. An object already gone is released.
pub async fn release(api: &Api<ExternalSource>, finalizer: &str, es: &ExternalSource) -> Result<(), kube::Error> {
    let Some(index) = position(es, finalizer) else { return Ok(()) };
    match api.patch(&es.name_any(), &writer::patch(), &Patch::Json::<()>(remove_patch(index, finalizer)?)).await {
        Ok(_) => Ok(()),
        // A stale queue entry after the release: deletion is complete, not failed.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Appends `finalizer` to the list `current`, if the list is still exactly that (a JSON patch that
/// tests the list first, so a concurrent edit fails it instead of being overwritten).
pub fn add_patch(current: &[String], finalizer: &str) -> Result<json_patch::Patch, kube::Error> {
    let ops = if current.is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": Value::Null},
            {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
        ])
    };
    patch(ops)
}

/// Removes entry `index` of the finalizer list, if it is still `finalizer`.
fn remove_patch(index: usize, finalizer: &str) -> Result<json_patch::Patch, kube::Error> {
    let path = format!("/metadata/finalizers/{index}");
    patch(json!([{"op": "test", "path": path, "value": finalizer}, {"op": "remove", "path": path}]))
}

/// The typed patch of `ops`. They are literals of valid operations; were one ever not, the
/// write fails (an empty patch would let a reconcile go on without its finalizer).
fn patch(ops: Value) -> Result<json_patch::Patch, kube::Error> {
    serde_json::from_value(ops).map_err(kube::Error::SerdeError)
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &str = "example.com/f";

    #[test]
    fn adding_tests_the_list_as_read() {
        let first = serde_json::to_value(add_patch(&[], F).unwrap()).unwrap();
        assert_eq!(
            first,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [F]},
            ])
        );
        let after_others = serde_json::to_value(add_patch(&["other/x".into()], F).unwrap()).unwrap();
        assert_eq!(
            after_others,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["other/x"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": F},
            ])
        );
    }

    #[test]
    fn removing_tests_the_entry_it_removes() {
        let ops = serde_json::to_value(remove_patch(2, F).unwrap()).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "test", "path": "/metadata/finalizers/2", "value": F},
                {"op": "remove", "path": "/metadata/finalizers/2"},
            ])
        );
    }

    #[test]
    fn applied_to_an_object_the_patches_add_and_remove_only_ours() {
        // The API server's JSON patch reads an absent list as null (the first test passes on an
        // object without finalizers); this crate needs the null spelled out.
        let mut doc = json!({"metadata": {"name": "s", "finalizers": null}});
        json_patch::patch(&mut doc, &add_patch(&[], F).unwrap()).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!([F]));
        let mut doc = json!({"metadata": {"finalizers": ["a", "b"]}});
        json_patch::patch(&mut doc, &add_patch(&["a".into(), "b".into()], F).unwrap()).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["a", "b", F]));
        json_patch::patch(&mut doc, &remove_patch(2, F).unwrap()).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["a", "b"]));
        let stale = json_patch::patch(&mut doc, &add_patch(&["a".into()], F).unwrap());
        assert!(stale.is_err(), "a list changed since it was read is not written over");
        assert!(json_patch::patch(&mut doc, &remove_patch(0, F).unwrap()).is_err(), "only our entry is removed");
    }
}
