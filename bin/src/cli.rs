//! Command-line interface. Flags are applied to the configuration as strings, so they are
//! validated by the same rules, with the same messages, as the file and the environment.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use externalsource_core::config::ConfigLoader;

#[derive(Debug, Parser)]
#[command(name = "externalsource-controller", version, about = "Turns data behind HTTP APIs into Flux sources")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Configuration file (TOML). Default: /etc/externalsource/config.toml when it exists.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Print the linked storage backends with their capabilities, then exit.
    #[arg(long, global = true)]
    pub list_backends: bool,

    /// Print the effective configuration (secrets redacted), then exit; non-zero if invalid.
    #[arg(long, global = true)]
    pub print_config: bool,

    /// Port of the artifact server (server.port).
    #[arg(long, global = true, value_name = "PORT")]
    pub artifact_server_port: Option<String>,

    /// Whether the artifact server runs (server.enabled).
    #[arg(long, global = true, value_name = "BOOL")]
    pub artifact_server_enabled: Option<String>,

    /// URL consumers download from, replacing the in-cluster Service URL (server.advertise_url).
    #[arg(long, global = true, value_name = "URL")]
    pub advertise_url: Option<String>,

    /// Port of /healthz, /readyz and /metrics (ops.port).
    #[arg(long, global = true, value_name = "PORT")]
    pub ops_port: Option<String>,

    /// Storage backend (storage.backend); see --list-backends.
    #[arg(long, global = true, value_name = "NAME")]
    pub storage_backend: Option<String>,

    /// Memory the process may use, instead of the cgroup limit (controller.memory_limit); with
    /// --print-config, checks that the configuration fits it.
    #[arg(long, global = true, value_name = "SIZE")]
    pub memory_limit: Option<String>,

    /// Reconcile only ExternalSources matching this label selector, e.g.
    /// `sharding.fluxcd.io/key=shard1` (controller.watch_label_selector).
    #[arg(long, global = true, value_name = "SELECTOR")]
    pub watch_label_selector: Option<String>,

    /// notification-controller's event address, e.g.
    /// `http://notification-controller.flux-system.svc.cluster.local./` (controller.events_addr):
    /// Flux events for Alerts, besides the Kubernetes Events.
    #[arg(long, global = true, value_name = "URL")]
    pub events_addr: Option<String>,

    /// Log format: text or json (log.format).
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the controller and the artifact server (the default).
    Run,
    /// Run only the artifact server over the configured backend; needs no Kubernetes access.
    Serve,
    /// Print the ExternalSource CRD as YAML.
    Crd,
    /// Run the hook executor: runs `spec.hooks` commands from the whitelist (hooks.whitelist)
    /// for the controller, over the Unix socket hooks.socket. Needs no Kubernetes access; run
    /// it as a sidecar without a service account token.
    HookExecutor,
    /// Internal: run one `spec.transform` filter read from stdin (the controller starts these
    /// in a sandbox; see docs/security.md, Transforms).
    #[command(name = "transform-worker", hide = true)]
    TransformWorker,
}

impl Cli {
    /// Applies the flags that were given, as the last configuration layer.
    pub fn apply_flags(&self, loader: &mut ConfigLoader) {
        let flags = [
            (&self.artifact_server_port, "server.port", "--artifact-server-port"),
            (&self.artifact_server_enabled, "server.enabled", "--artifact-server-enabled"),
            (&self.advertise_url, "server.advertise_url", "--advertise-url"),
            (&self.ops_port, "ops.port", "--ops-port"),
            (&self.storage_backend, "storage.backend", "--storage-backend"),
            (&self.log_format, "log.format", "--log-format"),
            (&self.memory_limit, "controller.memory_limit", "--memory-limit"),
            (&self.watch_label_selector, "controller.watch_label_selector", "--watch-label-selector"),
            (&self.events_addr, "controller.events_addr", "--events-addr"),
        ];
        for (value, key, flag) in flags {
            if let Some(value) = value {
                loader.set_str(key, value, &format!("flag {flag}"));
            }
        }
    }
}
