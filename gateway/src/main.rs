//! The `conversa` binary: parses the configuration, then runs the engine or a migration.

use clap::Parser;
use gateway::config::{Cli, Command};

/// Exit status for a bad configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

fn main() {
    let cli = Cli::parse();
    if let Err(e) = cli.config.validate() {
        eprintln!("conversa: {e}");
        std::process::exit(EXIT_CONFIG);
    }
    gateway::telemetry::init(&cli.config.log, cli.config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the Tokio runtime should not fail");
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                tracing::info!(config = ?cli.config, "starting conversa");
                gateway::server::run(cli.config, gateway::shutdown::signal()).await
            }
            Command::Migrate => gateway::server::migrate(&cli.config).await,
        }
    });
    if let Err(e) = result {
        eprintln!("conversa: {e:#}");
        std::process::exit(1);
    }
}
