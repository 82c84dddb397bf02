//! `kick-admin streamers`: add and import (resolved through Kick's official API, see `add`),
//! remove, disable, enable, list, show and history. Names are Kick usernames or slugs, normalised
//! by `name`. The `streamers_changed` trigger tells running collectors to subscribe.

mod add;
mod name;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use kick_shared::config::Config;
use kick_shared::db;
use kick_shared::exit::{Exit, ExitError};
use kick_shared::model::Status;
use serde::Serialize;

use crate::streamers::name::normalise;
use crate::table;

#[derive(Debug, Subcommand)]
pub enum StreamersCommand {
    /// Add streamers by Kick username or slug (`Some_User` or `some-user`), resolved through the
    /// official API.
    ///
    /// All or nothing: a name Kick does not know (exit 66), or a conflict (exit 65: the channel
    /// id belongs to another streamer, or the slug is stored for another Kick user), adds
    /// nothing. A streamer renamed on Kick (same user id, new slug) is renamed in place and keeps
    /// its history. If the channel-id or display-name lookup fails, the streamer is added
    /// without it and the output says so.
    Add {
        #[arg(required = true)]
        usernames: Vec<String>,
        /// The realtime channel id (only with one username); otherwise learned when live.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        channel_id: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Add every name in a file: one Kick username or slug per line, optionally followed by its
    /// realtime channel id (`xqc 668`); `#` starts a comment.
    ///
    /// Each name is added on its own: a name Kick does not know, or one in conflict with a
    /// stored streamer (its channel id belongs to another streamer, or its slug is stored for
    /// another Kick user), is reported with its line and skipped; the others are added (renamed
    /// ones renamed). Exit 65 when any line is in conflict, else 66 when any name is unknown,
    /// else 0. A malformed line rejects the whole file (65, nothing written).
    Import {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Stop watching and delete the streamer and its history.
    Remove {
        #[arg(required = true)]
        usernames: Vec<String>,
    },
    /// Stop watching, keeping the streamer and its history.
    Disable {
        #[arg(required = true)]
        usernames: Vec<String>,
    },
    /// Watch again.
    Enable {
        #[arg(required = true)]
        usernames: Vec<String>,
    },
    /// List streamers.
    List {
        /// online, offline or unknown.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One streamer in detail.
    Show {
        username: String,
        #[arg(long)]
        json: bool,
    },
    /// A streamer's status history, newest first.
    History {
        username: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: StreamersCommand, config: &Config) -> anyhow::Result<Exit> {
    match cmd {
        StreamersCommand::Add {
            usernames,
            channel_id,
            json,
        } => add::add(config, &usernames, channel_id, json).await,
        StreamersCommand::Import { file, json } => add::import(config, &file, json).await,
        StreamersCommand::Remove { usernames } => change(config, &usernames, Change::Remove).await,
        StreamersCommand::Disable { usernames } => {
            change(config, &usernames, Change::Disable).await
        }
        StreamersCommand::Enable { usernames } => change(config, &usernames, Change::Enable).await,
        StreamersCommand::List { status, json } => list(config, status.as_deref(), json).await,
        StreamersCommand::Show { username, json } => show(config, &username, json).await,
        StreamersCommand::History {
            username,
            limit,
            json,
        } => history(config, &username, limit, json).await,
    }
}

/// A row of `streamers list`.
#[derive(Debug, Serialize)]
struct ListItem {
    username: String,
    status: Status,
    since: Option<DateTime<Utc>>,
    livestream_id: Option<i64>,
    kick_channel_id: Option<i64>,
    enabled: bool,
    display_name: Option<String>,
    kick_user_id: i64,
    /// `realtime`, `webhook` or `poll` (see `v_streamer_status`).
    coverage: String,
    status_reason: Option<String>,
}

impl ListItem {
    fn from_row(row: &tokio_postgres::Row) -> anyhow::Result<Self> {
        Ok(Self {
            username: row.try_get("username")?,
            status: parse_status(row)?,
            since: row.try_get("since")?,
            livestream_id: row.try_get("livestream_id")?,
            kick_channel_id: row.try_get("kick_channel_id")?,
            enabled: row.try_get("enabled")?,
            display_name: row.try_get("display_name")?,
            kick_user_id: row.try_get("kick_user_id")?,
            coverage: row.try_get("coverage")?,
            status_reason: row.try_get("status_reason")?,
        })
    }
}

/// `streamers show`.
#[derive(Debug, Serialize)]
struct Detail {
    username: String,
    display_name: Option<String>,
    status: Status,
    since: Option<DateTime<Utc>>,
    livestream_id: Option<i64>,
    kick_user_id: i64,
    kick_channel_id: Option<i64>,
    enabled: bool,
    source: Option<String>,
    last_event_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    coverage: String,
    status_reason: Option<String>,
}

impl Detail {
    fn from_row(row: &tokio_postgres::Row) -> anyhow::Result<Self> {
        Ok(Self {
            username: row.try_get("username")?,
            display_name: row.try_get("display_name")?,
            status: parse_status(row)?,
            since: row.try_get("since")?,
            livestream_id: row.try_get("livestream_id")?,
            kick_user_id: row.try_get("kick_user_id")?,
            kick_channel_id: row.try_get("kick_channel_id")?,
            enabled: row.try_get("enabled")?,
            source: row.try_get("source")?,
            last_event_at: row.try_get("last_event_at")?,
            created_at: row.try_get("created_at")?,
            coverage: row.try_get("coverage")?,
            status_reason: row.try_get("status_reason")?,
        })
    }
}

/// One transition of `streamers history`.
#[derive(Debug, Serialize)]
struct HistoryItem {
    occurred_at: DateTime<Utc>,
    previous_status: Status,
    new_status: Status,
    livestream_id: Option<i64>,
    source: String,
    recorded_at: DateTime<Utc>,
}

impl HistoryItem {
    fn from_row(row: &tokio_postgres::Row) -> anyhow::Result<Self> {
        let status = |column: &str| -> anyhow::Result<Status> {
            let text: String = row.try_get(column)?;
            text.parse().map_err(anyhow::Error::msg)
        };
        Ok(Self {
            occurred_at: row.try_get("occurred_at")?,
            previous_status: status("previous_status")?,
            new_status: status("new_status")?,
            livestream_id: row.try_get("livestream_id")?,
            source: row.try_get("source")?,
            recorded_at: row.try_get("recorded_at")?,
        })
    }
}

/// The `status` column, parsed at the row boundary.
fn parse_status(row: &tokio_postgres::Row) -> anyhow::Result<Status> {
    let text: String = row.try_get("status")?;
    text.parse().map_err(anyhow::Error::msg)
}

async fn list(config: &Config, status: Option<&str>, json: bool) -> anyhow::Result<Exit> {
    if let Some(s) = status {
        s.parse::<Status>()
            .map_err(|m| ExitError::new(Exit::Usage, format!("--status: {m}")))?;
    }
    let client = db::connect(&config.database).await?;
    let items = client
        .query(
            "SELECT username, status, since, livestream_id, kick_channel_id,
                    enabled, display_name, kick_user_id, coverage, status_reason
             FROM v_streamer_status WHERE ($1::text IS NULL OR status = $1) ORDER BY username",
            &[&status],
        )
        .await?
        .iter()
        .map(ListItem::from_row)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if json {
        #[derive(Serialize)]
        struct Out {
            streamers: Vec<ListItem>,
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out { streamers: items })?
        );
        return Ok(Exit::Ok);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                s.username.clone(),
                crate::paint_status(s.status.as_str()),
                ts(s.since),
                or_dash(s.livestream_id),
                or_dash(s.kick_channel_id),
                s.coverage.clone(),
                if s.enabled { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "USERNAME",
                "STATUS",
                "SINCE (UTC)",
                "LIVESTREAM",
                "CHANNEL",
                "COVERAGE",
                "ENABLED"
            ],
            &rows
        )
    );
    Ok(Exit::Ok)
}

async fn show(config: &Config, username: &str, json: bool) -> anyhow::Result<Exit> {
    let slug = normalise(username)?;
    let client = db::connect(&config.database).await?;
    let row = client
        .query_opt(
            "SELECT v.username, v.display_name, v.status, v.since, v.livestream_id,
                    v.kick_user_id, v.kick_channel_id, v.enabled, v.source,
                    v.last_event_at, s.created_at, v.coverage, v.status_reason
             FROM v_streamer_status v JOIN streamers s ON s.id = v.id WHERE v.username = $1",
            &[&slug],
        )
        .await?
        .ok_or_else(|| not_found(&slug))?;
    let d = Detail::from_row(&row)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(Exit::Ok);
    }
    let fields: [(&str, String); 13] = [
        ("username", d.username.clone()),
        ("display_name", d.display_name.clone().unwrap_or("-".into())),
        ("status", d.status.to_string()),
        (
            "status_reason",
            d.status_reason.clone().unwrap_or("-".into()),
        ),
        ("coverage", d.coverage.clone()),
        ("since", rfc3339(d.since)),
        ("livestream_id", or_dash(d.livestream_id)),
        ("kick_user_id", d.kick_user_id.to_string()),
        ("kick_channel_id", or_dash(d.kick_channel_id)),
        ("enabled", d.enabled.to_string()),
        ("source", d.source.clone().unwrap_or("-".into())),
        ("last_event_at", rfc3339(d.last_event_at)),
        ("created_at", rfc3339(Some(d.created_at))),
    ];
    for (k, v) in fields {
        println!("{k:<16} {v}");
    }
    Ok(Exit::Ok)
}

async fn history(config: &Config, username: &str, limit: i64, json: bool) -> anyhow::Result<Exit> {
    if !(1..=100_000).contains(&limit) {
        return Err(ExitError::new(Exit::Usage, "--limit must be from 1 to 100000").into());
    }
    let slug = normalise(username)?;
    let client = db::connect(&config.database).await?;
    let row = client
        .query_opt("SELECT id FROM streamers WHERE username = $1", &[&slug])
        .await?
        .ok_or_else(|| not_found(&slug))?;
    let id: i64 = row.try_get("id")?;
    let items = client
        .query(
            "SELECT occurred_at, previous_status, new_status, livestream_id, source, recorded_at
             FROM status_events WHERE streamer_id = $1 ORDER BY occurred_at DESC, id DESC LIMIT $2",
            &[&id, &limit],
        )
        .await?
        .iter()
        .map(HistoryItem::from_row)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if json {
        #[derive(Serialize)]
        struct Out {
            username: String,
            history: Vec<HistoryItem>,
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                username: slug,
                history: items
            })?
        );
        return Ok(Exit::Ok);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|h| {
            vec![
                ts(Some(h.occurred_at)),
                format!("{} -> {}", h.previous_status, h.new_status),
                or_dash(h.livestream_id),
                h.source.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["WHEN (UTC)", "CHANGE", "LIVESTREAM", "SOURCE"], &rows)
    );
    Ok(Exit::Ok)
}

/// What `remove`, `disable` and `enable` do to each named streamer.
#[derive(Debug, Clone, Copy)]
enum Change {
    Remove,
    Disable,
    Enable,
}

impl Change {
    fn sql(self) -> &'static str {
        match self {
            Change::Remove => "DELETE FROM streamers WHERE username = $1",
            Change::Disable => {
                "UPDATE streamers SET enabled = false, updated_at = now() WHERE username = $1"
            }
            Change::Enable => {
                "UPDATE streamers SET enabled = true, updated_at = now() WHERE username = $1"
            }
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Change::Remove => "removed",
            Change::Disable => "disabled",
            Change::Enable => "enabled",
        }
    }
}

/// Applies one change per name in one transaction; any unknown name → 66, nothing changed.
async fn change(config: &Config, usernames: &[String], change: Change) -> anyhow::Result<Exit> {
    let slugs = usernames
        .iter()
        .map(|n| normalise(n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = db::connect(&config.database).await?;
    let tx = client.transaction().await?;
    let mut missing = Vec::new();
    for slug in &slugs {
        if tx.execute(change.sql(), &[slug]).await? == 0 {
            missing.push(slug.as_str());
        }
    }
    if !missing.is_empty() {
        tx.rollback().await?;
        return Err(ExitError::new(
            Exit::NoInput,
            format!(
                "no streamer named {} (nothing was changed)",
                missing.join(", ")
            ),
        )
        .into());
    }
    tx.commit().await?;
    for slug in &slugs {
        println!("{} {slug}", change.verb());
    }
    Ok(Exit::Ok)
}

fn not_found(slug: &str) -> anyhow::Error {
    ExitError::new(Exit::NoInput, format!("no streamer named {slug}")).into()
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// A timestamp as `--json` shows it (RFC 3339), or `-`.
fn rfc3339(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    )
}

fn or_dash(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}
