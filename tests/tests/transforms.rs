//! Hostile `spec.transform` filters run in the sandbox: each hits its limit in a worker process
//! (the built controller binary), the error names the limit, and the controller (this test
//! process, which runs it in-process) keeps reconciling everyone else.

use std::time::{Duration, Instant};

use externalsource_core::config::TransformConfig;
use externalsource_core::controller::api::ExternalSource;
use externalsource_core::isolated::transform::TransformError;
use externalsource_core::isolated::transform::sandbox::Sandbox;
use externalsource_tests::controller::{Options, test_transform_limits};
use externalsource_tests::process::controller_binary;
use externalsource_tests::sources::{artifact, download, ready, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream};
use kube::api::{Api, PostParams};
use serde_json::json;

const MAX_OUTPUT: u64 = 1 << 20;

fn sandbox(limits: TransformConfig) -> Sandbox {
    Sandbox::new(controller_binary(), limits)
}

async fn run(sandbox: &Sandbox, code: &str, payload: &str) -> Result<String, TransformError> {
    sandbox.run(code, payload.as_bytes(), MAX_OUTPUT).await.map(|out| String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn filters_run_in_a_worker_like_jq_c() {
    let s = sandbox(test_transform_limits());
    assert_eq!(
        run(&s, ".items | map(.name)", r#"{"items":[{"name":"a"},{"name":"b"}]}"#).await.unwrap(),
        "[\"a\",\"b\"]\n"
    );
    assert_eq!(run(&s, ".[]", "[1,{\"b\":2}]").await.unwrap(), "1\n{\"b\":2}\n");
    assert!(matches!(run(&s, ".[ |", "1").await, Err(TransformError::Compile(_))));
    assert!(matches!(run(&s, "env", "1").await, Err(TransformError::Compile(_))), "env is not a builtin");
    assert!(matches!(run(&s, ".", "not json").await, Err(TransformError::Input(_))));
    let Err(TransformError::Run(message)) = run(&s, r#"error("boom")"#, "1").await else { panic!("a run-time error") };
    assert!(message.contains("boom"), "{message}");
    // A filter that panics the jq engine (an `unwrap` in jaq's module loader) fails like any other.
    let Err(TransformError::Run(message)) = run(&s, r#"import "/etc/passwd" as $t; $t"#, "1").await else { panic!() };
    assert!(message.starts_with("the jq engine panicked"), "{message}");
    assert!(matches!(run(&s, "halt", "1").await, Err(TransformError::Run(_))), "halt does not end the worker early");
    // A huge error value is cut to a message that fits a condition.
    let Err(TransformError::Run(message)) = run(&s, r#"error("x" * 100000)"#, "1").await else { panic!() };
    assert!(message.len() <= 1024, "{} bytes", message.len());
}

#[tokio::test]
async fn an_endless_filter_is_stopped_by_the_cpu_limit() {
    let s = sandbox(test_transform_limits());
    let started = Instant::now();
    let got = run(&s, "last(range(1e12))", "null").await;
    assert_eq!(got, Err(TransformError::CpuExceeded(1)));
    assert_eq!(got.unwrap_err().to_string(), "exceeded 1s CPU (transform.max_cpu)");
    assert!(started.elapsed() < Duration::from_secs(4), "stopped after {:?}", started.elapsed());
}

#[tokio::test]
async fn an_allocating_filter_is_stopped_by_the_memory_limit() {
    let limits = TransformConfig {
        max_memory: 128 << 20,
        max_cpu: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        ..test_transform_limits()
    };
    let s = sandbox(limits);
    assert_eq!(run(&s, "[range(1e10)]", "null").await, Err(TransformError::MemoryExceeded(128 << 20)));
    // A string doubled until it no longer fits: one allocation fails.
    let got = run(&s, r#"reduce range(40) as $i ("x"; . + .)"#, "null").await;
    assert_eq!(got, Err(TransformError::MemoryExceeded(128 << 20)));
}

#[tokio::test]
async fn deep_recursion_ends_the_worker_not_the_controller() {
    let limits = TransformConfig {
        max_cpu: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        ..test_transform_limits()
    };
    let s = sandbox(limits);
    // Recursion without output: the worker's stack runs out.
    assert_eq!(run(&s, "def f: 1 + f; f", "null").await, Err(TransformError::StackExceeded));
    // A value nested deeper than transform.max_depth is refused before it is written.
    let got = run(&s, "reduce range(100000) as $i (0; [.])", "null").await;
    assert_eq!(got, Err(TransformError::TooDeep(512)));
}

#[tokio::test]
async fn the_wall_clock_and_the_output_are_capped() {
    // CPU limit above the timeout: the parent's kill is what stops it.
    let limits = TransformConfig {
        max_cpu: Duration::from_secs(30),
        timeout: Duration::from_secs(1),
        ..test_transform_limits()
    };
    let s = sandbox(limits);
    let started = Instant::now();
    assert_eq!(run(&s, "last(range(1e12))", "null").await, Err(TransformError::TimedOut(Duration::from_secs(1))));
    assert!(started.elapsed() < Duration::from_secs(3), "killed after {:?}", started.elapsed());
    let got = s.run("repeat(.)", b"\"xxxxxxxx\"", 1000).await;
    assert_eq!(got, Err(TransformError::TooLarge(1000)));
}

#[tokio::test]
async fn runs_beyond_the_concurrency_wait_for_a_slot() {
    // Two slots, four endless filters: the second pair starts when the first is stopped.
    let s = sandbox(test_transform_limits());
    let started = Instant::now();
    let runs = (0..4).map(|_| run(&s, "last(range(1e12))", "null"));
    let results = futures::future::join_all(runs).await;
    assert!(results.iter().all(|r| *r == Err(TransformError::CpuExceeded(1))), "{results:?}");
    assert!(started.elapsed() >= Duration::from_secs(2), "4 runs of 1s CPU on 2 slots took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_filters_leave_the_controller_and_other_sources_alone() {
    let cp = ControlPlane::start().await;
    let tenant = cp.namespace("hostile").await;
    let other = cp.namespace("neighbour").await;
    let ctl = TestController::start(cp.client(), Options::default()).await;
    let fixture = Upstream::start(Reply::ok(r#"{"items":[{"name":"a"}]}"#)).await;
    let hostile: Api<ExternalSource> = Api::namespaced(cp.client(), &tenant);
    let filters = [
        ("endless", "last(range(1e12))", &["exceeded 1s CPU (transform.max_cpu)"][..]),
        // Whichever of its limits it hits first.
        ("allocating", "[range(1e10)]", &["(transform.max_memory)", "(transform.max_cpu)"]),
        ("doubling", "reduce range(40) as $i (\"x\"; . + .)", &["exceeded 256MiB of memory (transform.max_memory)"]),
        ("nesting", "reduce range(1e6) as $i (0; [.])", &["(transform.max_depth)", "(transform.max_cpu)"]),
        ("recursive", "def f: 1 + f; f", &["recursed deeper than the worker's stack allows"]),
    ];
    for (name, jq, _) in filters {
        let spec = json!({"transform": {"jq": jq}});
        hostile.create(&PostParams::default(), &source(name, &fixture.url(&format!("/{name}")), spec)).await.unwrap();
    }
    let neighbour: Api<ExternalSource> = Api::namespaced(cp.client(), &other);
    let started = Instant::now();
    let spec = json!({"transform": {"jq": ".items | map(.name)"}});
    neighbour.create(&PostParams::default(), &source("calm", &fixture.url("/calm"), spec)).await.unwrap();
    let es = wait_ready(&neighbour, "calm", "True").await;
    assert!(started.elapsed() < Duration::from_secs(30), "the neighbour waited {:?}", started.elapsed());
    assert_eq!(download(&artifact(&es).url).await.0, 200);

    for (name, _, limits) in filters {
        let es = wait_ready(&hostile, name, "False").await;
        let (_, reason, message) = ready(&es).unwrap();
        assert_eq!(reason, "TransformFailed", "{name}: {message}");
        assert!(message.starts_with("spec.transform.jq "), "{name}: {message}");
        assert!(limits.iter().any(|l| message.contains(l)), "{name}: {message:?} names one of {limits:?}");
    }
    // Still reconciling: a new source becomes Ready after the hostile ones failed.
    neighbour.create(&PostParams::default(), &source("later", &fixture.url("/later"), json!({}))).await.unwrap();
    wait_ready(&neighbour, "later", "True").await;
    ctl.stop().await;
}
