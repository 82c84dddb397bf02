//! `kick-admin streamers`: add (resolved through Kick's official API), import, remove, disable,
//! enable, list, show and history. Adding writes nothing unless every name resolves; the
//! `streamers_changed` trigger tells running collectors to subscribe.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use kick_shared::config::Config;
use kick_shared::db;
use kick_shared::exit::{Exit, ExitError};
use kick_shared::kick::api::ApiClient;
use serde_json::json;

use crate::table;

#[derive(Debug, Subcommand)]
pub enum StreamersCommand {
    /// Add streamers by Kick username (slug). Resolved through the official API.
    Add {
        #[arg(required = true)]
        usernames: Vec<String>,
        /// The realtime channel id (only with one username); otherwise learned when live.
        #[arg(long)]
        channel_id: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Add every username in a file: one per line, optionally followed by its realtime channel
    /// id (`xqc 668`); `#` starts a comment.
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

/// Normalizes and checks a Kick username (slug): 1–64 of `a-z 0-9 _ -`, lowercased.
pub fn validate(name: &str) -> Result<String, ExitError> {
    let n = name.trim().to_lowercase();
    let shown: String = name
        .chars()
        .take(40)
        .collect::<String>()
        .escape_debug()
        .to_string();
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !n.starts_with('-');
    if ok {
        Ok(n)
    } else if n.is_empty() {
        Err(ExitError::new(Exit::DataErr, "invalid username: empty"))
    } else {
        Err(ExitError::new(
            Exit::DataErr,
            format!("invalid username \"{shown}\": use 1-64 letters, digits, '_' or '-'"),
        ))
    }
}

/// What adding one name did.
#[derive(Debug, serde::Serialize)]
struct Added {
    username: String,
    kick_user_id: i64,
    kick_channel_id: Option<i64>,
    display_name: Option<String>,
    added: bool,
}

/// Resolves names through Kick and inserts them. Unknown names are returned, not inserted.
async fn add(
    config: &Config,
    client: &mut tokio_postgres::Client,
    names: &[String],
    channel_ids: &HashMap<String, i64>,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<(Vec<Added>, Vec<String>)> {
    let api = ApiClient::new(config.kick.clone())?;
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for chunk in names.chunks(kick_shared::kick::api::BATCH) {
        let (channels, missing) = api.channels_by_slugs(chunk).await?;
        unknown.extend(missing);
        let ids: Vec<i64> = channels.iter().map(|c| c.broadcaster_user_id).collect();
        let names: HashMap<i64, String> = api
            .users_by_ids(&ids)
            .await?
            .into_iter()
            .filter_map(|u| u.name.map(|n| (u.user_id, n)))
            .collect();
        let live: Vec<i64> = channels
            .iter()
            .filter(|c| c.is_live())
            .map(|c| c.broadcaster_user_id)
            .collect();
        let live_channels: HashMap<i64, i64> = if live.is_empty() {
            HashMap::new()
        } else {
            api.livestreams_by_ids(&live)
                .await?
                .into_iter()
                .map(|l| (l.broadcaster_user_id, l.channel_id))
                .collect()
        };
        for ch in channels {
            let slug = ch.slug.to_lowercase();
            let chan = channel_ids
                .get(&slug)
                .copied()
                .or(ch.channel_id)
                .or_else(|| live_channels.get(&ch.broadcaster_user_id).copied());
            out.push(Added {
                username: slug,
                kick_user_id: ch.broadcaster_user_id,
                kick_channel_id: chan,
                display_name: names.get(&ch.broadcaster_user_id).cloned(),
                added: false,
            });
        }
        progress(chunk.len());
    }
    if !unknown.is_empty() {
        return Ok((out, unknown));
    }
    let tx = client.transaction().await?;
    for a in &mut out {
        let n = tx
            .execute(
                "INSERT INTO streamers (username, kick_user_id, kick_channel_id, display_name)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[
                    &a.username,
                    &a.kick_user_id,
                    &a.kick_channel_id,
                    &a.display_name,
                ],
            )
            .await?;
        a.added = n == 1;
        if !a.added && a.kick_channel_id.is_some() {
            // Known already: learn a channel id we did not have (never overwrite one).
            tx.execute(
                "UPDATE streamers SET kick_channel_id = $2, updated_at = now()
                 WHERE kick_user_id = $1 AND kick_channel_id IS NULL
                   AND NOT EXISTS (SELECT 1 FROM streamers WHERE kick_channel_id = $2)",
                &[&a.kick_user_id, &a.kick_channel_id],
            )
            .await?;
        }
    }
    tx.commit().await.map_err(db::DbError::from)?;
    Ok((out, unknown))
}

fn print_added(added: &[Added], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "streamers": added })).unwrap()
        );
        return;
    }
    for a in added {
        let chan = a.kick_channel_id.map_or_else(
            || "channel id not known yet".to_owned(),
            |c| format!("channel {c}"),
        );
        if a.added {
            println!("added {} (user {}, {chan})", a.username, a.kick_user_id);
        } else {
            println!("{} is already added (user {})", a.username, a.kick_user_id);
        }
    }
}

/// An import file: one username per line, optionally followed by its realtime channel id;
/// `#` starts a comment. Any bad line rejects the whole file.
fn parse_file(text: &str) -> Result<(Vec<String>, HashMap<String, i64>), ExitError> {
    let mut names = Vec::new();
    let mut channels = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let bad = |m: String| ExitError::new(Exit::DataErr, format!("line {}: {m}", i + 1));
        let mut parts = l.split_whitespace();
        let n = validate(parts.next().unwrap_or("")).map_err(|e| bad(e.message))?;
        if let Some(c) = parts.next() {
            let id: i64 = c.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                bad(format!(
                    "'{}' is not a channel id",
                    c.chars().take(20).collect::<String>()
                ))
            })?;
            channels.insert(n.clone(), id);
        }
        if parts.next().is_some() {
            return Err(bad("expected a username and at most a channel id".into()));
        }
        if seen.insert(n.clone()) {
            names.push(n);
        }
    }
    Ok((names, channels))
}

async fn by_username(
    client: &tokio_postgres::Client,
    name: &str,
) -> anyhow::Result<tokio_postgres::Row> {
    let name = validate(name)?;
    client
        .query_opt(
            "SELECT id, username, display_name, status, status_changed_at, livestream_id, kick_user_id,
                    kick_channel_id, enabled, status_source, last_event_at, created_at
             FROM streamers WHERE username = $1",
            &[&name],
        )
        .await?
        .ok_or_else(|| ExitError::new(Exit::NoInput, format!("no streamer named {name}")).into())
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

pub async fn run(cmd: StreamersCommand, config: &Config) -> anyhow::Result<Exit> {
    match cmd {
        StreamersCommand::Add {
            usernames,
            channel_id,
            json,
        } => {
            if channel_id.is_some() && usernames.len() != 1 {
                return Err(ExitError::new(
                    Exit::Usage,
                    "--channel-id goes with exactly one username",
                )
                .into());
            }
            let names = usernames
                .iter()
                .map(|n| validate(n))
                .collect::<Result<Vec<_>, _>>()?;
            let mut client = db::connect(&config.database).await?;
            let ids: HashMap<String, i64> = channel_id
                .map(|c| (names[0].clone(), c))
                .into_iter()
                .collect();
            let (added, unknown) = add(config, &mut client, &names, &ids, |_| {}).await?;
            if !unknown.is_empty() {
                return Err(ExitError::new(
                    Exit::NoInput,
                    format!(
                        "not found on kick: {} (nothing was added)",
                        unknown.join(", ")
                    ),
                )
                .into());
            }
            print_added(&added, json);
            Ok(Exit::Ok)
        }
        StreamersCommand::Import { file, json } => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ExitError::new(
                    Exit::NoInput,
                    format!(
                        "cannot read {}: {}",
                        file.display(),
                        e.to_string().to_lowercase()
                    ),
                )
            })?;
            let (names, channel_ids) = parse_file(&text)?;
            let mut client = db::connect(&config.database).await?;
            let tty = std::io::stderr().is_terminal();
            let total = names.len();
            let mut done = 0;
            // Resolve in slices so that unknown names are reported without blocking the rest.
            let mut added = Vec::new();
            let mut unknown = Vec::new();
            for slice in names.chunks(500) {
                let (mut a, u) = add(config, &mut client, slice, &channel_ids, |n| {
                    done += n;
                    if tty {
                        eprint!("\rresolving {done}/{total}");
                        let _ = std::io::stderr().flush();
                    }
                })
                .await?;
                if !u.is_empty() {
                    // Add the names that did resolve; report the others.
                    let known: Vec<String> =
                        slice.iter().filter(|n| !u.contains(n)).cloned().collect();
                    let (a2, _) = add(config, &mut client, &known, &channel_ids, |_| {}).await?;
                    a = a2;
                    unknown.extend(u);
                }
                added.extend(a);
            }
            if tty {
                eprintln!();
            }
            let new = added.iter().filter(|a| a.added).count();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"added": new, "existing": added.len() - new, "unknown": unknown})
                    )?
                );
            } else {
                println!(
                    "imported {total} names: {new} added, {} already present, {} not found on kick",
                    added.len() - new,
                    unknown.len()
                );
                if !unknown.is_empty() {
                    println!("not found: {}", unknown.join(", "));
                }
            }
            Ok(if unknown.is_empty() {
                Exit::Ok
            } else {
                Exit::NoInput
            })
        }
        StreamersCommand::Remove { usernames } => {
            change(
                config,
                &usernames,
                "DELETE FROM streamers WHERE username = $1",
                "removed",
            )
            .await
        }
        StreamersCommand::Disable { usernames } => {
            change(
                config,
                &usernames,
                "UPDATE streamers SET enabled = false, updated_at = now() WHERE username = $1",
                "disabled",
            )
            .await
        }
        StreamersCommand::Enable { usernames } => {
            change(
                config,
                &usernames,
                "UPDATE streamers SET enabled = true, updated_at = now() WHERE username = $1",
                "enabled",
            )
            .await
        }
        StreamersCommand::List { status, json } => {
            if let Some(s) = &status {
                s.parse::<kick_shared::model::Status>()
                    .map_err(|m| ExitError::new(Exit::Usage, format!("--status: {m}")))?;
            }
            let client = db::connect(&config.database).await?;
            let rows = client
                .query(
                    "SELECT username, status, status_changed_at, livestream_id, kick_channel_id, enabled, display_name, kick_user_id
                     FROM streamers WHERE ($1::text IS NULL OR status = $1) ORDER BY username",
                    &[&status],
                )
                .await?;
            if json {
                let items: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        json!({"username": r.get::<_, String>(0), "status": r.get::<_, String>(1),
                               "since": r.get::<_, Option<DateTime<Utc>>>(2), "livestream_id": r.get::<_, Option<i64>>(3),
                               "kick_channel_id": r.get::<_, Option<i64>>(4), "enabled": r.get::<_, bool>(5),
                               "display_name": r.get::<_, Option<String>>(6), "kick_user_id": r.get::<_, i64>(7)})
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "streamers": items }))?
                );
            } else {
                let t: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.get::<_, String>(0),
                            crate::paint_status(&r.get::<_, String>(1)),
                            ts(r.get(2)),
                            r.get::<_, Option<i64>>(3)
                                .map_or("-".into(), |v| v.to_string()),
                            r.get::<_, Option<i64>>(4)
                                .map_or("-".into(), |v| v.to_string()),
                            if r.get::<_, bool>(5) {
                                "yes".into()
                            } else {
                                "no".into()
                            },
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
                            "ENABLED"
                        ],
                        &t
                    )
                );
            }
            Ok(Exit::Ok)
        }
        StreamersCommand::Show { username, json } => {
            let client = db::connect(&config.database).await?;
            let r = by_username(&client, &username).await?;
            let v = json!({
                "username": r.get::<_, String>(1), "display_name": r.get::<_, Option<String>>(2),
                "status": r.get::<_, String>(3), "since": r.get::<_, Option<DateTime<Utc>>>(4),
                "livestream_id": r.get::<_, Option<i64>>(5), "kick_user_id": r.get::<_, i64>(6),
                "kick_channel_id": r.get::<_, Option<i64>>(7), "enabled": r.get::<_, bool>(8),
                "source": r.get::<_, Option<String>>(9), "last_event_at": r.get::<_, Option<DateTime<Utc>>>(10),
                "created_at": r.get::<_, DateTime<Utc>>(11),
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (k, val) in v.as_object().unwrap() {
                    let shown = match val {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => "-".into(),
                        other => other.to_string(),
                    };
                    println!("{k:<16} {shown}");
                }
            }
            Ok(Exit::Ok)
        }
        StreamersCommand::History {
            username,
            limit,
            json,
        } => {
            if !(1..=100_000).contains(&limit) {
                return Err(ExitError::new(Exit::Usage, "--limit must be from 1 to 100000").into());
            }
            let client = db::connect(&config.database).await?;
            let r = by_username(&client, &username).await?;
            let id: i64 = r.get(0);
            let rows = client
                .query(
                    "SELECT occurred_at, previous_status, new_status, livestream_id, source, recorded_at
                     FROM status_events WHERE streamer_id = $1 ORDER BY occurred_at DESC, id DESC LIMIT $2",
                    &[&id, &limit],
                )
                .await?;
            if json {
                let items: Vec<_> = rows
                    .iter()
                    .map(|r| json!({"occurred_at": r.get::<_, DateTime<Utc>>(0), "previous_status": r.get::<_, String>(1),
                                    "new_status": r.get::<_, String>(2), "livestream_id": r.get::<_, Option<i64>>(3),
                                    "source": r.get::<_, String>(4), "recorded_at": r.get::<_, DateTime<Utc>>(5)}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"username": r.get::<_, String>(1), "history": items})
                    )?
                );
            } else {
                let t: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            ts(Some(r.get(0))),
                            format!("{} -> {}", r.get::<_, String>(1), r.get::<_, String>(2)),
                            r.get::<_, Option<i64>>(3)
                                .map_or("-".into(), |v| v.to_string()),
                            r.get::<_, String>(4),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["WHEN (UTC)", "CHANGE", "LIVESTREAM", "SOURCE"], &t)
                );
            }
            Ok(Exit::Ok)
        }
    }
}

/// Applies one statement per username in one transaction; any unknown name → 66, nothing changed.
async fn change(
    config: &Config,
    usernames: &[String],
    sql: &str,
    verb: &str,
) -> anyhow::Result<Exit> {
    let names = usernames
        .iter()
        .map(|n| validate(n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = db::connect(&config.database).await?;
    let tx = client.transaction().await?;
    let mut missing = Vec::new();
    for n in &names {
        if tx.execute(sql, &[n]).await? == 0 {
            missing.push(n.clone());
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
    for n in &names {
        println!("{verb} {n}");
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_validated() {
        assert_eq!(validate(" XQc ").unwrap(), "xqc");
        assert_eq!(validate("a_b-c9").unwrap(), "a_b-c9");
        for bad in [
            "",
            "   ",
            "a'b",
            "x;drop table streamers",
            "naïve",
            "héllo",
            "-x",
            "a b",
            "\"q\"",
        ] {
            let e = validate(bad).unwrap_err();
            assert_eq!(e.exit, Exit::DataErr, "{bad}");
            assert!(!e.message.contains('\n'));
        }
        let long = "a".repeat(1000);
        let e = validate(&long).unwrap_err();
        assert!(e.message.len() < 200, "the message stays one short line");
    }

    #[test]
    fn import_files_skip_comments_and_duplicates() {
        let (names, ids) =
            parse_file("# list\nxqc 668\n\nTrainwreckstv # the best\nxqc\n").unwrap();
        assert_eq!(names, ["xqc", "trainwreckstv"]);
        assert_eq!(ids.get("xqc"), Some(&668));
        assert!(
            parse_file("xqc abc\n")
                .unwrap_err()
                .message
                .contains("not a channel id")
        );
        assert!(parse_file("xqc 1 2\n").is_err());
        let e = parse_file("ok\nnot ok\n").unwrap_err();
        assert!(e.message.starts_with("line 2:"), "{}", e.message);
    }
}
