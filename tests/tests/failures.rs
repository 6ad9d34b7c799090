//! Failure semantics against real parts: a real kube-apiserver (stopped and started mid-test), a
//! real memory backend behind the storage fault injector, a real HTTP fixture and the real
//! artifact server. The claim under test throughout: the status never names an artifact the
//! store does not hold, and `lastHandledETag` never runs ahead of the published artifact.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use externalsource_core::ObjectKey;
use externalsource_core::controller::api::{ExternalArtifact, ExternalSource};
use externalsource_core::testing::{Fault, Operation, PutBytes, Times, noise};
use externalsource_tests::controller::Options;
use externalsource_tests::sources::{WAIT, artifact, download, ready, request_reconcile, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, eventually, sha256};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

fn condition(es: &ExternalSource, type_: &str) -> Option<(String, String, String)> {
    let c = es.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn stored_keys(ctl: &TestController, ns: &str, name: &str) -> Vec<String> {
    let objects = ctl.storage.list(&format!("artifacts/{ns}/{name}/")).await.expect("list");
    objects.into_iter().map(|m| m.key.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_put_never_advances_the_etag_and_recovers() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("put-fails").await;
    let (ctl, faults) = TestController::start_faulty(cp.client(), Options::default(), 64 << 20).await;
    let fixture = Upstream::start(Reply::ok("content A").with_etag("\"v1\"")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("p", &fixture.url("/"), json!({}))).await.unwrap();
    let a = artifact(&wait_ready(&api, "p", "True").await);

    // Upstream changes; the next two puts fail as in an S3 outage.
    fixture.set(Reply::ok("content B").with_etag("\"v2\""));
    faults.fail(Operation::Put, Fault::Unavailable, Times::Next(2));
    let before = fixture.request_count();
    request_reconcile(&api, "p", "change").await;
    let saw_failure = AtomicBool::new(false);
    let b = eventually("Ready with content B", WAIT, || async {
        let es = api.get("p").await.ok()?;
        let status = es.status.clone()?;
        let art = status.artifact.clone()?;
        // The invariant, at every observation: the ETag describes the published content.
        let etag = status.last_handled_e_tag.as_deref();
        assert!(
            (etag == Some("\"v1\"") && art.digest == a.digest) || (etag == Some("\"v2\"") && art.digest != a.digest),
            "lastHandledETag {etag:?} does not describe the published artifact {}",
            art.revision
        );
        let (ok, reason, message) = ready(&es)?;
        if ok == "False" && reason == "StorageOperationFailed" {
            assert!(message.contains("unavailable"), "{message}");
            let reconciling = condition(&es, "Reconciling").expect("Reconciling while retrying");
            assert_eq!((reconciling.0.as_str(), reconciling.1.as_str()), ("True", "ProgressingWithRetry"));
            saw_failure.store(true, Ordering::SeqCst);
        }
        (ok == "True" && art.digest != a.digest).then_some(art)
    })
    .await;
    assert!(saw_failure.load(Ordering::SeqCst), "the failed puts were reported as StorageOperationFailed");
    assert_eq!(faults.failures(Operation::Put), 2);
    assert_eq!(b.revision.split('@').next(), Some("v2"), "{}", b.revision);
    // Every retry fetched the body again: none was answered 304 on the strength of v2.
    let retries = &fixture.requests()[before..];
    assert!(retries.len() >= 3, "the first attempt and two retries: {}", retries.len());
    for r in retries {
        let inm = r.headers.get("if-none-match").and_then(|v| v.to_str().ok());
        assert_ne!(inm, Some("\"v2\""), "If-None-Match named an ETag whose content was never stored");
        assert_eq!(r.status, 200);
    }
    let (code, bytes) = download(&b.url).await;
    assert_eq!((code, sha256(&bytes)), (200, b.digest.clone()));
    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    assert_eq!(eas.get("p").await.unwrap().status.unwrap().artifact.unwrap().digest, b.digest);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_makes_room_and_reports_what_can_never_fit() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("budget").await;
    // Room for two ~300 KiB artifacts, not three.
    let options = Options { max_size: 2 << 20, ..Options::default() };
    let (ctl, _faults) = TestController::start_faulty(cp.client(), options, 700 << 10).await;
    let fixture = Upstream::start(Reply::ok(noise(1, 300 << 10))).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("b", &fixture.url("/"), json!({}))).await.unwrap();
    let first = artifact(&wait_ready(&api, "b", "True").await);
    fixture.set(Reply::ok(noise(2, 300 << 10)));
    let second = artifact(&request_reconcile(&api, "b", "2").await);
    assert_eq!(ready(&api.get("b").await.unwrap()).unwrap().0, "True");

    // A third revision does not fit beside two: the one not published goes, and it is stored.
    fixture.set(Reply::ok(noise(3, 300 << 10)));
    let es = request_reconcile(&api, "b", "3").await;
    let third = artifact(&es);
    assert_eq!(ready(&es).unwrap().0, "True", "{:?}", ready(&es));
    assert_ne!(third.digest, second.digest);
    assert_eq!(ready_gauge(&ctl, &ns, "b"), Some(1), "a Ready source reads 1 in externalsource_ready");
    let stored = stored_keys(&ctl, &ns, "b").await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.contains(&second.path) && stored.contains(&third.path), "{stored:?}");
    assert!(!stored.contains(&first.path));

    // A payload larger than the whole budget can never fit: the message says so, nothing
    // published is lost, and the next attempt waits for the interval.
    fixture.set(Reply::ok(noise(4, 900 << 10)));
    let es = request_reconcile(&api, "b", "4").await;
    let (ok, reason, message) = ready(&es).unwrap();
    assert_eq!((ok.as_str(), reason.as_str()), ("False", "StorageOperationFailed"), "{message}");
    assert!(
        message.contains("needs") && message.contains("available") && message.contains(&format!("{}", 700 << 10)),
        "names needed, available and budget bytes: {message}"
    );
    assert!(message.contains("next interval"), "{message}");
    assert!(condition(&es, "Reconciling").is_none(), "not retried with backoff");
    assert_eq!(artifact(&es), third, "the last good artifact stays in the status");
    let (code, bytes) = download(&third.url).await;
    assert_eq!((code, sha256(&bytes)), (200, third.digest.clone()), "and stays served");
    let n = fixture.request_count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fixture.request_count(), n, "no retry storm while the store is full");
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &ctl.registry).unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("externalsource_reconciliation_total")
            && l.contains(&format!("namespace=\"{ns}\""))
            && l.contains("kind=\"over_budget\"")
            && l.contains("result=\"error\"")),
        "the reconcile metric names the error kind:\n{metrics}"
    );
    assert_eq!(ready_gauge(&ctl, &ns, "b"), Some(0), "a failing source reads 0 (the alert's input)");
    ctl.stop().await;
}

/// The `externalsource_ready` sample of `namespace/name`, if exported.
fn ready_gauge(ctl: &TestController, namespace: &str, name: &str) -> Option<i64> {
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &ctl.registry).unwrap();
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix("externalsource_ready{")?;
        (rest.contains(&format!("namespace=\"{namespace}\"")) && rest.contains(&format!("name=\"{name}\"")))
            .then(|| l.rsplit(' ').next()?.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_lost_after_the_put_converges_without_duplicates() {
    let mut cp = ControlPlane::start().await;
    let ns = cp.namespace("apiserver-down").await;
    let (ctl, faults) = TestController::start_faulty(cp.client(), Options::default(), 64 << 20).await;
    let fixture = Upstream::start(Reply::ok("before").with_etag("\"1\"")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("d", &fixture.url("/"), json!({}))).await.unwrap();
    let old = artifact(&wait_ready(&api, "d", "True").await);

    // Hold the next put, kill the API server while it is held, then let the put finish: the
    // publish and the status write that follow fail.
    fixture.set(Reply::ok("after").with_etag("\"2\""));
    let gate = faults.hold(Operation::Put);
    request_reconcile_nowait(&api, "d", "down").await;
    tokio::time::timeout(WAIT, gate.reached()).await.expect("the put reached the gate");
    cp.stop_apiserver();
    gate.open();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cp.start_apiserver().await;

    let es = eventually("converged after the restart", Duration::from_secs(90), || async {
        let es = api.get("d").await.ok()?;
        let art = es.status.as_ref()?.artifact.clone()?;
        (ready(&es)?.0 == "True" && art.digest != old.digest).then_some(es)
    })
    .await;
    let new = artifact(&es);
    assert_eq!(es.status.as_ref().unwrap().last_handled_e_tag.as_deref(), Some("\"2\""));
    let stored = stored_keys(&ctl, &ns, "d").await;
    assert_eq!(stored.iter().filter(|k| **k == new.path).count(), 1, "{stored:?}");
    assert_eq!(stored.len(), 2, "the new revision and the previously published one: {stored:?}");
    assert!(stored.contains(&old.path), "the previously published revision is kept: {stored:?}");
    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    assert_eq!(eas.get("d").await.unwrap().status.unwrap().artifact.unwrap().digest, new.digest);
    assert_eq!(download(&old.url).await.0, 200);
    let (code, bytes) = download(&new.url).await;
    assert_eq!((code, sha256(&bytes)), (200, new.digest.clone()));
    ctl.stop().await;
}

/// Sets the requestedAt annotation without waiting for it to be handled.
async fn request_reconcile_nowait(api: &Api<ExternalSource>, name: &str, token: &str) {
    use kube::api::{Patch, PatchParams};
    let patch = json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_of_published_revisions_never_fail_while_gc_runs() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("gc-load").await;
    let (ctl, _faults) = TestController::start_faulty(cp.client(), Options::default(), 64 << 20).await;
    let fixture = Upstream::start(Reply::ok(noise(10, 64 << 10))).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("g", &fixture.url("/"), json!({}))).await.unwrap();
    let x = artifact(&wait_ready(&api, "g", "True").await);
    fixture.set(Reply::ok(noise(11, 64 << 10)));
    let y = artifact(&request_reconcile(&api, "g", "y0").await);
    // A revision that was stored but never published: garbage collection takes it first.
    let orphan = ObjectKey::parse(&format!("artifacts/{ns}/g/{}.tar.gz", "0".repeat(64))).unwrap();
    ctl.storage.put_bytes(&orphan, noise(12, 1000).into()).await.unwrap();

    // At least 1,000 downloads, and they keep going until the last switch is done.
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let switching = Arc::new(AtomicBool::new(true));
    let client = reqwest::Client::new();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url, digest) = (client.clone(), x.url.clone(), x.digest.clone());
        let (errors, done, switching) = (errors.clone(), done.clone(), switching.clone());
        workers.push(tokio::spawn(async move {
            while switching.load(Ordering::SeqCst) || done.load(Ordering::SeqCst) < 1000 {
                done.fetch_add(1, Ordering::SeqCst);
                let ok = match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => r.bytes().await.map(|b| sha256(&b) == digest).unwrap_or(false),
                    _ => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // Meanwhile the source switches between the two contents; each switch runs GC.
    for (i, seed) in [10, 11, 10, 11].into_iter().enumerate() {
        fixture.set(Reply::ok(noise(seed, 64 << 10)));
        let es = request_reconcile(&api, "g", &format!("switch-{i}")).await;
        assert_eq!(artifact(&es).digest, if seed == 10 { x.digest.clone() } else { y.digest.clone() });
    }
    switching.store(false, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let total = done.load(Ordering::SeqCst);
    assert!(total >= 1000, "{total} downloads");
    assert_eq!(errors.load(Ordering::SeqCst), 0, "downloads of a published revision failed (of {total})");
    let stored = stored_keys(&ctl, &ns, "g").await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.contains(&x.path) && stored.contains(&y.path), "{stored:?}");
    assert!(!stored.contains(&orphan.to_string()), "the never-published object was collected");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_drops_its_etag_gets_no_if_none_match() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("etag-gone").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok("tagged").with_etag("\"e1\"")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("t", &fixture.url("/"), json!({}))).await.unwrap();
    let es = wait_ready(&api, "t", "True").await;
    assert_eq!(es.status.unwrap().last_handled_e_tag.as_deref(), Some("\"e1\""));

    fixture.set(Reply::ok("untagged"));
    let es = request_reconcile(&api, "t", "1").await;
    let status = es.status.clone().unwrap();
    assert_eq!(status.last_handled_e_tag, None, "the recorded ETag is cleared");
    assert!(!status.artifact.unwrap().metadata.contains_key("etag"));
    let n = fixture.request_count();
    request_reconcile(&api, "t", "2").await;
    let requests = fixture.requests();
    assert_eq!(requests.len(), n + 1);
    assert!(requests[n].headers.get("if-none-match").is_none(), "no If-None-Match without an ETag");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_to_an_unconditional_request_backs_off() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("odd-304").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply { body: Default::default(), ..Reply::status(304) }).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("n", &fixture.url("/"), json!({}))).await.unwrap();
    let es = eventually("Ready=False for the 304", WAIT, || async {
        let es = api.get("n").await.ok()?;
        (ready(&es)?.1 == "FetchFailed").then_some(es)
    })
    .await;
    let (_, _, message) = ready(&es).unwrap();
    assert!(message.contains("304") && message.contains("without If-None-Match"), "{message}");
    let reconciling = condition(&es, "Reconciling").expect("Reconciling");
    assert_eq!(reconciling.1, "ProgressingWithRetry");
    let start = fixture.request_count();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let in_8s = fixture.request_count() - start;
    // Backoff 1, 2, 4, 8 s: a handful of requests, not the old one-per-second loop (or worse).
    assert!((1..=4).contains(&in_8s), "{in_8s} requests in 8 s");
    assert!(fixture.requests().iter().all(|r| r.headers.get("if-none-match").is_none()));
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_delete_does_not_hang_deletion() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("finalizer").await;
    let options = Options { finalizer_attempts: 3, ..Options::default() };
    let (ctl, faults) = TestController::start_faulty(cp.client(), options, 64 << 20).await;
    let fixture = Upstream::start(Reply::ok("keep me")).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("stuck", &fixture.url("/"), json!({}))).await.unwrap();
    let art = artifact(&wait_ready(&api, "stuck", "True").await);

    faults.fail(Operation::Delete, Fault::AccessDenied, Times::Always);
    api.delete("stuck", &DeleteParams::default()).await.unwrap();
    eventually("deletion completes", WAIT, || async { api.get_opt("stuck").await.ok()?.is_none().then_some(()) }).await;
    assert_eq!(faults.failures(Operation::Delete), 3, "released after the configured attempts");
    let events: Api<Event> = Api::namespaced(cp.client(), &ns);
    let warning = eventually("CleanupAbandoned event", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("CleanupAbandoned"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let note = warning.note.unwrap_or_default();
    assert!(note.contains(&art.path) && note.contains("3 failed attempts"), "{note}");
    assert!(ctl.storage.stat(&ObjectKey::parse(&art.path).unwrap()).await.is_ok(), "what was left behind is named");
    let eas: Api<ExternalArtifact> = Api::namespaced(cp.client(), &ns);
    assert!(eas.get_opt("stuck").await.unwrap().is_none(), "the ExternalArtifact still goes");

    // A store whose bucket is gone has nothing to delete: deletion completes at once, quietly.
    faults.clear();
    api.create(&PostParams::default(), &source("gone", &fixture.url("/"), json!({}))).await.unwrap();
    wait_ready(&api, "gone", "True").await;
    faults.fail(Operation::List, Fault::StoreMissing, Times::Always);
    api.delete("gone", &DeleteParams::default()).await.unwrap();
    eventually("deletion completes", Duration::from_secs(10), || async {
        api.get_opt("gone").await.ok()?.is_none().then_some(())
    })
    .await;
    let list = events.list(&ListParams::default()).await.unwrap();
    let abandoned = list.items.iter().filter(|e| e.reason.as_deref() == Some("CleanupAbandoned")).count();
    assert_eq!(abandoned, 1, "no warning for a store that holds nothing");
    ctl.stop().await;
}
