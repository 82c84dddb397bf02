//! The collector applies the plain cases itself (`kick_collector::apply`, V10's
//! `stage_applying`); the writer decides everything. These tests hold the two to one result: for
//! every combination of a streamer's state and a realtime event (with the offline grace zero and
//! not), one streamer gets the event through the collector's applying statement (and the writer
//! for whatever it left pending), a twin gets it staged pending and applied by the writer, and
//! their statuses, history and outcomes must be equal. And the rules around it: a pending row,
//! another row of the batch, a streamer locked by a writer or a duplicate key leave the row to
//! the writer.

use chrono::{DateTime, TimeDelta, Utc};
use kick_collector::apply::INSERT_APPLYING;
use kick_writer::apply::{self, ApplyConfig, Statements};
use kick_writer::transition::Rules;
use tokio_postgres::Client;

/// One staged row's parameters, as the stager sends them.
#[derive(Clone)]
struct Row {
    name: &'static str,
    channel: i64,
    user: Option<i64>,
    livestream: i64,
    event_time: Option<DateTime<Utc>>,
    key: String,
    received: DateTime<Utc>,
}

const LIVE: &str = "StreamerIsLive";
const STOP: &str = "StopStreamBroadcast";

/// Stages `rows` through the applying statement; returns (inserted, applied).
async fn stage_applying(c: &Client, rows: &[Row], offlines: bool) -> (i64, i64) {
    let source: Vec<&str> = rows.iter().map(|_| "realtime").collect();
    let topic: Vec<Option<&str>> = rows.iter().map(|_| Some("t")).collect();
    let name: Vec<&str> = rows.iter().map(|r| r.name).collect();
    let chan: Vec<Option<i64>> = rows.iter().map(|r| Some(r.channel)).collect();
    let user: Vec<Option<i64>> = rows.iter().map(|r| r.user).collect();
    let ls: Vec<Option<i64>> = rows.iter().map(|r| Some(r.livestream)).collect();
    let at: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.event_time).collect();
    let payload: Vec<&str> = rows.iter().map(|_| "{}").collect();
    let key: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let obs: Vec<DateTime<Utc>> = rows.iter().map(|r| r.received).collect();
    let recv: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| Some(r.received)).collect();
    let outcome: Vec<Option<&str>> = rows.iter().map(|_| None).collect();
    let shard: Vec<Option<i32>> = rows.iter().map(|_| None).collect();
    let token: Vec<Option<i64>> = rows.iter().map(|_| None).collect();
    let r = c
        .query_one(
            INSERT_APPLYING,
            &[
                &source, &topic, &name, &chan, &user, &ls, &at, &payload, &key, &"test", &obs,
                &recv, &outcome, &true, &shard, &token, &offlines,
            ],
        )
        .await
        .unwrap();
    (r.get("inserted"), r.get("applied"))
}

/// Stages `rows` pending, as the plain insert does.
async fn stage_pending(c: &Client, rows: &[Row]) {
    for r in rows {
        c.execute(
            "INSERT INTO raw_events (source, topic, event_name, kick_channel_id, kick_user_id,
                 livestream_id, event_time, payload, dedupe_key, received_at)
             VALUES ('realtime', 't', $1, $2, $3, $4, $5, '{}', $6, $7)",
            &[
                &r.name,
                &r.channel,
                &r.user,
                &r.livestream,
                &r.event_time,
                &r.key,
                &r.received,
            ],
        )
        .await
        .unwrap();
    }
}

async fn drain(c: &mut Client, grace: std::time::Duration) {
    let st = Statements::prepare(c).await.unwrap();
    let cfg = ApplyConfig {
        batch_size: 500,
        rules: Rules {
            offline_grace: grace,
            ..Rules::default()
        },
        synchronous_commit: false,
    };
    loop {
        let r = apply::apply_batch(c, &st, &cfg, apply::Claim::Next, &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(r.deferred, 0);
        if r.claimed == 0 {
            return;
        }
    }
}

/// A streamer's state before the event.
#[derive(Debug, Clone, Copy)]
struct Start {
    status: &'static str,
    livestream: Option<i64>,
    /// Seconds from the event's arrival (negative: before).
    observed: Option<i64>,
    source: &'static str,
    pending_offline: bool,
    started: bool,
}

fn starts() -> Vec<Start> {
    let mut out = Vec::new();
    for status in ["online", "offline", "unknown"] {
        for livestream in [None, Some(100)] {
            for observed in [None, Some(-3600), Some(1)] {
                for source in ["realtime", "api"] {
                    for pending_offline in [false, true] {
                        for started in [false, true] {
                            out.push(Start {
                                status,
                                livestream,
                                observed,
                                source,
                                pending_offline,
                                started,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// (event name, livestream id, event time in seconds from its arrival)
fn events() -> Vec<(&'static str, i64, Option<i64>)> {
    let mut out = Vec::new();
    for name in [LIVE, STOP] {
        for ls in [50, 100, 150] {
            for at in [None, Some(-1800), Some(3600)] {
                out.push((name, ls, at));
            }
        }
    }
    out
}

async fn set_state(c: &Client, user: i64, s: &Start, t: DateTime<Utc>) {
    let secs = |x: i64| t + TimeDelta::seconds(x);
    let pending_at = s.pending_offline.then(|| secs(-10));
    let pending_raw = s.pending_offline.then_some(1_i64);
    let pending_src = s.pending_offline.then_some("realtime");
    c.execute(
        "UPDATE streamers SET status = $2, livestream_id = $3, last_observed_at = $4,
             status_source = $5, pending_offline_at = $6, pending_offline_raw_id = $7,
             pending_offline_source = $8, live_started_at = $9, status_changed_at = $10,
             last_event_at = $10, status_reason = CASE WHEN $2 = 'unknown' THEN 'lost' END
         WHERE kick_user_id = $1",
        &[
            &user,
            &s.status,
            &s.livestream,
            &s.observed.map(secs),
            &s.source,
            &pending_at,
            &pending_raw,
            &pending_src,
            &s.started.then(|| secs(-7200)),
            &secs(-10800),
        ],
    )
    .await
    .unwrap();
}

/// What the comparison looks at: the streamer's status columns, its history, the row's outcome.
async fn result(c: &Client, user: i64, key: &str) -> String {
    let id: i64 = c
        .query_one("SELECT id FROM streamers WHERE kick_user_id = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    let s = c
        .query_one(
            "SELECT ROW(status, livestream_id, last_observed_at, status_source,
                    pending_offline_at, pending_offline_raw_id = (SELECT id FROM raw_events WHERE dedupe_key = $2),
                    pending_offline_source, status_changed_at, last_event_at, live_started_at,
                    status_reason)::text AS s
             FROM streamers WHERE id = $1",
            &[&id, &key],
        )
        .await
        .unwrap()
        .get::<_, String>("s");
    let h: Vec<String> = c
        .query(
            "SELECT ROW(previous_status, new_status, occurred_at, livestream_id, source)::text AS h
             FROM status_events WHERE streamer_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("h"))
        .collect();
    let outcome: Option<String> = c
        .query_one(
            "SELECT outcome FROM raw_events WHERE dedupe_key = $1",
            &[&key],
        )
        .await
        .unwrap()
        .get("outcome");
    format!("{s} || {h:?} || {outcome:?}")
}

#[tokio::test]
async fn the_collector_applies_exactly_what_the_writer_would() {
    let db = kick_testkit::fresh_db().await;
    let mut c = db.client().await;
    let (starts, events) = (starts(), events());
    let t = Utc::now() - TimeDelta::minutes(1);
    let t = DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap();
    let mut applied_total = 0;
    for (round, grace) in [
        std::time::Duration::ZERO,
        std::time::Duration::from_secs(3600),
    ]
    .into_iter()
    .enumerate()
    {
        // Twins: streamer 2i gets the collector's statement, 2i+1 the writer alone.
        let base = round as i64 * 100_000;
        let mut cases = Vec::new();
        for s in &starts {
            for e in &events {
                cases.push((*s, *e));
            }
        }
        let n = cases.len() as i64;
        c.execute(
            "INSERT INTO streamers (username, kick_user_id, kick_channel_id)
             SELECT 's' || ($1::bigint + i), $1::bigint + i, $1::bigint + 1000000 + i FROM generate_series(0, $2::bigint - 1) AS i",
            &[&base, &(2 * n)],
        )
        .await
        .unwrap();
        let (mut fast, mut slow) = (Vec::new(), Vec::new());
        for (i, (s, (name, ls, at))) in cases.iter().enumerate() {
            let i = i as i64;
            for twin in 0..2 {
                let user = base + 2 * i + twin;
                set_state(&c, user, s, t).await;
                let row = Row {
                    name,
                    channel: user + 1_000_000,
                    user: None,
                    livestream: *ls,
                    event_time: at.map(|x| t + TimeDelta::seconds(x)),
                    key: format!("k{user}"),
                    received: t,
                };
                if twin == 0 { &mut fast } else { &mut slow }.push(row);
            }
        }
        // In batches the size the stager sends (above `APPLY_MAX_ROWS` nothing is applied).
        let (mut inserted, mut applied) = (0, 0);
        for part in fast.chunks(500) {
            let (i, a) = stage_applying(&c, part, grace.is_zero()).await;
            inserted += i;
            applied += a;
        }
        assert_eq!(inserted, n);
        applied_total += applied;
        stage_pending(&c, &slow).await;
        drain(&mut c, grace).await;
        let mut differ = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let i = i as i64;
            let a = result(&c, base + 2 * i, &fast[i as usize].key).await;
            let b = result(&c, base + 2 * i + 1, &slow[i as usize].key).await;
            // The pending offline's raw id names the twin's own row: compared as a flag.
            if a != b {
                differ.push(format!("{case:?}\n  collector: {a}\n  writer:    {b}"));
            }
        }
        assert!(
            differ.is_empty(),
            "grace {grace:?}: {} of {n} differ:\n{}",
            differ.len(),
            differ.join("\n")
        );
        // Each round applies some rows itself (else this test proves nothing about them).
        assert!(
            applied > n / 20,
            "grace {grace:?}: only {applied} of {n} applied by the collector"
        );
    }
    assert!(applied_total > 0);
}

async fn streamer(c: &Client, user: i64) -> i64 {
    c.query_one(
        "INSERT INTO streamers (username, kick_user_id, kick_channel_id, status, livestream_id)
         VALUES ('u' || $1::bigint, $1, $1 + 1000, 'offline', 10) RETURNING id",
        &[&user],
    )
    .await
    .unwrap()
    .get(0)
}

fn live(user: i64, ls: i64, key: &str) -> Row {
    Row {
        name: LIVE,
        channel: user + 1000,
        user: None,
        livestream: ls,
        event_time: None,
        key: key.into(),
        received: Utc::now() - TimeDelta::seconds(1),
    }
}

async fn status(c: &Client, id: i64) -> (String, Option<i64>) {
    let r = c
        .query_one(
            "SELECT status, livestream_id FROM streamers WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

#[tokio::test]
async fn what_the_writer_must_order_is_left_to_it() {
    let db = kick_testkit::fresh_db().await;
    let mut c = db.client().await;

    // A pending row of the streamer (older, the writer's): the new one waits behind it.
    let a = streamer(&c, 1).await;
    stage_pending(&c, &[live(1, 20, "a-old")]).await;
    assert_eq!(
        stage_applying(&c, &[live(1, 30, "a-new")], true).await,
        (1, 0)
    );
    assert_eq!(status(&c, a).await, ("offline".into(), Some(10)));
    drain(&mut c, std::time::Duration::ZERO).await;
    assert_eq!(status(&c, a).await, ("online".into(), Some(30)));

    // Two rows of one streamer in a batch: both the writer's, in order.
    let b = streamer(&c, 2).await;
    let mut stop = live(2, 40, "b-stop");
    stop.name = STOP;
    assert_eq!(
        stage_applying(&c, &[live(2, 40, "b-live"), stop], true).await,
        (2, 0)
    );
    drain(&mut c, std::time::Duration::ZERO).await;
    assert_eq!(status(&c, b).await, ("offline".into(), Some(40)));
    // Staged in the batch's order, whatever the checks sort by: ten streamers' live and
    // offline, interleaved, end offline (a red-team run of the whole pipeline found lives
    // staged after their offlines).
    let mut batch = Vec::new();
    let mut ids = Vec::new();
    for u in 100..110 {
        ids.push(streamer(&c, u).await);
        batch.push(live(u, 70, &format!("z-live-{u}")));
    }
    for u in (100..110).rev() {
        let mut stop = live(u, 70, &format!("a-stop-{u}"));
        stop.name = STOP;
        batch.push(stop);
    }
    assert_eq!(stage_applying(&c, &batch, true).await, (20, 0));
    drain(&mut c, std::time::Duration::ZERO).await;
    for id in ids {
        assert_eq!(status(&c, id).await, ("offline".into(), Some(70)));
        // Reversed, the offline would come first (enriching) and the live be stale: no history.
        let history: Vec<String> = c
            .query(
                "SELECT new_status FROM status_events WHERE streamer_id = $1 ORDER BY id",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(history, ["online", "offline"], "streamer {id}");
    }

    // A streamer a writer holds: not waited for, left to the writer.
    let d = streamer(&c, 3).await;
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM streamers WHERE id = $1 FOR UPDATE", &[&d])
        .await
        .unwrap();
    assert_eq!(stage_applying(&c, &[live(3, 50, "d")], true).await, (1, 0));
    tx.rollback().await.unwrap();
    drain(&mut c, std::time::Duration::ZERO).await;
    assert_eq!(status(&c, d).await, ("online".into(), Some(50)));

    // Applied once: the same key again writes nothing, history has one row.
    let e = streamer(&c, 4).await;
    assert_eq!(stage_applying(&c, &[live(4, 60, "e")], true).await, (1, 1));
    assert_eq!(status(&c, e).await, ("online".into(), Some(60)));
    c.execute(
        "UPDATE streamers SET status = 'offline' WHERE id = $1",
        &[&e],
    )
    .await
    .unwrap();
    assert_eq!(stage_applying(&c, &[live(4, 60, "e")], true).await, (0, 0));
    assert_eq!(status(&c, e).await.0, "offline");
    let history: i64 = c
        .query_one(
            "SELECT count(*) FROM status_events WHERE streamer_id = $1",
            &[&e],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, 1);
    let outcome: String = c
        .query_one("SELECT outcome FROM raw_events WHERE dedupe_key = 'e'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "applied");

    // A row naming another streamer's user: the writer's (it goes by the user).
    let f = streamer(&c, 5).await;
    let mut other = live(5, 70, "f");
    other.user = Some(4);
    assert_eq!(stage_applying(&c, &[other], true).await, (1, 0));
    assert_eq!(status(&c, f).await, ("offline".into(), Some(10)));

    // Another row of the batch naming the streamer by its user id (an API row): both the
    // writer's.
    let g = streamer(&c, 6).await;
    let mut by_user = live(999, 80, "g-user");
    by_user.user = Some(6);
    assert_eq!(
        stage_applying(&c, &[live(6, 80, "g"), by_user], true).await,
        (2, 0)
    );
    assert_eq!(status(&c, g).await, ("offline".into(), Some(10)));
    drain(&mut c, std::time::Duration::ZERO).await;
    assert_eq!(status(&c, g).await, ("online".into(), Some(80)));

    // One dedupe key twice in a batch (found by a red-team run: the second streamer changed
    // without a staged row or history): neither is applied, one row is staged.
    let h1 = streamer(&c, 7).await;
    let h2 = streamer(&c, 8).await;
    assert_eq!(
        stage_applying(&c, &[live(7, 90, "same"), live(8, 90, "same")], true).await,
        (1, 0)
    );
    assert_eq!(status(&c, h2).await, ("offline".into(), Some(10)));
    drain(&mut c, std::time::Duration::ZERO).await;
    assert_eq!(status(&c, h1).await, ("online".into(), Some(90)));
    assert_eq!(status(&c, h2).await, ("offline".into(), Some(10)));
}
