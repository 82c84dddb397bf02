//! Where Kick serves each channel. Kick's web client asks
//! `POST {KICK_WEB_URL}/api/v1/realtime/channels/{id}/chat/connection` where a channel's realtime
//! feed lives (one region per channel); a subscription on another region's server succeeds and
//! never delivers an event. So every channel is asked once, the answer is cached in
//! `channel_regions`, refreshed every `KICK_REGION_REFRESH`, and asked again at once when a
//! reconcile finds that realtime missed a change on it (the channel may have moved). The
//! placement puts each channel on a socket to its own server.
//!
//! Lookups are paced (half of `KICK_WEB_RATE`, 5/s by default, on top of the web rate limiter
//! every Kick web request shares, so negotiations for sockets always find room): the first
//! discovery of many channels takes a while, and channels not yet located
//! stay on the general endpoint's sockets and count as polled, not as covered.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kick_shared::config::Transport;
use kick_shared::kick::realtime::negotiate::Endpoint;
use kick_shared::ratelimit::RateLimiter;
use tokio::sync::{mpsc, watch};

use crate::ctx::Ctx;

/// What the placement learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionUpdate {
    /// The Centrifugo URL serving a channel.
    Located(i64, String),
    /// The cache was read for these channels: those it knew were sent (`Located`) before this.
    /// The placement holds a new channel until its cache read (briefly): placed by region from
    /// the start, it needs no general socket that would keep half the channels afterwards.
    CacheRead(Vec<i64>),
}

/// Asks for the channel to be located again (a reconcile saw realtime miss a change on it).
#[derive(Debug, Clone)]
pub struct RecheckHandle {
    tx: mpsc::UnboundedSender<i64>,
}

impl RecheckHandle {
    pub fn recheck(&self, channel: i64) {
        let _ = self.tx.send(channel);
    }
}

/// The recheck queue survives restarts of the task.
pub type Rechecks = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<i64>>>;

pub fn rechecks() -> (RecheckHandle, Rechecks) {
    let (tx, rx) = mpsc::unbounded_channel();
    (RecheckHandle { tx }, Arc::new(tokio::sync::Mutex::new(rx)))
}

/// Runs the resolver until shutdown (supervised). Idle when the transport is Pusher (one
/// cluster, no regions). `seed`: regions known before the database answers (a start from the
/// boot cache), placed at once and not looked up again before their refresh.
pub async fn run(
    ctx: Arc<Ctx>,
    mut desired: watch::Receiver<Arc<BTreeSet<i64>>>,
    updates: mpsc::UnboundedSender<RegionUpdate>,
    rechecks: Rechecks,
    seed: Arc<Vec<(i64, String)>>,
) -> anyhow::Result<()> {
    let mut rechecks = rechecks.lock().await;
    let rate = ctx.cfg().web_rate;
    let pace = RateLimiter::new(
        "region lookups",
        (f64::from(rate) / 2.0).max(0.5),
        rate.max(1),
    );
    // What we know: channel → (url, checked at).
    let mut known: HashMap<i64, (String, DateTime<Utc>)> = HashMap::new();
    for (ch, url) in seed.iter() {
        let _ = updates.send(RegionUpdate::Located(*ch, url.clone()));
        known.insert(*ch, (url.clone(), Utc::now()));
    }
    // Channels whose cached region was already read (the channel set grows as shards are
    // gained: each new channel's cache row is read once, not looked up on the web again).
    let mut cache_read: HashSet<i64> = HashSet::new();
    let mut again = false;
    // When the last read of the cache failed (it is read again every `CACHE_RETRY`).
    let mut cache_failed: Option<std::time::Instant> = None;
    loop {
        if ctx.cfg().kick.transport == Transport::Pusher {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(60)) => continue,
            }
        }
        let chans = desired.borrow_and_update().clone();
        let unread: Vec<i64> = chans
            .iter()
            .copied()
            .filter(|c| !known.contains_key(c) && !cache_read.contains(c))
            .collect();
        if !unread.is_empty() {
            // A database that does not answer is an outage, not a failure of this task: the
            // cache is read again at the next round.
            match ctx
                .query(
                    "SELECT kick_channel_id, url, checked_at FROM channel_regions
                     WHERE kick_channel_id = ANY($1)",
                    &[&unread],
                )
                .await
            {
                Ok(rows) => {
                    for r in rows {
                        let (ch, url, at): (i64, String, DateTime<Utc>) =
                            (r.get("kick_channel_id"), r.get("url"), r.get("checked_at"));
                        let _ = updates.send(RegionUpdate::Located(ch, url.clone()));
                        known.insert(ch, (url, at));
                    }
                    let _ = updates.send(RegionUpdate::CacheRead(unread.clone()));
                    cache_read.extend(unread);
                    cache_failed = None;
                }
                Err(e) => {
                    // Not a reason to leave channels where they may receive nothing (a collector
                    // started from its boot cache has no database yet): they are looked up on
                    // the web below, and the cache is read again at least every
                    // `CACHE_RETRY` meanwhile.
                    tracing::debug!(error = %e, "region cache not readable now; looking up on the web, cache retried");
                    cache_failed = Some(std::time::Instant::now());
                }
            }
            cache_read.retain(|c| chans.contains(c));
        }
        // The channels to ask about: never asked, or not for too long.
        let refresh = chrono::Duration::from_std(ctx.cfg().region_refresh)
            .unwrap_or(chrono::Duration::hours(6));
        let now = Utc::now();
        let mut due: Vec<i64> = chans
            .iter()
            .copied()
            .filter(|c| known.get(c).is_none_or(|(_, at)| now - *at > refresh))
            .collect();
        while let Ok(c) = rechecks.try_recv() {
            if chans.contains(&c) && !due.contains(&c) {
                due.insert(0, c);
            }
        }
        for ch in due {
            if ctx.shutdown.is_cancelled() {
                return Ok(());
            }
            if cache_failed.is_some_and(|at| at.elapsed() >= CACHE_RETRY) {
                again = true;
                break;
            }
            pace.acquire().await;
            let cfg = ctx.cfg();
            let client_id = kick_shared::kick::realtime::negotiate::new_client_id();
            match ctx
                .web
                .connection(
                    &cfg.kick.web_url,
                    &client_id,
                    Transport::Centrifugo,
                    &cfg.kick.pusher_url,
                    Some(ch),
                )
                .await
            {
                Ok(Endpoint::Centrifugo { url }) => {
                    let moved = known.get(&ch).is_some_and(|(u, _)| *u != url);
                    if moved {
                        tracing::info!(channel = ch, url = %url, "channel served from another region now: moving it");
                    }
                    // The cache is an optimisation: not writing it now costs a lookup later.
                    if let Err(e) = ctx
                        .query(
                            "INSERT INTO channel_regions (kick_channel_id, url, checked_at) VALUES ($1, $2, now())
                             ON CONFLICT (kick_channel_id) DO UPDATE SET url = $2, checked_at = now()",
                            &[&ch, &url],
                        )
                        .await
                    {
                        tracing::debug!(channel = ch, error = %e, "region not cached");
                    }
                    known.insert(ch, (url.clone(), Utc::now()));
                    let _ = updates.send(RegionUpdate::Located(ch, url));
                }
                Ok(Endpoint::Pusher { .. }) => {
                    // Not a regional answer: remember that we asked.
                    known.insert(ch, (String::new(), Utc::now()));
                }
                Err(e) if e.is_refusal() => {
                    // Kick asked us to go away: the web limiter is paused; come back later.
                    tracing::warn!(error = %e, "region lookups paused");
                    break;
                }
                Err(e) => {
                    tracing::debug!(channel = ch, error = %e, "region lookup failed; retried later");
                    // Do not hammer a channel Kick does not know: try again after a refresh.
                    known
                        .entry(ch)
                        .or_insert_with(|| (String::new(), Utc::now()));
                }
            }
            // A recheck asked meanwhile is done in the next round, at once.
            while let Ok(c) = rechecks.try_recv() {
                stale(&mut known, c);
                again = true;
            }
        }
        if std::mem::take(&mut again) {
            continue;
        }
        let retry = cache_failed.map_or(Duration::from_secs(60), |_| CACHE_RETRY);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            r = desired.changed() => if r.is_err() { return Ok(()) },
            c = rechecks.recv() => if let Some(c) = c {
                stale(&mut known, c);
            },
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// How often the region cache is read again while the database does not answer.
const CACHE_RETRY: Duration = Duration::from_secs(5);

/// Makes `ch` due for a lookup now, keeping where it was served: the answer is compared with
/// that (a move is logged, and only a move moves anything). Forgetting it instead hid every move
/// a recheck found from the log.
fn stale(known: &mut HashMap<i64, (String, DateTime<Utc>)>, ch: i64) {
    if let Some((_, at)) = known.get_mut(&ch) {
        *at = DateTime::UNIX_EPOCH;
    }
}
