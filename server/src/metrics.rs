//! Artifact-server metrics: request count, request duration and bytes sent.
//!
//! Labels are bounded (a few methods, five status classes) so a client sending odd methods or
//! hitting random paths cannot grow the series count.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Download times range from a cached 304 (sub-millisecond) to a large artifact over a slow link.
const DURATION_BUCKETS: [f64; 14] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status_class: &'static str,
}

type HistogramFamily = Family<StatusLabels, Histogram, fn() -> Histogram>;

/// The artifact server's metric families, shared by every connection.
#[derive(Clone)]
pub struct ServerMetrics(Arc<Families>);

struct Families {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    bytes: Counter,
}

impl ServerMetrics {
    /// Registers the families in `registry`; names carry their full `externalsource_` prefix
    /// because the binary's registry has none.
    pub fn register(registry: &mut Registry) -> Self {
        let families = Families {
            requests: Family::default(),
            duration: HistogramFamily::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            bytes: Counter::default(),
        };
        // prometheus-client appends `_total` to counters.
        registry.register(
            "externalsource_artifact_server_requests",
            "Requests answered by the artifact server",
            families.requests.clone(),
        );
        registry.register(
            "externalsource_artifact_server_request_duration_seconds",
            "Time from request to the last byte of the response body sent (or the download aborted)",
            families.duration.clone(),
        );
        registry.register(
            "externalsource_artifact_server_response_bytes",
            "Response body bytes handed to the connection by the artifact server",
            families.bytes.clone(),
        );
        Self(Arc::new(families))
    }

    /// Starts observing one request; the observer records it when dropped.
    pub(crate) fn observe(&self, method: &Method, status: StatusCode, started: Instant) -> RequestObserver {
        RequestObserver {
            metrics: self.clone(),
            method: method_label(method),
            status_class: status_class(status),
            started,
        }
    }
}

/// Travels with a response body, counting bytes as they are streamed and recording the request
/// once the body is done with (finished, failed or abandoned by the client).
pub(crate) struct RequestObserver {
    metrics: ServerMetrics,
    method: &'static str,
    status_class: &'static str,
    started: Instant,
}

impl RequestObserver {
    pub(crate) fn sent(&self, n: u64) {
        self.metrics.0.bytes.inc_by(n);
    }
}

impl Drop for RequestObserver {
    fn drop(&mut self) {
        let m = &self.metrics.0;
        m.requests.get_or_create(&RequestLabels { method: self.method, status_class: self.status_class }).inc();
        m.duration
            .get_or_create(&StatusLabels { status_class: self.status_class })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn observer_records_on_drop_with_bounded_labels() {
        let mut registry = Registry::default();
        let metrics = ServerMetrics::register(&mut registry);
        let o = metrics.observe(&Method::from_bytes(b"BREW").unwrap(), StatusCode::METHOD_NOT_ALLOWED, Instant::now());
        o.sent(7);
        drop(o);
        drop(metrics.observe(&Method::GET, StatusCode::OK, Instant::now()));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"externalsource_artifact_server_requests_total{method="other",status_class="4xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"externalsource_artifact_server_requests_total{method="GET",status_class="2xx"} 1"#));
        assert!(text.contains("externalsource_artifact_server_response_bytes_total 7"), "{text}");
        assert!(
            text.contains(r#"externalsource_artifact_server_request_duration_seconds_count{status_class="2xx"} 1"#)
        );
    }
}
