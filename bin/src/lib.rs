//! Wiring of the `externalsource-controller` binary, exposed as a library so a third party can
//! build its own distribution: depend on this crate and on a backend crate, reference the backend
//! from `main.rs` (`use my_backend as _;`) and call [`main`].

mod app;
mod backends;
mod cli;
mod hook_executor;
mod legacy_env;
mod limits;
mod telemetry;

use std::path::Path;
use std::process::ExitCode;

use externalsource_core::config::{Config, ConfigError, ConfigLoader, DEFAULT_CONFIG_PATH};
use externalsource_core::registry::{self, Env};

pub use app::AppError;
pub use cli::{Cli, Command};

/// Exit code of configuration errors, distinct from runtime failures.
const EXIT_CONFIG: u8 = 2;

/// Loads the configuration: defaults < file < environment < flags.
pub fn load_config(cli: &Cli, env: Env) -> Result<Config, ConfigError> {
    let loader = ConfigLoader::new(env);
    let loader = match &cli.config {
        Some(path) => loader.file(path, true)?,
        None => loader.file(Path::new(DEFAULT_CONFIG_PATH), false)?,
    };
    let mut loader = loader.environment();
    cli.apply_flags(&mut loader);
    loader.build()
}

/// Parses the command line and runs; the whole program.
pub fn main() -> ExitCode {
    limits::bound_heap_growth();
    let cli = Cli::from_args();
    if cli.command == Some(Command::TransformWorker) {
        return externalsource_core::isolated::transform::worker::main();
    }
    // Two linked crates claiming one backend name: refuse before anything else.
    if let Err(e) = registry::check_unique() {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if cli.list_backends {
        print!("{}", registry::describe_backends());
        return ExitCode::SUCCESS;
    }
    if cli.command == Some(Command::Crd) {
        return match externalsource_core::controller::api::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match load_config(&cli, Env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        // The same check as at start-up, so a deployment can be checked before it runs.
        if let Err(e) = app::check_memory(&config, cli.command.unwrap_or(Command::Run)) {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        return ExitCode::SUCCESS;
    }
    telemetry::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mode = cli.command.unwrap_or(Command::Run);
    if mode == Command::HookExecutor {
        return match runtime.block_on(hook_executor::run(&config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "exiting");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(app::run(config, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("error: {e}");
            if e.is_config() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
        }
    }
}
