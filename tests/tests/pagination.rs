//! `spec.generator.http.pagination` against loopback upstreams that page like GitHub (`Link`
//! headers) and like a cursor API (a jq `next`): the pages' items merged into one array, the
//! credentials on every page of the first origin, a next link to another origin refused, a page
//! beyond `maxPages` refused, and a failed page keeping the last good artifact.

use std::io::Write;
use std::process::{Command, Stdio};

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::controller::Options;
use externalsource_tests::sources::{artifact, download, request_reconcile, source, wait_failing, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

/// The file `data` of a published artifact, as GNU tar reads it.
async fn published_data(es: &ExternalSource) -> String {
    let (code, tarball) = download(&artifact(es).url).await;
    assert_eq!(code, 200);
    let mut tar = Command::new("tar")
        .args(["-xzOf", "-", "data"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    tar.stdin.take().unwrap().write_all(&tarball).unwrap();
    let out = tar.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

async fn secret(api: &Api<Secret>, name: &str, data: serde_json::Value) {
    let secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
    api.create(&PostParams::default(), &secret).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_like_github_with_link_headers_and_a_failed_page_keeps_the_artifact() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("pages-link").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let gh = Upstream::start(Reply::status(404)).await;
    let base = gh.url("/issues?per_page=2");
    let link = |rels: &[(&str, u32)]| {
        rels.iter().map(|(rel, page)| format!("<{base}&page={page}>; rel=\"{rel}\"")).collect::<Vec<_>>().join(", ")
    };
    let page = |body: &str, rels: &[(&str, u32)]| {
        Reply::ok(body.to_owned()).with_header("link", &link(rels)).requiring("authorization", "Bearer t0k")
    };
    gh.route("/issues?per_page=2", page(r#"[{"n":1},{"n":2}]"#, &[("next", 2), ("last", 3)]));
    gh.route("/issues?per_page=2&page=2", page(r#"[{"n":3},{"n":4}]"#, &[("prev", 1), ("next", 3), ("last", 3)]));
    gh.route("/issues?per_page=2&page=3", page(r#"[{"n":5}]"#, &[("prev", 2), ("first", 1)]));
    secret(&Api::namespaced(cp.client(), &ns), "gh", json!({"bearerToken": "t0k"})).await;
    let spec = json!({
        "generator": {"type": "http", "http": {"url": base, "secretRef": {"name": "gh"}, "pagination": {"type": "link"}}},
        "transform": {"jq": "map(.n)"},
    });
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("issues", &base, spec)).await.unwrap();
    let es = wait_ready(&api, "issues", "True").await;
    assert_eq!(published_data(&es).await.trim_end(), "[1,2,3,4,5]", "three pages merged, then transformed");
    let requests = gh.requests();
    let queries: Vec<_> = requests.iter().map(|r| r.query.clone().unwrap_or_default()).collect();
    assert_eq!(queries, ["per_page=2", "per_page=2&page=2", "per_page=2&page=3"]);
    assert!(requests.iter().all(|r| r.status == 200), "every page carried the credential");
    assert!(requests.iter().all(|r| !r.headers.contains_key("if-none-match")), "paged sources are unconditional");
    let good = artifact(&es);

    // Page 2 now fails: the source reports the page and its (redacted) URL, and keeps its artifact.
    gh.route("/issues?per_page=2&page=2", Reply::status(404));
    let es = request_reconcile(&api, "issues", "page-2-gone").await;
    let (status, reason, message) = externalsource_tests::sources::ready(&es).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "FetchFailed"), "{message}");
    let shown = gh.url("/issues?per_page=redacted&page=redacted");
    assert!(
        message.starts_with(&format!("spec.generator.http.pagination: page 2 ({shown}): ")) && message.contains("404"),
        "{message}"
    );
    assert_eq!(artifact(&es), good, "the last good artifact stays published");
    assert_eq!(published_data(&es).await.trim_end(), "[1,2,3,4,5]", "and served");

    // Page 2 answers 200 with an HTML login page: refused, naming the page; the artifact stays.
    gh.route("/issues?per_page=2&page=2", Reply::ok("<html>sign in</html>"));
    let es = request_reconcile(&api, "issues", "page-2-html").await;
    let (_, _, message) = externalsource_tests::sources::ready(&es).unwrap();
    assert!(
        message.starts_with(&format!(
            "spec.generator.http.pagination: page 2 ({shown}): the page is not one JSON document"
        )),
        "{message}"
    );
    assert_eq!(artifact(&es), good);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_like_a_cursor_api_and_refuses_other_origins_and_endless_pages() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("pages-jq").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let upstream = Upstream::start(Reply::status(404)).await;
    let other = Upstream::start(Reply::ok("[]")).await;

    // A cursor API: the next URL is built by jq, relative to the page's URL.
    upstream.route("/v1/things", Reply::ok(r#"{"data":[{"id":"a"}],"next_cursor":"c2"}"#));
    upstream.route("/v1/things?cursor=c2", Reply::ok(r#"{"data":[{"id":"b"},{"id":"c"}],"next_cursor":"c3"}"#));
    upstream.route("/v1/things?cursor=c3", Reply::ok(r#"{"data":[],"next_cursor":null}"#));
    let pagination = json!({"type": "jq", "items": ".data",
        "next": r#"if .next_cursor then "things?cursor=\(.next_cursor)" else null end"#});
    let spec =
        json!({"generator": {"type": "http", "http": {"url": upstream.url("/v1/things"), "pagination": pagination}}});
    api.create(&PostParams::default(), &source("cursor", &upstream.url("/v1/things"), spec)).await.unwrap();
    let es = wait_ready(&api, "cursor", "True").await;
    assert_eq!(published_data(&es).await, r#"[{"id":"a"},{"id":"b"},{"id":"c"}]"#);
    assert_eq!(es.status.as_ref().unwrap().last_handled_e_tag, None, "a paged source records no ETag");

    // A next link to another origin: refused before anything (the API key above all) goes there.
    secret(&Api::namespaced(cp.client(), &ns), "key", json!({"X-Api-Key": "k3y"})).await;
    let steal = other.url_by_ip("/steal");
    upstream.route("/cross", Reply::ok(json!({"items": [1], "next": steal}).to_string()));
    let spec = json!({"generator": {"type": "http", "http": {"url": upstream.url("/cross"),
        "headersSecretRef": {"name": "key"}, "pagination": {"type": "jq", "next": ".next", "items": ".items"}}}});
    api.create(&PostParams::default(), &source("cross", &upstream.url("/cross"), spec)).await.unwrap();
    let message = wait_failing(&api, "cross", "FetchFailed").await;
    let origin = upstream.url("");
    assert_eq!(
        message,
        format!(
            "spec.generator.http.pagination: page 1 ({}): its next URL {steal} is on another origin than the first \
             page's ({origin}); next pages must stay on it (the source's credentials are for that origin only); \
             retrying at the next interval",
            upstream.url("/cross")
        )
    );
    assert_eq!(other.request_count(), 0, "the other origin was never contacted");

    // An upstream that always names a next page: maxPages pages, then a refusal, nothing published.
    upstream.route("/endless", Reply::ok(r#"{"items":[1],"next":"/endless"}"#));
    let spec = json!({"generator": {"type": "http", "http": {"url": upstream.url("/endless"),
        "pagination": {"type": "jq", "next": ".next", "items": ".items", "maxPages": 3}}}});
    api.create(&PostParams::default(), &source("endless", &upstream.url("/endless"), spec)).await.unwrap();
    let message = wait_failing(&api, "endless", "FetchFailed").await;
    assert!(
        message.starts_with(&format!(
            "spec.generator.http.pagination: page 3 ({}): it names a next page, beyond maxPages (3)",
            upstream.url("/endless")
        )),
        "{message}"
    );
    assert_eq!(upstream.requests().iter().filter(|r| r.path == "/endless").count(), 3);
    assert!(api.get("endless").await.unwrap().status.unwrap().artifact.is_none(), "a truncated list is not published");

    // spec.maxSize bounds the pages together: two pages of 320 bytes fit in 700, a third does not.
    let big = |next: &str| Reply::ok(json!({"items": ["x".repeat(300)], "next": next}).to_string());
    upstream.route("/big", big("/big?p=2"));
    upstream.route("/big?p=2", big("/big?p=3"));
    upstream.route("/big?p=3", Reply::ok(json!({"items": ["x".repeat(300)], "next": null}).to_string()));
    let spec = json!({"maxSize": "700", "generator": {"type": "http", "http": {"url": upstream.url("/big"),
        "pagination": {"type": "jq", "next": ".next", "items": ".items"}}}});
    api.create(&PostParams::default(), &source("big", &upstream.url("/big"), spec)).await.unwrap();
    let message = wait_failing(&api, "big", "FetchFailed").await;
    assert!(
        message.starts_with(&format!(
            "spec.generator.http.pagination: page 3 ({}): the pages together exceed the size limit of 700 bytes \
             (spec.maxSize)",
            upstream.url("/big?p=redacted")
        )),
        "{message}"
    );
    ctl.stop().await;
}
