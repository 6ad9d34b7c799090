//! Flux's own binaries, built by `tests/testenv.sh flux` into the testenv cache: its controllers
//! run out of cluster on loopback, and the `flux` CLI run against the test API server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::controlplane::testenv_cache;
use crate::free_port;
use crate::process::ChildProcess;

/// kustomize-controller or helm-controller (any Flux controller with the same flags) from the
/// testenv cache `cache`, with the ExternalArtifact gate on, on loopback; returns the process and
/// its health port (`/readyz`).
pub fn start_controller(cache: &Path, name: &str, kubeconfig: &Path, log: &Path) -> (ChildProcess, u16) {
    let bin = cache.join("bin").join(name);
    assert!(bin.is_file(), "{} missing: run `bash tests/testenv.sh flux`", bin.display());
    let (metrics, health) = (free_port(), free_port());
    let mut cmd = Command::new(bin);
    // v1.9.4 has no `--kubeconfig` flag ("unknown flag: --kubeconfig"): controller-runtime reads KUBECONFIG.
    cmd.arg("--feature-gates=ExternalArtifact=true")
        .arg("--watch-all-namespaces=true")
        .arg(format!("--metrics-addr=127.0.0.1:{metrics}"))
        .arg(format!("--health-addr=127.0.0.1:{health}"))
        .arg("--log-level=debug")
        .arg("--log-encoding=console")
        .arg("--http-retry=1")
        .env("KUBECONFIG", kubeconfig)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    (ChildProcess::spawn(name, cmd, log), health)
}

/// The `flux` CLI: `FLUX_BIN`, or `bin/flux` in the testenv cache (built by
/// `tests/testenv.sh flux` when missing).
pub fn cli_binary() -> PathBuf {
    let path = std::env::var_os("FLUX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| testenv_cache("flux").join("bin").join("flux"));
    assert!(
        path.is_file(),
        "{} not found: build it with `bash tests/testenv.sh flux` (or point FLUX_BIN at a flux binary)",
        path.display()
    );
    path
}

/// Runs `flux <args>` against `kubeconfig` (nothing inherited but PATH), off the async runtime;
/// its discovery cache goes under the target directory.
pub async fn cli(kubeconfig: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(cli_binary());
    cmd.args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(crate::process::target_dir().join("flux-cli-cache"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("NO_COLOR", "1");
    tokio::task::spawn_blocking(move || cmd.output().expect("run flux")).await.expect("join")
}

/// A table as `flux get` and `flux events` print it (each cell padded with blanks and ended by
/// a tab): header first, then the cells of each row, trimmed.
pub fn table_rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cells: Vec<String> = l.split('\t').map(|c| c.trim().to_owned()).collect();
            while cells.last().is_some_and(String::is_empty) {
                cells.pop();
            }
            cells
        })
        .collect()
}
