//! `hook-executor`: the sidecar that runs `spec.hooks` commands for the controller.
//!
//! It holds no Kubernetes credentials (its container mounts no token), reads only its whitelist
//! and listens only on a Unix socket in a volume shared with the controller container, so the
//! only thing that can ask it to run anything is a process in the same pod. Each run is
//! confined by `isolated::hook_executor::sandbox` and admitted by `isolated::hook_executor::admission`.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use externalsource_core::config::{Config, HooksConfig};
use externalsource_core::isolated::hook_executor::admission::Admission;
use externalsource_core::isolated::hook_executor::run::ExecutorLimits;
use externalsource_core::isolated::hook_executor::sandbox::{self, RunLimits};
use externalsource_core::isolated::hook_executor::whitelist::{LiveWhitelist, WhitelistError};
use externalsource_core::isolated::hook_executor::{protocol, reaper};
use tokio::net::UnixListener;

/// How often the whitelist file is checked for changes.
const WHITELIST_RELOAD: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("{key} is not set: the executor needs the Unix socket path it listens on", key = HooksConfig::socket)]
    NoSocket,
    #[error(transparent)]
    Whitelist(#[from] WhitelistError),
    #[error("cannot prepare {key} = {path} (created mode 0700 if missing): {source}", key = HooksConfig::run_dir)]
    RunDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {key} = {path}: {source}", key = HooksConfig::socket)]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot become the reaper of what hooks leave running (prctl PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(#[source] std::io::Error),
}

pub async fn run(config: &Config) -> Result<(), ExecutorError> {
    let hooks = &config.hooks;
    let socket = hooks.socket.as_ref().ok_or(ExecutorError::NoSocket)?;
    // Before the first run: a process a hook detaches comes back here to be killed.
    reaper::become_subreaper().map_err(ExecutorError::Subreaper)?;
    let path = hooks.whitelist.display().to_string();
    let whitelist = Arc::new(LiveWhitelist::load(&hooks.whitelist)?);
    let bind_error = |source| ExecutorError::Bind { path: socket.display().to_string(), source };
    // A socket file left by a previous run (a restarted sidecar) would make bind fail.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_error(e)),
    }
    let listener = UnixListener::bind(socket).map_err(bind_error)?;
    // Owner and group only: the controller container runs as the same user.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)).map_err(bind_error)?;
    sandbox::prepare_base(&hooks.run_dir)
        .map_err(|source| ExecutorError::RunDir { path: hooks.run_dir.display().to_string(), source })?;
    let limits = ExecutorLimits {
        max_output: config.fetch.max_size as usize,
        max_timeout: hooks.max_timeout,
        run: RunLimits {
            cpu: hooks.max_cpu,
            memory: hooks.max_memory,
            open_files: hooks.max_open_files,
            processes: hooks.max_processes,
        },
        run_dir: hooks.run_dir.clone(),
    };
    let admission = Admission::new(hooks.concurrency, hooks.namespace_concurrency, protocol::MAX_QUEUE_WAIT);
    // A ConfigMap update reaches the mounted file within a minute or so; no restart needed.
    let watcher = tokio::spawn(whitelist.clone().watch(WHITELIST_RELOAD));
    tracing::info!(socket = %socket.display(), whitelist = %path, commands = whitelist.current().len(),
        concurrency = hooks.concurrency, namespace_concurrency = hooks.namespace_concurrency,
        run_dir = %hooks.run_dir.display(), "hook executor listening");
    protocol::serve(
        listener,
        whitelist,
        limits,
        config.fetch.max_size as usize,
        admission,
        crate::app::termination_signal(),
    )
    .await;
    watcher.abort();
    let _ = std::fs::remove_file(socket);
    tracing::info!("hook executor stopped");
    Ok(())
}
