//! Failover, rolling restarts and crashes with two controller processes (the release binary
//! under test) against a real kube-apiserver, downloaded from by a Flux-like client.
//!
//! The Service in front of the replicas is emulated the way kube-proxy behaves: a client picks
//! one of the endpoints whose `/readyz` said 200 at the last poll (every 250 ms, so endpoint
//! updates lag as they do in a cluster). The client does what Flux's fetcher does: it retries a
//! refused connection and a 503, and fails on a 404 or a digest mismatch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::process::{ChildProcess, controller_binary, target_dir, wait_http_ok};
use externalsource_tests::sources::{artifact, request_reconcile, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, Upstream, eventually, free_port, sha256};
use kube::api::{Api, PostParams};
use serde_json::json;

/// The SeaweedFS server the s3 backend's own tests use (`WEED_BIN`, see `tests/s3/seaweedfs.sh`).
#[path = "../../backends/s3/tests/support/mod.rs"]
mod weed;

/// One scenario at a time: each runs an apiserver, etcd and two controllers on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LEASE: Duration = Duration::from_secs(4);
const ENDPOINT_POLL: Duration = Duration::from_millis(250);
const SHUTDOWN_DELAY: Duration = Duration::from_secs(2);
const STEP: Duration = Duration::from_secs(45);

/// One controller process and the ports it listens on.
struct Replica {
    name: String,
    server_port: u16,
    ops_port: u16,
    config: PathBuf,
    kubeconfig: PathBuf,
    namespace: String,
    log: PathBuf,
    process: Option<ChildProcess>,
}

impl Replica {
    /// `storage`: the body of the `[storage]` table and its backend table.
    fn new(name: &str, storage: &str, cp: &ControlPlane, ns: &str, dir: &Path) -> Self {
        let (server_port, ops_port) = (free_port(), free_port());
        let text = format!(
            "[server]\nbind_address = \"127.0.0.1\"\nport = {server_port}\n\
             advertise_url = \"http://artifacts.test\"\nshutdown_delay = \"{}ms\"\nshutdown_grace = \"15s\"\n\
             [ops]\nbind_address = \"127.0.0.1\"\nport = {ops_port}\n\
             [controller]\nleader_election = true\npod_name = \"{name}\"\nlease_duration = \"{}s\"\n\
             renew_deadline = \"2s\"\nretry_period = \"500ms\"\nrestore_timeout = \"30s\"\nmin_interval = \"1s\"\n\
             [log]\nlevel = \"info\"\n[storage]\n{storage}",
            SHUTDOWN_DELAY.as_millis(),
            LEASE.as_secs(),
        );
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        Self {
            name: name.into(),
            server_port,
            ops_port,
            config,
            kubeconfig: cp.kubeconfig_path(),
            namespace: ns.into(),
            log: dir.join(format!("{name}.log")),
            process: None,
        }
    }

    fn start(&mut self) {
        let mut cmd = Command::new(controller_binary());
        cmd.args(["run", "--config"]).arg(&self.config);
        for var in ["RUST_LOG", "STORAGE_BACKEND", "LEADER_ELECTION", "POD_NAME", "PVC_STORAGE_PATH", "LOG_FORMAT"] {
            cmd.env_remove(var);
        }
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAMESPACE", &self.namespace)
            .env("NO_COLOR", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        self.process = Some(ChildProcess::spawn(&self.name, cmd, &self.log));
    }

    fn kill(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERM; returns the process to wait on.
    fn terminate(&mut self) -> ChildProcess {
        let p = self.process.take().expect("running");
        p.signal("TERM");
        p
    }

    async fn ready(&self, client: &reqwest::Client) -> bool {
        let url = format!("http://127.0.0.1:{}/readyz", self.ops_port);
        client.get(url).send().await.map(|r| r.status() == 200).unwrap_or(false)
    }

    async fn wait_ready(&self) {
        let process = self.process.as_ref().expect("started");
        wait_http_ok(process, &format!("http://127.0.0.1:{}/readyz", self.ops_port), STEP).await;
    }
}

/// The emulated Service: which replicas' ports receive new connections.
#[derive(Clone, Default)]
struct Endpoints(Arc<Mutex<Vec<u16>>>);

impl Endpoints {
    fn pick(&self, n: usize) -> Option<u16> {
        let ports = self.0.lock().unwrap();
        (!ports.is_empty()).then(|| ports[n % ports.len()])
    }
}

/// What the watchers saw: readiness of each replica over time.
#[derive(Default)]
struct Watch {
    both_ready_samples: AtomicUsize,
    samples: AtomicUsize,
}

/// The emulated Service in front of `replicas`: its endpoints, what it saw, the flag that stops
/// it (and the clients), and its polling task.
fn service(replicas: [&Replica; 2]) -> (Endpoints, Arc<Watch>, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let (endpoints, watch, stop) = (Endpoints::default(), Arc::new(Watch::default()), Arc::new(AtomicBool::new(false)));
    let ports = replicas.iter().map(|r| (r.server_port, r.ops_port)).collect();
    let task = watch_endpoints(ports, endpoints.clone(), watch.clone(), stop.clone());
    (endpoints, watch, stop, task)
}

/// Polls every replica's `/readyz` into `endpoints` until `stop`.
fn watch_endpoints(
    replicas: Vec<(u16, u16)>,
    endpoints: Endpoints,
    watch: Arc<Watch>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
        while !stop.load(Ordering::Relaxed) {
            let mut ready = Vec::new();
            for (server, ops) in &replicas {
                let url = format!("http://127.0.0.1:{ops}/readyz");
                if client.get(url).send().await.map(|r| r.status() == 200).unwrap_or(false) {
                    ready.push(*server);
                }
            }
            watch.samples.fetch_add(1, Ordering::Relaxed);
            if ready.len() > 1 {
                watch.both_ready_samples.fetch_add(1, Ordering::Relaxed);
            }
            *endpoints.0.lock().unwrap() = ready;
            tokio::time::sleep(ENDPOINT_POLL).await;
        }
    })
}

/// What the Flux-like clients saw.
#[derive(Default)]
struct Downloads {
    ok: AtomicUsize,
    retried: AtomicUsize,
    /// Bodies cut because the replica sending them was killed with SIGKILL (retried, as Flux
    /// retries a failed fetch on its next reconcile): no server can finish those.
    cut_by_kill: AtomicUsize,
    /// The server port of the replica killed with SIGKILL, until it runs again.
    killed: Mutex<Option<u16>>,
    failures: Mutex<Vec<String>>,
    /// When each successful download ended.
    successes: Mutex<Vec<Instant>>,
}

impl Downloads {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// From now on, a body from `port` cut short is the kill's doing, not a failure.
    fn killing(&self, port: u16) {
        *self.killed.lock().unwrap() = Some(port);
    }

    /// The killed replica runs again: a body it cuts from now on is a failure.
    fn revived(&self) {
        self.killed.lock().unwrap().take();
    }

    /// Whether a body from `port` cut short now was cut by a SIGKILL of its sender.
    fn cut_by_kill_of(&self, port: u16) -> bool {
        *self.killed.lock().unwrap() == Some(port)
    }

    /// The longest time without a successful download since `t` (downloads already under way
    /// at `t` may end just after it; what counts is how long none succeeds), once one has.
    fn longest_gap_since(&self, t: Instant) -> Option<Duration> {
        let mut after: Vec<Instant> = self.successes.lock().unwrap().iter().copied().filter(|s| *s > t).collect();
        after.sort();
        let mut previous = t;
        let mut longest = None;
        for s in after {
            let gap = s - previous;
            longest = Some(longest.map_or(gap, |l: Duration| l.max(gap)));
            previous = s;
        }
        longest
    }
}

/// How long the Flux-like client waits before it tries a download again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// One Flux-like download of `path` through the Service: refused connections, resets before
/// the status line and 503 are retried (up to `deadline`), and so is a body cut by a SIGKILL of
/// the replica sending it; a 404, another status, any other truncated body or a digest mismatch
/// is a failure. `read_delay` slows reading, to keep downloads in
/// flight.
async fn download(
    client: &reqwest::Client,
    endpoints: &Endpoints,
    n: usize,
    path: &str,
    digest: &str,
    read_delay: Option<Duration>,
    downloads: &Downloads,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = n;
    'attempt: loop {
        if Instant::now() > deadline {
            return downloads.fail(format!("{path}: no replica served it within 60 s"));
        }
        attempt += 1;
        let Some(port) = endpoints.pick(attempt) else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        let response = match client.get(format!("http://127.0.0.1:{port}/{path}")).send().await {
            Ok(r) => r,
            // Refused (the listener closed) or reset before a response: the client retries.
            Err(_) => {
                downloads.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        match response.status().as_u16() {
            200 => {}
            503 => {
                downloads.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            other => return downloads.fail(format!("{path} from :{port}: HTTP {other}")),
        }
        let expected = response.content_length();
        let mut body = Vec::new();
        let mut response = response;
        loop {
            match response.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                Ok(None) => break,
                Err(_) if downloads.cut_by_kill_of(port) => {
                    downloads.cut_by_kill.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue 'attempt;
                }
                Err(e) => {
                    return downloads.fail(format!("{path} from :{port}: body cut after {} bytes: {e}", body.len()));
                }
            }
            if let Some(d) = read_delay {
                tokio::time::sleep(d).await;
            }
        }
        if expected.is_some_and(|len| len != body.len() as u64) {
            return downloads.fail(format!("{path} from :{port}: {} of {expected:?} bytes", body.len()));
        }
        if sha256(&body) != digest {
            return downloads.fail(format!("{path} from :{port}: digest mismatch"));
        }
        downloads.ok.fetch_add(1, Ordering::Relaxed);
        downloads.successes.lock().unwrap().push(Instant::now());
        return;
    }
}

/// `clients` loops downloading every artifact in `published` until `stop`.
fn start_clients(
    clients: usize,
    published: Vec<(String, String)>,
    endpoints: Endpoints,
    read_delay: Option<Duration>,
    downloads: Arc<Downloads>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|i| {
            let (published, endpoints, downloads, stop) =
                (published.clone(), endpoints.clone(), downloads.clone(), stop.clone());
            tokio::spawn(async move {
                // One connection per download, as each Flux reconcile opens its own.
                let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let (path, digest) = &published[n % published.len()];
                    download(&client, &endpoints, n, path, digest, read_delay, &downloads).await;
                    n += 1;
                }
            })
        })
        .collect()
}

async fn create_sources(api: &Api<ExternalSource>, url: &str, names: &[&str]) -> Vec<(String, String)> {
    for name in names {
        api.create(&PostParams::default(), &source(name, url, json!({"interval": "1h"}))).await.unwrap();
    }
    let mut published = Vec::new();
    for name in names {
        let a = artifact(&wait_ready(api, name, "True").await);
        published.push((a.path, a.digest));
    }
    published
}

fn work_dir(test: &str) -> PathBuf {
    let dir = target_dir().join("failover").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Memory store, two replicas: only the leader is ever Ready; kill -9 of the leader hands over
/// within the lease, the new leader answers 503 (never 404) for what it has not restored yet,
/// and the clients resume without a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_leader_killed_the_standby_restores_and_no_download_fails() {
    let _serial = SERIAL.lock().await;
    let dir = work_dir("memory");
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("failover-memory").await;
    // The restore after the failover fetches from here: slow, so its 503 window is visible.
    let upstream = Upstream::start(Reply::ok("key: value\n")).await;
    let mut a = Replica::new("replica-a", "backend = \"memory\"\n", &cp, &ns, &dir);
    let mut b = Replica::new("replica-b", "backend = \"memory\"\n", &cp, &ns, &dir);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    a.start();
    a.wait_ready().await;
    b.start();
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let published = create_sources(&api, &upstream.url("/config.yaml"), &["one", "two", "three"]).await;
    assert!(!b.ready(&http).await, "the standby holds nothing and is not Ready");

    let (endpoints, watch, stop, watcher) = service([&a, &b]);
    let downloads = Arc::new(Downloads::default());
    let clients = start_clients(4, published.clone(), endpoints.clone(), None, downloads.clone(), stop.clone());
    eventually("downloads from the leader", STEP, || async {
        (downloads.ok.load(Ordering::Relaxed) >= 20).then_some(())
    })
    .await;

    upstream.set(Reply::ok("key: value\n").with_delay(Duration::from_secs(3)));
    // A direct prober of the standby (bypassing the Service) sees what a stale endpoint would.
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (url, stop) = (format!("http://127.0.0.1:{}/{}", b.server_port, published[0].0), probe_stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = client.get(&url).send().await {
                    let retry_after = r.headers().get("retry-after").is_some();
                    seen.push((r.status().as_u16(), retry_after));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        })
    };
    let killed = Instant::now();
    downloads.killing(a.server_port);
    a.kill();
    b.wait_ready().await;
    let ready_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = downloads.longest_gap_since(killed).expect("downloads after the failover");
    // The old leader comes back as a standby: it must not turn Ready beside the leader.
    downloads.revived();
    a.start();
    tokio::time::sleep(LEASE).await;
    assert!(!a.ready(&http).await, "a restarted replica stays standby while the leader holds the lease");
    stop.store(true, Ordering::Relaxed);
    probe_stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    watcher.await.unwrap();
    let seen = probe.await.unwrap();

    eprintln!(
        "memory failover: standby Ready {ready_after:?} after kill -9, clients resumed after {window:?}; \
         {} downloads ok, {} retries, {} cut by the kill",
        downloads.ok.load(Ordering::Relaxed),
        downloads.retried.load(Ordering::Relaxed),
        downloads.cut_by_kill.load(Ordering::Relaxed)
    );
    assert_eq!(downloads.failures(), Vec::<String>::new(), "no 404, no digest mismatch");
    assert_eq!(watch.both_ready_samples.load(Ordering::Relaxed), 0, "both replicas Ready at once");
    assert!(seen.iter().all(|(s, _)| *s != 404), "the new leader never said 404 for a published artifact: {seen:?}");
    assert!(
        seen.iter().any(|(s, retry_after)| *s == 503 && *retry_after),
        "503 with Retry-After while restoring: {seen:?}"
    );
    assert!(seen.last().is_some_and(|(s, _)| *s == 200), "served once restored: {seen:?}");
    // Lease (4 s) + the restore's slow fetch (3 s) + endpoint lag and retries.
    assert!(window < LEASE + Duration::from_secs(3) + Duration::from_secs(5), "clients resumed after {window:?}");
    let log = std::fs::read_to_string(&b.log).unwrap();
    assert!(log.contains("first pass done; Ready"), "the restore is logged");
}

/// A shared filesystem (one directory both replicas mount).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_filesystem_rolling_restart_and_leader_kill_fail_no_download() {
    let _serial = SERIAL.lock().await;
    let dir = work_dir("shared-filesystem");
    let storage = format!(
        "backend = \"filesystem\"\n[storage.filesystem]\nroot = \"{}\"\nshared = true\n",
        dir.join("store").display()
    );
    shared_store_rolling_restart_and_leader_kill(&dir, &storage, "filesystem").await;
}

/// S3 in proxy mode (every replica streams from the bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_rolling_restart_and_leader_kill_fail_no_download() {
    let _serial = SERIAL.lock().await;
    let dir = work_dir("s3");
    let weed = weed::Weed::start_new().await;
    let bucket = weed.bucket().await;
    let storage = format!(
        "backend = \"s3\"\n[storage.s3]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\npath_style = true\n\
         mode = \"proxy\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        weed.endpoint,
        weed::ACCESS_KEY,
        weed::SECRET_KEY
    );
    shared_store_rolling_restart_and_leader_kill(&dir, &storage, "s3").await;
}

/// Two replicas over a shared store, both Ready: SIGTERM of each in turn during 200 slow
/// downloads with new ones arriving (a rolling restart) fails none; then kill -9 of the leader
/// fails nothing but the bodies it was still sending (those are retried, as Flux retries a
/// fetch), and the new leader publishes a new revision.
async fn shared_store_rolling_restart_and_leader_kill(dir: &Path, storage: &str, what: &str) {
    let cp = ControlPlane::start().await;
    let ns = cp.namespace(&format!("failover-{what}")).await;
    // 512 KiB of incompressible bytes read slowly (a pause after each chunk): downloads outlast the shutdown delay.
    let payload: Vec<u8> = (0..512 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let upstream = Upstream::start(Reply::ok(payload.clone())).await;
    let mut a = Replica::new("replica-a", storage, &cp, &ns, dir);
    let mut b = Replica::new("replica-b", storage, &cp, &ns, dir);
    a.start();
    a.wait_ready().await;
    b.start();
    b.wait_ready().await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    let published = create_sources(&api, &upstream.url("/blob.bin"), &["blob"]).await;

    let (endpoints, watch, stop, watcher) = service([&a, &b]);
    let downloads = Arc::new(Downloads::default());
    let read_delay = Some(Duration::from_millis(250));
    let clients = start_clients(200, published.clone(), endpoints.clone(), read_delay, downloads.clone(), stop.clone());
    eventually("200 clients downloading", STEP, || async {
        (downloads.ok.load(Ordering::Relaxed) >= 200).then_some(())
    })
    .await;

    for replica in [&mut a, &mut b] {
        let before = downloads.ok.load(Ordering::Relaxed);
        let signalled = Instant::now();
        let stopping = replica.terminate();
        let exited = stopping.wait_exit(Duration::from_secs(30));
        assert!(exited.is_some_and(|s| s.success()), "{} exits cleanly on SIGTERM: {exited:?}", replica.name);
        let took = signalled.elapsed();
        assert!(took >= SHUTDOWN_DELAY, "{} stopped {took:?} after SIGTERM, before the shutdown delay", replica.name);
        replica.start();
        replica.wait_ready().await;
        let done = downloads.ok.load(Ordering::Relaxed) - before;
        eprintln!(
            "{what}: rolling restart of {}: exited {took:?} after SIGTERM; {done} downloads meanwhile",
            replica.name
        );
        assert_eq!(downloads.failures(), Vec::<String>::new(), "SIGTERM of {}", replica.name);
    }

    // kill -9 of whichever replica leads: the other serves on, takes the lease, and reconciles.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(cp.client(), &ns);
    let holder = leases.get("externalsource-controller-leader").await.unwrap().spec.unwrap().holder_identity.unwrap();
    let (leader, standby) = if holder == a.name { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let killed = Instant::now();
    downloads.killing(leader.server_port);
    leader.kill();
    let updated: Vec<u8> = payload.iter().map(|b| b.wrapping_add(1)).collect();
    upstream.set(Reply::ok(updated.clone()));
    let es = eventually("the standby takes the lease and publishes the new revision", STEP, || async {
        let es = request_reconcile(&api, "blob", &format!("after-kill-{}", killed.elapsed().as_millis())).await;
        (artifact(&es).digest != published[0].1).then_some(es)
    })
    .await;
    let took_over = killed.elapsed();
    let new = artifact(&es);
    let (status, body) =
        externalsource_tests::sources::download(&format!("http://127.0.0.1:{}/{}", standby.server_port, new.path))
            .await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), new.digest);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    watcher.await.unwrap();
    eprintln!(
        "{what}: new revision published {took_over:?} after kill -9 of the leader; {} downloads ok, {} retries, \
         {} cut by the kill and retried",
        downloads.ok.load(Ordering::Relaxed),
        downloads.retried.load(Ordering::Relaxed),
        downloads.cut_by_kill.load(Ordering::Relaxed)
    );
    assert_eq!(downloads.failures(), Vec::<String>::new());
    assert!(watch.both_ready_samples.load(Ordering::Relaxed) > 0, "a shared store makes every replica Ready");
}

/// kill -9 while the filesystem backend writes an artifact: after the restart nothing half
/// written is served or listed, and the source converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_a_filesystem_put_leaves_nothing_half_written() {
    let _serial = SERIAL.lock().await;
    let dir = work_dir("kill-during-put");
    let root = dir.join("store");
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("kill-during-put").await;
    let body = |round: u32| -> Vec<u8> {
        (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(round) >> 11) as u8).collect()
    };
    let upstream = Upstream::start(Reply::ok(body(0))).await;
    let storage = format!("backend = \"filesystem\"\n[storage.filesystem]\nroot = \"{}\"\n", root.display());
    let mut replica = Replica::new("replica", &storage, &cp, &ns, &dir);
    replica.start();
    replica.wait_ready().await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);
    api.create(&PostParams::default(), &source("big", &upstream.url("/big.bin"), json!({}))).await.unwrap();
    let source_dir = root.join(format!("artifacts/{ns}/big"));
    let temp_seen = |dir: &Path| {
        std::fs::read_dir(dir)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".~tmp-"))
    };
    // Caught mid-write: a temporary file exists. The write is short, so try a few rounds.
    let mut caught = false;
    for round in 1..=6u32 {
        if round > 1 {
            upstream.set(Reply::ok(body(round)));
            replica.start();
            replica.wait_ready().await;
            let patch =
                json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": format!("round-{round}")}}});
            api.patch("big", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline && !temp_seen(&source_dir) {
            std::thread::yield_now();
        }
        replica.kill();
        if temp_seen(&source_dir) {
            caught = true;
            break;
        }
    }
    assert!(caught, "never caught a put in progress");
    replica.start();
    let es = wait_ready(&api, "big", "True").await;
    let published = artifact(&es);
    assert!(!temp_seen(&source_dir), "the leftover was removed at start-up");
    for entry in std::fs::read_dir(&source_dir).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(
            format!("{}.tar.gz", sha256(&bytes).trim_start_matches("sha256:")),
            name,
            "a file whose bytes match its name"
        );
    }
    let (status, bytes) = externalsource_tests::sources::download(&format!(
        "http://127.0.0.1:{}/{}",
        replica.server_port, published.path
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&bytes), published.digest);
}

/// The API server freezes (SIGSTOP) for longer than the lease: the leader turns not-Ready and
/// exits within its renew deadline, before the lease could be taken; once the API server is
/// back, exactly one replica leads and is Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_api_server_makes_the_leader_step_down_and_one_leader_follows() {
    let _serial = SERIAL.lock().await;
    let dir = work_dir("frozen-apiserver");
    let mut cp = ControlPlane::start().await;
    let ns = cp.namespace("frozen-apiserver").await;
    let mut a = Replica::new("replica-a", "backend = \"memory\"\n", &cp, &ns, &dir);
    let mut b = Replica::new("replica-b", "backend = \"memory\"\n", &cp, &ns, &dir);
    let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
    a.start();
    a.wait_ready().await;
    b.start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cp.pause_apiserver();
    let paused = Instant::now();
    let mut not_ready_after = None;
    while paused.elapsed() < LEASE + Duration::from_secs(2) {
        if not_ready_after.is_none() && !a.ready(&http).await {
            not_ready_after = Some(paused.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exited = a.process.as_ref().and_then(|p| p.wait_exit(Duration::from_secs(5)));
    cp.resume_apiserver();
    let not_ready_after = not_ready_after.expect("the leader turned not-Ready while the API server was frozen");
    eprintln!(
        "frozen API server: the leader was not Ready {not_ready_after:?} after the freeze and exited ({exited:?})"
    );
    // The renew deadline (2 s) plus one retry period and the poll.
    assert!(not_ready_after < Duration::from_secs(3), "stepped down after {not_ready_after:?}");
    assert!(exited.is_some_and(|s| !s.success()), "the leader exits to compete afresh: {exited:?}");
    a.process = None;
    a.start();
    let deadline = Instant::now() + STEP;
    let ready = loop {
        let ready = [a.ready(&http).await, b.ready(&http).await];
        if ready.iter().filter(|r| **r).count() == 1 {
            break ready;
        }
        assert!(Instant::now() < deadline, "no single leader after the API server came back: {ready:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for _ in 0..20 {
        let now = [a.ready(&http).await, b.ready(&http).await];
        assert!(now.iter().filter(|r| **r).count() <= 1, "two replicas Ready at once: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(cp.client(), &ns);
    let holder = leases.get("externalsource-controller-leader").await.unwrap().spec.unwrap().holder_identity.unwrap();
    let ready_one = if ready[0] { &a.name } else { &b.name };
    assert_eq!(&holder, ready_one, "the Ready replica holds the lease");
}
