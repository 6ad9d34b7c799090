//! Shared limits are shared fairly: one namespace cannot hold every reconcile slot (with slow
//! upstreams in one namespace, a source in another still becomes Ready at once), and fetches
//! wait for the memory budget rather than overcommit it.

use std::time::{Duration, Instant};

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::controller::Options;
use externalsource_tests::sources::{source, wait_ready};
use externalsource_tests::{ControlPlane, Fixture, Reply, TestController, eventually};
use kube::api::{Api, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_namespace_leaves_slots_for_the_others() {
    let cp = ControlPlane::start().await;
    let busy_ns = cp.namespace("busy").await;
    let calm_ns = cp.namespace("calm").await;
    // 4 controller slots, at most 2 per namespace.
    let options = Options { namespace_concurrency: 2, timeout: Duration::from_secs(30), ..Options::default() };
    let ctl = TestController::start(cp.client(), options).await;
    let slow = Fixture::start(Reply::ok("slow").with_delay(Duration::from_secs(6))).await;
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

    let fast = Fixture::start(Reply::ok("fast")).await;
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
    let slow = Fixture::start(Reply::ok("slow").with_delay(Duration::from_secs(3))).await;
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
