//! Shared limits are shared fairly: one namespace cannot hold every reconcile slot (with slow
//! upstreams in one namespace, a source in another still becomes Ready at once), and fetches
//! wait for the memory budget rather than overcommit it, and a namespace stores no more than
//! its quota.

use std::time::{Duration, Instant};

use externalsource_core::controller::api::ExternalSource;
use externalsource_core::testing::noise;
use externalsource_tests::controller::Options;
use externalsource_tests::sources::{ready, request_reconcile, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, eventually};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_namespace_leaves_slots_for_the_others() {
    let cp = ControlPlane::start().await;
    let busy_ns = cp.namespace("busy").await;
    let calm_ns = cp.namespace("calm").await;
    // 4 controller slots, at most 2 per namespace.
    let options = Options { namespace_concurrency: 2, timeout: Duration::from_secs(30), ..Options::default() };
    let ctl = TestController::start(cp.client(), options).await;
    let slow = Upstream::start(Reply::ok("slow").with_delay(Duration::from_secs(6))).await;
    let busy: Api<ExternalSource> = Api::namespaced(cp.client(), &busy_ns);
    for i in 0..4 {
        busy.create(&PostParams::default(), &source(&format!("s{i}"), &slow.url(&format!("/{i}")), json!({})))
            .await
            .unwrap();
    }
    eventually("two slow fetches in flight", Duration::from_secs(30), || async {
        (slow.request_count() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(slow.request_count(), 2, "the busy namespace is held to its 2 slots");

    let fast = Upstream::start(Reply::ok("fast")).await;
    let calm: Api<ExternalSource> = Api::namespaced(cp.client(), &calm_ns);
    let started = Instant::now();
    calm.create(&PostParams::default(), &source("quick", &fast.url("/"), json!({}))).await.unwrap();
    wait_ready(&calm, "quick", "True").await;
    assert!(started.elapsed() < Duration::from_secs(3), "the other namespace waited {:?}", started.elapsed());
    assert!(slow.request_count() <= 2, "the slow fetches were still running");
    // The busy namespace gets its turn too: all four become Ready.
    for i in 0..4 {
        eventually(&format!("s{i} Ready"), Duration::from_secs(60), || async {
            let es = busy.get(&format!("s{i}")).await.ok()?;
            let ready = es.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            (ready.status == "True").then_some(())
        })
        .await;
    }
    ctl.stop().await;
}

/// With a fetch memory budget of one max-size body, fetches queue for memory instead of
/// overcommitting it: two slow sources are fetched one after the other, and both become Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_queue_for_the_memory_budget() {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("memory").await;
    let max_size = 1 << 20;
    let options =
        Options { max_size, memory_budget: 2 * max_size, timeout: Duration::from_secs(30), ..Options::default() };
    let ctl = TestController::start(cp.client(), options).await;
    let slow = Upstream::start(Reply::ok("slow").with_delay(Duration::from_secs(3))).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    for name in ["a", "b"] {
        api.create(&PostParams::default(), &source(name, &slow.url(&format!("/{name}")), json!({}))).await.unwrap();
    }
    eventually("one fetch in flight", Duration::from_secs(30), || async { (slow.request_count() >= 1).then_some(()) })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(slow.request_count(), 1, "the second fetch waits for memory, though a reconcile slot is free");
    for name in ["a", "b"] {
        wait_ready(&api, name, "True").await;
    }
    ctl.stop().await;
}

/// `storage.namespace_quota`: one namespace cannot fill the store for the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_stores_no_more_than_its_quota() {
    let cp = ControlPlane::start().await;
    let greedy_ns = cp.namespace("greedy").await;
    let other_ns = cp.namespace("other").await;
    // Room for two ~100 KiB artifacts per namespace, not three.
    let options = Options { namespace_quota: Some(250 << 10), ..Options::default() };
    let ctl = TestController::start(cp.client(), options).await;
    let greedy: Api<ExternalSource> = Api::namespaced(cp.client(), &greedy_ns);
    let mut fixtures = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let fixture = Upstream::start(Reply::ok(noise(i as u64, 100 << 10))).await;
        greedy.create(&PostParams::default(), &source(name, &fixture.url("/"), json!({}))).await.unwrap();
        if i < 2 {
            wait_ready(&greedy, name, "True").await;
        }
        fixtures.push(fixture);
    }
    let es = wait_ready(&greedy, "c", "False").await;
    let (_, reason, message) = ready(&es).unwrap();
    assert_eq!(reason, "StorageOperationFailed", "{message}");
    assert!(message.contains(&format!("namespace {greedy_ns} already stores")), "{message}");
    assert!(message.contains("storage.namespace_quota"), "{message}");

    // Another namespace has a quota of its own.
    let other: Api<ExternalSource> = Api::namespaced(cp.client(), &other_ns);
    other.create(&PostParams::default(), &source("a", &fixtures[0].url("/"), json!({}))).await.unwrap();
    wait_ready(&other, "a", "True").await;

    // Deleting a source frees its share: the third fits on its next attempt.
    greedy.delete("a", &DeleteParams::default()).await.unwrap();
    eventually("a's artifacts deleted", Duration::from_secs(30), || async {
        let left = ctl.storage.list(&format!("artifacts/{greedy_ns}/a/")).await.ok()?;
        left.is_empty().then_some(())
    })
    .await;
    request_reconcile(&greedy, "c", "after-delete").await;
    wait_ready(&greedy, "c", "True").await;
    ctl.stop().await;
}
