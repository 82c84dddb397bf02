//! Coverage gaps: when a subscribed socket goes down, a `coverage_gaps` row records it (from,
//! to, close code, and what the reconcile after it found), so an operator can query when the
//! realtime feed was blind. While the socket is down the REST API covers its streamers; if the
//! API fails too, their status becomes `unknown`, never `offline`.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::Ctx;

/// Records the start of a gap and starts covering the shard's streamers by REST. Returns the
/// gap's start and row id.
pub async fn socket_down(
    ctx: &std::sync::Arc<Ctx>,
    shard: usize,
    channels: &BTreeSet<i64>,
    code: Option<u16>,
    reason: &str,
) -> Option<(DateTime<Utc>, i64)> {
    let now = Utc::now();
    let id = match ctx.db().await {
        Ok(c) => c
            .query_one(
                "INSERT INTO coverage_gaps (collector_id, shard, channels, down_from, close_code, reason)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&ctx.collector_id, &(shard as i32), &(channels.len() as i32), &now, &code.map(i32::from), &reason],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .ok(),
        Err(_) => None,
    };
    let gap_id = id.unwrap_or(-now.timestamp_millis());
    let ctx = ctx.clone();
    let chans: Vec<i64> = channels.iter().copied().collect();
    tokio::spawn(async move {
        if crate::reconcile::run(&ctx, crate::reconcile::Scope::Channels(chans.clone()))
            .await
            .is_err()
        {
            let key = format!("{}:{gap_id}", ctx.collector_id);
            match crate::reconcile::mark_unknown(&ctx, &chans, &key).await {
                Ok(n) if n > 0 => tracing::warn!(
                    shard,
                    streamers = n,
                    "socket down and kick api failing: statuses marked unknown"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot mark statuses unknown"),
            }
        }
    });
    Some((now, gap_id))
}

/// Closes a gap once the socket is subscribed again and its reconcile has run.
pub async fn socket_up(ctx: &Ctx, gap_id: i64, transitions_found: Option<usize>) {
    if gap_id < 0 {
        return;
    }
    if let Ok(c) = ctx.db().await {
        let found = transitions_found.map(|n| n as i32);
        let _ = c
            .execute(
                "UPDATE coverage_gaps SET down_to = now(), transitions_found = $2 WHERE id = $1",
                &[&gap_id, &found],
            )
            .await;
    }
}
