//! `externalsource-testenv`: starts the test control plane and keeps it running until killed,
//! for the local demo and for checks driven from the shell (kubectl dry runs).
//!
//! Usage: `externalsource-testenv <kubeconfig-output-path>`; prints `ready` when usable.

use externalsource_tests::ControlPlane;

#[tokio::main]
async fn main() {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: externalsource-testenv <kubeconfig-output-path>");
        std::process::exit(2);
    };
    let cp = ControlPlane::start().await;
    if let Err(e) = std::fs::copy(cp.kubeconfig_path(), &out) {
        eprintln!("cannot write {out}: {e}");
        std::process::exit(1);
    }
    println!("ready {}", cp.url);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(cp);
}
