//! The controller's Prometheus metrics (the predecessor's `externalsource_*` families).
//!
//! Per-object series carry `namespace` and `name` and are removed when the object is deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

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

/// Labels of the reconcile counter: `result` is `success` or `error`, `kind` names what went
/// wrong (`none`, `fetch_status`, `over_budget`, `invalid_spec`, `kube`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub namespace: String,
    pub name: String,
    pub result: String,
    pub kind: String,
}

/// Labels of the hook counter (`result` is `success` or `failure`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub namespace: String,
    pub name: String,
    pub hook: String,
    pub policy: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookObjectLabels {
    pub namespace: String,
    pub name: String,
    pub hook: String,
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
    pub reconciliations: Family<ReconcileLabels, Counter>,
    /// Reconcile label sets used per object, so a deleted object's series can all be removed.
    reconcile_series: Mutex<HashMap<ObjectLabels, HashSet<ReconcileLabels>>>,
    pub reconcile_duration: Family<ObjectLabels, Histogram>,
    pub source_requests: Family<ResultLabels, Counter>,
    pub source_request_duration: Family<ObjectLabels, Histogram>,
    pub artifact_operations: Family<OperationLabels, Counter>,
    pub active_reconciliations: Gauge,
    pub storage_bytes: Family<ObjectLabels, Gauge>,
    /// 1 while the last reconcile left the source Ready (or suspended), 0 while it is stalled or
    /// failing: what an alert on "not Ready for 15 minutes" needs.
    pub ready: Family<ObjectLabels, Gauge>,
    pub hook_executions: Family<HookLabels, Counter>,
    pub hook_duration: Family<HookObjectLabels, Histogram>,
    /// Hook label sets used per object, removed with it.
    hook_series: Mutex<HashMap<ObjectLabels, HashSet<HookLabels>>>,
    /// Flux events posted to notification-controller, by result.
    pub flux_events: Family<super::flux_events::EventResultLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciliations: Family::default(),
            reconcile_series: Mutex::default(),
            reconcile_duration: Family::new_with_constructor(histogram),
            source_requests: Family::default(),
            source_request_duration: Family::new_with_constructor(histogram),
            artifact_operations: Family::default(),
            active_reconciliations: Gauge::default(),
            storage_bytes: Family::default(),
            ready: Family::default(),
            hook_executions: Family::default(),
            hook_duration: Family::new_with_constructor(histogram),
            hook_series: Mutex::default(),
            flux_events: Family::default(),
        };
        registry.register(
            "externalsource_hook_execution",
            "Hook attempts by hook, retry policy and result",
            m.hook_executions.clone(),
        );
        registry.register(
            "externalsource_hook_execution_duration_seconds",
            "Duration of hook attempts",
            m.hook_duration.clone(),
        );
        registry.register(
            "externalsource_reconciliation",
            "Reconciliations by result and error kind",
            m.reconciliations.clone(),
        );
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
        registry.register(
            "externalsource_flux_events",
            "Flux events for notification-controller (controller.events_addr) by result: sent, duplicate, dropped (queue full), failed",
            m.flux_events.clone(),
        );
        registry.register(
            "externalsource_ready",
            "1 while the source is Ready (or suspended), 0 while it is stalled or failing",
            m.ready.clone(),
        );
        m
    }

    /// Counts one reconcile.
    pub fn reconciled(&self, labels: ReconcileLabels) {
        self.reconciliations.get_or_create(&labels).inc();
        let object = ObjectLabels { namespace: labels.namespace.clone(), name: labels.name.clone() };
        self.ready.get_or_create(&object).set(i64::from(labels.result == "success"));
        self.reconcile_series.lock().unwrap_or_else(|p| p.into_inner()).entry(object).or_default().insert(labels);
    }

    pub fn operation(&self, operation: &str, ok: bool) {
        self.artifact_operations
            .get_or_create(&OperationLabels {
                operation: operation.into(),
                result: if ok { "success" } else { "error" }.into(),
            })
            .inc();
    }

    /// Counts one hook attempt of `namespace/name`.
    pub fn hook_attempt(&self, namespace: &str, name: &str, attempt: &super::hooks::chain::Attempt<'_>) {
        let policy = match attempt.policy {
            super::api::RetryPolicy::Ignore => "ignore",
            super::api::RetryPolicy::Retry => "retry",
            super::api::RetryPolicy::Fail => "fail",
        };
        let labels = HookLabels {
            namespace: namespace.into(),
            name: name.into(),
            hook: attempt.hook.into(),
            policy: policy.into(),
            result: if attempt.ok { "success" } else { "failure" }.into(),
        };
        self.hook_executions.get_or_create(&labels).inc();
        let timing = HookObjectLabels { namespace: namespace.into(), name: name.into(), hook: attempt.hook.into() };
        self.hook_duration.get_or_create(&timing).observe(attempt.took.as_secs_f64());
        let object = ObjectLabels { namespace: namespace.into(), name: name.into() };
        self.hook_series.lock().unwrap_or_else(|p| p.into_inner()).entry(object).or_default().insert(labels);
    }

    /// Drops every series of a deleted object.
    pub fn forget(&self, namespace: &str, name: &str) {
        let obj = ObjectLabels { namespace: namespace.into(), name: name.into() };
        let hooks = self.hook_series.lock().unwrap_or_else(|p| p.into_inner()).remove(&obj);
        for labels in hooks.into_iter().flatten() {
            self.hook_duration.remove(&HookObjectLabels {
                namespace: labels.namespace.clone(),
                name: labels.name.clone(),
                hook: labels.hook.clone(),
            });
            self.hook_executions.remove(&labels);
        }
        self.reconcile_duration.remove(&obj);
        self.source_request_duration.remove(&obj);
        self.storage_bytes.remove(&obj);
        self.ready.remove(&obj);
        let series = self.reconcile_series.lock().unwrap_or_else(|p| p.into_inner()).remove(&obj);
        for labels in series.into_iter().flatten() {
            self.reconciliations.remove(&labels);
        }
        for result in RESULTS {
            let labels = ResultLabels { namespace: namespace.into(), name: name.into(), result: (*result).into() };
            self.source_requests.remove(&labels);
        }
    }
}

/// Every `result` label value of the source request counter, so its series can be removed.
pub const RESULTS: &[&str] = &["success", "error", "not_modified"];
