//! `spec.receiver` end to end: the controller binary with its receiver listener, a real
//! kube-apiserver, loopback upstreams, and pushes as GitHub or a generic sender sends them. The
//! sources poll once an hour, so whatever they fetch within the test was asked for by a push.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use externalsource_core::controller::api::{ExternalSource, REQUESTED_AT};
use externalsource_tests::receiver::{
    ReceiverController, create_token_secret, expected_path, push, push_when_known, signature, webhook_path,
};
use externalsource_tests::sources::{artifact, download, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, Upstream, eventually, sha256};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// One scenario at a time: each runs an apiserver, etcd and a controller on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GENERIC_TOKEN: &str = "generic-token-7f1c2e9a-not-for-logs";
const HMAC_TOKEN: &str = "hmac-token-0b3d5f8e-not-for-logs";
const GITHUB_TOKEN: &str = "github-token-c4a9e2d1-not-for-logs";

async fn create(api: &Api<ExternalSource>, name: &str, url: &str, kind: &str, secret: &str) {
    let es = source(name, url, json!({"receiver": {"type": kind, "secretRef": {"name": secret}}}));
    api.create(&PostParams::default(), &es).await.expect("create ExternalSource");
}

/// Waits until the upstream has answered `count` requests, then a little more to see no extra.
async fn fetched(upstream: &Upstream, count: usize) {
    eventually(&format!("{count} fetches"), Duration::from_secs(20), || async {
        (upstream.request_count() >= count).then_some(())
    })
    .await;
}

/// Waits until the upstream has seen no request for 1.5 s: reconciles a source's creation may
/// still cause (its Secret's watch event can arrive after the source's) are over.
async fn settle(upstream: &Upstream) {
    eventually("the upstream to settle", Duration::from_secs(20), || async {
        let before = upstream.request_count();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        (upstream.request_count() == before).then_some(())
    })
    .await;
}

/// Asserts the upstream sees no request for `quiet`.
async fn no_fetch_for(upstream: &Upstream, quiet: Duration, what: &str) {
    let before = upstream.request_count();
    tokio::time::sleep(quiet).await;
    assert_eq!(upstream.request_count(), before, "{what} made the controller fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_serves_the_new_revision_at_once_and_a_bad_one_fetches_nothing() {
    let _serial = SERIAL.lock().await;
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("receiver").await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    let controller = ReceiverController::start(&cp, &ns, dir.path(), "1s").await;
    let http = reqwest::Client::new();
    let api: Api<ExternalSource> = Api::namespaced(client.clone(), &ns);

    // generic: the path is the secret.
    let upstream = Upstream::start(Reply::ok(r#"{"v":1}"#)).await;
    create_token_secret(&client, &ns, "generic-hook", GENERIC_TOKEN).await;
    create(&api, "pushed", &upstream.url("/data"), "generic", "generic-hook").await;
    let first = wait_ready(&api, "pushed", "True").await;
    let path = webhook_path(&api, "pushed").await;
    assert_eq!(path, expected_path(GENERIC_TOKEN, "pushed", &ns), "status.webhookPath is Flux's derivation");
    let url = controller.url(&path);
    assert_eq!(push_when_known(&http, &url, &[], b"").await, 202);
    fetched(&upstream, 2).await;
    settle(&upstream).await;

    let guessed = controller.url(&expected_path("guessed-token", "pushed", &ns));
    assert_eq!(push(&http, &guessed, &[], b"").await, 404, "a path of another token is unknown");
    assert_eq!(http.get(&url).send().await.unwrap().status().as_u16(), 405, "only POST is a push");
    no_fetch_for(&upstream, Duration::from_secs(2), "a push to a wrong path").await;

    // Upstream changes, a push: the new revision is served within seconds (the interval is 1h).
    upstream.set(Reply::ok(r#"{"v":2}"#));
    let pushed_at = Instant::now();
    assert_eq!(push(&http, &url, &[], b"{}").await, 202);
    let old_revision = artifact(&first).revision;
    let updated = eventually("the pushed revision", Duration::from_secs(10), || async {
        let es = api.get("pushed").await.ok()?;
        let a = es.status.as_ref()?.artifact.clone()?;
        (a.revision != old_revision).then_some(a)
    })
    .await;
    let (status, bytes) = download(&updated.url).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&bytes), updated.digest, "the served artifact is the new revision");
    eprintln!("push to new artifact served: {:?}", pushed_at.elapsed());

    // A new token publishes a new path (the Secret is watched); the old one is unknown.
    let rotated = "generic-token-rotated-3e8b-not-for-logs";
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let patch = json!({"stringData": {"token": rotated}});
    secrets.patch("generic-hook", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("rotate token");
    let new_path = expected_path(rotated, "pushed", &ns);
    eventually("the rotated webhook path", Duration::from_secs(20), || async {
        (api.get("pushed").await.ok()?.status?.webhook_path.as_deref() == Some(new_path.as_str())).then_some(())
    })
    .await;
    let before = upstream.request_count();
    assert_eq!(push_when_known(&http, &controller.url(&new_path), &[], b"").await, 202);
    fetched(&upstream, before + 1).await;
    assert_eq!(push(&http, &url, &[], b"").await, 404, "the old token's path after rotation");

    // generic-hmac: the path is known, the body's signature is what counts.
    let signed_upstream = Upstream::start(Reply::ok(r#"{"s":1}"#)).await;
    create_token_secret(&client, &ns, "hmac-hook", HMAC_TOKEN).await;
    create(&api, "signed", &signed_upstream.url("/data"), "generic-hmac", "hmac-hook").await;
    wait_ready(&api, "signed", "True").await;
    let signed_url = controller.url(&webhook_path(&api, "signed").await);
    settle(&signed_upstream).await;
    let body = br#"{"event":"changed"}"#;
    let forged = [("X-Signature", signature("not-the-token", body))];
    assert_eq!(push_when_known(&http, &signed_url, &forged, body).await, 401, "a wrong key's signature");
    let good = [("X-Signature", signature(HMAC_TOKEN, body))];
    assert_eq!(push(&http, &signed_url, &good, b"tampered body").await, 401, "a signature of another body");
    assert_eq!(push(&http, &signed_url, &[], body).await, 401, "no signature");
    let large = vec![b'x'; 2 << 20];
    let large_signed = [("X-Signature", signature(HMAC_TOKEN, &large))];
    assert_eq!(push(&http, &signed_url, &large_signed, &large).await, 413, "a body over receiver.max_body");
    no_fetch_for(&signed_upstream, Duration::from_secs(2), "a refused push").await;
    let before = signed_upstream.request_count();
    assert_eq!(push(&http, &signed_url, &good, body).await, 202);
    fetched(&signed_upstream, before + 1).await;

    // github: X-Hub-Signature-256; a ping is answered and fetches nothing.
    let github_upstream = Upstream::start(Reply::ok(r#"{"g":1}"#)).await;
    create_token_secret(&client, &ns, "github-hook", GITHUB_TOKEN).await;
    create(&api, "from-github", &github_upstream.url("/data"), "github", "github-hook").await;
    wait_ready(&api, "from-github", "True").await;
    let github_url = controller.url(&webhook_path(&api, "from-github").await);
    settle(&github_upstream).await;
    let ping = br#"{"zen":"Keep it logically awesome."}"#;
    let headers = [("X-GitHub-Event", "ping".to_owned()), ("X-Hub-Signature-256", signature(GITHUB_TOKEN, ping))];
    assert_eq!(push_when_known(&http, &github_url, &headers, ping).await, 200);
    no_fetch_for(&github_upstream, Duration::from_secs(2), "GitHub's ping").await;
    let event = br#"{"ref":"refs/heads/main"}"#;
    let headers = [("X-GitHub-Event", "push".to_owned()), ("X-Hub-Signature-256", signature(GITHUB_TOKEN, event))];
    let before = github_upstream.request_count();
    assert_eq!(push(&http, &github_url, &headers, event).await, 202);
    fetched(&github_upstream, before + 1).await;

    let log = controller.process.log_text();
    for token in [GENERIC_TOKEN, rotated, HMAC_TOKEN, GITHUB_TOKEN] {
        assert!(!log.contains(token), "a receiver token is in the controller's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_pushes_costs_at_most_two_fetches() {
    let _serial = SERIAL.lock().await;
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("flood").await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    let controller = ReceiverController::start(&cp, &ns, dir.path(), "1s").await;
    let api: Api<ExternalSource> = Api::namespaced(client.clone(), &ns);
    // A fetch takes a second: the whole burst arrives while the first one is in flight.
    let upstream = Upstream::start(Reply::ok(r#"{"v":1}"#).with_delay(Duration::from_secs(1))).await;
    create_token_secret(&client, &ns, "hook", GENERIC_TOKEN).await;
    create(&api, "flooded", &upstream.url("/data"), "generic", "hook").await;
    wait_ready(&api, "flooded", "True").await;
    let url = controller.url(&webhook_path(&api, "flooded").await);
    let http = reqwest::Client::new();
    assert_eq!(push_when_known(&http, &url, &[], b"").await, 202);
    fetched(&upstream, 2).await;
    settle(&upstream).await;

    let requests = RequestedAt::record(&api, "flooded").listed().await;
    let before = upstream.request_count();
    let pushes = (0..200).map(|_| push(&http, &url, &[], b""));
    let statuses = futures::future::join_all(pushes).await;
    assert!(statuses.iter().all(|s| *s == 202), "every push accepted: {statuses:?}");
    fetched(&upstream, before + 1).await;
    // Long enough for a third and fourth fetch, had the flood caused them.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let extra = upstream.request_count() - before;
    let patches = requests.distinct();
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics/totals", controller.ops_port))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics");
    let counted = |result: &str| {
        let series = format!("externalsource_receiver_pushes_total{{result=\"{result}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    let (accepted, coalesced) = (counted("accepted"), counted("coalesced"));
    eprintln!("metrics: {accepted} accepted, {coalesced} coalesced");
    assert_eq!(accepted + coalesced, 201, "every authenticated push counted once:\n{metrics}");
    assert!(coalesced >= 100, "most of the burst joined a request in flight ({coalesced} coalesced)");
    eprintln!("200 pushes: {patches} reconcile requests written, {extra} fetches");
    assert!((1..=2).contains(&extra), "200 pushes caused {extra} fetches; at most 2 (one in flight, one queued)");
    assert!(
        (1..100).contains(&patches),
        "200 pushes wrote {patches} reconcile requests; coalesced, far fewer than the pushes"
    );
}

/// The `reconcile.fluxcd.io/requestedAt` values a source had, as a watch sees them.
struct RequestedAt {
    seen: Arc<Mutex<HashSet<String>>>,
    first: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RequestedAt {
    fn record(api: &Api<ExternalSource>, name: &str) -> Self {
        let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(api.clone(), config).applied_objects();
        let first = Arc::new(Mutex::new(None::<String>));
        let (into, before) = (seen.clone(), first.clone());
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(es)) = stream.next().await {
                let Some(value) = es.annotations().get(REQUESTED_AT).cloned() else { continue };
                // The value before the flood is not one of its requests.
                let mut before = before.lock().unwrap();
                if before.get_or_insert_with(|| value.clone()) != &value {
                    into.lock().unwrap().insert(value);
                }
            }
        });
        Self { seen, first, task }
    }

    /// Waits until the watch has seen the value before the flood.
    async fn listed(self) -> Self {
        eventually("the watch of requestedAt", Duration::from_secs(10), || async {
            self.first.lock().unwrap().is_some().then_some(())
        })
        .await;
        self
    }

    fn distinct(self) -> usize {
        self.task.abort();
        self.seen.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_lead_takes_the_push_and_the_leader_fetches() {
    let _serial = SERIAL.lock().await;
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("replicas").await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    let leader = ReceiverController::start_replica(&cp, &ns, dir.path(), "replica-a").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = || async {
        let lease = leases.get_opt("externalsource-controller-leader").await.ok()??;
        lease.spec?.holder_identity
    };
    eventually("replica-a to lead", Duration::from_secs(30), || async {
        (holder().await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let standby = ReceiverController::start_replica(&cp, &ns, dir.path(), "replica-b").await;

    let api: Api<ExternalSource> = Api::namespaced(client.clone(), &ns);
    let upstream = Upstream::start(Reply::ok(r#"{"v":1}"#)).await;
    create_token_secret(&client, &ns, "hook", GENERIC_TOKEN).await;
    create(&api, "replicated", &upstream.url("/data"), "generic", "hook").await;
    let first = wait_ready(&api, "replicated", "True").await;
    let path = webhook_path(&api, "replicated").await;

    upstream.set(Reply::ok(r#"{"v":2}"#));
    let http = reqwest::Client::new();
    assert_eq!(push_when_known(&http, &standby.url(&path), &[], b"").await, 202, "the standby's receiver answers");
    let old_revision = artifact(&first).revision;
    let updated = eventually("the pushed revision", Duration::from_secs(10), || async {
        let a = api.get("replicated").await.ok()?.status?.artifact?;
        (a.revision != old_revision).then_some(a)
    })
    .await;
    assert!(updated.url.contains(&format!(":{}/", leader.server_port)), "the leader fetched and serves it");
    let (status, bytes) = download(&updated.url).await;
    assert_eq!((status, sha256(&bytes)), (200, updated.digest.clone()));
    assert_eq!(holder().await.as_deref(), Some("replica-a"), "leadership did not move meanwhile");
    assert!(!standby.process.log_text().contains("controller starting"), "the standby never reconciled");
}
