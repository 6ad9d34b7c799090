//! Command-line interface. Flags are applied to the configuration as strings, so they are
//! validated by the same rules, with the same messages, as the file and the environment.

use std::path::PathBuf;

use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use externalsource_core::config::{self, ConfigLoader};

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

    /// The configuration keys given as flags: key, value and flag (the flags are made from
    /// the configuration's declaration, see [`Cli::from_args`]).
    #[arg(skip)]
    pub config_flags: Vec<(&'static str, String, &'static str)>,
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
    /// Parses the process's arguments, with a flag for each configuration key that declares one.
    pub fn from_args() -> Self {
        Self::from_matches(Self::command_with_config_flags().get_matches())
    }

    fn from_matches(matches: ArgMatches) -> Self {
        let mut cli = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        for key in config::keys() {
            let Some(flag) = key.flag else { continue };
            if let Some(value) = matches.get_one::<String>(flag) {
                cli.config_flags.push((key.path, value.clone(), flag));
            }
        }
        cli
    }

    /// The derived interface, plus one global flag per configuration key that declares one.
    fn command_with_config_flags() -> clap::Command {
        let flags = config::keys().into_iter().filter_map(|key| {
            let flag = key.flag?;
            let doc = key.doc.split_whitespace().collect::<Vec<_>>().join(" ");
            let help = format!("{} ({})", doc.trim_end_matches('.'), key.path);
            Some(Arg::new(flag).long(flag).global(true).value_name(key.placeholder).help(help))
        });
        Self::command().args(flags)
    }

    /// Applies the flags that were given, as the last configuration layer.
    pub fn apply_flags(&self, loader: &mut ConfigLoader) {
        for (key, value, flag) in &self.config_flags {
            loader.set_str(key, value, &format!("flag --{flag}"));
        }
    }
}
