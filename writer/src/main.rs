//! `kick-writer`: process wiring only; the writer is the `kick_writer` library.

use std::process::ExitCode;

use clap::Parser;
use kick_shared::exit::EXIT_CODES_HELP;

#[derive(Debug, Parser)]
#[command(
    name = "kick-writer",
    version = kick_shared::VERSION,
    about = "Apply staged Kick events to streamers and status history (LISTEN raw_events).",
    long_about = "Apply staged Kick events to streamers and status history.\n\nConfiguration comes from .env and the environment: DATABASE_URL (or DATABASE_HOST, DATABASE_PORT, DATABASE_NAME, DATABASE_USER, DATABASE_PASSWORD, DATABASE_SSLMODE, DATABASE_SSLROOTCERT; the PG* variables and ~/.pgpass as fallbacks), WRITER_DATABASE_USER, BATCH_SIZE, KICK_OFFLINE_GRACE, KICK_RAW_RETENTION, WRITER_POLL_INTERVAL, METRICS_ADDR, LOG_LEVEL, LOG_FORMAT.",
    after_help = EXIT_CODES_HELP
)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = Cli::try_parse() {
        let _ = e.print();
        return if e.use_stderr() {
            kick_shared::exit::Exit::Usage.into()
        } else {
            ExitCode::SUCCESS
        };
    }
    let config = match kick_shared::service_config(kick_shared::config::Service::Writer) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let shutdown = kick_shared::shutdown::on_signals();
    match kick_writer::run(kick_writer::WriterConfig::from_config(config), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "writer failed");
            kick_shared::exit::report("kick-writer", &e)
        }
    }
}
