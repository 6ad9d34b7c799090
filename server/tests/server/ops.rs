//! The ops listener: health, readiness and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use externalsource_core::Storage;
use externalsource_server::{ArtifactRoutes, ArtifactService, OpsService, Readiness};
use prometheus_client::registry::Registry;

use crate::client::{get, request};
use crate::{payload, put_artifact, start, stores, test_options};

#[tokio::test]
async fn healthz_and_readyz_follow_the_readiness_flag() {
    let readiness = Readiness::default();
    let served = start(OpsService::new(Arc::new(Registry::default()), readiness.clone()), test_options()).await;
    let r = get(served.addr, "/healthz").await;
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok\n".as_slice()));
    assert_eq!(get(served.addr, "/readyz").await.status, 503);
    readiness.set(true);
    assert_eq!(get(served.addr, "/readyz").await.status, 200);
    readiness.set(false);
    assert_eq!(get(served.addr, "/readyz").await.status, 503);
    assert_eq!(get(served.addr, "/healthz").await.status, 200);
    assert_eq!(get(served.addr, "/artifacts/x").await.status, 404);
    let r = request(served.addr, "POST", "/readyz", &[("Content-Length", "0")]).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
}

#[tokio::test]
async fn metrics_count_artifact_requests_and_bytes() {
    let store = stores().await.remove(0);
    let storage: Arc<dyn Storage> = store.storage.clone();
    let a = put_artifact(storage.as_ref(), payload(5_000)).await;
    let mut registry = Registry::default();
    let routes = ArtifactRoutes::new(storage, &mut registry);
    let artifacts = start(ArtifactService::new(routes), test_options()).await;
    let ops = start(OpsService::new(Arc::new(registry), Readiness::new(true)), test_options()).await;

    for _ in 0..3 {
        assert_eq!(get(artifacts.addr, &a.path).await.status, 200);
    }
    assert_eq!(request(artifacts.addr, "HEAD", &a.path, &[]).await.status, 200);
    assert_eq!(get(artifacts.addr, "/artifacts/flux-system/podinfo/missing.tar.gz").await.status, 404);

    // A request is recorded when its body is released, just after the client has it all.
    let expected = [
        r#"externalsource_artifact_server_requests_total{method="GET",status_class="2xx"} 3"#.to_owned(),
        r#"externalsource_artifact_server_requests_total{method="HEAD",status_class="2xx"} 1"#.to_owned(),
        r#"externalsource_artifact_server_requests_total{method="GET",status_class="4xx"} 1"#.to_owned(),
        r#"externalsource_artifact_server_request_duration_seconds_count{status_class="2xx"} 4"#.to_owned(),
        // Three bodies of 5000 bytes plus the 404's short text.
        format!("externalsource_artifact_server_response_bytes_total {}", 3 * 5_000 + "not found\n".len()),
    ];
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = get(ops.addr, "/metrics").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
        let text = String::from_utf8(r.body).unwrap();
        if expected.iter().all(|line| text.lines().any(|l| l == line)) {
            break;
        }
        assert!(Instant::now() < deadline, "expected {expected:#?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_totals_serves_the_totals_alone_and_metrics_serves_both() {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;

    let (mut totals, mut per_object) = (Registry::default(), Registry::default());
    let ready = Gauge::<i64>::default();
    totals.register("externalsource_ready_sources", "Ready sources", ready.clone());
    let per_source = Family::<Vec<(String, String)>, Counter>::default();
    per_object.register("externalsource_reconciliation", "Reconciliations", per_source.clone());
    ready.set(2);
    for name in ["a", "b"] {
        per_source.get_or_create(&vec![("name".to_owned(), name.to_owned())]).inc();
    }
    let ops =
        start(OpsService::split(Arc::new(totals), Arc::new(per_object), Readiness::new(true)), test_options()).await;

    let r = get(ops.addr, "/metrics/totals").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    let totals = String::from_utf8(r.body).unwrap();
    assert!(totals.lines().any(|l| l == "externalsource_ready_sources 2"), "{totals}");
    assert!(!totals.contains("externalsource_reconciliation"), "no per-source family: {totals}");
    assert!(totals.ends_with("# EOF\n"), "{totals}");

    // Twice: the second page is built in a buffer sized from the first and must be the same.
    let first = String::from_utf8(get(ops.addr, "/metrics").await.body).unwrap();
    let full = String::from_utf8(get(ops.addr, "/metrics").await.body).unwrap();
    assert_eq!(first, full);
    assert!(full.lines().any(|l| l == "externalsource_ready_sources 2"), "{full}");
    for name in ["a", "b"] {
        let line = format!("externalsource_reconciliation_total{{name=\"{name}\"}} 1");
        assert!(full.lines().any(|l| l == line), "{line} in {full}");
    }
    assert_eq!(full.matches("# EOF").count(), 1, "one end marker for the two registries: {full}");
    assert!(full.ends_with("# EOF\n"));
}
