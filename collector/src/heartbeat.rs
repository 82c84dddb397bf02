//! The heartbeat: every [`EVERY`] the collector upserts its `collectors` row — sockets,
//! subscriptions, what waits in memory and in the spool, its problems with their start, and how
//! far its clock is from the database's — so that `kick-admin status` tells the truth about it.
//! The same round trip measures the clock skew: a collector whose clock differs from the
//! database's by more than [`MAX_SKEW`] logs a WARN, exports it and reports it as a problem.
//! Rows of collectors gone for a day are reaped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kick_shared::db::DbError;

use crate::ctx::Ctx;

pub const EVERY: Duration = Duration::from_secs(10);
/// A clock further than this from the database's is a problem (ordering never depends on it, but
/// logs, metrics and history times would disagree).
pub const MAX_SKEW: Duration = Duration::from_secs(5);

/// What a heartbeat reports that should not wait for the next tick when it changes: the
/// sockets, the subscriptions, and which health problems are set.
fn reportable(ctx: &Ctx) -> (usize, usize, usize, u64) {
    let m = &ctx.metrics;
    (
        m.sockets_total.load(Ordering::Relaxed),
        m.sockets_up.load(Ordering::Relaxed),
        m.subscriptions.load(Ordering::Relaxed),
        ctx.health.changes(),
    )
}

/// Runs the heartbeat until shutdown (supervised).
pub async fn run(ctx: Arc<Ctx>, started: DateTime<Utc>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_reap = Instant::now() - Duration::from_secs(3600);
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut reported = (usize::MAX, usize::MAX, usize::MAX, u64::MAX);
    loop {
        // Every EVERY, and sooner when the sockets or the set of health problems changed
        // (status should not lag them by 10 s).
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            _ = check.tick() => {
                if reportable(&ctx) == reported {
                    continue;
                }
            }
        }
        reported = reportable(&ctx);
        // Transient peaks (a large reconcile or placement) are given back to the system.
        crate::memory::trim();
        if ctx.leases.id_in_use() {
            // The row is the other process's (this one says so in its own /healthz and log).
            continue;
        }
        match beat(&ctx, started).await {
            Ok(()) => {
                ctx.health.clear("database");
                ctx.metrics.db_up.set(1.0);
                ctx.metrics
                    .last_heartbeat
                    .set(Utc::now().timestamp_millis() as f64 / 1e3);
            }
            Err(e) => {
                ctx.metrics.db_up.set(0.0);
                tracing::warn!(error = %e, "heartbeat failed");
                ctx.health
                    .set("database", format!("database unavailable: {e}"));
            }
        }
        if last_reap.elapsed() > Duration::from_secs(600) {
            last_reap = Instant::now();
            if let Err(e) = ctx
                .query(
                    "DELETE FROM collectors WHERE heartbeat_at < now() - interval '1 day' RETURNING id",
                    &[],
                )
                .await
                .map(|rows| {
                    if !rows.is_empty() {
                        tracing::info!(reaped = rows.len(), "collector rows gone for a day removed");
                    }
                })
            {
                tracing::debug!(error = %e, "reaping old collector rows failed");
            }
        }
    }
}

fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

async fn beat(ctx: &Ctx, started: DateTime<Utc>) -> Result<(), DbError> {
    let m = &ctx.metrics;
    let problems = serde_json::to_value(ctx.health.problems()).unwrap_or_default();
    let healthy = ctx.health.is_healthy();
    let st = &ctx.stager_status;
    let skew_ms = st.skew_ms.load(Ordering::Relaxed);
    let host = hostname();
    let before = Utc::now();
    let rows = ctx
        .query(
            // Committed without waiting for the flush (`set_config(…, true)` is `SET LOCAL` for
            // this one statement's transaction): a report lost in a crash is replaced 10 s later,
            // and a disk whose flushes hang must not silence the report that says so.
            "WITH async AS (SELECT set_config('synchronous_commit', 'off', true))
             INSERT INTO collectors (id, host, pid, started_at, heartbeat_at, sockets, sockets_up,
                 subscriptions, transport, version, healthy, problems, buffered, spooled,
                 oldest_buffered_at, clock_skew_ms, watched_channels)
             SELECT $1, $2, $3, $4, now(), $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16
             FROM async
             ON CONFLICT (id) DO UPDATE SET host = $2, pid = $3, started_at = $4, heartbeat_at = now(),
                 sockets = $5, sockets_up = $6, subscriptions = $7, transport = $8, version = $9,
                 healthy = $10, problems = $11, buffered = $12, spooled = $13,
                 oldest_buffered_at = $14, clock_skew_ms = $15, watched_channels = $16
             RETURNING clock_timestamp() AS db_now",
            &[
                &ctx.collector_id,
                &host,
                &i32::try_from(std::process::id()).unwrap_or(0),
                &started,
                &to_i32(m.sockets_total.load(Ordering::Relaxed)),
                &to_i32(m.sockets_up.load(Ordering::Relaxed)),
                &to_i32(m.subscriptions.load(Ordering::Relaxed)),
                &ctx.transport(),
                &kick_shared::VERSION,
                &healthy,
                &problems,
                &i32::try_from(st.buffered.load(Ordering::Relaxed)).unwrap_or(i32::MAX),
                &i32::try_from(st.spooled.load(Ordering::Relaxed)).unwrap_or(i32::MAX),
                &st.oldest_buffered_at(),
                &i32::try_from(skew_ms).ok(),
                &to_i32(m.watched_channels.load(Ordering::Relaxed)),
            ],
        )
        .await?;
    let after = Utc::now();
    if let Some(db_now) = rows.first().map(|r| r.get::<_, DateTime<Utc>>("db_now")) {
        // The database stamped somewhere in the round trip: compare with its middle.
        let mid = before + (after - before) / 2;
        let skew = (mid - db_now).num_milliseconds();
        note_skew(ctx, skew);
    }
    Ok(())
}

fn note_skew(ctx: &Ctx, skew_ms: i64) {
    let before = ctx.stager_status.skew_ms.swap(skew_ms, Ordering::Relaxed);
    ctx.metrics.clock_skew_seconds.set(skew_ms as f64 / 1e3);
    let limit = MAX_SKEW.as_millis() as i64;
    if skew_ms.abs() > limit {
        if before.abs() <= limit || (before - skew_ms).abs() > 1000 {
            tracing::warn!(
                skew_s = skew_ms as f64 / 1e3,
                "this host's clock differs from the database's; ordering uses the database's clock"
            );
        }
        ctx.health.set(
            "clock",
            format!(
                "clock skew: this host's clock is {:.1}s {} the database's",
                (skew_ms.abs() as f64) / 1e3,
                if skew_ms > 0 { "ahead of" } else { "behind" }
            ),
        );
    } else {
        ctx.health.clear("clock");
    }
}

/// This host's name (for the `collectors` row and the default collector id).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
