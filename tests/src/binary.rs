//! The built `externalsource-controller` binary run as a Deployment runs it (leader election
//! off, memory backend, artifact and ops servers on loopback), for tests that use it from the
//! outside: scraping its metrics, driving it with the kubectl plugin.

use std::path::Path;
use std::process::Command;

use crate::process::{ChildProcess, controller_binary, wait_http_ok};
use crate::sources::WAIT;
use crate::{ControlPlane, free_port};

/// A running controller process; killed when dropped.
pub struct ControllerProcess {
    pub process: ChildProcess,
    /// Where its artifact server answers (and what it advertises).
    pub base_url: String,
    /// `/healthz`, `/readyz` and `/metrics`.
    pub ops_url: String,
}

impl ControllerProcess {
    /// Starts the binary against `cp`, its own namespace `namespace`, files under `dir`, and
    /// waits until it is ready.
    pub async fn start(cp: &ControlPlane, namespace: &str, dir: &Path) -> Self {
        Self::start_with(cp, namespace, dir, &[]).await
    }

    /// [`start`](Self::start) with more settings (`EVENTS_ADDR`, `HOOK_EXECUTOR_SOCKET`, ...).
    pub async fn start_with(cp: &ControlPlane, namespace: &str, dir: &Path, env: &[(&str, &str)]) -> Self {
        let (server_port, ops_port) = (free_port(), free_port());
        let base_url = format!("http://127.0.0.1:{server_port}");
        let ops_url = format!("http://127.0.0.1:{ops_port}");
        let config = dir.join("config.toml");
        std::fs::write(&config, "[server]\nbind_address = \"127.0.0.1\"\n\n[ops]\nbind_address = \"127.0.0.1\"\n")
            .expect("config file");
        let mut cmd = Command::new(controller_binary());
        cmd.arg("run").arg("--config").arg(&config);
        cmd.args(["--artifact-server-port", &server_port.to_string(), "--ops-port", &ops_port.to_string()]);
        cmd.args(["--advertise-url", &base_url]);
        // Only what is given here: nothing inherited from the shell that runs the tests.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env("LEADER_ELECTION", "false")
            .env("MIN_INTERVAL", "1s")
            .env("POD_NAMESPACE", namespace)
            .env("STORAGE_BACKEND", "memory")
            .env("LOG_LEVEL", "info")
            .env("NO_COLOR", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .envs(env.iter().copied());
        let process = ChildProcess::spawn("externalsource-controller", cmd, &dir.join("controller.log"));
        wait_http_ok(&process, &format!("{ops_url}/readyz"), WAIT).await;
        Self { process, base_url, ops_url }
    }

    /// The Prometheus text page of `/metrics`.
    pub async fn scrape(&self) -> String {
        let url = format!("{}/metrics", self.ops_url);
        let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(response.status().is_success(), "GET {url}: {}", response.status());
        response.text().await.unwrap_or_else(|e| panic!("GET {url}: body: {e}"))
    }
}

/// Path of the `kubectl-externalsource` plugin built by `cargo build -p kubectl-externalsource`,
/// or `KUBECTL_EXTERNALSOURCE_BIN`. Panics with the build command when it is missing (cargo does
/// not build another package's binary for this test crate).
pub fn plugin_binary() -> std::path::PathBuf {
    let path = std::env::var_os("KUBECTL_EXTERNALSOURCE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::process::target_dir().join("debug").join("kubectl-externalsource"));
    assert!(
        path.is_file(),
        "{} not found: build it first with `cargo build -p kubectl-externalsource` \
         (or point KUBECTL_EXTERNALSOURCE_BIN at a binary)",
        path.display()
    );
    path
}
