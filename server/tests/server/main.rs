//! End-to-end tests of the server over real loopback HTTP, against the real memory and filesystem
//! backends (and, where a backend cannot be made to misbehave on demand, named test doubles).

mod artifacts;
mod client;
mod doubles;
mod lifecycle;
mod ops;
mod safety;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use externalsource_backend_filesystem::FilesystemStorage;
use externalsource_backend_memory::MemoryStorage;
use externalsource_core::backend::host;
use externalsource_core::testing::PutBytes;
use externalsource_core::{Digest, ObjectKey, ObjectMeta, Storage};
use externalsource_server::{ArtifactRoutes, ArtifactService, ServeOptions, serve};
use prometheus_client::registry::Registry;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Content of every file and object that must never be served.
pub const MARKER: &str = "TOP-SECRET-OUTSIDE-THE-ARTIFACT-TREE";

/// A backend under test, with the files it needs kept alive.
pub struct Store {
    pub name: &'static str,
    pub storage: Arc<dyn Storage>,
    _dir: Option<TempDir>,
}

/// Both backends that serve HTTP. Each also holds [`MARKER`] under a key outside `artifacts/`;
/// the filesystem one additionally has it in a file beside its root.
pub async fn stores() -> Vec<Store> {
    let memory = Store { name: "memory", storage: host(MemoryStorage::new(1 << 30), None), _dir: None };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret.txt"), MARKER).expect("write secret");
    std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
    std::fs::write(dir.path().join("etc").join("passwd"), MARKER).expect("write secret");
    let fs = FilesystemStorage::open_dir(&dir.path().join("store"), false).await.expect("open filesystem storage");
    let filesystem = Store { name: "filesystem", storage: host(fs, None), _dir: Some(dir) };
    for store in [&memory, &filesystem] {
        let key = ObjectKey::parse("internal/secret.txt").expect("key");
        store.storage.put_bytes(&key, Bytes::from_static(MARKER.as_bytes())).await.expect("put secret");
    }
    vec![memory, filesystem]
}

/// An artifact stored for a test.
pub struct Artifact {
    pub path: String,
    pub payload: Vec<u8>,
    pub meta: ObjectMeta,
}

/// Deterministic, incompressible-looking bytes, so a wrong range shows as wrong content.
pub fn payload(len: usize) -> Vec<u8> {
    externalsource_core::testing::noise(7, len)
}

pub async fn put_artifact(storage: &dyn Storage, payload: Vec<u8>) -> Artifact {
    let key = ObjectKey::artifact("flux-system", "podinfo", &Digest::of(&payload)).expect("key");
    let meta = storage.put_bytes(&key, Bytes::from(payload.clone())).await.expect("put");
    Artifact { path: format!("/{key}"), payload, meta }
}

/// A running `serve` task and the means to stop it.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Served {
    /// Signals shutdown; `serve` then stops accepting and drains.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `serve` to return, failing after `within`.
    pub async fn finished(mut self, within: Duration) {
        tokio::time::timeout(within, &mut self.task).await.expect("serve returned in time").expect("serve task");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Small timeouts so the timeout tests run quickly; the others never come near them.
pub fn test_options() -> ServeOptions {
    ServeOptions {
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        ..ServeOptions::default()
    }
}

/// Starts any service under `serve` on an ephemeral loopback port.
pub async fn start<S>(service: S, options: ServeOptions) -> Served
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<externalsource_server::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, service, options, async move {
        let _ = stopped.await;
    }));
    Served { addr, stop: Some(stop), task }
}

/// Starts the artifact server over `storage`; the registry holds its metrics.
pub async fn start_artifacts(storage: Arc<dyn Storage>, options: ServeOptions) -> (Served, Registry) {
    let mut registry = Registry::default();
    let routes = ArtifactRoutes::new(storage, &mut registry);
    (start(ArtifactService::new(routes), options).await, registry)
}
