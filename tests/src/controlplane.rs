//! etcd + kube-apiserver on free loopback ports, with our CRD and Flux's CRDs installed.
//!
//! The binaries are built once by `tests/testenv.sh` into a cache outside the checkout; the harness
//! runs that script (a no-op when cached). Processes are killed when the value is dropped, which
//! also happens while a failing test unwinds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt};

use crate::{eventually, free_port, repo_root};

const TOKEN: &str = "externalsource-test-token";

/// Why the control plane did not become ready.
struct NotReady {
    message: String,
    /// It ran but never answered (ports were not the problem, so a retry would not help).
    timed_out: bool,
}

/// A running control plane.
pub struct ControlPlane {
    etcd: Child,
    apiserver: Child,
    /// How kube-apiserver was started, so a test can stop and start it again.
    apiserver_command: (PathBuf, Vec<String>),
    restarts: u32,
    dir: tempfile::TempDir,
    /// Where `tests/testenv.sh` put the binaries and CRDs.
    pub cache: PathBuf,
    pub url: String,
    client: Client,
}

/// The requests a [`ControlPlane::recording_client`] made: method and path.
#[derive(Clone, Default)]
pub struct RequestLog(std::sync::Arc<std::sync::Mutex<Vec<(http::Method, String)>>>);

impl RequestLog {
    /// How many requests of `method` went to exactly `path`.
    pub fn count(&self, method: &http::Method, path: &str) -> usize {
        self.0.lock().expect("request log").iter().filter(|(m, p)| m == method && p == path).count()
    }
}

/// Runs `tests/testenv.sh <what>` and returns the cache directory it prints.
pub fn testenv_cache(what: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("EXTERNALSOURCE_TESTENV") {
        return PathBuf::from(dir);
    }
    let script = repo_root().join("tests/testenv.sh");
    let out =
        Command::new("bash").arg(&script).arg(what).stderr(Stdio::inherit()).output().expect("run tests/testenv.sh");
    assert!(
        out.status.success(),
        "tests/testenv.sh failed; it builds etcd and kube-apiserver (needs Go and the module proxy)"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("testenv.sh prints the cache dir").trim())
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver, waits for readiness, installs the CRDs.
    ///
    /// The ports are picked free but not held until the processes bind them, so another process
    /// may take one in between; a start whose etcd or kube-apiserver exits early is retried on
    /// fresh ports (at most three times).
    pub async fn start() -> Self {
        crate::init_logging();
        let cache = testenv_cache("core");
        let mut attempt = 1;
        loop {
            let mut cp = Self::spawn(cache.clone()).await;
            match cp.wait_ready().await {
                Ok(()) => {
                    cp.install_crds().await;
                    return cp;
                }
                Err(e) if attempt < 3 && !e.timed_out => {
                    tracing::warn!(attempt, "control plane did not start, trying other ports: {}", e.message);
                    attempt += 1;
                }
                Err(e) => panic!("{}", e.message),
            }
        }
    }

    /// Spawns etcd and kube-apiserver on fresh ports.
    async fn spawn(cache: PathBuf) -> Self {
        let dir = tempfile::Builder::new().prefix("externalsource-cp-").tempdir().expect("tempdir");
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd = spawn(
            &cache.join("bin/etcd"),
            &[
                format!("--data-dir={}", dir.path().join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            &dir.path().join("etcd.log"),
        );
        let key = rcgen::KeyPair::generate().expect("service account key");
        let sa_key = dir.path().join("sa.key");
        std::fs::write(&sa_key, key.serialize_pem()).expect("write key");
        let sa_pub = dir.path().join("sa.pub");
        std::fs::write(&sa_pub, key.public_key_pem()).expect("write public key");
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(&tokens, format!("{TOKEN},admin,admin,\"system:masters\"\n")).expect("write tokens");
        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", dir.path().join("certs").display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
            "--v=0".into(),
        ];
        let apiserver_bin = cache.join("bin/kube-apiserver");
        let apiserver = spawn(&apiserver_bin, &apiserver_args, &dir.path().join("apiserver.log"));
        let url = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = kubeconfig(&url, TOKEN);
        std::fs::write(dir.path().join("kubeconfig"), serde_yaml::to_string(&kubeconfig).expect("kubeconfig yaml"))
            .expect("write kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
        let client = Client::try_from(config).expect("client");
        Self {
            etcd,
            apiserver,
            apiserver_command: (apiserver_bin, apiserver_args),
            restarts: 0,
            dir,
            cache,
            url,
            client,
        }
    }

    /// Kills kube-apiserver (SIGKILL, as a crash would); etcd and its data stay.
    pub fn stop_apiserver(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
    }

    /// Freezes kube-apiserver (SIGSTOP): connections stay open and requests hang, unanswered,
    /// until [`Self::resume_apiserver`]; what a partitioned or overloaded API server looks like.
    pub fn pause_apiserver(&mut self) {
        signal(self.apiserver.id(), "-STOP");
    }

    pub fn resume_apiserver(&mut self) {
        signal(self.apiserver.id(), "-CONT");
    }

    /// Starts kube-apiserver again on the same port and certificates, and waits until it serves.
    pub async fn start_apiserver(&mut self) {
        self.restarts += 1;
        let log = self.dir.path().join(format!("apiserver-{}.log", self.restarts));
        let (bin, args) = &self.apiserver_command;
        self.apiserver = spawn(bin, args, &log);
        if let Err(e) = self.wait_ready().await {
            panic!("{}", e.message);
        }
    }

    async fn wait_ready(&mut self) -> Result<(), NotReady> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let exited = |what: &str, status: std::process::ExitStatus, log: String| NotReady {
            message: format!("{what} exited ({status}); log:\n{log}"),
            timed_out: false,
        };
        loop {
            if let Ok(Some(status)) = self.apiserver.try_wait() {
                return Err(exited("kube-apiserver", status, self.log("apiserver.log")));
            }
            if let Ok(Some(status)) = self.etcd.try_wait() {
                return Err(exited("etcd", status, self.log("etcd.log")));
            }
            let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
            if ns.get_opt("default").await.map(|n| n.is_some()).unwrap_or(false) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let message = format!("kube-apiserver not ready in 90 s; log:\n{}", self.log("apiserver.log"));
                return Err(NotReady { message, timed_out: true });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    async fn install_crds(&self) {
        let mut crds = vec![externalsource_core::controller::api::ExternalSource::crd()];
        let dir = self.cache.join("crds");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read crd");
            crds.push(serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display())));
        }
        self.apply_crds(crds).await;
    }

    /// Creates CRDs and waits until each is Established.
    pub async fn apply_crds(&self, crds: Vec<CustomResourceDefinition>) {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in &crds {
            match api.create(&PostParams::default(), crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("creating CRD {:?}: {e}", crd.metadata.name),
            }
        }
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let api = api.clone();
            eventually(&format!("CRD {name} Established"), Duration::from_secs(30), || {
                let (api, name) = (api.clone(), name.clone());
                async move {
                    let crd = api.get(&name).await.ok()?;
                    let established =
                        crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
                    established.then_some(())
                }
            })
            .await;
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A client that records every request it makes, for tests of what the controller asks
    /// the API server (the requests are real; only their method and path are noted).
    pub async fn recording_client(&self) -> (Client, RequestLog) {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig_path()).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
        let log = RequestLog::default();
        let requests = log.0.clone();
        let record = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
            let path = req.uri().path().to_owned();
            requests.lock().expect("request log").push((req.method().clone(), path));
            req
        });
        let client = kube::client::ClientBuilder::try_from(config).expect("client").with_layer(&record).build();
        (client, log)
    }

    /// A client that authenticates with `token` (a ServiceAccount's, say), so a test runs with
    /// that identity's permissions instead of the administrator's.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let config = Config::from_custom_kubeconfig(kubeconfig(&self.url, token), &KubeConfigOptions::default())
            .await
            .expect("config");
        Client::try_from(config).expect("client")
    }

    /// A kubeconfig file for subprocesses (our binary, kubectl, Flux controllers).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Creates a namespace for one test.
    pub async fn namespace(&self, name: &str) -> String {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating namespace {name}: {e}"),
        }
        name.to_owned()
    }
}

fn kubeconfig(url: &str, token: &str) -> Kubeconfig {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    insecure-skip-tls-verify: true\n\
         users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n\
         current-context: test\n"
    );
    serde_yaml::from_str(&yaml).expect("kubeconfig")
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}

fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill {signal} {pid} failed");
}
