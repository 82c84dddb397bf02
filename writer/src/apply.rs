//! Applying staged events: claim a batch (`FOR UPDATE SKIP LOCKED`, in id order), lock the
//! affected streamers in id order, decide every event with the pure transition, then write the
//! streamers, the history and the outcomes, and NOTIFY `status_changed`: one transaction.
//!
//! Several writers may run at once. Per streamer, events must apply in id order, so an event is
//! deferred (left pending, untouched) when an older pending event of the same streamer is held by
//! another writer; it is applied on a later pass, after that writer commits.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kick_shared::model::{Source, Status, event_name};
use tokio_postgres::{Client, Statement};

use crate::transition::{self, Decision, Event, Outcome, PendingOffline, Rules, Signal, State};

/// Prepared statements of one worker connection.
#[derive(Debug)]
pub struct Statements {
    claim: Statement,
    claim_ids: Statement,
    mark_error: Statement,
    rename: Statement,
    learn: Statement,
    write: Statement,
    due: Statement,
}

impl Statements {
    pub async fn prepare(c: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            claim: c
                .prepare(&claim_sql(
                    "processed_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                ))
                .await?,
            claim_ids: c
                .prepare(&claim_sql(
                    "id = ANY($1) AND processed_at IS NULL ORDER BY id FOR UPDATE SKIP LOCKED",
                ))
                .await?,
            rename: c
                .prepare(
                    "UPDATE streamers SET username = $2, updated_at = now()
                     WHERE id = $1 AND username <> $2
                       AND NOT EXISTS (SELECT 1 FROM streamers WHERE username = $2)",
                )
                .await?,
            mark_error: c
                .prepare(
                    "UPDATE raw_events SET processed_at = now(), outcome = $2
                     WHERE id = $1 AND processed_at IS NULL",
                )
                .await?,
            // A learned channel id, in a statement of its own: only it touches
            // `kick_channel_id`, whose trigger rings `streamers_changed` (the collectors
            // subscribe the new channel); status updates must not ring it.
            learn: c
                .prepare(
                    "UPDATE streamers s SET kick_channel_id = u.channel
                     FROM unnest($1::bigint[], $2::bigint[]) AS u(id, channel)
                     WHERE s.id = u.id AND s.kick_channel_id IS NULL",
                )
                .await?,
            // The batch's writes in one statement: the streamers, the history, the marks of
            // the staged rows and the notifications (data-modifying CTEs all run, whether read
            // or not). Every part joins arrays to a key; empty arrays write nothing.
            write: c
                .prepare(
                    "WITH u AS (
                        UPDATE streamers s SET
                            status = u.status, livestream_id = u.livestream_id, last_observed_at = u.observed_at,
                            status_source = u.source, pending_offline_at = u.pending_at,
                            pending_offline_raw_id = u.pending_raw, pending_offline_source = u.pending_src,
                            status_changed_at = coalesce(u.changed_at, s.status_changed_at),
                            last_event_at = coalesce(u.event_at, s.last_event_at),
                            live_started_at = u.started_at,
                            status_reason = CASE WHEN u.reason_set THEN u.reason ELSE s.status_reason END,
                            updated_at = now()
                        FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::timestamptz[], $5::text[],
                                    $6::timestamptz[], $7::bigint[], $8::text[], $9::timestamptz[],
                                    $10::timestamptz[], $11::timestamptz[], $12::bool[], $13::text[])
                             AS u(id, status, livestream_id, observed_at, source, pending_at, pending_raw,
                                  pending_src, changed_at, event_at, started_at, reason_set, reason)
                        WHERE s.id = u.id
                     ), h AS (
                        INSERT INTO status_events
                            (streamer_id, previous_status, new_status, occurred_at, livestream_id, source, raw_event_id)
                        SELECT * FROM unnest($14::bigint[], $15::text[], $16::text[], $17::timestamptz[],
                                             $18::bigint[], $19::text[], $20::bigint[])
                        ON CONFLICT (raw_event_id) DO NOTHING
                     ), m AS (
                        -- `id = ANY` keeps the primary-key index scan whatever the statistics
                        -- say: a join to `unnest` planned while the table was empty (a fresh
                        -- database) became a sequential scan of the whole queue, 2–3 ms a
                        -- batch (measured).
                        UPDATE raw_events r
                        SET processed_at = now(), outcome = ($22::text[])[array_position($21::bigint[], r.id)]
                        WHERE r.id = ANY($21::bigint[])
                     )
                     SELECT pg_notify('status_changed', n) FROM unnest($23::text[]) AS n",
                )
                .await?,
            due: c
                .prepare(&format!(
                    "{STREAMER_COLUMNS} WHERE pending_offline_at IS NOT NULL
                       AND pending_offline_at <= now() - make_interval(secs => $1)
                     ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED"
                ))
                .await?,
        })
    }
}

/// The claim, in one statement (one round trip): the staged rows claimed (`kind` `e`), the
/// streamers they name, locked in id order so that writers never deadlock (`s`), and per
/// streamer the oldest older pending row another writer holds (`b`: ours wait for it). One
/// result set; each part keeps the column names its decoder reads.
fn claim_sql(which: &str) -> String {
    format!(
        "WITH c AS MATERIALIZED (
            SELECT id, source, event_name, kick_channel_id, kick_user_id, livestream_id, event_time, received_at,
                   payload->>'reason' AS reason, payload->>'slug' AS slug,
                   payload->>'started_at' AS payload_started_at
            FROM raw_events WHERE {which}
         ), s AS MATERIALIZED (
            {STREAMER_COLUMNS}
            WHERE kick_channel_id = ANY(ARRAY(SELECT kick_channel_id FROM c WHERE kick_channel_id IS NOT NULL))
               OR kick_user_id = ANY(ARRAY(SELECT kick_user_id FROM c WHERE kick_user_id IS NOT NULL))
            ORDER BY id FOR UPDATE
         ), b AS MATERIALIZED (
            SELECT kick_channel_id, kick_user_id, min(id) AS id FROM raw_events
            WHERE processed_at IS NULL AND id < (SELECT max(id) FROM c)
              AND NOT (id = ANY(ARRAY(SELECT id FROM c)))
              AND (kick_channel_id = ANY(ARRAY(SELECT kick_channel_id FROM c WHERE kick_channel_id IS NOT NULL))
                   OR kick_user_id = ANY(ARRAY(SELECT kick_user_id FROM c WHERE kick_user_id IS NOT NULL)))
            GROUP BY 1, 2
         )
         SELECT 'e' AS kind, id, kick_channel_id, kick_user_id, livestream_id,
                source, event_name, event_time, received_at, reason, slug, payload_started_at,
                NULL::text AS username, NULL::text AS status, NULL::timestamptz AS live_started_at,
                NULL::timestamptz AS last_observed_at, NULL::text AS status_source,
                NULL::timestamptz AS pending_offline_at, NULL::bigint AS pending_offline_raw_id,
                NULL::text AS pending_offline_source
         FROM c
         UNION ALL
         SELECT 's', id, kick_channel_id, kick_user_id, livestream_id,
                NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                username, status, live_started_at, last_observed_at, status_source,
                pending_offline_at, pending_offline_raw_id, pending_offline_source
         FROM s
         UNION ALL
         SELECT 'b', id, kick_channel_id, kick_user_id, NULL,
                NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
         FROM b"
    )
}

const STREAMER_COLUMNS: &str =
    "SELECT id, username, kick_user_id, kick_channel_id, status, livestream_id,
    live_started_at, last_observed_at, status_source, pending_offline_at, pending_offline_raw_id,
    pending_offline_source
    FROM streamers";

/// A locked streamer and its state as the batch changes it.
#[derive(Debug)]
struct Streamer {
    id: i64,
    username: String,
    user_id: i64,
    channel_id: Option<i64>,
    state: State,
    dirty: bool,
    changed_at: Option<DateTime<Utc>>,
    event_at: Option<DateTime<Utc>>,
    /// A realtime channel id learned from an event that also names the user (API rows).
    learned_channel: Option<i64>,
    notify: bool,
    /// The status changed: `status_reason` becomes `reason` (set for an unknown status).
    reason_set: bool,
    reason: Option<String>,
}

/// A `timestamptz` column read by name; `infinity`, `-infinity` and years chrono cannot hold
/// read as absent instead of panicking the writer (one hostile row affects only itself).
fn time(r: &tokio_postgres::Row, col: &str) -> Option<DateTime<Utc>> {
    r.try_get::<_, Option<DateTime<Utc>>>(col).ok().flatten()
}

fn parse_source(s: Option<String>) -> Option<Source> {
    s.and_then(|s| s.parse().ok())
}

impl Streamer {
    fn from_row(r: &tokio_postgres::Row) -> Self {
        let status: String = r.get("status");
        let pending_at = time(r, "pending_offline_at");
        let pending_raw: Option<i64> = r.get("pending_offline_raw_id");
        let pending_offline = match (pending_at, pending_raw) {
            (Some(since), Some(raw_id)) => Some(PendingOffline {
                since,
                raw_id,
                source: parse_source(r.get("pending_offline_source")).unwrap_or(Source::Realtime),
            }),
            _ => None,
        };
        Streamer {
            id: r.get("id"),
            username: r.get("username"),
            user_id: r.get("kick_user_id"),
            channel_id: r.get("kick_channel_id"),
            state: State {
                status: status.parse().unwrap_or(Status::Unknown),
                livestream_id: r.get("livestream_id"),
                started_at: time(r, "live_started_at"),
                observed_at: time(r, "last_observed_at"),
                source: parse_source(r.get("status_source")),
                pending_offline,
            },
            dirty: false,
            changed_at: None,
            event_at: None,
            learned_channel: None,
            notify: false,
            reason_set: false,
            reason: None,
        }
    }
}

/// A claimed staged row.
#[derive(Debug)]
struct Staged {
    id: i64,
    channel_id: Option<i64>,
    user_id: Option<i64>,
    received_at: DateTime<Utc>,
    event: Result<Kind, String>,
    /// Why (for an unknown status), from the payload.
    reason: Option<String>,
}

/// What a staged row asks for.
#[derive(Debug)]
enum Kind {
    /// A status signal, through the transition.
    Status(Event),
    /// Only a realtime channel id (learned above, for every kind of row).
    ChannelId,
    /// Kick reports a new slug for the user.
    Rename(String),
}

fn decode_row(r: &tokio_postgres::Row) -> Staged {
    let id: i64 = r.get("id");
    let source: String = r.get("source");
    let name: String = r.get("event_name");
    let channel_id: Option<i64> = r.get("kick_channel_id");
    let user_id: Option<i64> = r.get("kick_user_id");
    let livestream_id: Option<i64> = r.get("livestream_id");
    let event_time = time(r, "event_time");
    // `received_at` is the database's `now()` unless someone wrote the row by hand; a value
    // chrono cannot hold (`infinity`) must not panic the writer, so it becomes the present.
    let received_at = time(r, "received_at").unwrap_or_else(Utc::now);
    let slug: Option<String> = r.get("slug");
    let payload_started_at: Option<String> = r.get("payload_started_at");
    let event = (|| {
        let source: Source = source.parse()?;
        let signal = match name.as_str() {
            event_name::STREAMER_IS_LIVE => Signal::Live { livestream_id },
            event_name::STOP_STREAM_BROADCAST => Signal::Offline { livestream_id },
            event_name::STATUS_UNKNOWN => Signal::Unknown,
            event_name::CHANNEL_ID if channel_id.is_some() && user_id.is_some() => {
                return Ok(Kind::ChannelId);
            }
            event_name::SLUG_CHANGED if user_id.is_some() => {
                return match slug {
                    Some(s) if valid_slug(&s) => Ok(Kind::Rename(s)),
                    _ => Err("SlugChanged without a valid slug".into()),
                };
            }
            other => {
                return Err(format!(
                    "unknown event name '{}'",
                    other.chars().take(60).collect::<String>()
                ));
            }
        };
        if channel_id.is_none() && user_id.is_none() {
            return Err("neither kick_channel_id nor kick_user_id is set".into());
        }
        // Kick's times are believed within reason: one far in the future would outrank every
        // real event of the streamer, one years old is garbage. Outside, the arrival counts.
        let event_time = event_time.filter(|t| plausible(*t, received_at));
        // The session's start: a webhook names it in both deliveries; a live elsewhere
        // carries it as its event time.
        let session_start = match (source, signal) {
            (Source::Webhook, Signal::Live { .. } | Signal::Offline { .. }) => payload_started_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .filter(|t| plausible(*t, received_at)),
            (_, Signal::Live { .. }) => event_time,
            _ => None,
        };
        Ok(Kind::Status(Event {
            raw_id: id,
            signal,
            source,
            observed_at: received_at,
            occurred_at: event_time.unwrap_or(received_at),
            session_start,
        }))
    })();
    Staged {
        id,
        channel_id,
        user_id,
        received_at,
        event,
        reason: r.get("reason"),
    }
}

/// Whether Kick's time `t` of an event received at `received` can be believed: at most 5 minutes
/// ahead of the database's clock (clocks differ a little), at most 30 days behind (a spool
/// replayed after a long outage, a webhook delivered very late).
fn plausible(t: DateTime<Utc>, received: DateTime<Utc>) -> bool {
    t <= received + chrono::TimeDelta::minutes(5) && t >= received - chrono::TimeDelta::days(30)
}

/// A slug as the `streamers.username` CHECK accepts it.
fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub claimed: usize,
    pub deferred: usize,
    /// Outcome label → count (`applied`, `duplicate`, `stale`, `ignored`, `error`, …).
    pub outcomes: HashMap<&'static str, u64>,
    /// Seconds from each applied row's observation to this commit.
    pub latencies: Vec<f64>,
}

/// Settings of the apply step.
#[derive(Debug, Clone, Copy)]
pub struct ApplyConfig {
    pub batch_size: i64,
    pub rules: Rules,
    /// Commit durably (`synchronous_commit = on`). Otherwise the session's setting holds: the
    /// writer's session commits asynchronously.
    pub synchronous_commit: bool,
}

/// One `status_events` row to insert.
struct HistoryRow {
    streamer_id: i64,
    previous: Status,
    new: Status,
    occurred_at: DateTime<Utc>,
    livestream_id: Option<i64>,
    source: Source,
    raw_event_id: i64,
}

/// Pending changes to write for the locked streamers.
#[derive(Default)]
struct Writes {
    history: Vec<HistoryRow>,
}

/// Which staged rows a batch claims.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// The oldest pending rows nobody else holds, up to the batch size.
    Next,
    /// These rows (poison isolation applies them one at a time).
    Ids(&'a [i64]),
}

/// Claims and applies one batch in one transaction. The ids it claimed are left in `claimed`
/// (also when it fails: poison isolation needs them). A failed batch is rolled back before
/// this returns, so the session can go on.
pub async fn apply_batch(
    client: &mut Client,
    st: &Statements,
    cfg: &ApplyConfig,
    claim: Claim<'_>,
    claimed: &mut Vec<i64>,
) -> Result<BatchReport, tokio_postgres::Error> {
    claimed.clear();
    let result = apply_in_transaction(client, st, cfg, claim, claimed).await;
    if result.is_err() && !client.is_closed() {
        // The transaction is begun by hand (so that BEGIN and COMMIT ride with other
        // statements): end it by hand. Without one open, ROLLBACK only warns.
        client.batch_execute("ROLLBACK").await?;
    }
    result
}

/// The batch's transaction in two round trips: `BEGIN` with the claim (which also locks the
/// streamers and finds blockers), then, after the decisions, every write, the marks and
/// `COMMIT` sent together. tokio-postgres pipelines requests polled together; when one fails,
/// PostgreSQL aborts the transaction, the later ones fail with it and `COMMIT` rolls back.
async fn apply_in_transaction(
    client: &Client,
    st: &Statements,
    cfg: &ApplyConfig,
    claim: Claim<'_>,
    claimed: &mut Vec<i64>,
) -> Result<BatchReport, tokio_postgres::Error> {
    let t_start = std::time::Instant::now();
    // Asynchronous commit is safe: our input stays pending in raw_events until this commit is
    // durable, or is lost together with it. The writer's session commits asynchronously
    // (`SET synchronous_commit = off` once, at connect: one statement less in every batch); a
    // durable batch asks for it here.
    let begin = if cfg.synchronous_commit {
        "BEGIN; SET LOCAL synchronous_commit = on"
    } else {
        "BEGIN"
    };
    let claiming = async {
        match claim {
            Claim::Next => client.query(&st.claim, &[&cfg.batch_size]).await,
            Claim::Ids(ids) => client.query(&st.claim_ids, &[&ids]).await,
        }
    };
    let ((), rows) = futures_util::try_join!(client.batch_execute(begin), claiming)?;
    let kind = |r: &tokio_postgres::Row| r.get::<_, &str>("kind").as_bytes()[0];
    let staged: Vec<Staged> = rows
        .iter()
        .filter(|r| kind(r) == b'e')
        .map(decode_row)
        .collect();
    claimed.extend(staged.iter().map(|s| s.id));
    let mut report = BatchReport {
        claimed: staged.len(),
        ..Default::default()
    };
    if staged.is_empty() {
        client.batch_execute("COMMIT").await?;
        return Ok(report);
    }
    let mut streamers: Vec<Streamer> = rows
        .iter()
        .filter(|r| kind(r) == b's')
        .map(Streamer::from_row)
        .collect();
    let t_claim = t_start.elapsed();
    let mut by_channel = HashMap::new();
    let mut by_user = HashMap::new();
    for (i, s) in streamers.iter().enumerate() {
        if let Some(c) = s.channel_id {
            by_channel.insert(c, i);
        }
        by_user.insert(s.user_id, i);
    }

    // Older pending events of our streamers held by another writer: ours are deferred after
    // them.
    let mut blocked_after: HashMap<usize, i64> = HashMap::new();
    for r in rows.iter().filter(|r| kind(r) == b'b') {
        let (c, u, min_id): (Option<i64>, Option<i64>, i64) =
            (r.get("kick_channel_id"), r.get("kick_user_id"), r.get("id"));
        let idx = c
            .and_then(|c| by_channel.get(&c))
            .or_else(|| u.and_then(|u| by_user.get(&u)))
            .copied();
        if let Some(i) = idx {
            let e = blocked_after.entry(i).or_insert(min_id);
            *e = (*e).min(min_id);
        }
    }

    let mut writes = Writes::default();
    let mut mark_ids = Vec::with_capacity(staged.len());
    let mut mark_outcomes: Vec<String> = Vec::with_capacity(staged.len());
    let mut applied_received = Vec::new();
    // (index in the outcomes, streamer id, new slug)
    let mut renames: Vec<(usize, i64, String)> = Vec::new();
    for s in &staged {
        // The user id names the streamer when the row has one (API rows); realtime rows have only
        // the channel id.
        let found = s
            .user_id
            .and_then(|u| by_user.get(&u))
            .or_else(|| s.channel_id.and_then(|c| by_channel.get(&c)))
            .copied();
        let (label, outcome_text): (&'static str, String) = match (&s.event, found) {
            (Err(e), _) => ("error", format!("error: {e}")),
            (Ok(_), None) => ("ignored", "ignored".into()),
            (Ok(ev), Some(i)) => {
                if blocked_after.get(&i).is_some_and(|min| *min < s.id) {
                    report.deferred += 1;
                    continue;
                }
                let streamer = &mut streamers[i];
                if let Some(c) = s.channel_id
                    && streamer.channel_id.is_none()
                    && !by_channel.contains_key(&c)
                {
                    // Learned once per batch: a second streamer naming the same channel id in
                    // this batch finds it taken (the column is unique).
                    streamer.channel_id = Some(c);
                    streamer.learned_channel = Some(c);
                    streamer.dirty = true;
                    by_channel.insert(c, i);
                }
                match ev {
                    Kind::Status(ev) => {
                        let d: Decision = transition::decide(&streamer.state, ev, &cfg.rules);
                        record(streamer, &d, ev, s.reason.as_deref(), &mut writes);
                        if d.outcome == Outcome::Applied {
                            applied_received.push(s.received_at);
                        }
                        (d.outcome.as_str(), d.outcome.as_str().to_owned())
                    }
                    Kind::ChannelId if streamer.learned_channel.is_some() => {
                        ("enriched", "enriched".into())
                    }
                    Kind::ChannelId => ("duplicate", "duplicate".into()),
                    Kind::Rename(slug) => {
                        renames.push((mark_outcomes.len(), streamer.id, slug.clone()));
                        ("applied", "applied".into())
                    }
                }
            }
        };
        *report.outcomes.entry(label).or_default() += 1;
        mark_ids.push(s.id);
        mark_outcomes.push(outcome_text);
    }
    let t_decide = t_start.elapsed();
    for (idx, id, slug) in renames {
        // Only if the new slug is free: a conflict leaves the old name (and says so).
        if client.execute(&st.rename, &[&id, &slug]).await? == 1 {
            tracing::info!(streamer = id, slug = %slug, "renamed on kick: username followed");
        } else {
            mark_outcomes[idx] = "duplicate: slug unchanged or taken".into();
        }
    }
    let t_rename = t_start.elapsed();
    // The writes, the marks and the commit, pipelined.
    let marks = (mark_ids, mark_outcomes);
    futures_util::try_join!(
        write_streamers(client, st, &streamers, &writes, &marks),
        client.batch_execute("COMMIT"),
    )?;
    tracing::debug!(
        claimed = report.claimed,
        claim_us = t_claim.as_micros() as u64,
        decide_us = (t_decide - t_claim).as_micros() as u64,
        rename_us = (t_rename - t_decide).as_micros() as u64,
        write_commit_us = (t_start.elapsed() - t_rename).as_micros() as u64,
        "batch applied"
    );
    let now = Utc::now();
    report.latencies = applied_received
        .iter()
        .map(|t| (now - *t).num_microseconds().unwrap_or(0) as f64 / 1e6)
        .collect();
    Ok(report)
}

fn record(
    streamer: &mut Streamer,
    d: &Decision,
    ev: &Event,
    reason: Option<&str>,
    writes: &mut Writes,
) {
    if d.state == streamer.state {
        return;
    }
    streamer.dirty = true;
    streamer.event_at = Some(ev.occurred_at);
    if let Some((prev, new)) = d.history {
        streamer.changed_at = Some(ev.occurred_at);
        streamer.notify = true;
        streamer.reason_set = true;
        streamer.reason = (new == Status::Unknown).then(|| {
            reason
                .unwrap_or("coverage lost")
                .chars()
                .take(300)
                .collect()
        });
        writes.history.push(HistoryRow {
            streamer_id: streamer.id,
            previous: prev,
            new,
            occurred_at: ev.occurred_at,
            livestream_id: d.state.livestream_id,
            source: ev.source,
            raw_event_id: ev.raw_id,
        });
    }
    streamer.state = d.state;
}

/// Staged rows to mark processed, with their outcomes.
type Marks = (Vec<i64>, Vec<String>);

/// Writes the changed streamers, their history and notifications, and marks `marks`: one
/// statement (two when a channel id was learned), pipelined.
async fn write_streamers(
    tx: &impl tokio_postgres::GenericClient,
    st: &Statements,
    streamers: &[Streamer],
    writes: &Writes,
    marks: &Marks,
) -> Result<(), tokio_postgres::Error> {
    let dirty: Vec<&Streamer> = streamers.iter().filter(|s| s.dirty).collect();
    let ids: Vec<i64> = dirty.iter().map(|s| s.id).collect();
    let status: Vec<&str> = dirty.iter().map(|s| s.state.status.as_str()).collect();
    let ls: Vec<Option<i64>> = dirty.iter().map(|s| s.state.livestream_id).collect();
    let obs: Vec<Option<DateTime<Utc>>> = dirty.iter().map(|s| s.state.observed_at).collect();
    let src: Vec<Option<&str>> = dirty
        .iter()
        .map(|s| s.state.source.map(Source::as_str))
        .collect();
    let p_at: Vec<Option<DateTime<Utc>>> = dirty
        .iter()
        .map(|s| s.state.pending_offline.map(|p| p.since))
        .collect();
    let p_raw: Vec<Option<i64>> = dirty
        .iter()
        .map(|s| s.state.pending_offline.map(|p| p.raw_id))
        .collect();
    let p_src: Vec<Option<&str>> = dirty
        .iter()
        .map(|s| s.state.pending_offline.map(|p| p.source.as_str()))
        .collect();
    let changed: Vec<Option<DateTime<Utc>>> = dirty.iter().map(|s| s.changed_at).collect();
    let event_at: Vec<Option<DateTime<Utc>>> = dirty.iter().map(|s| s.event_at).collect();
    let started: Vec<Option<DateTime<Utc>>> = dirty.iter().map(|s| s.state.started_at).collect();
    let (learned_ids, learned): (Vec<i64>, Vec<i64>) = dirty
        .iter()
        .filter_map(|s| s.learned_channel.map(|c| (s.id, c)))
        .unzip();
    let reason_set: Vec<bool> = dirty.iter().map(|s| s.reason_set).collect();
    let reason: Vec<Option<&str>> = dirty.iter().map(|s| s.reason.as_deref()).collect();
    let h = &writes.history;
    let sid: Vec<i64> = h.iter().map(|r| r.streamer_id).collect();
    let prev: Vec<&str> = h.iter().map(|r| r.previous.as_str()).collect();
    let new: Vec<&str> = h.iter().map(|r| r.new.as_str()).collect();
    let at: Vec<DateTime<Utc>> = h.iter().map(|r| r.occurred_at).collect();
    let hls: Vec<Option<i64>> = h.iter().map(|r| r.livestream_id).collect();
    let hsrc: Vec<&str> = h.iter().map(|r| r.source.as_str()).collect();
    let raw: Vec<i64> = h.iter().map(|r| r.raw_event_id).collect();
    let names: Vec<&str> = streamers
        .iter()
        .filter(|s| s.notify)
        .map(|s| s.username.as_str())
        .collect();
    let (mark_ids, mark_outcomes) = (&marks.0, &marks.1);
    // A learned channel id first (its own statement, see `learn`), then everything else.
    let learn = async {
        if !learned_ids.is_empty() {
            tx.execute(&st.learn, &[&learned_ids, &learned]).await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    };
    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 23] = [
        &ids,
        &status,
        &ls,
        &obs,
        &src,
        &p_at,
        &p_raw,
        &p_src,
        &changed,
        &event_at,
        &started,
        &reason_set,
        &reason,
        &sid,
        &prev,
        &new,
        &at,
        &hls,
        &hsrc,
        &raw,
        mark_ids,
        mark_outcomes,
        &names,
    ];
    let write = tx.query(&st.write, &args);
    futures_util::try_join!(learn, write)?;
    Ok(())
}

/// Marks one staged row `error: <reason>` (poison isolation: its application failed for its
/// data). Returns whether it was still pending.
pub async fn mark_error(
    client: &Client,
    st: &Statements,
    id: i64,
    reason: &str,
) -> Result<bool, tokio_postgres::Error> {
    let reason: String = reason.chars().take(500).collect();
    Ok(client
        .execute(&st.mark_error, &[&id, &format!("error: {reason}")])
        .await?
        == 1)
}

/// Confirms offlines whose grace period has run out. Returns how many were confirmed.
pub async fn confirm_due_offlines(
    client: &mut Client,
    st: &Statements,
    grace: Duration,
) -> Result<usize, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let rows = tx.query(&st.due, &[&grace.as_secs_f64()]).await?;
    let mut streamers: Vec<Streamer> = rows.iter().map(Streamer::from_row).collect();
    let mut writes = Writes::default();
    for s in &mut streamers {
        let Some(p) = s.state.pending_offline else {
            continue;
        };
        if let Some(d) = transition::confirm_offline(&s.state) {
            let ev = Event {
                raw_id: p.raw_id,
                signal: Signal::Offline {
                    livestream_id: s.state.livestream_id,
                },
                source: p.source,
                observed_at: s.state.observed_at.unwrap_or(p.since),
                occurred_at: p.since,
                session_start: None,
            };
            record(s, &d, &ev, None, &mut writes);
        }
    }
    write_streamers(&tx, st, &streamers, &writes, &Marks::default()).await?;
    tx.commit().await?;
    Ok(writes.history.len())
}
