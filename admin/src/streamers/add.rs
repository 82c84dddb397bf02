//! `streamers add` and `streamers import`: resolve names through Kick's official API, then store
//! them under one set of rules ([`plan`]):
//!
//! - a Kick user not stored yet is inserted;
//! - a Kick user stored under the same slug is "already added" (a channel id it lacked is learned,
//!   one it has is never overwritten);
//! - a Kick user stored under another slug was renamed on Kick: the row takes the new slug (and
//!   display name) and keeps its id and history;
//! - a channel id that belongs to another streamer, or a slug stored for another Kick user, is a
//!   conflict: nothing is written for that name.
//!
//! Only the channels lookup (slug → user id) must succeed. The users lookup (display names) and
//! the livestreams lookup (the realtime channel id of a live streamer; Kick deprecated it in June
//! 2026) may fail: the streamer is then added without them, and the output says so.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::Path;

use kick_shared::config::Config;
use kick_shared::db;
use kick_shared::exit::{Exit, ExitError};
use kick_shared::kick::api::{ApiClient, ApiError, BATCH, Channel};
use serde::Serialize;
use tokio_postgres::error::SqlState;

use crate::streamers::name;

/// Serializes `streamers add`/`import` runs against each other (their check-then-write).
const ADD_LOCK: i64 = 0x6b69_636b_6164_6421;

/// Names an import resolves and stores per transaction.
const IMPORT_SLICE: usize = 500;

/// One name to add: its normalised slug, the file line it came from, a channel id given with it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    slug: String,
    /// 1-based line of the import file; `None` on the command line.
    line: Option<usize>,
    channel_id: Option<i64>,
}

/// A wanted name as Kick knows it.
#[derive(Debug, Clone)]
struct Resolved {
    wanted: Wanted,
    /// The slug Kick returned: what is stored.
    slug: String,
    kick_user_id: i64,
    /// Given with the name, or learned from Kick.
    kick_channel_id: Option<i64>,
    display_name: Option<String>,
    /// What could not be learned because a lookup failed.
    notes: Vec<String>,
}

/// The answer of the lookups for a list of names.
#[derive(Debug, Default)]
struct Resolution {
    found: Vec<Resolved>,
    /// Names Kick does not know.
    unknown: Vec<Wanted>,
    /// Names Kick knows under a slug the schema cannot store.
    rejected: Vec<Conflict>,
}

/// A stored row a resolved name may collide with (read by column name).
#[derive(Debug, Clone)]
struct Stored {
    id: i64,
    username: String,
    kick_user_id: i64,
    kick_channel_id: Option<i64>,
}

impl Stored {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
            kick_user_id: row.try_get("kick_user_id")?,
            kick_channel_id: row.try_get("kick_channel_id")?,
        })
    }
}

/// What to do with one resolved name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Insert,
    /// Stored under this slug already; `learn` is a channel id to fill in.
    Keep {
        id: i64,
        channel: Option<i64>,
        learn: Option<i64>,
    },
    /// Stored under another slug: renamed on Kick.
    Rename {
        id: i64,
        from: String,
        channel: Option<i64>,
        learn: Option<i64>,
    },
    /// Nothing is written; the message says why.
    Conflict(String),
}

/// What `add` did with a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Done {
    Added,
    AlreadyAdded,
    Renamed,
}

/// What happened to one name, as printed (`--json`: one object per name).
#[derive(Debug, Serialize)]
struct Outcome {
    username: String,
    kick_user_id: i64,
    kick_channel_id: Option<i64>,
    display_name: Option<String>,
    /// `added`, `already_added` or `renamed`.
    outcome: Done,
    /// True when a row was inserted (the field of earlier versions).
    added: bool,
    renamed_from: Option<String>,
    /// What could not be learned (a failed lookup) or was not changed.
    notes: Vec<String>,
}

/// A name that was not stored because it conflicts with what is stored.
#[derive(Debug, Serialize)]
struct Conflict {
    line: Option<usize>,
    username: String,
    message: String,
}

impl Conflict {
    fn new(wanted: &Wanted, message: String) -> Self {
        Self {
            line: wanted.line,
            username: wanted.slug.clone(),
            message,
        }
    }

    /// `line 3: xqc: …` in a file, `xqc: …` on the command line.
    fn to_line(&self) -> String {
        match self.line {
            Some(n) => format!("line {n}: {}: {}", self.username, self.message),
            None => format!("{}: {}", self.username, self.message),
        }
    }
}

/// `streamers add`: all or nothing.
pub(crate) async fn add(
    config: &Config,
    usernames: &[String],
    channel_id: Option<i64>,
    json: bool,
) -> anyhow::Result<Exit> {
    if channel_id.is_some() && usernames.len() != 1 {
        return Err(
            ExitError::new(Exit::Usage, "--channel-id goes with exactly one username").into(),
        );
    }
    let mut wanted: Vec<Wanted> = Vec::new();
    for typed in usernames {
        let slug = name::normalise(typed)?;
        if !wanted.iter().any(|w| w.slug == slug) {
            wanted.push(Wanted {
                slug,
                line: None,
                channel_id,
            });
        }
    }
    let mut client = db::connect(&config.database).await?;
    let api = ApiClient::new(config.kick.clone())?;
    let resolution = resolve(&api, &wanted, |_| {}).await?;
    if !resolution.unknown.is_empty() {
        let names: Vec<&str> = resolution.unknown.iter().map(|w| w.slug.as_str()).collect();
        return Err(ExitError::new(
            Exit::NoInput,
            format!(
                "not found on kick: {} (nothing was added)",
                names.join(", ")
            ),
        )
        .into());
    }
    if !resolution.rejected.is_empty() {
        return Err(nothing_added(&resolution.rejected).into());
    }
    let (outcomes, conflicts) = store(&mut client, resolution.found, Commit::AllOrNothing).await?;
    if !conflicts.is_empty() {
        return Err(nothing_added(&conflicts).into());
    }
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            streamers: &'a [Outcome],
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                streamers: &outcomes
            })?
        );
    } else {
        for o in &outcomes {
            print_outcome(o);
        }
    }
    Ok(Exit::Ok)
}

fn nothing_added(conflicts: &[Conflict]) -> ExitError {
    let lines: Vec<String> = conflicts.iter().map(Conflict::to_line).collect();
    ExitError::new(
        Exit::DataErr,
        format!("{} (nothing was added)", lines.join("; ")),
    )
}

fn print_outcome(o: &Outcome) {
    let channel = o.kick_channel_id.map_or_else(
        || "channel id not known yet".to_owned(),
        |c| format!("channel {c}"),
    );
    match o.outcome {
        Done::Added => println!("added {} (user {}, {channel})", o.username, o.kick_user_id),
        Done::Renamed => println!(
            "renamed {} -> {} (user {}, {channel})",
            o.renamed_from.as_deref().unwrap_or("?"),
            o.username,
            o.kick_user_id
        ),
        Done::AlreadyAdded => println!(
            "{} is already added (user {}, {channel})",
            o.username, o.kick_user_id
        ),
    }
    for note in &o.notes {
        println!("  note: {note}");
    }
}

/// The summary of `streamers import` (`--json`).
#[derive(Debug, Default, Serialize)]
struct ImportSummary {
    names: usize,
    added: usize,
    existing: usize,
    renamed: Vec<Renamed>,
    unknown: Vec<String>,
    conflicts: Vec<Conflict>,
    /// Each distinct note (a failed lookup) with the number of streamers it concerns.
    notes: Vec<Note>,
}

#[derive(Debug, Serialize)]
struct Renamed {
    from: String,
    to: String,
}

#[derive(Debug, Serialize)]
struct Note {
    message: String,
    streamers: usize,
}

/// The largest import file (a million names fit in far less).
const MAX_IMPORT_BYTES: u64 = 16 * 1024 * 1024;

/// Reads an import file of at most [`MAX_IMPORT_BYTES`] (`/dev/zero` or a huge file is refused,
/// not read into memory); it must be UTF-8.
fn read_bounded(file: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| {
        ExitError::new(
            Exit::NoInput,
            format!(
                "cannot read {}: {}",
                file.display(),
                e.to_string().to_lowercase()
            ),
        )
    };
    let f = std::fs::File::open(file).map_err(cannot)?;
    let mut bytes = Vec::new();
    f.take(MAX_IMPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_IMPORT_BYTES {
        return Err(ExitError::new(
            Exit::DataErr,
            format!(
                "{} is larger than {} MiB: split it",
                file.display(),
                MAX_IMPORT_BYTES >> 20
            ),
        )
        .into());
    }
    String::from_utf8(bytes).map_err(|e| {
        ExitError::new(
            Exit::DataErr,
            format!(
                "{} is not UTF-8 text (byte {})",
                file.display(),
                e.utf8_error().valid_up_to()
            ),
        )
        .into()
    })
}

/// `streamers import`: names are added independently; conflicts and unknown names are reported
/// and skipped. Exit 65 when a line conflicted, else 66 when a name is unknown, else 0.
pub(crate) async fn import(config: &Config, file: &Path, json: bool) -> anyhow::Result<Exit> {
    let text = read_bounded(file)?;
    let wanted = parse_file(&text)?;
    let mut client = db::connect(&config.database).await?;
    let api = ApiClient::new(config.kick.clone())?;
    let tty = std::io::stderr().is_terminal();
    let mut summary = ImportSummary {
        names: wanted.len(),
        ..ImportSummary::default()
    };
    let mut notes: BTreeMap<String, usize> = BTreeMap::new();
    let mut n_resolved = 0;
    for slice in wanted.chunks(IMPORT_SLICE) {
        let resolution = resolve(&api, slice, |n| {
            n_resolved += n;
            if tty {
                eprint!("\rresolving {n_resolved}/{}", summary.names);
                let _ = std::io::stderr().flush();
            }
        })
        .await?;
        summary
            .unknown
            .extend(resolution.unknown.into_iter().map(|w| w.slug));
        summary.conflicts.extend(resolution.rejected);
        let (outcomes, conflicts) = store(&mut client, resolution.found, Commit::PerName).await?;
        summary.conflicts.extend(conflicts);
        for o in outcomes {
            match o.outcome {
                Done::Added => summary.added += 1,
                Done::Renamed => summary.renamed.push(Renamed {
                    from: o.renamed_from.unwrap_or_default(),
                    to: o.username,
                }),
                Done::AlreadyAdded => summary.existing += 1,
            }
            for note in o.notes {
                *notes.entry(note).or_default() += 1;
            }
        }
    }
    if tty {
        eprintln!();
    }
    summary.conflicts.sort_by_key(|c| c.line);
    summary.notes = notes
        .into_iter()
        .map(|(message, streamers)| Note { message, streamers })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(if !summary.conflicts.is_empty() {
        Exit::DataErr
    } else if !summary.unknown.is_empty() {
        Exit::NoInput
    } else {
        Exit::Ok
    })
}

fn print_summary(s: &ImportSummary) {
    println!(
        "imported {} names: {} added, {} already present, {} renamed, {} in conflict, {} not found on kick",
        s.names,
        s.added,
        s.existing,
        s.renamed.len(),
        s.conflicts.len(),
        s.unknown.len()
    );
    for r in &s.renamed {
        println!("renamed {} -> {}", r.from, r.to);
    }
    for c in &s.conflicts {
        println!("{}", c.to_line());
    }
    if !s.unknown.is_empty() {
        println!("not found: {}", s.unknown.join(", "));
    }
    for n in &s.notes {
        let plural = if n.streamers == 1 { "" } else { "s" };
        println!("note ({} streamer{plural}): {}", n.streamers, n.message);
    }
}

/// An import file: one username or slug per line, optionally followed by its realtime channel
/// id; `#` starts a comment. A repeated name counts once. Any malformed line rejects the file.
fn parse_file(text: &str) -> Result<Vec<Wanted>, ExitError> {
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let bad = |m: String| ExitError::new(Exit::DataErr, format!("line {line_no}: {m}"));
        let mut parts = content.split_whitespace();
        let slug = name::normalise(parts.next().unwrap_or("")).map_err(|e| bad(e.message))?;
        let channel_id = match parts.next() {
            None => None,
            Some(c) => Some(c.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
                bad(format!(
                    "'{}' is not a channel id",
                    c.chars().take(20).collect::<String>().escape_debug()
                ))
            })?),
        };
        if parts.next().is_some() {
            return Err(bad("expected a username and at most a channel id".into()));
        }
        match index.get(&slug) {
            None => {
                index.insert(slug.clone(), wanted.len());
                wanted.push(Wanted {
                    slug,
                    line: Some(line_no),
                    channel_id,
                });
            }
            Some(&first) => {
                let earlier = &mut wanted[first];
                match (earlier.channel_id, channel_id) {
                    (_, None) => {}
                    (None, Some(c)) => earlier.channel_id = Some(c),
                    (Some(a), Some(b)) if a == b => {}
                    (Some(a), Some(_)) => {
                        return Err(bad(format!(
                            "{slug} is on line {} with channel id {a}",
                            earlier.line.unwrap_or(0)
                        )));
                    }
                }
            }
        }
    }
    Ok(wanted)
}

/// Looks the names up on Kick, 50 at a time. Only a failed channels lookup is an error.
async fn resolve(
    api: &ApiClient,
    wanted: &[Wanted],
    mut progress: impl FnMut(usize),
) -> Result<Resolution, ApiError> {
    let mut res = Resolution::default();
    for chunk in wanted.chunks(BATCH) {
        let slugs: Vec<String> = chunk.iter().map(|w| w.slug.clone()).collect();
        let (channels, _) = api.channels_by_slugs(&slugs).await?;
        // Match Kick's answer to the names by slug, whatever its order and spelling.
        let mut by_slug: HashMap<String, Channel> = channels
            .into_iter()
            .map(|c| (c.slug.to_ascii_lowercase().replace('_', "-"), c))
            .collect();
        let mut found = Vec::new();
        for w in chunk {
            let Some(channel) = by_slug.remove(&w.slug) else {
                res.unknown.push(w.clone());
                continue;
            };
            let Some(slug) = name::storable(&channel.slug) else {
                res.rejected.push(Conflict::new(
                    w,
                    format!(
                        "kick's slug \"{}\" cannot be stored",
                        channel
                            .slug
                            .chars()
                            .take(40)
                            .collect::<String>()
                            .escape_debug()
                    ),
                ));
                continue;
            };
            found.push((w, slug, channel));
        }
        let user_ids: Vec<i64> = found
            .iter()
            .map(|(_, _, c)| c.broadcaster_user_id)
            .collect();
        let (display_names, users_note) = match api.users_by_ids(&user_ids).await {
            Ok(users) => (
                users
                    .into_iter()
                    .filter_map(|u| u.name.map(|n| (u.user_id, n)))
                    .collect(),
                None,
            ),
            Err(e) => (
                HashMap::new(),
                Some(format!(
                    "display name not learned: users lookup failed ({e})"
                )),
            ),
        };
        // The realtime channel id: given, in the channel (when Kick includes it), or, for a live
        // streamer, from its livestream.
        let known_channel = |w: &Wanted, c: &Channel| w.channel_id.or(c.channel_id);
        let live_ids: Vec<i64> = found
            .iter()
            .filter(|(w, _, c)| c.is_live() && known_channel(w, c).is_none())
            .map(|(_, _, c)| c.broadcaster_user_id)
            .collect();
        let (live_channels, live_note): (HashMap<i64, i64>, _) = if live_ids.is_empty() {
            (HashMap::new(), None)
        } else {
            match api.livestreams_by_ids(&live_ids).await {
                Ok(streams) => (
                    streams
                        .into_iter()
                        .map(|l| (l.broadcaster_user_id, l.channel_id))
                        .collect(),
                    None,
                ),
                Err(e) => (
                    HashMap::new(),
                    Some(format!(
                        "channel id not learned: livestreams lookup failed ({e}); \
                         covered by REST polling until it is"
                    )),
                ),
            }
        };
        for (w, slug, channel) in found {
            let user_id = channel.broadcaster_user_id;
            let mut notes = Vec::new();
            let kick_channel_id =
                known_channel(w, &channel).or_else(|| live_channels.get(&user_id).copied());
            if kick_channel_id.is_none()
                && live_ids.contains(&user_id)
                && let Some(note) = &live_note
            {
                notes.push(note.clone());
            }
            if let Some(note) = &users_note {
                notes.push(note.clone());
            }
            res.found.push(Resolved {
                wanted: w.clone(),
                slug,
                kick_user_id: user_id,
                kick_channel_id,
                display_name: display_names.get(&user_id).cloned(),
                notes,
            });
        }
        progress(chunk.len());
    }
    Ok(res)
}

/// Whether one conflict cancels the whole batch (`add`) or only its own name (`import`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    AllOrNothing,
    PerName,
}

/// Stores resolved names in one transaction by the rules of [`plan`].
async fn store(
    client: &mut tokio_postgres::Client,
    resolved: Vec<Resolved>,
    commit: Commit,
) -> anyhow::Result<(Vec<Outcome>, Vec<Conflict>)> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ADD_LOCK])
        .await?;
    let user_ids: Vec<i64> = resolved.iter().map(|r| r.kick_user_id).collect();
    let slugs: Vec<&str> = resolved.iter().map(|r| r.slug.as_str()).collect();
    let channel_ids: Vec<i64> = resolved.iter().filter_map(|r| r.kick_channel_id).collect();
    let stored = tx
        .query(
            "SELECT id, username, kick_user_id, kick_channel_id FROM streamers
             WHERE kick_user_id = ANY($1) OR username = ANY($2) OR kick_channel_id = ANY($3)
             FOR UPDATE",
            &[&user_ids, &slugs, &channel_ids],
        )
        .await?
        .iter()
        .map(Stored::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let actions = plan(&resolved, &stored);
    if commit == Commit::AllOrNothing && actions.iter().any(|a| matches!(a, Action::Conflict(_))) {
        tx.rollback().await?;
        let conflicts = resolved
            .iter()
            .zip(actions)
            .filter_map(|(r, a)| match a {
                Action::Conflict(message) => Some(Conflict::new(&r.wanted, message)),
                _ => None,
            })
            .collect();
        return Ok((Vec::new(), conflicts));
    }
    let mut outcomes = Vec::new();
    let mut conflicts = Vec::new();
    for (r, action) in resolved.into_iter().zip(actions) {
        let (outcome, channel, renamed_from) = match action {
            Action::Conflict(message) => {
                conflicts.push(Conflict::new(&r.wanted, message));
                continue;
            }
            Action::Insert => {
                tx.execute(
                    "INSERT INTO streamers (username, kick_user_id, kick_channel_id, display_name)
                     VALUES ($1, $2, $3, $4)",
                    &[
                        &r.slug,
                        &r.kick_user_id,
                        &r.kick_channel_id,
                        &r.display_name,
                    ],
                )
                .await
                .map_err(concurrent_change)?;
                (Done::Added, r.kick_channel_id, None)
            }
            Action::Keep { id, channel, learn } => {
                if let Some(c) = learn {
                    tx.execute(
                        "UPDATE streamers SET kick_channel_id = $2, updated_at = now() WHERE id = $1",
                        &[&id, &c],
                    )
                    .await
                    .map_err(concurrent_change)?;
                }
                (Done::AlreadyAdded, channel, None)
            }
            Action::Rename {
                id,
                from,
                channel,
                learn,
            } => {
                tx.execute(
                    "UPDATE streamers
                     SET username = $2, display_name = coalesce($3, display_name),
                         kick_channel_id = coalesce(kick_channel_id, $4), updated_at = now()
                     WHERE id = $1",
                    &[&id, &r.slug, &r.display_name, &learn],
                )
                .await
                .map_err(concurrent_change)?;
                (Done::Renamed, channel, Some(from))
            }
        };
        let mut notes = r.notes;
        if let Some(given) = r.kick_channel_id
            && channel != Some(given)
        {
            notes.push(format!(
                "keeps its stored channel id {} (not {given})",
                channel.map_or_else(|| "-".into(), |c| c.to_string())
            ));
        }
        outcomes.push(Outcome {
            username: r.slug,
            kick_user_id: r.kick_user_id,
            kick_channel_id: channel,
            display_name: r.display_name,
            outcome,
            added: outcome == Done::Added,
            renamed_from,
            notes,
        });
    }
    tx.commit().await.map_err(db::DbError::from)?;
    Ok((outcomes, conflicts))
}

/// A unique violation here means another process changed `streamers` between our check and our
/// write (the writer learning a channel id): worth running again, not an internal error.
fn concurrent_change(e: tokio_postgres::Error) -> anyhow::Error {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return ExitError::new(
            Exit::TempFail,
            "streamers changed while adding (a concurrent write); nothing was added, run it again",
        )
        .into();
    }
    db::DbError::from(e).into()
}

/// Decides, in order, what to do with each resolved name, given the stored rows it may collide
/// with. Earlier decisions count for later names: two names with one channel id conflict, and a
/// slug freed by a rename may be taken by a later name.
fn plan(resolved: &[Resolved], stored: &[Stored]) -> Vec<Action> {
    /// A row as the batch leaves it; `id` is `None` for a row this batch inserts.
    struct Row {
        id: Option<i64>,
        username: String,
        kick_channel_id: Option<i64>,
    }
    let mut by_user: HashMap<i64, Row> = HashMap::new();
    let mut user_of_slug: HashMap<String, i64> = HashMap::new();
    let mut user_of_channel: HashMap<i64, i64> = HashMap::new();
    for s in stored {
        by_user.insert(
            s.kick_user_id,
            Row {
                id: Some(s.id),
                username: s.username.clone(),
                kick_channel_id: s.kick_channel_id,
            },
        );
        user_of_slug.insert(s.username.clone(), s.kick_user_id);
        if let Some(c) = s.kick_channel_id {
            user_of_channel.insert(c, s.kick_user_id);
        }
    }
    let mut actions = Vec::with_capacity(resolved.len());
    for r in resolved {
        let user = r.kick_user_id;
        let action = if let Some(&owner) = user_of_slug.get(&r.slug)
            && owner != user
        {
            Action::Conflict(format!(
                "{} is stored for kick user {owner}, but on kick it is now user {user} \
                 (renamed? add user {owner}'s new name or remove {} first)",
                r.slug, r.slug
            ))
        } else if let Some(c) = r.kick_channel_id
            && let Some(&owner) = user_of_channel.get(&c)
            && owner != user
        {
            let owner_name = by_user.get(&owner).map_or("?", |o| o.username.as_str());
            Action::Conflict(format!(
                "channel id {c} already belongs to streamer {owner_name}"
            ))
        } else {
            match by_user.get(&user) {
                None => Action::Insert,
                // Inserted by this batch under another name: Kick answered two names with one user.
                Some(Row { id: None, .. }) => Action::Conflict(format!(
                    "kick gives user {user} for another name of this batch too"
                )),
                Some(row @ Row { id: Some(id), .. }) => {
                    let id = *id;
                    let learn = row
                        .kick_channel_id
                        .is_none()
                        .then_some(r.kick_channel_id)
                        .flatten();
                    let channel = row.kick_channel_id.or(learn);
                    if row.username == r.slug {
                        Action::Keep { id, channel, learn }
                    } else {
                        Action::Rename {
                            id,
                            from: row.username.clone(),
                            channel,
                            learn,
                        }
                    }
                }
            }
        };
        match &action {
            Action::Conflict(_) => {}
            Action::Insert => {
                by_user.insert(
                    user,
                    Row {
                        id: None,
                        username: r.slug.clone(),
                        kick_channel_id: r.kick_channel_id,
                    },
                );
                user_of_slug.insert(r.slug.clone(), user);
                if let Some(c) = r.kick_channel_id {
                    user_of_channel.insert(c, user);
                }
            }
            Action::Keep { learn, .. } | Action::Rename { learn, .. } => {
                if let Some(row) = by_user.get_mut(&user) {
                    if row.username != r.slug {
                        user_of_slug.remove(&row.username);
                        user_of_slug.insert(r.slug.clone(), user);
                        row.username = r.slug.clone();
                    }
                    if let Some(c) = *learn {
                        row.kick_channel_id = Some(c);
                        user_of_channel.insert(c, user);
                    }
                }
            }
        }
        actions.push(action);
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(slug: &str, user: i64, channel: Option<i64>) -> Resolved {
        Resolved {
            wanted: Wanted {
                slug: slug.into(),
                line: None,
                channel_id: channel,
            },
            slug: slug.into(),
            kick_user_id: user,
            kick_channel_id: channel,
            display_name: None,
            notes: Vec::new(),
        }
    }

    fn stored(id: i64, slug: &str, user: i64, channel: Option<i64>) -> Stored {
        Stored {
            id,
            username: slug.into(),
            kick_user_id: user,
            kick_channel_id: channel,
        }
    }

    /// Plans `wanted` against `rows` and compares each action's kind (and conflict text).
    fn check(rows: &[Stored], wanted: &[Resolved], expect: &[&str]) {
        let got: Vec<String> = plan(wanted, rows)
            .into_iter()
            .map(|a| match a {
                Action::Insert => "insert".to_owned(),
                Action::Keep { id, learn, .. } => format!("keep {id} learn {learn:?}"),
                Action::Rename { id, from, .. } => format!("rename {id} from {from}"),
                Action::Conflict(m) => format!("conflict: {m}"),
            })
            .collect();
        assert_eq!(got.len(), expect.len(), "{got:?}");
        for (g, e) in got.iter().zip(expect) {
            assert!(g.starts_with(e), "got {g:?}, expected {e:?}");
        }
    }

    #[test]
    fn new_existing_and_renamed_streamers() {
        let rows = [
            stored(1, "xqc", 100, Some(668)),
            stored(2, "old-name", 200, None),
            stored(3, "quiet", 300, None),
        ];
        check(
            &rows,
            &[
                resolved("new", 400, None),
                resolved("xqc", 100, None),
                resolved("xqc", 100, Some(668)),
                resolved("newer", 400, None),
            ],
            &[
                "insert",
                "keep 1 learn None",
                "keep 1 learn None",
                "conflict: kick gives user 400 for another name of this batch too",
            ],
        );
        // Same user id, new slug: a rename on Kick, which also learns a channel id.
        check(
            &rows,
            &[resolved("new-name", 200, Some(9))],
            &["rename 2 from old-name"],
        );
        // A channel id the stored row lacked is learned; one it has is kept.
        check(
            &rows,
            &[resolved("quiet", 300, Some(77))],
            &["keep 3 learn Some(77)"],
        );
        check(
            &rows,
            &[resolved("xqc", 100, Some(5))],
            &["keep 1 learn None"],
        );
    }

    #[test]
    fn conflicts_name_the_owner() {
        let rows = [
            stored(1, "xqc", 100, Some(668)),
            stored(2, "taken", 200, None),
        ];
        check(
            &rows,
            &[resolved("someone", 500, Some(668))],
            &["conflict: channel id 668 already belongs to streamer xqc"],
        );
        // Kick gives the stored slug to another user: the stored one was renamed or deleted.
        check(
            &rows,
            &[resolved("taken", 600, None)],
            &["conflict: taken is stored for kick user 200, but on kick it is now user 600"],
        );
        // Within one batch (two lines of a file with one channel id), the second conflicts.
        check(
            &[],
            &[resolved("a", 1, Some(10)), resolved("b", 2, Some(10))],
            &[
                "insert",
                "conflict: channel id 10 already belongs to streamer a",
            ],
        );
        // A conflicting name leaves no trace for later ones.
        check(
            &rows,
            &[
                resolved("someone", 500, Some(668)),
                resolved("other", 501, None),
            ],
            &["conflict", "insert"],
        );
    }

    #[test]
    fn a_slug_freed_by_a_rename_may_be_taken_later_in_the_batch() {
        let rows = [stored(1, "foo", 100, None)];
        check(
            &rows,
            &[resolved("bar", 100, None), resolved("foo", 200, None)],
            &["rename 1 from foo", "insert"],
        );
        // In the other order the slug is still taken when the new user comes.
        check(
            &rows,
            &[resolved("foo", 200, None), resolved("bar", 100, None)],
            &[
                "conflict: foo is stored for kick user 100",
                "rename 1 from foo",
            ],
        );
    }

    #[test]
    fn import_files_skip_comments_and_repeats_and_normalise_names() {
        let wanted =
            parse_file("# list\nxqc 668\n\nSome_User # the best\nxqc\nsome-user 12\n").unwrap();
        let got: Vec<(&str, Option<usize>, Option<i64>)> = wanted
            .iter()
            .map(|w| (w.slug.as_str(), w.line, w.channel_id))
            .collect();
        assert_eq!(
            got,
            [
                ("xqc", Some(2), Some(668)),
                ("some-user", Some(4), Some(12))
            ]
        );
        for (text, message) in [
            ("xqc abc\n", "line 1: 'abc' is not a channel id"),
            ("xqc 0\n", "line 1: '0' is not a channel id"),
            ("xqc 1 2\n", "line 1: expected a username"),
            ("ok\nnot ok\n", "line 2:"),
            ("ok\nx;y\n", "line 2: invalid username"),
            (
                "xqc 1\nXQC 2\n",
                "line 2: xqc is on line 1 with channel id 1",
            ),
        ] {
            let e = parse_file(text).unwrap_err();
            assert_eq!(e.exit, Exit::DataErr);
            assert!(e.message.starts_with(message), "{text:?}: {}", e.message);
        }
        let long = format!("{}\n", "a".repeat(26));
        assert!(
            parse_file(&long)
                .unwrap_err()
                .message
                .contains("at most 25")
        );
    }
}
