//! Push against poll: how long after an upstream change its new artifact is served, when the
//! change is pushed to `spec.receiver` and when it is left to the source's interval.
//!
//! Runs a control plane, the built controller binary (`target/debug/externalsource-controller`,
//! or `EXTERNALSOURCE_CONTROLLER_BIN`) with its receiver on, and two loopback upstreams. Each
//! round changes an upstream's body and times until the source's new artifact downloads (its
//! status names a new revision, and the artifact URL answers 200 with that digest):
//! - push: a `generic` receiver source with a 1h interval; the change is pushed at once;
//! - poll: a source with `--interval` (default 10s) and no receiver; the change happens at a
//!   random moment of the interval, as a real change would.
//!
//! Prints one line per round and a summary per mode: `mode rounds mean median p90 min max`.
//! Usage: `bench-receiver [--rounds N] [--interval SECONDS]`.

use std::time::{Duration, Instant};

use externalsource_core::controller::api::{Artifact, ExternalSource};
use externalsource_tests::receiver::{ReceiverController, create_token_secret, push, push_when_known, webhook_path};
use externalsource_tests::sources::{artifact, download, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, Upstream, sha256};
use kube::api::{Api, PostParams};
use serde_json::json;

const TOKEN: &str = "bench-receiver-token";

struct Args {
    rounds: usize,
    interval: u64,
}

fn args() -> Args {
    let mut out = Args { rounds: 10, interval: 10 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<u64>().ok());
        match (pair[0].as_str(), value) {
            ("--rounds", Some(n)) => out.rounds = n as usize,
            ("--interval", Some(s)) => out.interval = s,
            _ => panic!("usage: bench-receiver [--rounds N] [--interval SECONDS]"),
        }
    }
    out
}

/// Waits until the source's artifact is not `old` and downloads as its digest says; the artifact.
async fn new_artifact_served(api: &Api<ExternalSource>, name: &str, old: &str) -> Artifact {
    loop {
        if let Some(a) = api.get(name).await.ok().and_then(|es| es.status?.artifact).filter(|a| a.revision != old) {
            let (status, bytes) = download(&a.url).await;
            if status == 200 && sha256(&bytes) == a.digest {
                return a;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A number from 0 to 1, different each call (no dependency for one random offset per round).
fn unit_random(round: usize) -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let mut x = u64::from(nanos) ^ (round as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % 10_000) as f64 / 10_000.0
}

fn summary(mode: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let n = samples.len();
    let secs = |d: Duration| d.as_secs_f64();
    let mean = samples.iter().map(|d| secs(*d)).sum::<f64>() / n as f64;
    let median =
        if n % 2 == 1 { secs(samples[n / 2]) } else { (secs(samples[n / 2 - 1]) + secs(samples[n / 2])) / 2.0 };
    let p90 = secs(samples[((n * 9).div_ceil(10)).saturating_sub(1)]);
    println!(
        "summary {mode} rounds {n} mean {mean:.3}s median {median:.3}s p90 {p90:.3}s min {:.3}s max {:.3}s",
        secs(samples[0]),
        secs(samples[n - 1])
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("bench-receiver").await;
    let client = cp.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = ReceiverController::start(&cp, &ns, dir.path(), "1s").await;
    let api: Api<ExternalSource> = Api::namespaced(client.clone(), &ns);
    let http = reqwest::Client::new();

    let pushed = Upstream::start(Reply::ok("push 0")).await;
    create_token_secret(&client, &ns, "hook", TOKEN).await;
    let es =
        source("pushed", &pushed.url("/data"), json!({"receiver": {"type": "generic", "secretRef": {"name": "hook"}}}));
    api.create(&PostParams::default(), &es).await.expect("create pushed");
    let mut revision = artifact(&wait_ready(&api, "pushed", "True").await).revision;
    let url = controller.url(&webhook_path(&api, "pushed").await);
    assert_eq!(push_when_known(&http, &url, &[], b"").await, 202);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut push_samples = Vec::new();
    for round in 1..=args.rounds {
        pushed.set(Reply::ok(format!("push {round}")));
        let started = Instant::now();
        assert_eq!(push(&http, &url, &[], b"").await, 202);
        revision = new_artifact_served(&api, "pushed", &revision).await.revision;
        println!("push round {round} {:.3}s", started.elapsed().as_secs_f64());
        push_samples.push(started.elapsed());
    }

    let polled = Upstream::start(Reply::ok("poll 0")).await;
    let es = source("polled", &polled.url("/data"), json!({"interval": format!("{}s", args.interval)}));
    api.create(&PostParams::default(), &es).await.expect("create polled");
    let mut revision = artifact(&wait_ready(&api, "polled", "True").await).revision;
    let mut poll_samples = Vec::new();
    for round in 1..=args.rounds {
        tokio::time::sleep(Duration::from_secs_f64(args.interval as f64 * unit_random(round))).await;
        polled.set(Reply::ok(format!("poll {round}")));
        let started = Instant::now();
        revision = new_artifact_served(&api, "polled", &revision).await.revision;
        println!("poll round {round} {:.3}s", started.elapsed().as_secs_f64());
        poll_samples.push(started.elapsed());
    }
    summary("push", push_samples);
    summary(&format!("poll-{}s", args.interval), poll_samples);
    controller.process.kill();
}
