//! Who wrote what: every write of this controller names one field manager, so an object's
//! `managedFields` tell a user (or the operator of another shard) which fields this controller
//! owns and when it last wrote them. Without it the API server records the client's user agent,
//! which changes with every release.

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::{Value, json};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "externalsource-controller";

/// Parameters of a patch by this controller.
pub fn patch() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() }
}

/// Parameters of a create or replace by this controller.
pub fn post() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() }
}

/// A merge patch of a status subresource that also clears what `new` no longer has, conditional
/// on `version` when one is given; no request when nothing changed. Returns the object written.
pub async fn patch_status<K, S>(
    api: &Api<K>,
    name: &str,
    old: &S,
    new: &S,
    version: Option<&str>,
) -> Result<Option<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if old == new {
        return Ok(None);
    }
    let body = with_precondition(json!({ "status": clearing_merge_patch(old, new) }), version);
    Ok(Some(api.patch_status(name, &patch(), &Patch::Merge(body)).await?))
}

/// `new` as a JSON merge patch over `old`: fields `old` had and `new` lacks become `null`, at
/// every depth (a merge patch merges nested objects too), so an absent optional field is removed
/// on the server instead of silently kept (RFC 7396). Arrays are replaced whole.
pub fn clearing_merge_patch<S: Serialize>(old: &S, new: &S) -> Value {
    let old = serde_json::to_value(old).unwrap_or(Value::Null);
    let mut new = serde_json::to_value(new).unwrap_or(Value::Null);
    clear_missing(&old, &mut new);
    new
}

fn clear_missing(old: &Value, new: &mut Value) {
    let (Value::Object(old), Value::Object(new)) = (old, new) else { return };
    for (key, old_value) in old {
        match new.get_mut(key) {
            None => {
                new.insert(key.clone(), Value::Null);
            }
            Some(new_value) => clear_missing(old_value, new_value),
        }
    }
}

/// `patch` made conditional on the object still being at `version`, when one is given (the API
/// server answers 409 otherwise).
pub fn with_precondition(mut patch: Value, version: Option<&str>) -> Value {
    if let (Some(version), Some(object)) = (version, patch.as_object_mut()) {
        let metadata = object.entry("metadata").or_insert_with(|| json!({}));
        if let Some(metadata) = metadata.as_object_mut() {
            metadata.insert("resourceVersion".to_owned(), Value::String(version.to_owned()));
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::api::{Artifact, ExternalSourceStatus};

    #[test]
    fn a_precondition_names_the_version_and_keeps_the_patch() {
        let patch = json!({"metadata": {"labels": {"a": "b"}}, "status": {"x": 1}});
        assert_eq!(with_precondition(patch.clone(), None), patch, "no version: unconditional");
        assert_eq!(
            with_precondition(patch, Some("42")),
            json!({"metadata": {"labels": {"a": "b"}, "resourceVersion": "42"}, "status": {"x": 1}})
        );
        assert_eq!(
            with_precondition(json!({"status": {"x": 1}}), Some("7")),
            json!({"metadata": {"resourceVersion": "7"}, "status": {"x": 1}})
        );
    }

    #[test]
    fn a_cleared_field_is_sent_as_null_and_others_as_they_are() {
        let old = ExternalSourceStatus {
            last_handled_e_tag: Some("\"v1\"".into()),
            observed_generation: Some(1),
            ..Default::default()
        };
        let new = ExternalSourceStatus { observed_generation: Some(2), ..Default::default() };
        let patch = clearing_merge_patch(&old, &new);
        assert_eq!(patch, json!({"lastHandledETag": null, "observedGeneration": 2}));
        // Nothing cleared: the patch is the status itself.
        let art = Artifact {
            url: "u".into(),
            revision: "r".into(),
            digest: "d".into(),
            path: "p".into(),
            size: Some(1),
            last_update_time: "t".into(),
            metadata: Default::default(),
        };
        let with = ExternalSourceStatus { artifact: Some(art.clone()), ..new.clone() };
        assert_eq!(clearing_merge_patch(&new, &with), serde_json::to_value(&with).unwrap());
        // Nested maps are merged by the server, so a dropped nested key is cleared too.
        let mut untagged = art.clone();
        untagged.metadata.insert("source".into(), "s".into());
        let mut tagged = untagged.clone();
        tagged.metadata.insert("etag".into(), "\"v1\"".into());
        let before = ExternalSourceStatus { artifact: Some(tagged), ..new.clone() };
        let after = ExternalSourceStatus { artifact: Some(untagged), ..new.clone() };
        let patch = clearing_merge_patch(&before, &after);
        assert_eq!(patch["artifact"]["metadata"], json!({"etag": null, "source": "s"}));
        assert_eq!(patch["artifact"]["digest"], json!("d"));
    }
}
