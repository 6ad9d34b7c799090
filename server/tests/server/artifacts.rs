//! The artifact routes of SPEC §6 over both serving backends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use externalsource_core::Digest;

use crate::client::{get, request};
use crate::{payload, put_artifact, start_artifacts, stores, test_options};

const SIZE: usize = 200_000;

fn whole_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap().as_secs())
}

#[tokio::test]
async fn get_streams_the_artifact_with_every_header() {
    for store in stores().await {
        let a = put_artifact(store.storage.as_ref(), payload(SIZE)).await;
        let (served, _registry) = start_artifacts(store.storage.clone(), test_options()).await;
        let r = get(served.addr, &a.path).await;
        let ctx = store.name;
        assert_eq!(r.status, 200, "{ctx}");
        assert_eq!(r.body, a.payload, "{ctx}");
        assert_eq!(Digest::of(&r.body), a.meta.digest, "{ctx}");
        assert_eq!(r.header("content-type"), Some("application/gzip"), "{ctx}");
        assert_eq!(r.content_length(), Some(SIZE as u64), "{ctx}");
        let file = format!("{}.tar.gz", a.meta.digest.hex());
        assert_eq!(r.header("content-disposition"), Some(format!("attachment; filename=\"{file}\"").as_str()), "{ctx}");
        assert_eq!(r.header("etag"), Some(format!("\"{}\"", a.meta.digest).as_str()), "{ctx}");
        let last_modified = httpdate::parse_http_date(r.header("last-modified").expect("Last-Modified")).unwrap();
        assert_eq!(last_modified, whole_seconds(a.meta.last_modified), "{ctx}");
        assert_eq!(r.header("cache-control"), Some("public, max-age=31536000, immutable"), "{ctx}");
        assert_eq!(r.header("accept-ranges"), Some("bytes"), "{ctx}");
        assert_eq!(r.header("content-range"), None, "{ctx}");
    }
}

#[tokio::test]
async fn head_has_the_headers_and_no_body() {
    for store in stores().await {
        let a = put_artifact(store.storage.as_ref(), payload(SIZE)).await;
        let (served, _registry) = start_artifacts(store.storage.clone(), test_options()).await;
        let r = request(served.addr, "HEAD", &a.path, &[]).await;
        let ctx = store.name;
        assert_eq!(r.status, 200, "{ctx}");
        assert!(r.body.is_empty(), "{ctx}: HEAD sent {} body bytes", r.body.len());
        assert_eq!(r.content_length(), Some(SIZE as u64), "{ctx}");
        assert_eq!(r.header("etag"), Some(format!("\"{}\"", a.meta.digest).as_str()), "{ctx}");
        assert_eq!(r.header("content-type"), Some("application/gzip"), "{ctx}");
        assert_eq!(r.header("accept-ranges"), Some("bytes"), "{ctx}");
        assert!(r.header("content-disposition").is_some() && r.header("last-modified").is_some(), "{ctx}");
        assert_eq!(r.header("cache-control"), Some("public, max-age=31536000, immutable"), "{ctx}");
    }
}

#[tokio::test]
async fn conditional_requests_answer_304() {
    for store in stores().await {
        let a = put_artifact(store.storage.as_ref(), payload(SIZE)).await;
        let (served, _registry) = start_artifacts(store.storage.clone(), test_options()).await;
        let etag = format!("\"{}\"", a.meta.digest);
        let last_modified = httpdate::fmt_http_date(a.meta.last_modified);
        let earlier = httpdate::fmt_http_date(a.meta.last_modified - Duration::from_secs(3600));
        let ctx = store.name;
        for (method, name, value) in [
            ("GET", "If-None-Match", etag.clone()),
            ("GET", "If-None-Match", format!("\"sha256:other\", {etag}")),
            ("GET", "If-None-Match", format!("W/{etag}")),
            ("GET", "If-None-Match", "*".to_owned()),
            ("HEAD", "If-None-Match", etag.clone()),
            ("GET", "If-Modified-Since", last_modified.clone()),
        ] {
            let r = request(served.addr, method, &a.path, &[(name, &value)]).await;
            assert_eq!(r.status, 304, "{ctx}: {method} {name}: {value}");
            assert!(r.body.is_empty(), "{ctx}: 304 with a body");
            assert_eq!(r.header("etag"), Some(etag.as_str()), "{ctx}");
            assert_eq!(r.header("cache-control"), Some("public, max-age=31536000, immutable"), "{ctx}");
            assert_eq!(r.header("last-modified"), Some(last_modified.as_str()), "{ctx}");
        }
        for headers in [
            vec![("If-None-Match", "\"sha256:other\"")],
            vec![("If-Modified-Since", earlier.as_str())],
            // If-None-Match wins over If-Modified-Since.
            vec![("If-None-Match", "\"sha256:other\""), ("If-Modified-Since", last_modified.as_str())],
        ] {
            let r = request(served.addr, "GET", &a.path, &headers).await;
            assert_eq!(r.status, 200, "{ctx}: {headers:?}");
            assert_eq!(r.body, a.payload, "{ctx}");
        }
    }
}

#[tokio::test]
async fn single_ranges_answer_206_and_bad_ones_416() {
    for store in stores().await {
        let a = put_artifact(store.storage.as_ref(), payload(SIZE)).await;
        let (served, _registry) = start_artifacts(store.storage.clone(), test_options()).await;
        let ctx = store.name;
        let size = SIZE as u64;
        for (range, from, to) in [("bytes=0-9", 0, 9), ("bytes=-5", size - 5, size - 1), ("bytes=10-", 10, size - 1)] {
            let r = request(served.addr, "GET", &a.path, &[("Range", range)]).await;
            assert_eq!(r.status, 206, "{ctx}: {range}");
            assert_eq!(r.header("content-range"), Some(format!("bytes {from}-{to}/{size}").as_str()), "{ctx}");
            assert_eq!(r.content_length(), Some(to - from + 1), "{ctx}: {range}");
            assert_eq!(r.body, a.payload[from as usize..=to as usize], "{ctx}: {range}");
            assert_eq!(r.header("etag"), Some(format!("\"{}\"", a.meta.digest).as_str()), "{ctx}");
            assert_eq!(r.header("content-type"), Some("application/gzip"), "{ctx}");
        }
        let r = request(served.addr, "GET", &a.path, &[("Range", "bytes=999999-")]).await;
        assert_eq!(r.status, 416, "{ctx}");
        assert_eq!(r.header("content-range"), Some(format!("bytes */{size}").as_str()), "{ctx}");
        // RFC 9110 §14.1.3: a suffix longer than the object selects the whole object (206);
        // a zero-length suffix selects nothing (416).
        let r = request(served.addr, "GET", &a.path, &[("Range", &format!("bytes=-{}", size * 10))]).await;
        assert_eq!(r.status, 206, "{ctx}");
        assert_eq!(r.header("content-range"), Some(format!("bytes 0-{}/{size}", size - 1).as_str()), "{ctx}");
        assert_eq!(r.body, a.payload, "{ctx}");
        assert_eq!(request(served.addr, "GET", &a.path, &[("Range", "bytes=-0")]).await.status, 416, "{ctx}");
        // A last position past the end is clamped to it (§14.1.2).
        let r = request(served.addr, "GET", &a.path, &[("Range", &format!("bytes={}-{}", size - 3, size * 2))]).await;
        assert_eq!(r.status, 206, "{ctx}");
        assert_eq!(r.body, a.payload[SIZE - 3..], "{ctx}");

        // Multiple ranges and unparsable ones are ignored: the whole object.
        for range in ["bytes=0-1,5-6", "bytes=nonsense"] {
            let r = request(served.addr, "GET", &a.path, &[("Range", range)]).await;
            assert_eq!(r.status, 200, "{ctx}: {range}");
            assert_eq!(r.body, a.payload, "{ctx}: {range}");
        }

        // If-Range: the range applies only while the validator still matches.
        let etag = format!("\"{}\"", a.meta.digest);
        let r = request(served.addr, "GET", &a.path, &[("Range", "bytes=0-9"), ("If-Range", &etag)]).await;
        assert_eq!((r.status, r.body.len()), (206, 10), "{ctx}");
        let r = request(served.addr, "GET", &a.path, &[("Range", "bytes=0-9"), ("If-Range", "\"sha256:old\"")]).await;
        assert_eq!(r.status, 200, "{ctx}");
        assert_eq!(r.body, a.payload, "{ctx}");

        // HEAD ignores Range (range handling is defined for GET only).
        let r = request(served.addr, "HEAD", &a.path, &[("Range", "bytes=0-9")]).await;
        assert_eq!((r.status, r.content_length()), (200, Some(size)), "{ctx}");
    }
}

#[tokio::test]
async fn unknown_keys_directories_and_other_paths_are_404() {
    for store in stores().await {
        let a = put_artifact(store.storage.as_ref(), payload(100)).await;
        let (served, _registry) = start_artifacts(store.storage.clone(), test_options()).await;
        let missing = format!("/artifacts/flux-system/podinfo/{}.tar.gz", Digest::of(b"nothing").hex());
        for path in [
            missing.as_str(),
            "/artifacts/flux-system/podinfo",
            "/artifacts/flux-system/podinfo/",
            "/artifacts/flux-system",
            "/artifacts/",
            "/artifacts",
            "/",
            "/healthz",
            "/metrics",
            "/internal/secret.txt",
        ] {
            let r = get(served.addr, path).await;
            assert_eq!(r.status, 404, "{}: {path}", store.name);
            assert!(!String::from_utf8_lossy(&r.body).contains(crate::MARKER), "{}: {path}", store.name);
        }
        // A query string does not change what is served.
        let r = get(served.addr, &format!("{}?download=1", a.path)).await;
        assert_eq!((r.status, r.body), (200, a.payload), "{}", store.name);
    }
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    for store in stores().await {
        let a = put_artifact(store.storage.as_ref(), payload(100)).await;
        let (served, registry) = start_artifacts(store.storage.clone(), test_options()).await;
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let r = request(served.addr, method, &a.path, &[("Content-Length", "0")]).await;
            assert_eq!(r.status, 405, "{}: {method}", store.name);
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{}: {method}", store.name);
        }
        // Whatever the path: unknown keys, malformed paths and the root too.
        for path in ["/artifacts/ns/none/missing.tar.gz", "/", "/artifacts/../etc/passwd", "/metrics"] {
            let r = request(served.addr, "DELETE", path, &[("Content-Length", "0")]).await;
            assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")), "{}: {path}", store.name);
        }
        // Nothing was deleted or replaced.
        assert_eq!(get(served.addr, &a.path).await.body, a.payload, "{}", store.name);
        // The refusals are counted like any other request: 5 methods plus 4 paths.
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"externalsource_artifact_server_requests_total{method="other",status_class="4xx"} 9"#),
            "{}: {text}",
            store.name
        );
    }
}

/// A key being restored (published, not yet stored again by a new leader) answers 503 with
/// `Retry-After`, so Flux retries instead of reading "gone"; other missing keys stay 404, and
/// the key is served as soon as it is stored.
#[tokio::test]
async fn keys_being_restored_answer_503_with_retry_after_until_stored() {
    use externalsource_core::restore::Restoring;
    use externalsource_server::{ArtifactRoutes, ArtifactService};
    for store in stores().await {
        let body = payload(1000);
        let key = externalsource_core::ObjectKey::artifact("flux-system", "podinfo", &Digest::of(&body)).unwrap();
        let other = format!("/artifacts/flux-system/podinfo/{}.tar.gz", Digest::of(b"nothing").hex());
        let restoring = Restoring::default();
        restoring.expect([key.clone()]);
        let mut registry = prometheus_client::registry::Registry::default();
        let routes =
            ArtifactRoutes::new(store.storage.clone(), &mut registry).unwrap().with_restoring(restoring.clone());
        let served = crate::start(ArtifactService::new(Some(routes)), test_options()).await;
        let r = get(served.addr, &format!("/{key}")).await;
        assert_eq!(r.status, 503, "{}", store.name);
        assert_eq!(r.header("retry-after"), Some("5"), "{}", store.name);
        assert_eq!(get(served.addr, &other).await.status, 404, "{}: a key nobody published", store.name);
        let a = put_artifact(store.storage.as_ref(), body.clone()).await;
        restoring.restored(&key);
        let r = get(served.addr, &a.path).await;
        assert_eq!((r.status, r.body), (200, body), "{}", store.name);

        // Before the published keys are known (a standby), every missing artifact is 503.
        let standby = Restoring::everything();
        let mut registry = prometheus_client::registry::Registry::default();
        let routes = ArtifactRoutes::new(store.storage.clone(), &mut registry).unwrap().with_restoring(standby);
        let served = crate::start(ArtifactService::new(Some(routes)), test_options()).await;
        assert_eq!(get(served.addr, &other).await.status, 503, "{}", store.name);
        assert_eq!(get(served.addr, &a.path).await.status, 200, "{}: what it holds is served", store.name);
        assert_eq!(get(served.addr, "/healthz").await.status, 404, "{}: not an artifact path", store.name);
    }
}
