//! kick-admin: the operator's command line for kick-monitor (`db`, and more as they land).
//! Every command prints a human table by default or stable JSON with `--json`, and exits with the
//! shared exit-code contract (see `--help`).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kick_shared::config::{Config, Service};
use kick_shared::exit::{EXIT_CODES_HELP, Exit};

mod config_cmd;
pub mod db;
pub mod db_init;
mod probe;
pub mod scram;
mod secret_input;
mod status;
pub mod streamers;
mod table;
pub mod webhooks;

pub use config_cmd::ConfigCommand;

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
    /// Streamers to watch.
    #[command(subcommand)]
    Streamers(streamers::StreamersCommand),
    /// Settings stored in the database (secrets encrypted).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Health of the whole system; exit 69 when a component is down or stale.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The collectors, the shards each holds, and who holds which shard (owners, unowned and
    /// under-replicated shards, moves in the last hour). Exit 69 only when the database does not
    /// answer; `status` is the health check.
    Collectors {
        #[arg(long)]
        json: bool,
    },
    /// Check, against the real Kick, each assumption kick-monitor makes (needs the Internet
    /// and credentials): OAuth, a channels lookup by slug, v1 livestreams, the realtime
    /// negotiation (general and per channel), a guest token, a WebSocket subscribe. One line per
    /// check; exit 0 only if all pass. Run it first, and include its output in bug reports.
    Probe {
        /// A streamer to look up; one whose username has an underscore also checks Kick's
        /// `_` → `-` slug rule.
        #[arg(long, default_value = "xqc")]
        slug: String,
        /// A realtime channel id to negotiate and subscribe (default: the streamer's, when it is
        /// live).
        #[arg(long)]
        channel_id: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Kick's webhook subscriptions: list them, or sync them with the enabled streamers.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

/// A status word, coloured on a terminal unless `NO_COLOR` is set.
pub fn paint_status(s: &str) -> String {
    use std::io::IsTerminal;
    if std::env::var_os("NO_COLOR").is_some() || !std::io::stdout().is_terminal() {
        return s.to_owned();
    }
    let code = match s {
        "online" => "32",
        "offline" => "90",
        _ => "33",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
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

/// Runs one command with configuration from `.env` and the environment, over the packaged
/// environment file and credentials when they are readable (see `Source::from_env_for`).
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    if let Command::Completions { .. } = cli.command {
        // Needs no configuration.
        return run_with(
            cli,
            &Config::from_source(&kick_shared::config::Source::from_pairs([
                ("DATABASE_HOST", "/"),
                ("DATABASE_NAME", "-"),
            ]))?,
        )
        .await;
    }
    let needs_db_settings = matches!(
        cli.command,
        Command::Streamers(_) | Command::Probe { .. } | Command::Webhooks(_)
    );
    let as_superuser = matches!(
        cli.command,
        Command::Db(db::DbCommand::Init { .. } | db::DbCommand::Roles)
    );
    let mut config = if as_superuser {
        Config::from_source(&superuser_defaults(
            kick_shared::config::Source::from_env()?,
            std::env::var("USER").ok(),
        ))?
    } else {
        Config::from_env_for(Service::Admin)?
    };
    kick_shared::logging::init(&kick_shared::config::LogConfig {
        // A CLI talks to a person: warnings and errors only, as text on stderr, unless asked.
        level: std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        format: kick_shared::config::LogFormat::Text,
    });
    for warning in config.database.warnings() {
        tracing::warn!("{warning}");
    }
    // Read-only commands answer within a bound: a hung database server (stopped, its disk
    // frozen) must not hang a monitoring script that runs `kick-admin status`. Commands that
    // change something are not cut short midway.
    let read_only = matches!(
        &cli.command,
        Command::Status { .. }
            | Command::Collectors { .. }
            | Command::Db(db::DbCommand::Status { .. })
            | Command::Streamers(
                streamers::StreamersCommand::List { .. }
                    | streamers::StreamersCommand::Show { .. }
                    | streamers::StreamersCommand::History { .. }
            )
            | Command::Config(ConfigCommand::Get { .. } | ConfigCommand::List { .. })
    );
    let limit = admin_timeout()?;
    let work = async {
        if needs_db_settings {
            // Kick credentials may be stored in the config table (`config set KICK_CLIENT_SECRET`).
            config = kick_shared::config::load_with_db(Service::Admin).await?;
        }
        run_with(cli, &config).await
    };
    match limit.filter(|_| read_only) {
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(kick_shared::exit::ExitError::new(
                Exit::TempFail,
                format!(
                    "no answer within {}s: the database is not answering (KICK_ADMIN_TIMEOUT sets the limit)",
                    limit.as_secs()
                ),
            )
            .into())
        }),
        None => work.await,
    }
}

/// `KICK_ADMIN_TIMEOUT`: seconds a read-only command may take (default 30; 0: no limit).
fn admin_timeout() -> anyhow::Result<Option<std::time::Duration>> {
    let secs = match std::env::var("KICK_ADMIN_TIMEOUT") {
        Err(_) => 30,
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= 86_400)
            .ok_or_else(|| {
                kick_shared::exit::ExitError::new(
                    Exit::Config,
                    format!("KICK_ADMIN_TIMEOUT: expected seconds from 0 to 86400, got {v:?}"),
                )
            })?,
    };
    Ok((secs > 0).then(|| std::time::Duration::from_secs(secs)))
}

/// `db init` and `db roles` are run by the database superuser, typically as
/// `sudo -u postgres kick-admin db init` with no kick-monitor settings in its environment: without
/// `DATABASE_URL`, unset variables default to the local Unix socket (`/var/run/postgresql`), the
/// database `kick_monitor` and the OS user's name as the role (peer authentication).
pub fn superuser_defaults(
    mut src: kick_shared::config::Source,
    os_user: Option<String>,
) -> kick_shared::config::Source {
    if src.get("DATABASE_URL").is_none() {
        if src.get("DATABASE_HOST").is_none() {
            src.set("DATABASE_HOST", "/var/run/postgresql");
        }
        if src.get("DATABASE_NAME").is_none() {
            src.set("DATABASE_NAME", "kick_monitor");
        }
        if src.get("DATABASE_USER").is_none() {
            src.set(
                "DATABASE_USER",
                os_user.unwrap_or_else(|| "postgres".into()),
            );
        }
    }
    src
}

/// Runs one command with the given configuration (what tests call).
pub async fn run_with(cli: Cli, config: &Config) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Db(cmd) => db::run(cmd, config).await.context("db"),
        Command::Streamers(cmd) => streamers::run(cmd, config).await.context("streamers"),
        Command::Config(cmd) => config_cmd::run(cmd, config).await.context("config"),
        Command::Status { json } => status::run(json, config).await.context("status"),
        Command::Collectors { json } => {
            status::collectors(json, config).await.context("collectors")
        }
        Command::Probe {
            slug,
            channel_id,
            json,
        } => probe::run(config, &slug, channel_id, json)
            .await
            .context("probe"),
        Command::Webhooks(cmd) => webhooks::run(cmd, config).await.context("webhooks"),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kick-admin",
                &mut std::io::stdout(),
            );
            Ok(Exit::Ok)
        }
    }
}
