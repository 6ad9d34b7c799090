//! Real components for tests: a kube-apiserver with etcd on loopback, HTTP fixtures on loopback,
//! and the controller run in-process against them. Nothing here is a mock.

pub mod binary;
pub mod controller;
pub mod controlplane;
pub mod fixture;
pub mod flux;
pub mod hidden;
pub mod log_capture;
pub mod oauth2_server;
pub mod process;
pub mod promql;
pub mod protected_upstream;
pub mod proxy;
pub mod receiver;
pub mod sources;

pub use controller::TestController;
pub use controlplane::ControlPlane;
pub use fixture::{Reply, Upstream};

/// Repository root (the workspace), for scripts and committed files.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(|p| p.to_path_buf()).unwrap_or_default()
}

/// Polls `check` every 100 ms until it yields `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match poll_until(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `check` every 100 ms until it yields `Some`; `None` after `timeout` (for a caller that
/// says itself what it saw instead).
pub async fn poll_until<T, F, Fut>(timeout: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Installs a test log subscriber once (RUST_LOG controls it).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A free loopback port for a process to listen on, checked by binding it and releasing it.
///
/// Taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), which the
/// kernel hands to every outgoing connection and to every bind of port 0: a port taken from
/// that range could be given to some process's API server connection before the child binds
/// it ("address already in use", seen in CI). Each port is handed out once per process, from
/// a starting point that differs per process, so test binaries run side by side do not pick
/// the same ones.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOWEST).max(1);
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(port) else { continue };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// `sha256:<hex>` of bytes, computed independently of the product's code.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
