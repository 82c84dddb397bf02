//! The command line of `kick-webhooks`: `--help` and `--version` only; here, not in the
//! binary, so the man page generator renders the same definition.

use clap::Parser;
use kick_shared::exit::EXIT_CODES_HELP;

#[derive(Debug, Parser)]
#[command(
    name = "kick-webhooks",
    version = kick_shared::VERSION,
    about = "Receive Kick's signed livestream.status.updated webhooks; stage them into raw_events.",
    long_about = "Receive Kick's signed livestream.status.updated webhooks (plain HTTP behind a TLS reverse proxy), verify them, and stage them into raw_events; with WEBHOOKS=on, keep Kick's subscriptions equal to the enabled streamers.\n\nAnswers: 200 once a delivery is durable (a replayed message id too); 401 unsigned, badly signed or a timestamp more than 5 minutes off; 400 malformed; 404 another path; 405 another method; 413 a body over 64 KiB; 503 the database or Kick's public key unavailable (Kick may retry).\n\nConfiguration comes from .env and the environment: DATABASE_URL (or DATABASE_HOST, DATABASE_PORT, DATABASE_NAME, DATABASE_USER, DATABASE_PASSWORD, DATABASE_SSLMODE, DATABASE_SSLROOTCERT; the PG* variables and ~/.pgpass as fallbacks), WEBHOOKS_DATABASE_USER, WEBHOOK_LISTEN (default 127.0.0.1:8095), WEBHOOK_PATH (default /kick/webhook), KICK_WEBHOOK_PUBLIC_KEY_FILE, WEBHOOKS (off or on), KICK_CLIENT_ID, KICK_CLIENT_SECRET, KICK_API_URL, KICK_AUTH_URL, BATCH_SIZE, STATE_DIRECTORY, KICK_SPOOL_MAX_MB, METRICS_ADDR, LOG_LEVEL, LOG_FORMAT. Settings stored with `kick-admin config set` are read once the database answers and again whenever they change.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {}
