//! `kubectl-externalsource`: kubectl finds it on PATH by that name, so `kubectl externalsource
//! get|reconcile|suspend|resume|completion` works. Flux's CLI commands, for our ExternalSources.

mod cli;
mod client;
mod commands;
mod complete;
mod error;
mod status;
mod table;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use error::PluginError;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // kubectl's plugin completion runs `kubectl_complete-externalsource` (a link to this binary).
    let args: Vec<String> = std::env::args().collect();
    let called = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_owned()).unwrap_or_default();
    let words = match args.get(1).map(String::as_str) {
        _ if called == complete::LINK_NAME => Some(&args[1..]),
        Some("__complete") => Some(&args[2..]),
        _ => None,
    };
    if let Some(words) = words {
        let (candidates, directive) = complete::complete(words).await;
        complete::print(&candidates, directive);
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("✗ {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), PluginError> {
    if let Command::Completion { shell } = cli.command {
        let mut command = Cli::command();
        clap_complete::generate(shell, &mut command, "kubectl-externalsource", &mut std::io::stdout());
        return Ok(());
    }
    let (client, namespace) = client::connect(&cli.connection).await?;
    match cli.command {
        Command::Get { name, all_namespaces } => {
            commands::get(client, &namespace, name.as_deref(), all_namespaces).await
        }
        Command::Reconcile { name, wait } => {
            let revision = commands::reconcile(client, &namespace, &name, wait.timeout, false).await?;
            println!("✔ fetched revision {revision}");
            Ok(())
        }
        Command::Resume { name, wait } => {
            let revision = commands::reconcile(client, &namespace, &name, wait.timeout, true).await?;
            println!("✔ fetched revision {revision}");
            Ok(())
        }
        Command::Suspend { name } => commands::suspend(client, &namespace, &name).await,
        Command::Completion { .. } => Ok(()),
    }
}
