//! kick-writer against a throwaway PostgreSQL: fixture events to streamers and history,
//! duplicates, out-of-order and bad rows, LISTEN wake-up, several writers at once, a cut
//! connection, a crash of the server with asynchronous commits, and a server restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kick_testkit::{Cluster, TestDb};
use kick_writer::apply::{self, ApplyConfig, Statements};
use kick_writer::metrics::WriterMetrics;
use kick_writer::transition::Rules;
use kick_writer::{WriterConfig, run_with_metrics};
use serde_json::json;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kick");

fn cfg(batch: i64) -> ApplyConfig {
    ApplyConfig {
        batch_size: batch,
        rules: Rules::default(),
        synchronous_commit: false,
    }
}

async fn add_streamer(c: &Client, name: &str, user_id: i64, channel_id: i64) -> i64 {
    c.query_one(
        "INSERT INTO streamers (username, kick_user_id, kick_channel_id) VALUES ($1, $2, $3) RETURNING id",
        &[&name, &user_id, &channel_id],
    )
    .await
    .unwrap()
    .get(0)
}

/// Stages a row the way the collector does.
#[allow(clippy::too_many_arguments)]
async fn stage(
    c: &Client,
    source: &str,
    name: &str,
    channel: Option<i64>,
    user: Option<i64>,
    ls: Option<i64>,
    key: &str,
    payload: serde_json::Value,
) {
    c.execute(
        "INSERT INTO raw_events (source, event_name, kick_channel_id, kick_user_id, livestream_id, event_time, payload, dedupe_key, topic)
         VALUES ($1, $2, $3::bigint, $4, $5, now(), $6, $7, 'channel.' || coalesce($3::bigint::text, '?'))
         ON CONFLICT (dedupe_key) DO NOTHING",
        &[&source, &name, &channel, &user, &ls, &payload, &key],
    )
    .await
    .unwrap();
}

async fn drain(c: &mut Client, cfg: &ApplyConfig) -> usize {
    let st = Statements::prepare(c).await.unwrap();
    let mut n = 0;
    loop {
        let r = apply::apply_batch(c, &st, cfg, apply::Claim::Next, &mut Vec::new())
            .await
            .unwrap();
        n += r.claimed - r.deferred;
        if r.claimed == 0 {
            return n;
        }
        if r.deferred > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn status_of(c: &Client, name: &str) -> (String, Option<i64>) {
    let r = c
        .query_one(
            "SELECT status, livestream_id FROM streamers WHERE username = $1",
            &[&name],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

async fn outcomes(c: &Client) -> Vec<(String, String)> {
    c.query(
        "SELECT dedupe_key, coalesce(outcome, 'PENDING') FROM raw_events ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn fixture_data(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn fixture_events_become_status_and_history() {
    let db = kick_testkit::fresh_db().await;
    let mut c = db.client().await;
    // xqc's channel 668 and the real live/stop payloads of session 74331109.
    add_streamer(&c, "xqc", 676, 668).await;
    let live = fixture_data("pusher-streamer-is-live.data.2025-09-14.json");
    let stop = fixture_data("pusher-stop-stream-broadcast.data.2025-09-15.json");
    assert_eq!(live["livestream"]["channel_id"], 668);
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(668),
        None,
        Some(74331109),
        "rt:live:668:74331109",
        live.clone(),
    )
    .await;
    assert_eq!(drain(&mut c, &cfg(100)).await, 1);
    assert_eq!(
        status_of(&c, "xqc").await,
        ("online".into(), Some(74331109))
    );
    // A replay of the same event is stored once (dedupe key).
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(668),
        None,
        Some(74331109),
        "rt:live:668:74331109",
        live,
    )
    .await;
    stage(
        &c,
        "realtime",
        "StopStreamBroadcast",
        Some(668),
        None,
        Some(74331109),
        "rt:stop:668:74331109",
        stop,
    )
    .await;
    drain(&mut c, &cfg(100)).await;
    assert_eq!(
        status_of(&c, "xqc").await,
        ("offline".into(), Some(74331109))
    );
    let history: Vec<(String, String, Option<i64>, String)> = c
        .query("SELECT previous_status, new_status, livestream_id, source FROM status_events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        history,
        [
            (
                "unknown".into(),
                "online".into(),
                Some(74331109),
                "realtime".into()
            ),
            (
                "online".into(),
                "offline".into(),
                Some(74331109),
                "realtime".into()
            )
        ]
    );
    assert_eq!(
        c.query_one("SELECT count(*) FROM raw_events", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    let v = c
        .query_one(
            "SELECT status, since, source FROM v_streamer_status WHERE username='xqc'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(v.get::<_, String>(0), "offline");
    assert_eq!(v.get::<_, Option<String>>(2).as_deref(), Some("realtime"));
}

#[tokio::test]
async fn duplicates_out_of_order_unknown_channel_and_bad_rows() {
    let db = kick_testkit::fresh_db().await;
    let mut c = db.client().await;
    add_streamer(&c, "alice", 1001, 2001).await;
    let j = serde_json::json!({});
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(2001),
        None,
        Some(50),
        "a",
        j.clone(),
    )
    .await;
    stage(
        &c,
        "api",
        "StreamerIsLive",
        None,
        Some(1001),
        None,
        "b",
        j.clone(),
    )
    .await; // duplicate (same session)
    stage(
        &c,
        "realtime",
        "StopStreamBroadcast",
        Some(2001),
        None,
        Some(49),
        "c",
        j.clone(),
    )
    .await; // older session: stale
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(999_999),
        None,
        Some(1),
        "d",
        j.clone(),
    )
    .await; // nobody's channel
    stage(
        &c,
        "realtime",
        "SomethingElse",
        Some(2001),
        None,
        None,
        "e",
        j.clone(),
    )
    .await; // malformed
    stage(
        &c,
        "realtime",
        "StopStreamBroadcast",
        None,
        None,
        Some(50),
        "f",
        j.clone(),
    )
    .await; // no ids
    stage(
        &c,
        "realtime",
        "StopStreamBroadcast",
        Some(2001),
        None,
        Some(50),
        "g",
        j.clone(),
    )
    .await; // applies
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(2001),
        None,
        Some(50),
        "h",
        j,
    )
    .await; // replayed live of ended session
    drain(&mut c, &cfg(3)).await;
    let got = outcomes(&c).await;
    let expect = [
        ("a", "applied"),
        ("b", "duplicate"),
        ("c", "stale"),
        ("d", "ignored"),
        ("e", "error: unknown event name 'SomethingElse'"),
        (
            "f",
            "error: neither kick_channel_id nor kick_user_id is set",
        ),
        ("g", "applied"),
        ("h", "stale"),
    ];
    assert_eq!(got, expect.map(|(a, b)| (a.to_owned(), b.to_owned())));
    assert_eq!(status_of(&c, "alice").await, ("offline".into(), Some(50)));
    assert_eq!(
        c.query_one("SELECT count(*) FROM status_events", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
}

#[tokio::test]
async fn listen_wakes_the_writer_and_notifies_status_changed() {
    let db = kick_testkit::fresh_db().await;
    let c = db.client().await;
    add_streamer(&c, "bob", 1, 11).await;
    // A downstream consumer of status_changed.
    let (_l, mut changed) = kick_shared::db::listen(&db.config, &["status_changed"])
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    // A long poll interval: only the NOTIFY can make this fast.
    let config = db.app_config(&[("WRITER_POLL_INTERVAL", "30s")]);
    let metrics = Arc::new(WriterMetrics::default());
    let task = tokio::spawn(run_with_metrics(
        WriterConfig::from_config(config),
        shutdown.clone(),
        metrics.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    c.batch_execute(
        "BEGIN; INSERT INTO raw_events (source, event_name, kick_channel_id, livestream_id, dedupe_key)
         VALUES ('realtime', 'StreamerIsLive', 11, 7, 'k'); NOTIFY raw_events; COMMIT;",
    )
    .await
    .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), changed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.payload(), "bob");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "woken by NOTIFY, not the 30 s poll: {:?}",
        t0.elapsed()
    );
    assert_eq!(status_of(&c, "bob").await.0, "online");
    // The writer counts the outcome right after its commit (which rang the NOTIFY).
    until("counted", Duration::from_secs(2), || async {
        metrics.outcomes.get("applied") == 1
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// (source, event name, channel id, user id, livestream id, dedupe key)
type StagedRow = (
    String,
    &'static str,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    String,
);

/// A deterministic event stream: each streamer alternates live/offline with increasing sessions,
/// with duplicates and the API's id-less confirmations mixed in.
fn event_stream(streamers: i64, per: i64) -> Vec<StagedRow> {
    let mut v = Vec::new();
    for round in 0..per {
        for s in 0..streamers {
            let ls = 1000 + round / 2;
            let chan = 10_000 + s;
            let (name, src) = if round % 2 == 0 {
                ("StreamerIsLive", "realtime")
            } else {
                ("StopStreamBroadcast", "realtime")
            };
            v.push((
                src.to_owned(),
                name,
                Some(chan),
                None,
                Some(ls),
                format!("{name}:{chan}:{ls}"),
            ));
            if (s + round) % 3 == 0 {
                // A duplicate from a second socket, under another key.
                v.push((
                    src.to_owned(),
                    name,
                    Some(chan),
                    None,
                    Some(ls),
                    format!("dup:{name}:{chan}:{ls}"),
                ));
            }
        }
    }
    v
}

async fn setup_stream(db: &TestDb, streamers: i64) -> Client {
    let c = db.client().await;
    for s in 0..streamers {
        add_streamer(&c, &format!("s{s}"), 20_000 + s, 10_000 + s).await;
    }
    c
}

async fn stage_all(c: &Client, events: &[StagedRow]) {
    for chunk in events.chunks(200) {
        let mut sql = String::from(
            "INSERT INTO raw_events (source, event_name, kick_channel_id, livestream_id, dedupe_key) VALUES ",
        );
        for (i, (src, name, chan, _user, ls, key)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('{src}', '{name}', {}, {}, '{key}')",
                chan.unwrap(),
                ls.unwrap()
            ));
        }
        c.batch_execute(&sql).await.unwrap();
    }
}

async fn final_state(
    c: &Client,
) -> (
    Vec<(String, String, Option<i64>)>,
    Vec<(String, String, String, Option<i64>)>,
) {
    let s = c
        .query(
            "SELECT username, status, livestream_id FROM streamers ORDER BY username",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let h = c
        .query(
            "SELECT s.username, e.previous_status, e.new_status, e.livestream_id
             FROM status_events e JOIN streamers s ON s.id = e.streamer_id
             ORDER BY s.username, e.raw_event_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    (s, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_and_four_writers_agree_with_one() {
    let events = event_stream(40, 12);
    // Reference: one writer.
    let reference_db = kick_testkit::fresh_db().await;
    let mut c = setup_stream(&reference_db, 40).await;
    stage_all(&c, &events).await;
    drain(&mut c, &cfg(25)).await;
    let reference = final_state(&c).await;
    assert_eq!(reference.1.len(), 40 * 12, "one history row per transition");
    for writers in [2usize, 4] {
        let db = kick_testkit::fresh_db().await;
        let c = setup_stream(&db, 40).await;
        // Stage while the writers run, so they race on live data.
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let config = db.config.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = kick_shared::db::connect(&config).await.unwrap();
                let st = Statements::prepare(&c).await.unwrap();
                loop {
                    let r = apply::apply_batch(
                        &mut c,
                        &st,
                        &cfg(25),
                        apply::Claim::Next,
                        &mut Vec::new(),
                    )
                    .await
                    .unwrap();
                    if r.claimed == 0 {
                        if stop.is_cancelled() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }));
        }
        for chunk in events.chunks(97) {
            stage_all(&c, chunk).await;
        }
        // Wait until the queue is empty, then stop the writers.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (pending, _) = kick_shared::db::pending_events(&c).await.unwrap();
            if pending == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "writers did not drain");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(final_state(&c).await, reference, "{writers} writers");
    }
}

#[tokio::test]
async fn connection_cut_mid_batch_loses_nothing_and_doubles_nothing() {
    let db = kick_testkit::fresh_db().await;
    let mut c = setup_stream(&db, 10).await;
    let events = event_stream(10, 4);
    stage_all(&c, &events).await;
    // A writer claims a batch and is cut off before committing.
    let victim = db.client().await;
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    victim.batch_execute("BEGIN").await.unwrap();
    let claimed = victim
        .query("SELECT id FROM raw_events WHERE processed_at IS NULL ORDER BY id LIMIT 20 FOR UPDATE SKIP LOCKED", &[])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 20);
    victim
        .execute(
            "UPDATE streamers SET status = 'online' WHERE username = 's0'",
            &[],
        )
        .await
        .unwrap();
    c.query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(
        victim.batch_execute("COMMIT").await.is_err(),
        "the cut transaction cannot commit"
    );
    // Another writer drains everything: nothing lost, no double history.
    drain(&mut c, &cfg(7)).await;
    let (pending, _) = kick_shared::db::pending_events(&c).await.unwrap();
    assert_eq!(pending, 0);
    let (_, history) = final_state(&c).await;
    assert_eq!(history.len(), 10 * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_crash_with_async_commits_then_restart_recovers() {
    // A private cluster: this test crashes and restarts its server.
    let cluster: &'static Cluster = Box::leak(Box::new(Cluster::start().with_template()));
    let db = cluster.fresh_db().await;
    let c = setup_stream(&db, 20).await;
    let events = event_stream(20, 6);
    // Staged rows are committed durably (as the collector does).
    stage_all(&c, &events).await;
    drop(c);
    let shutdown = CancellationToken::new();
    let config = db.app_config(&[("WRITER_POLL_INTERVAL", "50ms"), ("BATCH_SIZE", "10")]);
    let metrics = Arc::new(WriterMetrics::default());
    let task = tokio::spawn(run_with_metrics(
        WriterConfig::from_config(config),
        shutdown.clone(),
        metrics.clone(),
    ));
    // Crash the server while the writer is mid-stream with asynchronous commits.
    while metrics.batches.get() < 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cluster.crash();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.start_again();
    // The writer reconnects by itself and drains the rest, including rows whose applied
    // commit was lost in the crash.
    let c = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (pending, _) = kick_shared::db::pending_events(&c).await.unwrap();
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "writer did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics.db_reconnects.get() >= 1);
    let (streamers, history) = final_state(&c).await;
    assert_eq!(
        history.len(),
        20 * 6,
        "each transition recorded exactly once"
    );
    assert!(
        streamers
            .iter()
            .all(|(_, s, ls)| s == "offline" && *ls == Some(1002)),
        "{streamers:?}"
    );
    // A restart (clean) while idle, then new events: still applied.
    drop(c);
    cluster.restart();
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO raw_events (source, event_name, kick_channel_id, livestream_id, dedupe_key)
         VALUES ('realtime', 'StreamerIsLive', 10000, 2000, 'after-restart'); NOTIFY raw_events;",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The server may still refuse a moment after the restart: a failed read is retried.
    loop {
        let status = c
            .query_one("SELECT status FROM streamers WHERE username = 's0'", &[])
            .await
            .map(|r| r.get::<_, String>("status"))
            .unwrap_or_default();
        if status == "online" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writer did not recover after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn offline_grace_survives_restart_and_confirms() {
    let db = kick_testkit::fresh_db().await;
    let mut c = db.client().await;
    add_streamer(&c, "carol", 5, 55).await;
    let grace = ApplyConfig {
        rules: Rules {
            offline_grace: Duration::from_millis(300),
            ..Rules::default()
        },
        ..cfg(100)
    };
    let j = serde_json::json!({});
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(55),
        None,
        Some(1),
        "l1",
        j.clone(),
    )
    .await;
    stage(
        &c,
        "realtime",
        "StopStreamBroadcast",
        Some(55),
        None,
        Some(1),
        "o1",
        j.clone(),
    )
    .await;
    drain(&mut c, &grace).await;
    // Pending in the database (survives a writer restart), still online.
    assert_eq!(status_of(&c, "carol").await.0, "online");
    let pending: Option<i64> = c
        .query_one(
            "SELECT pending_offline_raw_id FROM streamers WHERE username='carol'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pending.is_some());
    // The same session comes back: a blip.
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(55),
        None,
        Some(1),
        "l1-again",
        j.clone(),
    )
    .await;
    drain(&mut c, &grace).await;
    assert_eq!(outcomes(&c).await.last().unwrap().1, "blip");
    // Offline again; a fresh connection (a restarted writer) confirms it after the grace.
    stage(
        &c,
        "realtime",
        "StopStreamBroadcast",
        Some(55),
        None,
        Some(1),
        "o2",
        j,
    )
    .await;
    drain(&mut c, &grace).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut fresh = db.client().await;
    let st = Statements::prepare(&fresh).await.unwrap();
    let n = apply::confirm_due_offlines(&mut fresh, &st, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(status_of(&c, "carol").await.0, "offline");
    let h: Vec<String> = c
        .query("SELECT new_status FROM status_events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(h, ["online", "offline"], "the blip is not a new session");
}

/// Waits until `f` holds (or fails after `limit`).
async fn until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_applied_is_marked_error_alone() {
    let db = kick_testkit::fresh_db().await;
    let c = db.client().await;
    for (i, name) in ["ann", "ben", "cid"].iter().enumerate() {
        add_streamer(&c, name, 100 + i as i64, 200 + i as i64).await;
    }
    // The database refuses one history row for its content (a constraint we add): the batch
    // holding it fails as a whole.
    c.batch_execute(
        "ALTER TABLE status_events ADD CONSTRAINT poison CHECK (livestream_id IS DISTINCT FROM 666)",
    )
    .await
    .unwrap();
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(200),
        None,
        Some(5),
        "a",
        json!({}),
    )
    .await;
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(201),
        None,
        Some(666),
        "b",
        json!({}),
    )
    .await;
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(202),
        None,
        Some(7),
        "c",
        json!({}),
    )
    .await;
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(WriterMetrics::default());
    let task = tokio::spawn(run_with_metrics(
        WriterConfig::from_config(db.app_config(&[("WRITER_POLL_INTERVAL", "50ms")])),
        shutdown.clone(),
        metrics.clone(),
    ));
    until("queue drained", Duration::from_secs(10), || async {
        kick_shared::db::pending_events(&c).await.unwrap().0 == 0
    })
    .await;
    let o = outcomes(&c).await;
    assert_eq!(o[0], ("a".into(), "applied".into()));
    assert!(o[1].1.starts_with("error: 23514"), "{o:?}");
    assert_eq!(o[2], ("c".into(), "applied".into()));
    assert_eq!(status_of(&c, "ann").await.0, "online");
    assert_eq!(status_of(&c, "ben").await.0, "unknown");
    assert_eq!(status_of(&c, "cid").await.0, "online");
    // The queue goes on after it.
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(201),
        None,
        Some(9),
        "d",
        json!({}),
    )
    .await;
    until("the next row applies", Duration::from_secs(5), || async {
        status_of(&c, "ben").await.0 == "online"
    })
    .await;
    assert_eq!(metrics.outcomes.get("error"), 1);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn two_streamers_naming_one_channel_in_a_batch_do_not_block_the_queue() {
    let db = kick_testkit::fresh_db().await;
    let mut c = db.client().await;
    for (name, user) in [("dee", 301_i64), ("eve", 302)] {
        c.execute(
            "INSERT INTO streamers (username, kick_user_id) VALUES ($1, $2)",
            &[&name, &user],
        )
        .await
        .unwrap();
    }
    // The API reveals the same channel id for both (a mistake on Kick's side, or a rename).
    stage(
        &c,
        "api",
        "StreamerIsLive",
        Some(900),
        Some(301),
        None,
        "x",
        json!({}),
    )
    .await;
    stage(
        &c,
        "api",
        "StreamerIsLive",
        Some(900),
        Some(302),
        None,
        "y",
        json!({}),
    )
    .await;
    drain(&mut c, &cfg(10)).await;
    let owners: i64 = c
        .query_one(
            "SELECT count(*) FROM streamers WHERE kick_channel_id = 900",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owners, 1, "learned once");
    assert_eq!(kick_shared::db::pending_events(&c).await.unwrap().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_in_the_database_apply_without_a_restart() {
    let db = kick_testkit::fresh_db().await;
    let c = db.client().await;
    add_streamer(&c, "fay", 400, 500).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_with_metrics(
        WriterConfig::from_config(db.app_config(&[("WRITER_POLL_INTERVAL", "50ms")])),
        shutdown.clone(),
        Arc::new(WriterMetrics::default()),
    ));
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(500),
        None,
        Some(1),
        "l1",
        json!({}),
    )
    .await;
    until("online", Duration::from_secs(5), || async {
        status_of(&c, "fay").await.0 == "online"
    })
    .await;
    // An offline grace set with `kick-admin config set` (a `config_changed` NOTIFY).
    c.batch_execute("INSERT INTO config (key, value) VALUES ('KICK_OFFLINE_GRACE', '1h')")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stage(
        &c,
        "realtime",
        "StopStreamBroadcast",
        Some(500),
        None,
        Some(1),
        "s1",
        json!({}),
    )
    .await;
    until("processed", Duration::from_secs(5), || async {
        kick_shared::db::pending_events(&c).await.unwrap().0 == 0
    })
    .await;
    assert_eq!(
        outcomes(&c).await.last().unwrap().1,
        "pending",
        "the grace read from the database applies"
    );
    assert_eq!(status_of(&c, "fay").await.0, "online");
    // The grace removed while the offline waits: it is confirmed (it waited for a restart).
    c.batch_execute("DELETE FROM config WHERE key = 'KICK_OFFLINE_GRACE'")
        .await
        .unwrap();
    until(
        "confirmed without a grace",
        Duration::from_secs(8),
        || async { status_of(&c, "fay").await.0 == "offline" },
    )
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_started_while_the_database_is_down_waits_for_its_settings() {
    let cluster: &'static Cluster = Box::leak(Box::new(Cluster::start().with_template()));
    let db = cluster.fresh_db().await;
    let c = db.client().await;
    add_streamer(&c, "gus", 600, 700).await;
    c.batch_execute("INSERT INTO config (key, value) VALUES ('KICK_OFFLINE_GRACE', '1h')")
        .await
        .unwrap();
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(700),
        None,
        Some(1),
        "l",
        json!({}),
    )
    .await;
    stage(
        &c,
        "realtime",
        "StopStreamBroadcast",
        Some(700),
        None,
        Some(1),
        "s",
        json!({}),
    )
    .await;
    drop(c);
    cluster.stop();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_with_metrics(
        WriterConfig::from_config(db.app_config(&[("WRITER_POLL_INTERVAL", "50ms")])),
        shutdown.clone(),
        Arc::new(WriterMetrics::default()),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_again();
    let c = db.client().await;
    until("processed", Duration::from_secs(20), || async {
        kick_shared::db::pending_events(&c).await.unwrap().0 == 0
    })
    .await;
    // Not the default (offline at once): the grace stored in the database.
    assert_eq!(status_of(&c, "gus").await.0, "online");
    assert_eq!(outcomes(&c).await.last().unwrap().1, "pending");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn times_chrono_cannot_hold_do_not_panic_the_writer() {
    let db = kick_testkit::fresh_db().await;
    let mut c = db.client().await;
    add_streamer(&c, "inf", 401, 4010).await;
    add_streamer(&c, "fine", 402, 4020).await;
    // Rows written by hand (or by a hostile staging role): `infinity` is a valid timestamptz
    // that chrono cannot represent.
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(4010),
        None,
        Some(7),
        "inf",
        json!({}),
    )
    .await;
    c.execute(
        "UPDATE raw_events SET event_time = 'infinity', received_at = '-infinity' WHERE dedupe_key = 'inf'",
        &[],
    )
    .await
    .unwrap();
    stage(
        &c,
        "realtime",
        "StreamerIsLive",
        Some(4020),
        None,
        Some(8),
        "fine",
        json!({}),
    )
    .await;
    drain(&mut c, &cfg(10)).await;
    assert_eq!(status_of(&c, "inf").await, ("online".into(), Some(7)));
    assert_eq!(status_of(&c, "fine").await, ("online".into(), Some(8)));
    // A streamer row holding such a time is read too (the time reads as absent).
    c.execute(
        "UPDATE streamers SET live_started_at = 'infinity', last_observed_at = '-infinity' WHERE username = 'inf'",
        &[],
    )
    .await
    .unwrap();
    stage(
        &c,
        "realtime",
        "StopStreamBroadcast",
        Some(4010),
        None,
        Some(7),
        "inf-off",
        json!({}),
    )
    .await;
    drain(&mut c, &cfg(10)).await;
    assert_eq!(status_of(&c, "inf").await.0, "offline");
    assert_eq!(kick_shared::db::pending_events(&c).await.unwrap().0, 0);
}
