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

use crate::controller::runtime::memory::AdmissionGauges;

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

/// Labels of `externalsource_receiver_pushes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationNameLabels {
    pub operation: String,
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
    /// How long storage operations take, by operation (not by source: the store is shared).
    pub artifact_operation_duration: Family<OperationNameLabels, Histogram>,
    /// The memory budget's size, what fetches reserve of it, and how many wait for room.
    pub admission: AdmissionGauges,
    pub active_reconciliations: Gauge,
    pub storage_bytes: Family<ObjectLabels, Gauge>,
    /// 1 while the last reconcile left the source Ready (or suspended), 0 while it is stalled or
    /// failing: what an alert on "not Ready for 15 minutes" needs.
    pub ready: Family<ObjectLabels, Gauge>,
    /// How many sources `ready` holds at 1: the count a dashboard or a rollout check wants,
    /// without reading a series per source.
    pub ready_sources: Gauge,
    pub hook_executions: Family<HookLabels, Counter>,
    pub hook_duration: Family<HookObjectLabels, Histogram>,
    /// Hook label sets used per object, removed with it.
    hook_series: Mutex<HashMap<ObjectLabels, HashSet<HookLabels>>>,
    /// Flux events posted to notification-controller, by result.
    pub flux_events: Family<crate::controller::events::flux::EventResultLabels, Counter>,
    /// Pushes to the receiver listener, by answer (no series per source: unknown paths must
    /// not make series).
    pub receiver_pushes: Family<PushLabels, Counter>,
    /// Whether duration histograms have a series per source (`ops.per_source_histograms`) or
    /// one per namespace (`name=""`, which Prometheus stores as no label).
    per_source_histograms: bool,
}

impl Metrics {
    /// The metrics with a duration histogram per source, every family in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        Self::register_with(registry, true)
    }

    /// The metrics, every family in `registry`; duration histograms per source or per namespace.
    pub fn register_with(registry: &mut Registry, per_source_histograms: bool) -> Self {
        let m = Self::new(per_source_histograms);
        m.register_totals(registry);
        m.register_per_object(registry);
        m
    }

    /// The metrics, unregistered (see [`register_totals`](Self::register_totals) and
    /// [`register_per_object`](Self::register_per_object)).
    pub fn new(per_source_histograms: bool) -> Self {
        Self {
            reconciliations: Family::default(),
            reconcile_series: Mutex::default(),
            reconcile_duration: Family::new_with_constructor(histogram),
            source_requests: Family::default(),
            source_request_duration: Family::new_with_constructor(histogram),
            artifact_operations: Family::default(),
            artifact_operation_duration: Family::new_with_constructor(histogram),
            admission: AdmissionGauges::default(),
            active_reconciliations: Gauge::default(),
            storage_bytes: Family::default(),
            ready: Family::default(),
            ready_sources: Gauge::default(),
            hook_executions: Family::default(),
            hook_duration: Family::new_with_constructor(histogram),
            hook_series: Mutex::default(),
            flux_events: Family::default(),
            receiver_pushes: Family::default(),
            per_source_histograms,
        }
    }

    /// Registers the families whose series do not grow with the number of sources, which the
    /// ops listener also serves alone (`/metrics/totals`): at 10,000 sources the full page is
    /// about 37 MB, these are a few hundred bytes.
    pub fn register_totals(&self, registry: &mut Registry) {
        registry.register(
            "externalsource_artifact_operation",
            "Storage operations by kind and result",
            self.artifact_operations.clone(),
        );
        registry.register(
            "externalsource_artifact_operation_duration_seconds",
            "Duration of storage operations by kind",
            self.artifact_operation_duration.clone(),
        );
        registry.register(
            "externalsource_memory_budget_bytes",
            format!("The memory budget of in-flight fetches ({})", crate::config::FetchConfig::memory_budget),
            self.admission.budget.clone(),
        );
        registry.register(
            "externalsource_memory_reserved_bytes",
            "Bytes of the memory budget reserved by fetches in flight",
            self.admission.reserved.clone(),
        );
        registry.register(
            "externalsource_memory_waiting_fetches",
            "Fetches waiting for room in the memory budget",
            self.admission.waiting.clone(),
        );
        registry.register(
            "externalsource_active_reconciliations",
            "Reconciliations in progress",
            self.active_reconciliations.clone(),
        );
        registry.register(
            "externalsource_ready_sources",
            "Sources whose last reconcile left them Ready (or suspended)",
            self.ready_sources.clone(),
        );
        registry.register(
            "externalsource_flux_events",
            "Flux events for notification-controller (the controller's events address) by result: sent, duplicate, dropped (queue full), failed",
            self.flux_events.clone(),
        );
        registry.register(
            "externalsource_receiver_pushes",
            "Pushes to the receiver listener by answer: accepted, coalesced (joined a request in flight), ping, refused (401), not_found, too_large, unavailable, method_not_allowed",
            self.receiver_pushes.clone(),
        );
    }

    /// Registers the families with series per source (or per namespace).
    pub fn register_per_object(&self, registry: &mut Registry) {
        registry.register(
            "externalsource_hook_execution",
            "Hook attempts by hook, retry policy and result",
            self.hook_executions.clone(),
        );
        registry.register(
            "externalsource_hook_execution_duration_seconds",
            "Duration of hook attempts",
            self.hook_duration.clone(),
        );
        registry.register(
            "externalsource_reconciliation",
            "Reconciliations by result and error kind",
            self.reconciliations.clone(),
        );
        registry.register(
            "externalsource_reconciliation_duration_seconds",
            "Duration of reconciliations",
            self.reconcile_duration.clone(),
        );
        registry.register("externalsource_source_request", "Upstream requests by result", self.source_requests.clone());
        registry.register(
            "externalsource_source_request_duration_seconds",
            "Duration of upstream requests",
            self.source_request_duration.clone(),
        );
        registry.register(
            "externalsource_storage_bytes",
            "Bytes of the current artifact held per source",
            self.storage_bytes.clone(),
        );
        registry.register(
            "externalsource_ready",
            "1 while the source is Ready (or suspended), 0 while it is stalled or failing",
            self.ready.clone(),
        );
    }

    /// The labels of `namespace/name`'s duration histograms.
    fn histogram_labels(&self, namespace: &str, name: &str) -> ObjectLabels {
        let name = if self.per_source_histograms { name } else { "" };
        ObjectLabels { namespace: namespace.into(), name: name.into() }
    }

    /// Records how long a reconcile of `namespace/name` took.
    pub fn observe_reconcile(&self, namespace: &str, name: &str, took: std::time::Duration) {
        self.reconcile_duration.get_or_create(&self.histogram_labels(namespace, name)).observe(took.as_secs_f64());
    }

    /// Records how long an upstream request of `namespace/name` took.
    pub fn observe_source_request(&self, namespace: &str, name: &str, took: std::time::Duration) {
        let labels = self.histogram_labels(namespace, name);
        self.source_request_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Counts one reconcile.
    pub fn reconciled(&self, labels: ReconcileLabels) {
        self.reconciliations.get_or_create(&labels).inc();
        let object = ObjectLabels { namespace: labels.namespace.clone(), name: labels.name.clone() };
        let now = i64::from(labels.result == "success");
        let before = self.ready.get_or_create(&object).set(now);
        self.ready_sources.inc_by(now - before);
        self.reconcile_series.lock().unwrap_or_else(|p| p.into_inner()).entry(object).or_default().insert(labels);
    }

    /// Runs one storage operation, counting it by result and timing it.
    pub async fn storage_call<T, E>(
        &self,
        operation: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = call.await;
        let name = OperationNameLabels { operation: operation.into() };
        self.artifact_operation_duration.get_or_create(&name).observe(started.elapsed().as_secs_f64());
        let result_label = if result.is_ok() { "success" } else { "error" };
        let labels = OperationLabels { operation: operation.into(), result: result_label.into() };
        self.artifact_operations.get_or_create(&labels).inc();
        result
    }

    /// Counts one hook attempt of `namespace/name`.
    pub fn hook_attempt(&self, namespace: &str, name: &str, attempt: &crate::controller::hooks::chain::Attempt<'_>) {
        let policy = match attempt.policy {
            crate::controller::api::RetryPolicy::Ignore => "ignore",
            crate::controller::api::RetryPolicy::Retry => "retry",
            crate::controller::api::RetryPolicy::Fail => "fail",
        };
        let labels = HookLabels {
            namespace: namespace.into(),
            name: name.into(),
            hook: attempt.hook.into(),
            policy: policy.into(),
            result: if attempt.ok { "success" } else { "failure" }.into(),
        };
        self.hook_executions.get_or_create(&labels).inc();
        let ObjectLabels { namespace: timing_namespace, name: timing_name } = self.histogram_labels(namespace, name);
        let timing = HookObjectLabels { namespace: timing_namespace, name: timing_name, hook: attempt.hook.into() };
        self.hook_duration.get_or_create(&timing).observe(attempt.took.as_secs_f64());
        let object = ObjectLabels { namespace: namespace.into(), name: name.into() };
        self.hook_series.lock().unwrap_or_else(|p| p.into_inner()).entry(object).or_default().insert(labels);
    }

    /// Drops every series of a deleted object.
    pub fn forget(&self, namespace: &str, name: &str) {
        let obj = ObjectLabels { namespace: namespace.into(), name: name.into() };
        let hooks = self.hook_series.lock().unwrap_or_else(|p| p.into_inner()).remove(&obj);
        for labels in hooks.into_iter().flatten() {
            if self.per_source_histograms {
                self.hook_duration.remove(&HookObjectLabels {
                    namespace: labels.namespace.clone(),
                    name: labels.name.clone(),
                    hook: labels.hook.clone(),
                });
            }
            self.hook_executions.remove(&labels);
        }
        // Per-namespace histograms outlive any one source.
        if self.per_source_histograms {
            self.reconcile_duration.remove(&obj);
            self.source_request_duration.remove(&obj);
        }
        self.storage_bytes.remove(&obj);
        let was_ready = self.ready.get(&obj).map_or(0, |g| g.get());
        self.ready.remove(&obj);
        self.ready_sources.dec_by(was_ready);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn page(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    fn count_lines(page: &str, family: &str) -> Vec<String> {
        page.lines().filter(|l| l.starts_with(&format!("{family}_count"))).map(str::to_owned).collect()
    }

    #[test]
    fn histograms_per_source_or_per_namespace() {
        let mut registry = Registry::default();
        let per_source = Metrics::register(&mut registry);
        for name in ["a", "b"] {
            per_source.observe_reconcile("ns", name, Duration::from_millis(20));
            per_source.observe_source_request("ns", name, Duration::from_millis(10));
        }
        let text = page(&registry);
        assert_eq!(count_lines(&text, "externalsource_reconciliation_duration_seconds").len(), 2, "{text}");
        per_source.forget("ns", "a");
        let text = page(&registry);
        let left = count_lines(&text, "externalsource_reconciliation_duration_seconds");
        assert_eq!(left.len(), 1, "a deleted source's series go");
        assert!(left[0].contains("name=\"b\""), "{left:?}");

        let mut registry = Registry::default();
        let per_namespace = Metrics::register_with(&mut registry, false);
        for name in ["a", "b"] {
            per_namespace.observe_reconcile("ns", name, Duration::from_millis(20));
            per_namespace.observe_source_request("ns", name, Duration::from_millis(10));
        }
        per_namespace.observe_reconcile("other", "c", Duration::from_millis(20));
        let text = page(&registry);
        let lines = count_lines(&text, "externalsource_reconciliation_duration_seconds");
        assert_eq!(lines.len(), 2, "one series per namespace: {lines:?}");
        let ns = lines.iter().find(|l| l.contains("namespace=\"ns\"")).unwrap();
        assert!(ns.contains("name=\"\"") && ns.ends_with(" 2"), "both sources counted in one: {ns}");
        assert_eq!(count_lines(&text, "externalsource_source_request_duration_seconds").len(), 1);
        per_namespace.forget("ns", "a");
        let lines = count_lines(&page(&registry), "externalsource_reconciliation_duration_seconds");
        assert_eq!(lines.len(), 2, "a namespace's histogram outlives any one source: {lines:?}");
    }

    fn reconciled(m: &Metrics, name: &str, ok: bool) {
        let result = if ok { "success" } else { "error" };
        m.reconciled(ReconcileLabels {
            namespace: "ns".into(),
            name: name.into(),
            result: result.into(),
            kind: "none".into(),
        });
    }

    #[test]
    fn ready_sources_counts_the_sources_last_left_ready() {
        let mut totals = Registry::default();
        let mut per_object = Registry::default();
        let m = Metrics::new(true);
        m.register_totals(&mut totals);
        m.register_per_object(&mut per_object);
        reconciled(&m, "a", true);
        reconciled(&m, "a", true);
        reconciled(&m, "b", true);
        reconciled(&m, "c", false);
        assert_eq!(m.ready_sources.get(), 2, "a counted once however often it succeeds; c never");
        reconciled(&m, "b", false);
        assert_eq!(m.ready_sources.get(), 1, "b fell out");
        m.forget("ns", "a");
        m.forget("ns", "b");
        assert_eq!(m.ready_sources.get(), 0, "a deleted Ready source leaves the count; a failing one was not in it");
        reconciled(&m, "c", true);
        let text = page(&totals);
        assert!(text.contains("externalsource_ready_sources 1\n"), "{text}");
        assert!(!text.contains("name=\"c\""), "the totals carry no per-source series: {text}");
        assert!(page(&per_object).contains("externalsource_ready{namespace=\"ns\",name=\"c\"} 1"));
    }
}
