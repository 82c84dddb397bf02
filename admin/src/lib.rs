//! kick-admin: the operator's command line for kick-monitor (`db`, and more as they land).
//! Every command prints a human table by default or stable JSON with `--json`, and exits with the
//! shared exit-code contract (see `--help`).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kick_shared::config::Config;
use kick_shared::exit::{EXIT_CODES_HELP, Exit};

pub mod db;
mod table;

#[derive(Debug, Parser)]
#[command(name = "kick-admin", version = kick_shared::VERSION, about = "Operate kick-monitor: database, streamers, config and status.", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Database schema and housekeeping.
    #[command(subcommand)]
    Db(db::DbCommand),
}

/// Maps a clap error to the contract: help and version exit 0, usage errors 64.
pub fn usage_exit(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    match e.kind() {
        clap::error::ErrorKind::DisplayHelp
        | clap::error::ErrorKind::DisplayVersion
        | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
        _ => Exit::Usage.into(),
    }
}

/// Runs one command with configuration from `.env` and the environment.
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let config = Config::from_env()?;
    kick_shared::logging::init(&kick_shared::config::LogConfig {
        // A CLI talks to a person: warnings and errors only, as text on stderr, unless asked.
        level: std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        format: kick_shared::config::LogFormat::Text,
    });
    run_with(cli, &config).await
}

/// Runs one command with the given configuration (what tests call).
pub async fn run_with(cli: Cli, config: &Config) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Db(cmd) => db::run(cmd, config).await.context("db"),
    }
}
