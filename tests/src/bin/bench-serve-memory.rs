//! `bench-serve-memory`: the artifact server over a memory backend preloaded from a directory,
//! for `tests/bench/run.sh` (the binary's `serve` starts with an empty memory store and has no
//! loader).
//!
//! Usage: `bench-serve-memory <dir> <port>`. Every regular file under `<dir>` is stored under its
//! path relative to `<dir>` (so `<dir>/artifacts/ns/name/x.tar.gz` is served at
//! `/artifacts/ns/name/x.tar.gz`); an empty or missing directory gives an empty store. Listens on
//! 127.0.0.1 only, with the same server, routes and timeouts as the product, prints
//! `ready <port> <objects> <bytes>` once listening, and stops on SIGTERM or SIGINT.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
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

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(port)) = (args.next(), args.next()) else {
        eprintln!("usage: bench-serve-memory <dir> <port>");
        std::process::exit(2);
    };
    let port: u16 = port.parse().unwrap_or_else(|_| {
        eprintln!("bad port {port:?}");
        std::process::exit(2);
    });
    let root = Path::new(&dir);
    let mut found = Vec::new();
    if let Err(e) = files(root, root, &mut found) {
        eprintln!("cannot read {dir}: {e}");
        std::process::exit(1);
    }
    let base_url = format!("http://127.0.0.1:{port}");
    let memory = host(MemoryStorage::new(u64::MAX), Some(&base_url));
    let mut bytes = 0u64;
    for (key, path) in &found {
        let key = ObjectKey::parse(key).unwrap_or_else(|e| {
            eprintln!("bad key {key:?}: {e}");
            std::process::exit(1);
        });
        let body = std::fs::read(path).unwrap_or_else(|e| {
            eprintln!("cannot read {}: {e}", path.display());
            std::process::exit(1);
        });
        bytes += body.len() as u64;
        let digest = externalsource_core::Digest::of(&body);
        if let Err(e) = memory.put(&key, Bytes::from(body), &digest).await {
            eprintln!("cannot store {key}: {e}");
            std::process::exit(1);
        }
    }
    drop(found);
    let storage: Arc<dyn Storage> = memory;
    let mut registry = Registry::default();
    let routes = ArtifactRoutes::new(storage.clone(), &mut registry);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap_or_else(|e| {
        eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
        std::process::exit(1);
    });
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    let objects = storage.list("").await.map(|l| l.len()).unwrap_or(0);
    println!("ready {port} {objects} {bytes}");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    externalsource_server::serve(listener, ArtifactService::new(routes), ServeOptions::default(), shutdown).await;
}
