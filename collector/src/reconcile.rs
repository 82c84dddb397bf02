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
    /// Every enabled streamer.
    All,
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
    user_id: i64,
    channel_id: Option<i64>,
    status: Status,
}

/// Which streamers one run covers.
#[derive(Debug, Clone)]
enum Scope {
    All,
    Channels(Vec<i64>),
    Users(Vec<i64>),
}

/// Runs reconciliations until shutdown (supervised).
pub async fn run(ctx: Arc<Ctx>, queue: Queue) -> anyhow::Result<()> {
    let mut rx = queue.lock().await;
    let mut pending: VecDeque<Request> = VecDeque::from([Request::All]);
    let mut rechecks: Vec<(Instant, Vec<i64>)> = Vec::new();
    let mut next_all = Instant::now() + ctx.cfg().reconcile_interval;
    loop {
        if pending.is_empty() {
            let next_recheck = rechecks.iter().map(|(t, _)| *t).min();
            let wake = next_recheck.map_or(next_all, |r| r.min(next_all));
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
        // Re-checks that are due.
        let (due, later): (Vec<_>, Vec<_>) = rechecks.drain(..).partition(|(t, _)| *t <= now);
        rechecks = later;
        for (_, users) in due {
            // The re-check itself is not re-checked: if the API still disagrees, it wins.
            ctx.metrics.reconcile_runs.inc();
            if let Err(e) = reconcile(&ctx, &Scope::Users(users)).await {
                ctx.metrics.reconcile_failures.inc();
                tracing::warn!(error = %format!("{e:#}"), "reconciliation re-check failed");
            }
        }
        if pending.is_empty() {
            continue;
        }
        // Merge what is queued into one run: an `All` covers everything; otherwise the union of
        // the channel requests.
        let batch: Vec<Request> = pending.drain(..).collect();
        let alls = batch.iter().filter(|r| matches!(r, Request::All)).count();
        if alls > 1 {
            ctx.metrics.reconciles_skipped.add(alls as u64 - 1);
        }
        let scope = if alls > 0 {
            Scope::All
        } else {
            let chans: BTreeSet<i64> = batch
                .iter()
                .flat_map(|r| match r {
                    Request::Channels { channels, .. } => channels.clone(),
                    Request::All => Vec::new(),
                })
                .collect();
            Scope::Channels(chans.into_iter().collect())
        };
        let started = Instant::now();
        ctx.metrics.reconcile_runs.inc();
        let result = reconcile(&ctx, &scope).await;
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
            if let (Err(_), Some(key)) = (&result, unknown_on_failure) {
                match mark_unknown(&ctx, &channels, &key).await {
                    Ok(n) if n > 0 => tracing::warn!(
                        streamers = n,
                        "socket down and kick api failing: statuses marked unknown"
                    ),
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

async fn load(ctx: &Ctx, scope: &Scope) -> anyhow::Result<Vec<Stored>> {
    const Q: &str = "SELECT kick_user_id, kick_channel_id, status FROM streamers WHERE enabled";
    let rows = match scope {
        Scope::All => ctx.query(&format!("{Q} ORDER BY id"), &[]).await?,
        Scope::Channels(ch) => {
            ctx.query(
                &format!("{Q} AND kick_channel_id = ANY($1) ORDER BY id"),
                &[ch],
            )
            .await?
        }
        Scope::Users(u) => {
            ctx.query(&format!("{Q} AND kick_user_id = ANY($1) ORDER BY id"), &[u])
                .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| Stored {
            user_id: r.get("kick_user_id"),
            channel_id: r.get("kick_channel_id"),
            status: r
                .get::<_, String>("status")
                .parse()
                .unwrap_or(Status::Unknown),
        })
        .collect())
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

/// Reconciles `scope`; returns the streamers whose status the API contradicted (each staged as
/// one row).
async fn reconcile(ctx: &Ctx, scope: &Scope) -> anyhow::Result<Vec<i64>> {
    let stored = load(ctx, scope).await?;
    let now = Utc::now();
    let run_ms = now.timestamp_millis();
    let mut differing = Vec::new();
    // One API page (50 streamers) at a time, staged as we go: memory stays flat however many
    // streamers there are, and staging waits for room rather than refusing events.
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
        for ch in &api {
            let Some(s) = by_user.get(&ch.broadcaster_user_id) else {
                continue;
            };
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
    ctx.metrics
        .reconcile_differences
        .add(differing.len() as u64);
    Ok(differing)
}

/// While a socket is down and the API also fails, its streamers' status is unknown — never
/// offline. Stages one `StatusUnknown` row per streamer not already unknown.
async fn mark_unknown(ctx: &Ctx, channels: &[i64], gap_key: &str) -> anyhow::Result<usize> {
    let stored = load(ctx, &Scope::Channels(channels.to_vec())).await?;
    let now = Utc::now();
    let mut n = 0;
    for s in stored.iter().filter(|s| s.status != Status::Unknown) {
        n += 1;
        ctx.stager
            .stage(rows::unknown(s.user_id, s.channel_id, gap_key, now));
    }
    Ok(n)
}
