//! `kubectl-externalsource`: kubectl finds it on PATH by that name, so `kubectl externalsource
//! get|reconcile|suspend|resume|completion` works. Flux's CLI commands, for our ExternalSources.

mod cli;
mod client;
mod commands;
mod error;
mod status;
mod table;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use error::PluginError;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
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
