//! Who wrote what: every write of this controller names one field manager, so an object's
//! `managedFields` tell a user (or the operator of another shard) which fields this controller
//! owns and when it last wrote them. Without it the API server records the client's user agent,
//! which changes with every release.

use kube::api::{PatchParams, PostParams};

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
