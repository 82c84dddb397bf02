//! Coverage gaps: when a subscribed socket goes down, a `coverage_gaps` row records it (from,
//! to, close code, and what the reconcile after it found), so an operator can query when the
//! realtime feed was blind. The placement opens gaps; the reconciler closes them.

use crate::ctx::Ctx;

/// Records the start of a gap; returns its row id (`None` when the database is unavailable: the
/// gap is then only in the logs).
pub async fn open(
    ctx: &Ctx,
    socket: usize,
    channels: usize,
    code: Option<u16>,
    reason: &str,
) -> Option<i64> {
    let reason: String = reason.chars().take(300).collect();
    let rows = ctx
        .query(
            "INSERT INTO coverage_gaps (collector_id, shard, channels, down_from, close_code, reason)
             VALUES ($1, $2, $3, clock_timestamp(), $4, $5) RETURNING id",
            &[
                &ctx.collector_id,
                &i32::try_from(socket).unwrap_or(i32::MAX),
                &i32::try_from(channels).unwrap_or(i32::MAX),
                &code.map(i32::from),
                &reason,
            ],
        )
        .await;
    match rows {
        Ok(rows) => rows.first().map(|r| r.get("id")),
        Err(e) => {
            tracing::warn!(error = %e, socket, "coverage gap not recorded");
            None
        }
    }
}

/// Closes a gap once the socket is subscribed again and its reconcile has run.
pub async fn close(ctx: &Ctx, gap_id: i64, transitions_found: Option<usize>) {
    let found = transitions_found.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    if let Err(e) = ctx
        .query(
            "UPDATE coverage_gaps SET down_to = now(), transitions_found = $2 WHERE id = $1",
            &[&gap_id, &found],
        )
        .await
    {
        tracing::warn!(error = %e, gap_id, "coverage gap not closed");
    }
}
