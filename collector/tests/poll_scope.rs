//! The API poll's query (`reconcile::POLL_PAGE`) repeats the `coverage = 'poll'` rule of
//! `v_streamer_status` as anti-joins, for speed; here it is held to the view's answer on a real
//! PostgreSQL, over every combination of what coverage depends on: a channel id or none, coverage
//! rows of a live and of a dead collector, a fresh and a stale webhook subscription, disabled
//! streamers, and the shard filter — read page by page as the reconciler reads it.

use std::collections::BTreeSet;

use kick_collector::reconcile::POLL_PAGE;

/// Every streamer the poll query returns for `held`, reading pages of `page` rows.
async fn polled(c: &tokio_postgres::Client, held: &[i32], page: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut after = 0i64;
    loop {
        let rows = c.query(POLL_PAGE, &[&after, &held, &page]).await.unwrap();
        for r in &rows {
            assert_eq!(r.get::<_, String>("coverage"), "poll");
            // The columns the reconciler reads, by name.
            let _: (i64, String, Option<i64>, String) = (
                r.get("kick_user_id"),
                r.get("username"),
                r.get("kick_channel_id"),
                r.get("status"),
            );
            out.push(r.get::<_, i64>("id"));
        }
        match rows.last() {
            Some(r) if rows.len() as i64 == page => after = r.get("id"),
            _ => return out,
        }
    }
}

/// What the view calls `poll` among the enabled streamers of `held`.
async fn by_view(c: &tokio_postgres::Client, held: &[i32]) -> Vec<i64> {
    c.query(
        "SELECT id FROM v_streamer_status
         WHERE enabled AND coverage = 'poll'
           AND mod(coalesce(kick_channel_id, kick_user_id), 64)::int = ANY($1)
         ORDER BY id",
        &[&held],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("id"))
    .collect()
}

#[tokio::test]
async fn the_poll_query_selects_exactly_what_the_view_calls_poll() {
    let db = kick_testkit::fresh_db().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO collectors (id, host, pid, started_at, heartbeat_at, transport, version)
         VALUES ('alive', 'h', 1, now(), now(), 'pusher', 't'),
                ('dead', 'h', 2, now() - interval '1 hour', now() - interval '5 minutes',
                 'pusher', 't')",
    )
    .await
    .unwrap();
    // 2 (channel id or not) × 4 (coverage: none, alive, dead, both) × 3 (webhook: none, fresh,
    // stale) × 2 (enabled or not) = 48 combinations, each on 5 streamers of different shards.
    let mut n = 0i64;
    for has_channel in [false, true] {
        for coverage in ["none", "alive", "dead", "both"] {
            for webhook in ["none", "fresh", "stale"] {
                for enabled in [true, false] {
                    for _ in 0..5 {
                        n += 1;
                        let user = 7_000 + n * 13;
                        let channel = has_channel.then_some(90_000 + n * 7);
                        c.execute(
                            "INSERT INTO streamers (username, kick_user_id, kick_channel_id,
                                                    enabled, status)
                             VALUES ($1, $2, $3, $4, 'offline')",
                            &[&format!("s{n}"), &user, &channel, &enabled],
                        )
                        .await
                        .unwrap();
                        // A coverage row may exist for a channel no streamer has any more (or
                        // not yet): written for streamers without a channel id too, under a
                        // channel id of their own.
                        let ch = channel.unwrap_or(500_000 + n);
                        for who in match coverage {
                            "alive" => &["alive"][..],
                            "dead" => &["dead"][..],
                            "both" => &["alive", "dead"][..],
                            _ => &[][..],
                        } {
                            c.execute(
                                "INSERT INTO channel_coverage (kick_channel_id, collector_id)
                                 VALUES ($1, $2)",
                                &[&ch, who],
                            )
                            .await
                            .unwrap();
                        }
                        let synced = match webhook {
                            "fresh" => Some("now() - interval '1 minute'"),
                            "stale" => Some("now() - interval '2 hours'"),
                            _ => None,
                        };
                        if let Some(at) = synced {
                            c.execute(
                                &format!(
                                    "INSERT INTO webhook_subscriptions
                                         (kick_user_id, subscription_id, synced_at)
                                     VALUES ($1, $2, {at})"
                                ),
                                &[&user, &format!("sub-{n}")],
                            )
                            .await
                            .unwrap();
                        }
                    }
                }
            }
        }
    }
    let all: Vec<i32> = (0..64).collect();
    let even: Vec<i32> = (0..64).filter(|s| s % 2 == 0).collect();
    let none: Vec<i32> = Vec::new();
    for held in [&all, &even, &none] {
        let want = by_view(&c, held).await;
        for page in [1, 7, 2000] {
            assert_eq!(
                polled(&c, held, page).await,
                want,
                "shards {held:?}, page {page}"
            );
        }
    }
    // Polled when every shard is held: the enabled ones without a fresh webhook (none or stale)
    // and either without a channel id (any coverage rows: 4 × 2 combinations) or with only the
    // dead collector's row or none (2 × 2) — 12 combinations of 5 streamers.
    assert_eq!(by_view(&c, &all).await.len(), 12 * 5);
    let even_polled = by_view(&c, &even).await.len();
    assert!(
        (1..60).contains(&even_polled),
        "the even shards hold some of them: {even_polled}"
    );
    let distinct: BTreeSet<i64> = polled(&c, &all, 3).await.into_iter().collect();
    assert_eq!(distinct.len(), 60, "no streamer twice across pages");
}
