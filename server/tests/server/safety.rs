//! Nothing outside the artifact tree is reachable, whatever the path, and nothing at all when the
//! backend does not serve HTTP.

use std::sync::Arc;

use externalsource_core::Storage;
use externalsource_server::ArtifactService;
use prometheus_client::registry::Registry;

use crate::client::{get, request, send_raw};
use crate::doubles::NonServingStorage;
use crate::{MARKER, payload, put_artifact, start, start_artifacts, stores, test_options};

fn hostile_request_lines(artifact: &str) -> Vec<Vec<u8>> {
    let long = format!("/artifacts/{}", "a".repeat(2000));
    let paths: Vec<String> = vec![
        "/artifacts/../etc/passwd".into(),
        "/artifacts/../../etc/passwd".into(),
        "/artifacts/../secret.txt".into(),
        "/artifacts/../../secret.txt".into(),
        "/artifacts/../internal/secret.txt".into(),
        "/artifacts/%2e%2e/x".into(),
        "/artifacts/%2e%2e/%2e%2e/secret.txt".into(),
        "/artifacts/%2E%2E/internal/secret.txt".into(),
        "/artifacts/..%2fsecret.txt".into(),
        "/artifacts/..%5c..%5csecret.txt".into(),
        "/artifacts/a\\b".into(),
        "/artifacts/..\\..\\secret.txt".into(),
        "/artifacts/./../secret.txt".into(),
        "/artifacts//secret.txt".into(),
        "//secret.txt".into(),
        "/internal/secret.txt".into(),
        "/artifacts/internal/../../internal/secret.txt".into(),
        format!("{artifact}/../../../../internal/secret.txt"),
        long,
    ];
    let mut lines: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes())
        .collect();
    lines.push(b"GET /artifacts/a\0b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec());
    lines.push(b"GET /artifacts/../secret.txt\0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec());
    lines.push(b"GET http://t/artifacts/../secret.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec());
    lines
}

#[tokio::test]
async fn malformed_and_traversing_paths_never_reach_outside_the_store() {
    for store in stores().await {
        let a = put_artifact(store.storage.as_ref(), payload(1000)).await;
        let (served, _registry) = start_artifacts(store.storage.clone(), test_options()).await;
        for raw in hostile_request_lines(&a.path) {
            let shown = String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned();
            let r = send_raw(served.addr, &raw).await.unwrap_or_else(|e| panic!("{}: {shown:?}: {e}", store.name));
            assert!(matches!(r.status, 400 | 404), "{}: {shown:?} answered {}", store.name, r.status);
            let body = String::from_utf8_lossy(&r.body);
            assert!(!body.contains(MARKER), "{}: {shown:?} leaked the secret", store.name);
            assert!(!body.contains("root:"), "{}: {shown:?} leaked /etc/passwd", store.name);
        }
        // The server still serves the real artifact afterwards.
        assert_eq!(get(served.addr, &a.path).await.body, a.payload, "{}", store.name);
    }
}

#[tokio::test]
async fn routes_are_not_mounted_when_the_backend_does_not_serve_http() {
    let storage: Arc<dyn Storage> = Arc::new(NonServingStorage::new());
    let a = put_artifact(storage.as_ref(), payload(1000)).await;
    let mut registry = Registry::default();
    let routes = externalsource_server::ArtifactRoutes::new(storage.clone(), &mut registry);
    assert!(routes.is_none(), "routes mounted for a backend with serves_http = false");
    let service = ArtifactService::new(routes);
    assert!(!service.is_mounted());
    let served = start(service, test_options()).await;
    for method in ["GET", "HEAD"] {
        let r = request(served.addr, method, &a.path, &[]).await;
        assert_eq!(r.status, 404, "{method}");
        assert!(r.header("etag").is_none() && r.header("content-disposition").is_none());
        assert!(!r.body.windows(a.payload.len()).any(|w| w == a.payload.as_slice()));
    }
    assert_eq!(request(served.addr, "POST", &a.path, &[("Content-Length", "0")]).await.status, 405);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(!text.contains("artifact_server"), "metrics registered for unmounted routes: {text}");

    // Control: the same object in a backend that serves HTTP is downloadable, so the 404s above
    // come from the capability and not from the request.
    let serving: Arc<dyn Storage> =
        externalsource_core::backend::host(externalsource_backend_memory::MemoryStorage::new(1 << 30), None);
    put_artifact(serving.as_ref(), a.payload.clone()).await;
    let (served, _registry) = start_artifacts(serving, test_options()).await;
    assert_eq!(get(served.addr, &a.path).await.status, 200);
}
