//! The controller's Prometheus metrics (the predecessor's `externalsource_*` families).
//!
//! Per-object series carry `namespace` and `name` and are removed when the object is deleted.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub namespace: String,
    pub name: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
    pub result: String,
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Handles to every controller metric.
pub struct Metrics {
    pub reconciliations: Family<ResultLabels, Counter>,
    pub reconcile_duration: Family<ObjectLabels, Histogram>,
    pub source_requests: Family<ResultLabels, Counter>,
    pub source_request_duration: Family<ObjectLabels, Histogram>,
    pub artifact_operations: Family<OperationLabels, Counter>,
    pub active_reconciliations: Gauge,
    pub storage_bytes: Family<ObjectLabels, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciliations: Family::default(),
            reconcile_duration: Family::new_with_constructor(histogram),
            source_requests: Family::default(),
            source_request_duration: Family::new_with_constructor(histogram),
            artifact_operations: Family::default(),
            active_reconciliations: Gauge::default(),
            storage_bytes: Family::default(),
        };
        registry.register("externalsource_reconciliation", "Reconciliations by result", m.reconciliations.clone());
        registry.register(
            "externalsource_reconciliation_duration_seconds",
            "Duration of reconciliations",
            m.reconcile_duration.clone(),
        );
        registry.register("externalsource_source_request", "Upstream requests by result", m.source_requests.clone());
        registry.register(
            "externalsource_source_request_duration_seconds",
            "Duration of upstream requests",
            m.source_request_duration.clone(),
        );
        registry.register(
            "externalsource_artifact_operation",
            "Storage operations by kind and result",
            m.artifact_operations.clone(),
        );
        registry.register(
            "externalsource_active_reconciliations",
            "Reconciliations in progress",
            m.active_reconciliations.clone(),
        );
        registry.register(
            "externalsource_storage_bytes",
            "Bytes of the current artifact held per source",
            m.storage_bytes.clone(),
        );
        m
    }

    pub fn operation(&self, operation: &str, ok: bool) {
        self.artifact_operations
            .get_or_create(&OperationLabels {
                operation: operation.into(),
                result: if ok { "success" } else { "error" }.into(),
            })
            .inc();
    }

    /// Drops every series of a deleted object.
    pub fn forget(&self, namespace: &str, name: &str) {
        let obj = ObjectLabels { namespace: namespace.into(), name: name.into() };
        self.reconcile_duration.remove(&obj);
        self.source_request_duration.remove(&obj);
        self.storage_bytes.remove(&obj);
        for result in RESULTS {
            let labels = ResultLabels { namespace: namespace.into(), name: name.into(), result: (*result).into() };
            self.reconciliations.remove(&labels);
            self.source_requests.remove(&labels);
        }
    }
}

/// Every `result` label value used, so series can be removed without scanning.
pub const RESULTS: &[&str] = &["success", "error", "not_modified"];
