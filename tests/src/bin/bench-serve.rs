//! `bench-serve`: the artifact server over a store made from a directory, for
//! `tests/bench/run.sh`, in the two shapes the binary's `serve` cannot take:
//!
//! - `memory`: a memory backend preloaded from the directory (`serve` starts with an empty memory
//!   store and has no loader). Every regular file under `<dir>` is stored under its path relative
//!   to `<dir>` (so `<dir>/artifacts/ns/name/x.tar.gz` is served at `/artifacts/ns/name/x.tar.gz`);
//!   an empty or missing directory gives an empty store.
//! - `filesystem`: the directory as the controller's own filesystem store (`shared = false`, the
//!   default cache), as `run` serves a ReadWriteOnce volume; `serve` only takes a shared store.
//!   Ready once the background verification of the directory is done.
//!
//! Usage: `bench-serve <memory|filesystem> <dir> <port>`. Listens on 127.0.0.1 only, with the
//! same server, routes and timeouts as the product, prints `ready <port> <objects> <bytes>` once
//! listening, and stops on SIGTERM or SIGINT.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use externalsource_backend_filesystem::{DEFAULT_CACHE_BYTES, FilesystemStorage};
use externalsource_backend_memory::MemoryStorage;
use externalsource_core::backend::host;
use externalsource_core::{ObjectKey, Storage};
use externalsource_server::{ArtifactRoutes, ArtifactService, ServeOptions};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

fn files(root: &Path, dir: &Path, out: &mut Vec<(String, std::path::PathBuf)>) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().replace('\\', "/");
            out.push((rel, path));
        }
    }
    Ok(())
}

fn fail(message: String) -> ! {
    eprintln!("bench-serve: {message}");
    std::process::exit(1);
}

/// A memory store holding every file under `root`.
async fn preloaded_memory(root: &Path, base_url: &str) -> Arc<dyn Storage> {
    let mut found = Vec::new();
    if let Err(e) = files(root, root, &mut found) {
        fail(format!("cannot read {}: {e}", root.display()));
    }
    let memory = host(MemoryStorage::new(u64::MAX), Some(base_url));
    for (key, path) in &found {
        let key = ObjectKey::parse(key).unwrap_or_else(|e| fail(format!("bad key {key:?}: {e}")));
        let body = std::fs::read(path).unwrap_or_else(|e| fail(format!("cannot read {}: {e}", path.display())));
        let digest = externalsource_core::Digest::of(&body);
        if let Err(e) = memory.put(&key, Bytes::from(body), &digest).await {
            fail(format!("cannot store {key}: {e}"));
        }
    }
    memory
}

/// `root` as the controller's own (not shared) filesystem store, content verified.
async fn private_filesystem(root: &Path, base_url: &str) -> Arc<dyn Storage> {
    let store = FilesystemStorage::open_dir(root, false)
        .await
        .unwrap_or_else(|e| fail(format!("cannot open {}: {e}", root.display())))
        .with_cache(DEFAULT_CACHE_BYTES);
    let report = store.verification().await;
    if !report.corrupt_removed.is_empty() || !report.unreadable.is_empty() {
        fail(format!("verification of {} found {report:?}", root.display()));
    }
    host(store, Some(base_url))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(kind), Some(dir), Some(port)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: bench-serve <memory|filesystem> <dir> <port>");
        std::process::exit(2);
    };
    let port: u16 = port.parse().unwrap_or_else(|_| {
        eprintln!("bad port {port:?}");
        std::process::exit(2);
    });
    let (root, base_url) = (Path::new(&dir), format!("http://127.0.0.1:{port}"));
    let storage = match kind.as_str() {
        "memory" => preloaded_memory(root, &base_url).await,
        "filesystem" => private_filesystem(root, &base_url).await,
        _ => {
            eprintln!("bench-serve: unknown store {kind:?}; memory or filesystem");
            std::process::exit(2);
        }
    };
    let mut registry = Registry::default();
    let routes = ArtifactRoutes::new(storage.clone(), &mut registry);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap_or_else(|e| {
        eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
        std::process::exit(1);
    });
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    let stored = storage.list("").await.unwrap_or_default();
    let bytes: u64 = stored.iter().map(|o| o.size).sum();
    println!("ready {port} {} {bytes}", stored.len());
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    externalsource_server::serve(listener, ArtifactService::new(routes), ServeOptions::default(), shutdown).await;
}
