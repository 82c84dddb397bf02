//! The command line of `kick-writer`: no arguments besides `--help` and `--version`, which
//! document the configuration variables and the exit codes. Here, not in `main.rs`, so the man
//! page generator (`packaging/src/manpages.rs`) renders the same definition.

use clap::Parser;
use kick_shared::exit::EXIT_CODES_HELP;

#[derive(Debug, Parser)]
#[command(
    name = "kick-writer",
    version = kick_shared::VERSION,
    about = "Apply staged Kick events to streamers and status history (LISTEN raw_events).",
    long_about = "Apply staged Kick events to streamers and status history.\n\nConfiguration comes from .env and the environment: DATABASE_URL (or DATABASE_HOST, DATABASE_PORT, DATABASE_NAME, DATABASE_USER, DATABASE_PASSWORD, DATABASE_SSLMODE, DATABASE_SSLROOTCERT; the PG* variables and ~/.pgpass as fallbacks), WRITER_DATABASE_USER, BATCH_SIZE, KICK_OFFLINE_GRACE, KICK_RAW_RETENTION, WRITER_POLL_INTERVAL, METRICS_ADDR, LOG_LEVEL, LOG_FORMAT. Settings stored with `kick-admin config set` are read once the database answers and again whenever they change.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {}
