//! Reconciliation against Kick's official API, the source of truth: at start, after each
//! socket's reconnect (that socket's channels only) and every `KICK_RECONCILE_INTERVAL`. A status
//! that differs from the stored one is staged as a `source='api'` row; the writer decides.
//!
//! Streamers without a realtime channel id are covered here only; when the livestreams endpoint
//! reveals a live streamer's channel id, it is staged with the user id and the writer stores it
//! (and the `streamers_changed` trigger makes us subscribe).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kick_shared::kick::api::ApiError;
use kick_shared::model::{API_RECHECK, Source, event_name};
use serde_json::json;

use crate::Ctx;
use crate::stager::Staged;

/// A stored streamer, as reconciliation compares it.
#[derive(Debug, Clone)]
struct Stored {
    user_id: i64,
    channel_id: Option<i64>,
    status: String,
}

/// Which streamers a reconciliation covers.
#[derive(Debug, Clone)]
pub enum Scope {
    All,
    /// One socket's channels (after its reconnect).
    Channels(Vec<i64>),
    /// Streamers the API contradicted, checked again.
    Users(Vec<i64>),
}

async fn load(ctx: &Ctx, scope: &Scope) -> anyhow::Result<Vec<Stored>> {
    let c = ctx.db().await?;
    const Q: &str = "SELECT kick_user_id, kick_channel_id, status FROM streamers WHERE enabled";
    let rows = match scope {
        Scope::All => c.query(&format!("{Q} ORDER BY id"), &[]).await?,
        Scope::Channels(ch) => {
            c.query(
                &format!("{Q} AND kick_channel_id = ANY($1) ORDER BY id"),
                &[ch],
            )
            .await?
        }
        Scope::Users(u) => {
            c.query(&format!("{Q} AND kick_user_id = ANY($1) ORDER BY id"), &[u])
                .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| Stored {
            user_id: r.get(0),
            channel_id: r.get(1),
            status: r.get(2),
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

fn ms(t: Option<DateTime<Utc>>) -> i64 {
    t.map_or(0, |t| t.timestamp_millis())
}

/// Reconciles `scope`. Returns how many statuses the API contradicted (each staged as one row).
///
/// The API lags the realtime feed, and the writer ignores an API answer that contradicts a
/// realtime event less than `API_LAG_GUARD` old. So every contradicted streamer is checked
/// again after `API_RECHECK`: if the API still disagrees then, it wins.
pub async fn run(ctx: &Arc<Ctx>, scope: Scope) -> anyhow::Result<usize> {
    let started = Instant::now();
    ctx.metrics.reconcile_runs.inc();
    let result = run_inner(ctx, &scope).await;
    match &result {
        Ok(differing) => {
            tracing::debug!(
                differences = differing.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reconciled"
            );
            if !differing.is_empty() && !matches!(scope, Scope::Users(_)) {
                let ctx = ctx.clone();
                let users = differing.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(API_RECHECK) => {}
                        _ = ctx.shutdown.cancelled() => return,
                    }
                    // The re-check itself is not re-checked: if the API still disagrees, it wins.
                    ctx.metrics.reconcile_runs.inc();
                    if let Err(e) = run_inner(&ctx, &Scope::Users(users)).await {
                        ctx.metrics.reconcile_failures.inc();
                        tracing::warn!(error = %format!("{e:#}"), "reconciliation re-check failed");
                    }
                });
            }
        }
        Err(e) => {
            ctx.metrics.reconcile_failures.inc();
            tracing::warn!(error = %format!("{e:#}"), "reconciliation failed");
        }
    }
    result.map(|d| d.len())
}

async fn run_inner(ctx: &Ctx, scope: &Scope) -> anyhow::Result<Vec<i64>> {
    let stored = load(ctx, scope).await?;
    let now = Utc::now();
    // Keys are unique per run: an answer the writer refused (API lag) must not block the
    // same answer in a later run.
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
                (live, s.status.as_str()),
                (true, "online") | (false, "offline")
            );
            if !differs && learned_channel.is_none() {
                continue;
            }
            let start = ch.start_time();
            let name = if live {
                event_name::STREAMER_IS_LIVE
            } else {
                event_name::STOP_STREAM_BROADCAST
            };
            let key = match (differs, learned_channel) {
                (false, Some(c)) => format!("api:{}:channel:{c}", s.user_id),
                _ => format!(
                    "api:{}:{}:{}:{run_ms}",
                    s.user_id,
                    if live { "live" } else { "offline" },
                    ms(start)
                ),
            };
            if differs {
                differing.push(s.user_id);
            }
            let payload = json!({"slug": ch.slug, "is_live": live, "start_time": start, "stored_status": s.status});
            ctx.stager
                .stage_wait(Staged {
                    source: Source::Api,
                    topic: None,
                    event_name: name,
                    channel_id: learned_channel.or(s.channel_id),
                    user_id: Some(s.user_id),
                    livestream_id: None,
                    event_time: if live { start.or(Some(now)) } else { Some(now) },
                    payload: payload.to_string(),
                    dedupe_key: key,
                    received_at: now,
                    arrived: Instant::now(),
                })
                .await;
        }
    }
    ctx.metrics
        .reconcile_differences
        .add(differing.len() as u64);
    Ok(differing)
}

/// While a socket is down and the API also fails, its streamers' status is unknown — never
/// offline. Stages one `StatusUnknown` row per streamer not already unknown.
pub async fn mark_unknown(ctx: &Ctx, channels: &[i64], gap_key: &str) -> anyhow::Result<usize> {
    let stored = load(ctx, &Scope::Channels(channels.to_vec())).await?;
    let now = Utc::now();
    let mut n = 0;
    for s in stored.iter().filter(|s| s.status != "unknown") {
        n += 1;
        ctx.stager.stage(Staged {
            source: Source::Realtime,
            topic: None,
            event_name: event_name::STATUS_UNKNOWN,
            channel_id: s.channel_id,
            user_id: Some(s.user_id),
            livestream_id: None,
            event_time: Some(now),
            payload: json!({"reason": "realtime socket down and kick api unavailable"}).to_string(),
            dedupe_key: format!("outage:{}:{gap_key}", s.user_id),
            received_at: now,
            arrived: Instant::now(),
        });
    }
    Ok(n)
}
