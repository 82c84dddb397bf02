//! Several collectors sharing the channels through shard leases (the collector's `leases`),
//! with the real binaries against kick-sim: three collectors and 3,000 streamers.
//!
//! - every channel is subscribed exactly once (kick-sim counts the sockets per channel), and
//!   the 64 shards are shared 22/21/21;
//! - `kill -9` of one collector under 20 flips/s: its channels are subscribed elsewhere within
//!   15 s, and every streamer ends as kick-sim says;
//! - the killed collector started again: the shards are rebalanced while every channel stays
//!   subscribed (sampled every 20 ms: no gap);
//! - one collector cut off from PostgreSQL (a link that drops everything, then delivers what it
//!   held, as a healed network does): its leases expire and the others take over within 15 s;
//!   when the link heals, nothing it saw during the cut is staged under its old tokens
//!   (fencing), and it rejoins with its share.

use std::time::{Duration, Instant};

use kick_e2e::Stack;
use kick_e2e::netcut::Link;
use kick_sim::Options;
use serde_json::json;

const STREAMERS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_collectors_share_the_channels_take_over_and_are_fenced() {
    let stack = Stack::start(
        Options {
            streamers: STREAMERS,
            ..Options::default()
        },
        &[
            ("KICK_RECONCILE_INTERVAL", "60s"),
            ("WRITER_POLL_INTERVAL", "200ms"),
        ],
    )
    .await;
    let link = Link::start(stack.pg_socket()).await;
    let link_port = link.port.to_string();
    let mut writer = stack.spawn("kick-writer", &[]);
    let mut c1 = stack.spawn("kick-collector", &[("COLLECTOR_ID", "c1")]);
    let mut c2 = stack.spawn("kick-collector", &[("COLLECTOR_ID", "c2")]);
    // c3 reaches PostgreSQL through the cuttable link (TCP), the others directly.
    let c3_env = [
        ("COLLECTOR_ID", "c3"),
        ("DATABASE_HOST", "127.0.0.1"),
        ("DATABASE_PORT", link_port.as_str()),
    ];
    let mut c3 = stack.spawn("kick-collector", &c3_env);

    // 1. Shared: every channel subscribed exactly once.
    let t = Instant::now();
    stack
        .wait_balanced(&["c1", "c2", "c3"], STREAMERS, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.all_logs(30)));
    eprintln!(
        "3 collectors: every channel subscribed exactly once after {:?}; leases {:?}",
        t.elapsed(),
        stack.lease_owners().await
    );
    stack
        .converge(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.all_logs(30)));

    // 2. kill -9 one collector under flips.
    stack.control("/control/flap", json!({"rate": 20})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    c2.kill9();
    let t0 = Instant::now();
    // Its sockets are gone with it: wait until every channel is delivered again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    loop {
        if stack.sim.sim.subscriptions_delivering() >= STREAMERS {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "a killed collector's channels not subscribed elsewhere within 15 s: {} of {STREAMERS}; owners {:?}\n{}",
            stack.sim.sim.subscriptions_delivering(),
            stack.lease_owners().await,
            stack.all_logs(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = t0.elapsed();
    eprintln!(
        "kill -9: every channel subscribed again {takeover:?} after the kill; leases {:?}",
        stack.lease_owners().await
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.control("/control/flap/stop", json!({})).await;
    let t = Instant::now();
    while let Err(e) = stack.converge(Duration::from_secs(5)).await {
        eprintln!("DEBUG {:?}: {e}", t.elapsed());
        for (slug, _, _) in stack.mismatches().await.iter().take(2) {
            for r in stack.client().await.query("SELECT r.id, r.source, r.event_name, r.received_at::text AS at, r.collector_id, r.outcome, r.lease_token FROM raw_events r JOIN streamers s ON s.kick_user_id = r.kick_user_id OR s.kick_channel_id = r.kick_channel_id WHERE s.username = $1 ORDER BY r.id DESC LIMIT 4", &[slug]).await.unwrap() {
                eprintln!("  {slug}: {} {} {} {} {:?} {:?} {:?}", r.get::<_, i64>("id"), r.get::<_, String>("source"), r.get::<_, String>("event_name"), r.get::<_, String>("at"), r.get::<_, Option<String>>("collector_id"), r.get::<_, Option<String>>("outcome"), r.get::<_, Option<i64>>("lease_token"));
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{}",
            stack.all_logs(30)
        );
    }
    eprintln!("converged {:?} after the flips stopped", t.elapsed());

    // 3. Back again: rebalanced without a gap, under flips.
    stack.control("/control/flap", json!({"rate": 20})).await;
    let mut c2 = stack.spawn("kick-collector", &[("COLLECTOR_ID", "c2")]);
    let t = Instant::now();
    let least = stack
        .wait_balanced(&["c1", "c2", "c3"], STREAMERS, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.all_logs(30)));
    eprintln!(
        "restarted collector: rebalanced in {:?}; fewest channels delivered meanwhile {least}/{STREAMERS}",
        t.elapsed()
    );
    assert_eq!(least, STREAMERS, "a gap in coverage during the rebalance");

    // 4. Cut c3 off from PostgreSQL.
    let audit = stack.before_cut("c3").await;
    link.cut();
    let t0 = Instant::now();
    stack.wait_taken_over("c3", Duration::from_secs(15)).await;
    eprintln!(
        "cut: c3's leases taken over {:?} after the cut",
        t0.elapsed()
    );
    // The others subscribe c3's channels (c3 itself still does: its link to Kick is fine).
    let t = Instant::now();
    while stack.sim.sim.subscriptions_delivering() < STREAMERS || {
        let all = stack.sim.sim.channel_subscriptions();
        all.len() < STREAMERS
    } {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    link.heal();
    eprintln!("healed after {:?}", t0.elapsed());
    let t = Instant::now();
    let least = stack
        .wait_balanced(&["c1", "c2", "c3"], STREAMERS, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.all_logs(30)));
    eprintln!(
        "healed: c3 rejoined and rebalanced in {:?} (fewest delivering {least})",
        t.elapsed()
    );
    stack.control("/control/flap/stop", json!({})).await;
    stack
        .converge(Duration::from_secs(45))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.all_logs(30)));
    // Fencing: nothing c3 staged after the cut carries a token it had lost.
    let stale = stack.staged_under_lost_tokens(&audit).await;
    assert_eq!(stale, 0, "rows staged by c3 with tokens it had lost");
    let log = std::fs::read_to_string(&c3.log).unwrap();
    assert!(
        log.contains("their shard's lease has passed to another collector"),
        "c3 staged nothing it saw during the cut under its old tokens, but it should have tried"
    );
    // History and the operator's view.
    stack.settle_history(Duration::from_secs(30)).await;
    // The operator's view, once the problems of the cut have cleared (c3's replay, its
    // listener reconnecting): healthy, three owners, nothing unowned.
    let t = Instant::now();
    let (v, out) = loop {
        let (code, out, err, _) = stack.admin(&["status", "--json"]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        if code == 0 {
            break (v, out);
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "status {code}: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(v["shards"]["unowned"], json!([]), "{out}");
    assert_eq!(v["shards"]["owners"].as_object().unwrap().len(), 3, "{out}");
    assert!(
        v["shards"]["takeovers_last_hour"].as_i64().unwrap() >= 42,
        "{out}"
    );
    // The collectors command: the same, per collector.
    let (code, out, _, _) = stack.admin(&["collectors", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["collectors"].as_array().unwrap().len(), 3, "{out}");
    let held: i64 = v["shards"]["owners"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s.as_array().unwrap().len() as i64)
        .sum();
    assert_eq!(held, 64, "{out}");
    let (code, text, _, _) = stack.admin(&["collectors"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("SHARDS") && text.contains("shards:    64 x 1"),
        "{text}"
    );
    for svc in [&mut c1, &mut c2, &mut c3] {
        assert_eq!(svc.terminate(), Some(0), "{}", stack.log_tail(svc));
    }
    // A clean stop gives the leases up at once.
    assert!(stack.lease_owners().await.is_empty());
    assert_eq!(writer.terminate(), Some(0));
}

/// Configuration mistakes an operator makes: two collectors disagreeing on
/// `KICK_SHARD_REPLICAS` (the largest is used, no lease storm, both say so), and a second process
/// started with an id already running (it holds nothing and says so; its stop does not release
/// the other's leases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_collectors_neither_fight_nor_double() {
    const N: usize = 200;
    let stack = Stack::start(
        Options {
            streamers: N,
            ..Options::default()
        },
        &[("KICK_RECONCILE_INTERVAL", "60s")],
    )
    .await;
    let mut writer = stack.spawn("kick-writer", &[]);
    let mut a = stack.spawn(
        "kick-collector",
        &[
            ("COLLECTOR_ID", "a"),
            ("KICK_SHARD_REPLICAS", "2"),
            ("METRICS_ADDR", "127.0.0.1:0"),
        ],
    );
    let mut b = stack.spawn(
        "kick-collector",
        &[("COLLECTOR_ID", "b"), ("KICK_SHARD_REPLICAS", "1")],
    );
    // Two replicas (the larger setting): every channel on both.
    let c = stack.client().await;
    let t = Instant::now();
    loop {
        let o = stack.lease_owners().await;
        let subs = stack.sim.sim.channel_subscriptions();
        if o.get("a") == Some(&64)
            && o.get("b") == Some(&64)
            && subs.len() == N
            && subs.values().all(|n| *n == 2)
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "owners {o:?}\n{}",
            stack.all_logs(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m0 = moves(&c).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        moves(&c).await,
        m0,
        "leases keep moving: the collectors fight"
    );
    let (code, out, _, _) = stack.admin(&["status"]);
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("disagree on KICK_SHARD_REPLICAS"), "{out}");
    // A second process as "a" (its own state directory): holds nothing, says so.
    let state2 = stack.dir.join("state2").display().to_string();
    let mut dup = stack.spawn(
        "kick-collector",
        &[
            ("COLLECTOR_ID", "a"),
            ("KICK_SHARD_REPLICAS", "2"),
            ("STATE_DIRECTORY", state2.as_str()),
        ],
    );
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(&dup.log).unwrap();
        if log.contains("another running collector uses the id") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        stack
            .sim
            .sim
            .channel_subscriptions()
            .values()
            .all(|n| *n == 2),
        "the duplicate subscribed channels"
    );
    // Its stop does not give away the leases of the real "a", nor touch its heartbeat row or
    // its coverage rows.
    assert_eq!(dup.terminate(), Some(0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.lease_owners().await.get("a"), Some(&64));
    let coverage: i64 = c
        .query_one(
            "SELECT count(*) AS n FROM channel_coverage WHERE collector_id = 'a'",
            &[],
        )
        .await
        .unwrap()
        .get("n");
    assert_eq!(coverage, N as i64, "a's coverage rows");
    let row: i64 = c
        .query_one("SELECT count(*) AS n FROM collectors WHERE id = 'a'", &[])
        .await
        .unwrap()
        .get("n");
    assert_eq!(row, 1, "a's heartbeat row");
    for svc in [&mut a, &mut b] {
        assert_eq!(svc.terminate(), Some(0), "{}", stack.log_tail(svc));
        let log = std::fs::read_to_string(&svc.log).unwrap();
        assert!(!log.contains("ended unexpectedly"), "{log}");
    }
    assert_eq!(writer.terminate(), Some(0));
}

async fn moves(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) AS n FROM shard_moves", &[])
        .await
        .unwrap()
        .get("n")
}
