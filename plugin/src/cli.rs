//! The command line: `kubectl externalsource <command>`, with kubectl's connection flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-externalsource",
    bin_name = "kubectl-externalsource",
    version,
    about = "Get, reconcile, suspend and resume ExternalSources (source.flux.oddkin.co).",
    long_about = "Get, reconcile, suspend and resume ExternalSources (source.flux.oddkin.co).\n\n\
                  Installed on PATH as kubectl-externalsource, it runs as `kubectl externalsource ...`."
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

/// Where to connect, as kubectl takes it.
#[derive(Debug, Args)]
pub struct Connection {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List ExternalSources (or show one) with their Ready state and revision.
    Get {
        /// One source; all of the namespace's when absent.
        name: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long, conflicts_with = "name")]
        all_namespaces: bool,
    },
    /// Ask the controller to reconcile now, wait until it has, and print the revision.
    Reconcile {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop fetching; the last artifact stays published.
    Suspend { name: String },
    /// Fetch again, wait for the reconcile, and print the revision.
    Resume {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Print a shell completion script.
    Completion { shell: Shell },
}

#[derive(Debug, Args)]
pub struct Wait {
    /// How long to wait for the controller (Go-style duration: 30s, 2m, 1h30m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A duration in Go's syntax, as kubectl and flux take `--timeout`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let rule = "a duration such as 30s, 2m or 1h30m (units ms, s, m, h)";
    let mut total = 0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(format!("--timeout is empty; want {rule}"));
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().map_err(|_| format!("--timeout {text:?}: want {rule}"))?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("--timeout {text:?}: want {rule}")),
        };
        total += number * scale;
        rest = &rest[unit..];
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "5", "5x", "m", "1h-"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
