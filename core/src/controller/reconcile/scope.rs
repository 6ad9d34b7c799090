//! The object one reconcile is about, named once.

use kube::ResourceExt;

use crate::controller::api::{ExternalSource, ExternalSourceStatus};

/// The ExternalSource a reconcile works on: its namespace and name (what storage keys, metrics,
/// Events and the ExternalArtifact are named by), the object as the watch delivered it and its
/// status as read, which every step compares against.
pub struct Scope<'a> {
    pub namespace: String,
    pub name: String,
    pub source: &'a ExternalSource,
    /// The status as read (empty for a new source).
    pub status: ExternalSourceStatus,
}

impl<'a> Scope<'a> {
    pub fn of(source: &'a ExternalSource) -> Self {
        Self {
            namespace: source.namespace().unwrap_or_default(),
            name: source.name_any(),
            source,
            status: source.status.clone().unwrap_or_default(),
        }
    }

    /// The generation being reconciled.
    pub fn generation(&self) -> Option<i64> {
        self.source.metadata.generation
    }
}
