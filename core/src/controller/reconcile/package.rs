//! The package step: the payload as the artifact's `.tar.gz`, as `spec.format` says.

use bytes::Bytes;

use crate::controller::outcome::{self, Outcome, Stored};
use crate::controller::reconcile::plan::{Packaging, Plan};
use crate::package::archive::{self, MAX_ENTRIES, repackage};
use crate::package::{self as packaging, Package};

/// The body is moved in, so it is released as soon as it is packaged, before the put.
pub async fn package(plan: &Plan, body: Bytes) -> Result<Package, Outcome> {
    let failed = |stored| outcome::after_store(stored, None);
    match &plan.packaging {
        Packaging::File(path) => {
            packaging::package(&body, path).map_err(|e| failed(Stored::PackagingFailed(e.to_string())))
        }
        Packaging::Archive(layout) => {
            let layout = layout.clone();
            let limits = archive::Limits { max_bytes: plan.max_size, max_entries: MAX_ENTRIES };
            // Unpacking up to maxSize is CPU work: off the reactor.
            match tokio::task::spawn_blocking(move || repackage(&body, &layout, limits)).await {
                Ok(result) => result.map_err(|e| failed(Stored::ArchiveRefused(e))),
                Err(e) => Err(failed(Stored::PackagingFailed(e.to_string()))),
            }
        }
    }
}
