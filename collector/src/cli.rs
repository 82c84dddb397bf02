//! The command line of `kick-collector`: no arguments besides `--help` and `--version`, which
//! document the configuration variables and the exit codes. Here, not in `main.rs`, so the man
//! page generator (`packaging/src/manpages.rs`) renders the same definition.

use clap::Parser;
use kick_shared::exit::EXIT_CODES_HELP;

#[derive(Debug, Parser)]
#[command(
    name = "kick-collector",
    version = kick_shared::VERSION,
    about = "Watch Kick's realtime feed and REST API; stage live/offline events into raw_events.",
    long_about = "Watch Kick's realtime feed (Centrifugo or Pusher) and reconcile against the official API; stage live/offline events into raw_events.\n\nConfiguration comes from .env and the environment: DATABASE_URL (or DATABASE_HOST, DATABASE_PORT, DATABASE_NAME, DATABASE_USER, DATABASE_PASSWORD, DATABASE_SSLMODE, DATABASE_SSLROOTCERT; the PG* variables and ~/.pgpass as fallbacks), COLLECTOR_DATABASE_USER, KICK_CLIENT_ID, KICK_CLIENT_SECRET, KICK_API_URL, KICK_AUTH_URL, KICK_WEB_URL, KICK_SITE_URL, KICK_REALTIME_TRANSPORT, KICK_PUSHER_URL, KICK_CHANNELS_PER_CONNECTION, KICK_WEB_RATE, KICK_RECONCILE_INTERVAL, KICK_POLL_INTERVAL, KICK_REGION_REFRESH, KICK_CHANNEL_LOOKUP, KICK_SILENCE_GRACE, KICK_TERMINAL_RETRY, BATCH_SIZE, COLLECTOR_ID, STATE_DIRECTORY, KICK_SPOOL_MAX_MB, METRICS_ADDR, LOG_LEVEL, LOG_FORMAT. Settings stored with `kick-admin config set` are read once the database answers and again whenever they change.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {}
