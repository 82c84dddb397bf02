//! Reconciliation against Kick's official API, the source of truth: at start, every
//! `KICK_RECONCILE_INTERVAL`, and for a socket's channels when it goes down (if the API fails
//! too, they become `unknown`, never `offline`) and when it comes back. A status that differs
//! from the stored one is staged as a `source='api'` row; the writer decides.
//!
//! One task runs every reconciliation, one at a time: requests queue and merge (several sockets
//! dropping at once become one paced run), and a periodic run is skipped, and counted, while one
//! is still queued. API calls wait for the official API's rate limiter.
//!
//! The API lags the realtime feed, and the writer ignores an API answer that contradicts a
//! realtime event less than `API_LAG_GUARD` old; so every contradicted streamer is checked again
//! after `API_RECHECK`: if the API still disagrees then, it wins.
//!
//! Streamers without a realtime channel id are covered here only; when the livestreams endpoint
//! reveals a live streamer's channel id, it is staged with the user id and the writer stores it
//! (and the `streamers_changed` trigger makes us subscribe).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kick_shared::kick::api::ApiError;
use kick_shared::model::{API_RECHECK, Status};
use tokio::sync::{Mutex, mpsc};

use crate::ctx::Ctx;
use crate::rows::{self, ApiStatus};

/// What to reconcile.
#[derive(Debug, Clone)]
pub enum Request {
    /// Every enabled streamer of the shards this collector holds.
    All,
    /// Every enabled streamer of these shards (just taken over: at once).
    Shards(Vec<i32>),
    /// The streamers realtime does not cover (`coverage = 'poll'`), every `KICK_POLL_INTERVAL`.
    Poll,
    /// The streamers of these channels (a socket's, after it went down or came back).
    Channels {
        channels: Vec<i64>,
        /// Close this coverage gap with what the run found.
        close_gap: Option<i64>,
        /// When the API fails, mark these streamers `unknown` (the key makes it once per gap).
        unknown_on_failure: Option<String>,
    },
}

/// Queues reconciliation requests. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReconcileHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl ReconcileHandle {
    pub fn send(&self, r: Request) {
        let _ = self.tx.send(r);
    }
}

/// The queue's receiving end survives restarts of the reconciler task.
pub type Queue = Arc<Mutex<mpsc::UnboundedReceiver<Request>>>;

pub fn queue() -> (ReconcileHandle, Queue) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ReconcileHandle { tx }, Arc::new(Mutex::new(rx)))
}

/// A stored streamer, as reconciliation compares it.
#[derive(Debug, Clone)]
struct Stored {
    /// `streamers.id`: the key the load pages by.
    id: i64,
    user_id: i64,
    username: String,
    channel_id: Option<i64>,
    status: Status,
    /// Realtime covers it (so a difference the API still shows after the lag is a miss).
    realtime: bool,
}

/// Which streamers one run covers (`All` and `Poll`: of the shards held when it runs).
#[derive(Debug, Clone)]
enum Scope {
    All,
    Poll,
    Shards(Vec<i32>),
    Channels(Vec<i64>),
    /// A re-check of what the API contradicted.
    Users(Vec<i64>),
}

/// Kick's answers left these streamers out this many times in a row (cleared when seen).
type Misses = HashMap<i64, u32>;

/// A streamer missing from this many consecutive answers becomes `unknown`.
const MISSING_AFTER: u32 = 2;

/// Runs reconciliations until shutdown (supervised).
pub async fn run(ctx: Arc<Ctx>, queue: Queue) -> anyhow::Result<()> {
    let mut rx = queue.lock().await;
    // The first lease round asks for the shards it gained: that is the start-up reconcile.
    let mut pending: VecDeque<Request> = VecDeque::new();
    let mut rechecks: Vec<(Instant, Vec<i64>)> = Vec::new();
    let mut next_all = Instant::now() + ctx.cfg().reconcile_interval;
    let mut next_poll = Instant::now() + ctx.cfg().poll_interval;
    let mut misses = Misses::new();
    // Consecutive failed runs and since when (a problem from the third on).
    let mut failing_since: Option<(u32, chrono::DateTime<Utc>)> = None;
    loop {
        if pending.is_empty() {
            let next_recheck = rechecks.iter().map(|(t, _)| *t).min();
            let wake = next_recheck
                .map_or(next_all, |r| r.min(next_all))
                .min(next_poll);
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                r = rx.recv() => match r {
                    Some(r) => pending.push_back(r),
                    None => return Ok(()),
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.push_back(r);
        }
        let now = Instant::now();
        if now >= next_all {
            next_all = now + ctx.cfg().reconcile_interval;
            if pending.iter().any(|r| matches!(r, Request::All)) {
                ctx.metrics.reconciles_skipped.inc();
            } else {
                pending.push_back(Request::All);
            }
        }
        if now >= next_poll {
            next_poll = now + ctx.cfg().poll_interval;
            if pending
                .iter()
                .any(|r| matches!(r, Request::All | Request::Poll))
            {
                ctx.metrics.reconciles_skipped.inc();
            } else {
                pending.push_back(Request::Poll);
            }
        }
        // Re-checks that are due.
        let (due, later): (Vec<_>, Vec<_>) = rechecks.drain(..).partition(|(t, _)| *t <= now);
        rechecks = later;
        for (_, users) in due {
            // The re-check itself is not re-checked: if the API still disagrees, it wins.
            ctx.metrics.reconcile_runs.inc();
            let scope = Scope::Users(users);
            let run = tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                run = reconcile(&ctx, &scope, &mut misses) => run,
            };
            match run {
                Ok(found) => {
                    // Realtime covered these and still missed the change: the channel may be
                    // served from another region now.
                    for ch in found.realtime_missed {
                        ctx.regions.recheck(ch);
                    }
                }
                Err(e) => {
                    ctx.metrics.reconcile_failures.inc();
                    tracing::warn!(error = %format!("{e:#}"), "reconciliation re-check failed");
                }
            }
        }
        if pending.is_empty() {
            continue;
        }
        // Merge what is queued into one run: an `All` covers everything; otherwise the union of
        // the channel requests.
        let batch: Vec<Request> = pending.drain(..).collect();
        let alls = batch.iter().filter(|r| matches!(r, Request::All)).count();
        let polls = batch.iter().filter(|r| matches!(r, Request::Poll)).count();
        if alls + polls > 1 {
            ctx.metrics
                .reconciles_skipped
                .add((alls + polls) as u64 - 1);
        }
        let chans: BTreeSet<i64> = batch
            .iter()
            .flat_map(|r| match r {
                Request::Channels { channels, .. } => channels.clone(),
                Request::All | Request::Poll | Request::Shards(_) => Vec::new(),
            })
            .collect();
        let shards: BTreeSet<i32> = batch
            .iter()
            .flat_map(|r| match r {
                Request::Shards(s) => s.clone(),
                _ => Vec::new(),
            })
            .collect();
        let mut scopes = Vec::new();
        if alls > 0 {
            scopes.push(Scope::All);
        } else {
            if !shards.is_empty() {
                scopes.push(Scope::Shards(shards.into_iter().collect()));
            }
            if polls > 0 {
                scopes.push(Scope::Poll);
            }
            if !chans.is_empty() {
                scopes.push(Scope::Channels(chans.into_iter().collect()));
            }
        }
        let started = Instant::now();
        let mut result: anyhow::Result<Vec<i64>> = Ok(Vec::new());
        for scope in &scopes {
            ctx.metrics.reconcile_runs.inc();
            // A run over thousands of streamers waits for the API's rate limiter for minutes:
            // shutdown must not wait for it (what a run has staged is already staged; the next
            // start reconciles again).
            let run = tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                run = reconcile(&ctx, scope, &mut misses) => run,
            };
            match run {
                Ok(found) => {
                    // A change the periodic run finds that realtime missed on a covered channel
                    // may mean the channel is served from another region now: it is located
                    // again at once (one paced web request; an answer that names the same
                    // region moves nothing). Waiting for the re-check to disagree too missed
                    // most moves: the first run's correction is usually applied, and then the
                    // re-check agrees.
                    for ch in found.realtime_missed {
                        ctx.regions.recheck(ch);
                    }
                    if let Ok(d) = &mut result {
                        d.extend(found.differing);
                    }
                }
                Err(e) => result = Err(e),
            }
        }
        api_health(&ctx, &mut failing_since, result.as_ref().err());
        match &result {
            Ok(differing) => {
                tracing::debug!(
                    differences = differing.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                );
                if !differing.is_empty() {
                    rechecks.push((Instant::now() + API_RECHECK, differing.clone()));
                }
            }
            Err(e) => {
                ctx.metrics.reconcile_failures.inc();
                tracing::warn!(error = %format!("{e:#}"), "reconciliation failed");
            }
        }
        for r in batch {
            let Request::Channels {
                channels,
                close_gap,
                unknown_on_failure,
            } = r
            else {
                continue;
            };
            if let (Err(e), Some(key)) = (&result, unknown_on_failure) {
                // Nothing checked these streamers while their socket was down: their status is
                // unknown, and the reason names what failed — the database is not Kick.
                let reason = if is_db_failure(e) {
                    "realtime socket down and the check against the kick api failed on the database"
                } else {
                    "realtime socket down and kick api unavailable"
                };
                match mark_unknown(&ctx, &channels, &key, reason).await {
                    Ok(n) if n > 0 => {
                        tracing::warn!(streamers = n, reason, "statuses marked unknown");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot mark statuses unknown");
                    }
                }
            }
            if let Some(gap) = close_gap {
                let found = result.as_ref().ok().map(|d| d.len());
                crate::gaps::close(&ctx, gap, found).await;
            }
        }
    }
}

/// Streamers loaded from the database per query: a run over 100,000 streamers holds one page
/// of them at a time, not all (the collector's memory stays flat whatever the number).
const LOAD_PAGE: i64 = 2000;

/// One page of the API poll's streamers (`$1`: after this `id`, `$2`: the held shards, `$3`: the
/// page size): the enabled ones that neither realtime nor a webhook subscription covers, i.e.
/// `coverage = 'poll'` of `v_streamer_status` (migrations V6), whose conditions this repeats.
///
/// Not read through the view: its `coverage` is a `CASE` over two correlated `EXISTS`, which
/// PostgreSQL evaluates row by row, and the filter on it walked every streamer with an index
/// probe each to find, most of the time, none (30 ms at 10,000 streamers, every
/// `KICK_POLL_INTERVAL`, on the core the status path uses). Written as anti-joins it is one hash
/// of the fresh coverage rows and one scan (6 ms). `collector/tests/poll_scope.rs` holds it to
/// the view's answer.
pub const POLL_PAGE: &str = "SELECT s.id, s.kick_user_id, s.username, s.kick_channel_id, s.status,
            'poll'::text AS coverage
     FROM streamers s
     WHERE s.enabled AND s.id > $1
       AND mod(coalesce(s.kick_channel_id, s.kick_user_id), 64)::int = ANY($2)
       AND NOT EXISTS (
           SELECT 1 FROM channel_coverage c JOIN collectors k ON k.id = c.collector_id
           WHERE c.kick_channel_id = s.kick_channel_id
             AND k.heartbeat_at > now() - interval '90 seconds')
       AND NOT EXISTS (
           SELECT 1 FROM webhook_subscriptions w
           WHERE w.kick_user_id = s.kick_user_id AND w.synced_at > now() - interval '30 minutes')
     ORDER BY s.id LIMIT $3";

/// One page of the streamers `scope` covers, those with `id > after`, in `id` order.
async fn load(ctx: &Ctx, scope: &Scope, after: i64) -> anyhow::Result<Vec<Stored>> {
    const Q: &str = "SELECT id, kick_user_id, username, kick_channel_id, status, coverage
                     FROM v_streamer_status WHERE enabled AND id > $1";
    // A streamer's shard: its channel id's, else its user id's (`kick_shared::model::shard`).
    const IN_SHARDS: &str = "AND mod(coalesce(kick_channel_id, kick_user_id), 64)::int = ANY($2)";
    const PAGE: &str = "ORDER BY id LIMIT $3";
    let held = ctx.leases.shards();
    let rows = match scope {
        Scope::All => {
            ctx.query(
                &format!("{Q} {IN_SHARDS} {PAGE}"),
                &[&after, &held, &LOAD_PAGE],
            )
            .await?
        }
        Scope::Shards(s) => {
            // Only what is still held (a lease may have moved on while this waited).
            let s: Vec<i32> = s.iter().copied().filter(|x| held.contains(x)).collect();
            ctx.query(
                &format!("{Q} {IN_SHARDS} {PAGE}"),
                &[&after, &s, &LOAD_PAGE],
            )
            .await?
        }
        Scope::Poll => ctx.query(POLL_PAGE, &[&after, &held, &LOAD_PAGE]).await?,
        Scope::Channels(ch) => {
            ctx.query(
                &format!("{Q} AND kick_channel_id = ANY($2) {PAGE}"),
                &[&after, ch, &LOAD_PAGE],
            )
            .await?
        }
        Scope::Users(u) => {
            ctx.query(
                &format!("{Q} AND kick_user_id = ANY($2) {PAGE}"),
                &[&after, u, &LOAD_PAGE],
            )
            .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| Stored {
            id: r.get("id"),
            user_id: r.get("kick_user_id"),
            username: r.get("username"),
            channel_id: r.get("kick_channel_id"),
            status: r
                .get::<_, String>("status")
                .parse()
                .unwrap_or(Status::Unknown),
            realtime: r.get::<_, String>("coverage") == "realtime",
        })
        .collect())
}

/// Every streamer `scope` covers, page by page (for the small scopes).
async fn load_all(ctx: &Ctx, scope: &Scope) -> anyhow::Result<Vec<Stored>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = load(ctx, scope, after).await?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = last.id;
        let full = page.len() as i64 == LOAD_PAGE;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Three failed runs in a row make the API a problem in health (one failure is common: a
/// timeout, a 502); the next successful run clears it.
fn api_health(
    ctx: &Ctx,
    failing: &mut Option<(u32, chrono::DateTime<Utc>)>,
    error: Option<&anyhow::Error>,
) {
    match error {
        None => {
            *failing = None;
            ctx.health.clear("kick_api");
        }
        Some(e) => {
            let (n, since) = failing.get_or_insert((0, Utc::now()));
            *n += 1;
            if *n >= 3 {
                let what: String = format!("{e:#}").chars().take(200).collect();
                let who = if is_db_failure(e) {
                    "reconcile"
                } else {
                    "kick api"
                };
                ctx.health.set_since(
                    "kick_api",
                    format!("{who} failing ({n} runs in a row): {what}"),
                    *since,
                );
            }
        }
    }
}

/// Whether a failed run failed on the database (a run also reads and writes it): Kick is not
/// to blame for that.
fn is_db_failure(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.is::<kick_shared::db::DbError>() || c.is::<tokio_postgres::Error>())
}

/// Runs an API call, honouring 429 Retry-After a few times before giving up.
async fn with_retry<T, F, Fut>(ctx: &Ctx, mut f: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut attempts = 0;
    loop {
        match f().await {
            Err(ApiError::RateLimited { retry_after }) if attempts < 3 => {
                attempts += 1;
                ctx.metrics.rate_limited.inc();
                let wait = retry_after
                    .unwrap_or(Duration::from_secs(5))
                    .min(Duration::from_secs(120));
                tracing::warn!(
                    wait_s = wait.as_secs(),
                    "kick api rate limit, waiting as told by Retry-After"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.shutdown.cancelled() => return Err(ApiError::RateLimited { retry_after }),
                }
            }
            Err(ApiError::RateLimited { retry_after }) => {
                ctx.metrics.rate_limited.inc();
                return Err(ApiError::RateLimited { retry_after });
            }
            other => return other,
        }
    }
}

/// What one run found.
#[derive(Debug, Default)]
struct Found {
    /// Streamers whose status the API contradicted (each staged as one row).
    differing: Vec<i64>,
    /// Channels realtime covers whose change it missed.
    realtime_missed: Vec<i64>,
}

/// Reconciles `scope`: stages what the API contradicts, channel ids it reveals, renames, and
/// `unknown` for streamers missing from its answers [`MISSING_AFTER`] times in a row.
async fn reconcile(ctx: &Ctx, scope: &Scope, misses: &mut Misses) -> anyhow::Result<Found> {
    let now = Utc::now();
    let run_ms = now.timestamp_millis();
    let mut differing = Vec::new();
    let mut realtime_missed = Vec::new();
    // One database page (LOAD_PAGE streamers) and one API page (50) at a time, staged as we
    // go: memory stays flat however many streamers there are, and staging waits for room
    // rather than refusing events.
    let mut after = 0;
    loop {
        let stored = load(ctx, scope, after).await?;
        let Some(last) = stored.last() else {
            break;
        };
        after = last.id;
        let more = stored.len() as i64 == LOAD_PAGE;
        for page in stored.chunks(kick_shared::kick::api::BATCH) {
            let ids: Vec<i64> = page.iter().map(|s| s.user_id).collect();
            let api = with_retry(ctx, || ctx.api.channels_by_ids(&ids)).await?;
            let by_user: HashMap<i64, &Stored> = page.iter().map(|s| (s.user_id, s)).collect();
            // Live streamers whose realtime channel id we do not know yet: ask the livestreams endpoint.
            let unknown_channel: Vec<i64> = api
                .iter()
                .filter(|c| {
                    c.is_live()
                        && by_user
                            .get(&c.broadcaster_user_id)
                            .is_some_and(|s| s.channel_id.is_none())
                })
                .map(|c| c.broadcaster_user_id)
                .collect();
            let learned: HashMap<i64, i64> = if unknown_channel.is_empty() {
                HashMap::new()
            } else {
                match with_retry(ctx, || ctx.api.livestreams_by_ids(&unknown_channel)).await {
                    Ok(ls) => ls
                        .into_iter()
                        .filter(|l| l.channel_id > 0)
                        .map(|l| (l.broadcaster_user_id, l.channel_id))
                        .collect(),
                    Err(e) => {
                        tracing::debug!(error = %e, "livestreams lookup failed; channel ids stay unknown for now");
                        HashMap::new()
                    }
                }
            };
            // Streamers Kick left out of its answer (banned, renamed or deleted channels).
            for s in page {
                if api.iter().any(|c| c.broadcaster_user_id == s.user_id) {
                    misses.remove(&s.user_id);
                    continue;
                }
                let n = misses.entry(s.user_id).or_default();
                *n = n.saturating_add(1);
                if *n >= MISSING_AFTER && s.status != Status::Unknown {
                    tracing::warn!(user_id = s.user_id, username = %s.username, "missing from kick's channels answer twice: status unknown");
                    ctx.stager
                        .stage_wait(rows::missing(s.user_id, s.channel_id, run_ms, now))
                        .await;
                }
            }
            for ch in &api {
                let Some(s) = by_user.get(&ch.broadcaster_user_id) else {
                    continue;
                };
                // A rename on Kick: same user id, another slug.
                let slug = ch.slug.to_lowercase();
                if !slug.is_empty() && slug != s.username {
                    ctx.stager
                        .stage_wait(rows::slug_changed(s.user_id, &s.username, &slug, now))
                        .await;
                }
                let live = ch.is_live();
                let learned_channel = learned.get(&s.user_id).copied();
                let differs = !matches!(
                    (live, s.status),
                    (true, Status::Online) | (false, Status::Offline)
                );
                if !differs && learned_channel.is_none() {
                    continue;
                }
                if differs {
                    differing.push(s.user_id);
                    // Not after a socket's gap or a shard's handoff (`Channels`, `Shards`):
                    // what changed then was missed for a known reason.
                    if s.realtime && matches!(scope, Scope::Users(_) | Scope::All) {
                        realtime_missed.extend(s.channel_id);
                    }
                }
                let row = rows::api_status(
                    &ApiStatus {
                        user_id: s.user_id,
                        channel_id: s.channel_id,
                        slug: &ch.slug,
                        live,
                        start_time: ch.start_time(),
                        stored_status: s.status.as_str(),
                        differs,
                        learned_channel,
                        run_ms,
                    },
                    now,
                );
                ctx.stager.stage_wait(row).await;
            }
        }
        if !more {
            break;
        }
    }
    ctx.metrics
        .reconcile_differences
        .add(differing.len() as u64);
    Ok(Found {
        differing,
        realtime_missed,
    })
}

/// While a socket is down and the API also fails, its streamers' status is unknown — never
/// offline. Stages one `StatusUnknown` row per streamer not already unknown.
async fn mark_unknown(
    ctx: &Ctx,
    channels: &[i64],
    gap_key: &str,
    reason: &str,
) -> anyhow::Result<usize> {
    let stored = load_all(ctx, &Scope::Channels(channels.to_vec())).await?;
    let now = Utc::now();
    let mut n = 0;
    for s in stored.iter().filter(|s| s.status != Status::Unknown) {
        n += 1;
        ctx.stager
            .stage(rows::unknown(s.user_id, s.channel_id, gap_key, now, reason));
    }
    Ok(n)
}
