//! Faults of the world, with the real binaries: a hung PostgreSQL (every process SIGSTOPped) for
//! 90 s under flips, PostgreSQL down when the services boot, PostgreSQL crashing under flips, a
//! durable barrier refused (with a crash meanwhile), the barrier's connection killed again and
//! again, the barrier's row locked by someone else, a collector killed during an outage, clocks
//! five minutes off, a migration while the services are busy, and a streamer's row (then the
//! whole table) held locked by an operator. In every case
//! nothing that Kick published is lost, no service is killed by its watchdog, and health says
//! what is wrong while it is wrong.

use std::time::{Duration, Instant};

use kick_e2e::{NotifySocket, Service, Stack};
use kick_sim::Options;
use serde_json::json;

const STREAMERS: usize = 100;
/// The watchdog interval the services are given (systemd's `WatchdogSec`).
const WATCHDOG: Duration = Duration::from_secs(10);

fn opts() -> Options {
    Options {
        streamers: STREAMERS,
        ping_interval: Duration::from_secs(1),
        activity_timeout: Duration::from_secs(2),
        ..Options::default()
    }
}

const SETTINGS: &[(&str, &str)] = &[
    ("KICK_SILENCE_GRACE", "2s"),
    ("KICK_RECONCILE_INTERVAL", "10s"),
    ("KICK_CHANNELS_PER_CONNECTION", "50"),
    ("WRITER_POLL_INTERVAL", "200ms"),
    ("KICK_REALTIME_TRANSPORT", "centrifugo"),
];

struct Running {
    stack: Stack,
    writer: Service,
    collector: Service,
    notify_writer: NotifySocket,
    notify_collector: NotifySocket,
}

async fn running() -> Running {
    let stack = Stack::start(opts(), SETTINGS).await;
    let notify_writer = NotifySocket::bind(&stack.dir, "writer");
    let notify_collector = NotifySocket::bind(&stack.dir, "collector");
    let env_w = notify_writer.env(WATCHDOG);
    let env_c = notify_collector.env(WATCHDOG);
    let writer = stack.spawn("kick-writer", &as_refs(&env_w));
    let collector = stack.spawn("kick-collector", &as_refs(&env_c));
    stack
        .settle(
            STREAMERS as i64,
            Duration::from_secs(30),
            Duration::from_secs(30),
            &collector,
        )
        .await;
    Running {
        stack,
        writer,
        collector,
        notify_writer,
        notify_collector,
    }
}

impl Running {
    /// Flapping stopped, every event since `seq` staged once, statuses converged, history
    /// consistent, `status` healthy again, and both services stop with 0.
    async fn ends_clean(mut self, seq: u64) {
        flaps_stopped_all_staged(&self.stack, seq).await;
        status_becomes(&self.stack, 0, Duration::from_secs(40)).await;
        assert_eq!(self.collector.terminate(), Some(0));
        assert_eq!(self.writer.terminate(), Some(0));
    }
}

fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Waits until `kick-admin status` exits `code`; returns its output.
async fn status_becomes(stack: &Stack, code: i32, within: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let (got, out, err, took) = stack.admin(&["status"]);
        assert!(
            took < Duration::from_secs(10),
            "status answers within 10 s (took {took:?})"
        );
        if got == code {
            return out;
        }
        assert!(
            t0.elapsed() < within,
            "status never exited {code} within {within:?}: last {got}\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Stops the flapping, then: every realtime event published since `seq` staged exactly once,
/// the statuses converged to kick-sim's truth, the history consistent.
async fn flaps_stopped_all_staged(stack: &Stack, seq: u64) {
    stack.control("/control/flap/stop", json!({})).await;
    all_staged(stack, seq, Duration::from_secs(60)).await;
    stack
        .converge(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.all_logs(40)));
    // Let the writer finish the last staged rows before the history is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.check_history().await.unwrap();
}

/// Every realtime event published since `seq` is staged exactly once.
async fn all_staged(stack: &Stack, seq: u64, within: Duration) {
    let keys = stack.published_keys(seq).await;
    assert!(!keys.is_empty(), "something was published");
    let t0 = Instant::now();
    loop {
        let n = stack.staged(&keys).await;
        if n == keys.len() as i64 {
            return;
        }
        if t0.elapsed() >= within {
            let missing = stack.unstaged(&keys).await;
            panic!(
                "only {n} of {} published events staged; missing e.g. {:?}\n{}",
                keys.len(),
                &missing[..missing.len().min(10)],
                stack.all_logs(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hung_for_90s_under_flips_loses_nothing_and_kills_nothing() {
    let mut r = running().await;
    let seq = r.stack.last_seq().await;
    r.stack.control("/control/flap", json!({"rate": 20})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let paused = Instant::now();
    r.stack.cluster.pause();
    // Degraded, and said so, while it lasts (status itself answers within 10 s).
    let out = status_becomes(&r.stack, 69, Duration::from_secs(30)).await;
    assert!(out.contains("database"), "{out}");
    while paused.elapsed() < Duration::from_secs(90) {
        assert!(
            r.collector.is_running(),
            "{}",
            r.stack.log_tail(&r.collector)
        );
        assert!(r.writer.is_running(), "{}", r.stack.log_tail(&r.writer));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    r.stack.cluster.resume();
    let resumed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.stack.control("/control/flap/stop", json!({})).await;
    all_staged(&r.stack, seq, Duration::from_secs(60)).await;
    r.stack
        .converge(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.stack.log_tail(&r.collector)));
    status_becomes(&r.stack, 0, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.stack.check_history().await.unwrap();
    // The watchdog was fed all along: a hung database degrades the services, never kills them.
    for (name, n, svc) in [
        ("collector", &r.notify_collector, &r.collector),
        ("writer", &r.notify_writer, &r.writer),
    ] {
        let gap = n.longest_watchdog_gap(paused, resumed + Duration::from_secs(5));
        assert!(
            gap < WATCHDOG,
            "{name}: {gap:?} without WATCHDOG=1 (limit {WATCHDOG:?})\n{}",
            std::fs::read_to_string(&svc.log).unwrap_or_default()
        );
    }
    assert_eq!(r.collector.terminate(), Some(0));
    assert_eq!(r.writer.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_at_boot_for_2_minutes() {
    let stack = Stack::start(opts(), SETTINGS).await;
    stack
        .client()
        .await
        .batch_execute("INSERT INTO config (key, value) VALUES ('KICK_OFFLINE_GRACE', '0s')")
        .await
        .unwrap();
    stack.cluster.stop();
    let notify_w = NotifySocket::bind(&stack.dir, "writer");
    let notify_c = NotifySocket::bind(&stack.dir, "collector");
    let (env_w, env_c) = (notify_w.env(WATCHDOG), notify_c.env(WATCHDOG));
    let booted = Instant::now();
    let mut writer = stack.spawn("kick-writer", &as_refs(&env_w));
    let mut collector = stack.spawn("kick-collector", &as_refs(&env_c));
    // Ready without the database (the spool takes events): systemd must not restart them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(notify_c.saw("READY=1"), "collector sent READY");
    assert!(notify_w.saw("READY=1"), "writer sent READY");
    // Streamers go live while the database is down.
    for i in 0..5 {
        set_status(&stack, i, "live").await;
    }
    while booted.elapsed() < Duration::from_secs(120) {
        assert!(collector.is_running(), "{}", stack.log_tail(&collector));
        assert!(writer.is_running(), "{}", stack.log_tail(&writer));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    stack.cluster.start_again();
    let up = Instant::now();
    stack
        .settle(
            STREAMERS as i64,
            Duration::from_secs(60),
            Duration::from_secs(60),
            &collector,
        )
        .await;
    status_becomes(&stack, 0, Duration::from_secs(60)).await;
    eprintln!("converged {:?} after the database came up", up.elapsed());
    for (name, n) in [("collector", &notify_c), ("writer", &notify_w)] {
        let gap = n.longest_watchdog_gap(booted + Duration::from_secs(1), Instant::now());
        assert!(gap < WATCHDOG, "{name}: {gap:?} without WATCHDOG=1");
    }
    assert_eq!(collector.terminate(), Some(0));
    assert_eq!(writer.terminate(), Some(0));
}

/// A collector that ran before and is started while PostgreSQL is down does not wait idle: it
/// watches the channels of its boot cache (in their regions, with the settings cached there)
/// and spools what they deliver, staged when the database answers. Before, it subscribed
/// nothing until the database answered: sessions that began and ended meanwhile were missing
/// from the history (the reconcile at the database's return sees only the state then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_started_while_postgres_is_down_watches_its_boot_cache() {
    let mut r = running().await;
    let t0 = Instant::now();
    let cache = loop {
        let found = walk_files(&r.stack.dir.join("state"))
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == "boot-0.json"));
        if let Some(p) = found {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no boot cache written\n{}",
            r.stack.log_tail(&r.collector)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(r.collector.terminate(), Some(0));
    assert!(
        r.stack.sockets_gone(Duration::from_secs(30)).await,
        "old sockets stay"
    );
    // Half the cached regions forgotten (a cache written before every region was known):
    // those channels are looked up on Kick's web endpoint, not left where nothing arrives.
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    let regions = doc["regions"].as_array_mut().unwrap();
    let known = regions.len();
    assert!(known >= STREAMERS - 10, "{known} regions cached");
    let kept: Vec<serde_json::Value> = regions.iter().step_by(2).cloned().collect();
    *regions = kept;
    std::fs::write(&cache, serde_json::to_vec(&doc).unwrap()).unwrap();
    r.stack.cluster.stop();
    let seq = r.stack.last_seq().await;
    let mut collector = r.stack.spawn("kick-collector", &[]);
    r.stack
        .wait_subscribed(STREAMERS as i64, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.stack.log_tail(&collector)));
    // Sessions that begin and end while the database is down, and one that goes on.
    for i in 0..4 {
        set_status(&r.stack, i, "live").await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        set_status(&r.stack, i, "offline").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(collector.is_running(), "{}", r.stack.log_tail(&collector));
    r.stack.cluster.start_again();
    all_staged(&r.stack, seq, Duration::from_secs(60)).await;
    r.stack
        .converge(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.stack.log_tail(&collector)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.stack.check_history().await.unwrap();
    for i in 0..3 {
        let rows = r
            .stack
            .client()
            .await
            .query(
                "SELECT e.new_status FROM status_events e JOIN streamers s ON s.id = e.streamer_id
                 WHERE s.username = $1 ORDER BY e.id",
                &[&r.stack.slug(i)],
            )
            .await
            .unwrap();
        let seen: Vec<String> = rows.iter().map(|r| r.get("new_status")).collect();
        assert!(
            seen.ends_with(&["online".to_string(), "offline".to_string()]),
            "{}: the session seen while the database was down is in the history: {seen:?}",
            r.stack.slug(i)
        );
    }
    eprintln!(
        "boot cache {} ({known} regions, half kept)",
        cache.display()
    );
    assert_eq!(collector.terminate(), Some(0));
    assert_eq!(r.writer.terminate(), Some(0));
}

/// Kick says streamer `i` went `to` (`live` or `offline`).
async fn set_status(stack: &Stack, i: usize, to: &str) {
    stack
        .control(
            &format!("/control/streamers/{}/{to}", stack.slug(i)),
            json!({}),
        )
        .await;
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_during_an_outage_loses_nothing() {
    let mut r = running().await;
    let seq = r.stack.last_seq().await;
    r.stack.cluster.pause();
    // Kick keeps publishing; the collector spools.
    for i in 0..10 {
        set_status(&r.stack, i, "live").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.collector.kill9();
    let mut collector = r.stack.spawn("kick-collector", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.stack.cluster.resume();
    all_staged(&r.stack, seq, Duration::from_secs(30)).await;
    r.stack
        .converge(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.stack.log_tail(&collector)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.stack.check_history().await.unwrap();
    assert_eq!(collector.terminate(), Some(0));
    assert_eq!(r.writer.terminate(), Some(0));
}

/// PostgreSQL killed (immediate shutdown: no checkpoint, unflushed log lost) five times under
/// 40 flips/s. Staged rows are visible to the writer before their flush (`KICK_STAGING_COMMIT`
/// `early`, the default): what a crash takes before the flush, the collector still holds and
/// stages again; what reached the disk is not staged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_under_flips_loses_no_event() {
    let mut r = running().await;
    let seq = r.stack.last_seq().await;
    r.stack.control("/control/flap", json!({"rate": 40})).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        r.stack.cluster.crash();
        tokio::time::sleep(Duration::from_secs(1)).await;
        r.stack.cluster.start_again();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    flaps_stopped_all_staged(&r.stack, seq).await;
    assert!(
        r.collector.is_running(),
        "{}",
        r.stack.log_tail(&r.collector)
    );
    assert!(r.writer.is_running(), "{}", r.stack.log_tail(&r.writer));
    assert_eq!(r.collector.terminate(), Some(0));
    assert_eq!(r.writer.terminate(), Some(0));
}

/// The stager's durable barrier refused (its grant on `staging_barriers` revoked from the
/// collector's role) while Kick publishes, and PostgreSQL killed meanwhile: the batches were
/// visible but never confirmed, so nothing counts as staged — the collector keeps them (memory,
/// then the spool), says so, retries at a growing interval, and once the grant is back every
/// event is staged exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_batch_is_staged_again_never_lost() {
    let stack = Stack::start(opts(), SETTINGS).await;
    let (mut writer, mut collector) = stack.spawn_least_privileged(STREAMERS as i64).await;
    stack.converge(Duration::from_secs(30)).await.unwrap();
    let seq = stack.last_seq().await;
    let admin = stack.client().await;
    admin
        .batch_execute("REVOKE INSERT, UPDATE ON staging_barriers FROM kick_collector")
        .await
        .unwrap();
    stack.control("/control/flap", json!({"rate": 20})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = status_becomes(&stack, 69, Duration::from_secs(30)).await;
    assert!(out.contains("staging"), "{out}");
    stack.cluster.crash();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.cluster.start_again();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Refused for ~8 s: probed at a growing interval (0.1, 0.2, … 5 s), not in a loop (the red
    // team saw 120 replays a second before the back-off survived a successful probe).
    let log = std::fs::read_to_string(&collector.log).unwrap();
    let probes = log.matches("staging: database is back").count();
    assert!(
        probes <= 20,
        "{probes} probes while the barrier was refused"
    );
    stack
        .client()
        .await
        .batch_execute("GRANT INSERT, UPDATE ON staging_barriers TO kick_collector")
        .await
        .unwrap();
    flaps_stopped_all_staged(&stack, seq).await;
    assert_eq!(collector.terminate(), Some(0));
    assert_eq!(writer.terminate(), Some(0));
}

/// libfaketime's preload library (Debian's `libfaketime`).
fn faketime() -> String {
    for p in [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ] {
        if std::path::Path::new(p).exists() {
            return p.to_owned();
        }
    }
    panic!("libfaketime is not installed (apt-get install libfaketime; ./scripts/test does)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectors_with_skewed_clocks_order_events_by_the_database() {
    let stack = Stack::start(opts(), SETTINGS).await;
    let lib = faketime();
    let mut writer = stack.spawn("kick-writer", &[]);
    // Two collectors, five minutes fast and five minutes slow, both covering every channel
    // (two replicas of every shard).
    let skewed = |offset: &'static str, id: &'static str| {
        vec![
            ("LD_PRELOAD", lib.clone()),
            ("FAKETIME", offset.to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
            ("FAKETIME_NO_CACHE", "1".to_owned()),
            ("COLLECTOR_ID", id.to_owned()),
            // Both hold every shard (one replica each).
            ("KICK_SHARD_REPLICAS", "2".to_owned()),
        ]
    };
    let fast_env = skewed("+300", "fast");
    let slow_env = skewed("-300", "slow");
    let mut fast = stack.spawn("kick-collector", &as_refs(&fast_env));
    let mut slow = stack.spawn("kick-collector", &as_refs(&slow_env));
    // Two collectors resolve regions and subscribe side by side: give them room on a busy
    // machine (alone this takes about 2 s).
    stack
        .settle(
            2 * STREAMERS as i64,
            Duration::from_secs(60),
            Duration::from_secs(30),
            &fast,
        )
        .await;
    // Sessions flip quickly: the last one must win, whichever collector staged what first.
    for round in 0..3 {
        for i in 0..10 {
            let slug = stack.slug(i);
            stack
                .control(&format!("/control/streamers/{slug}/live"), json!({}))
                .await;
            if round < 2 {
                stack
                    .control(&format!("/control/streamers/{slug}/offline"), json!({}))
                    .await;
            }
        }
    }
    stack
        .converge(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.log_tail(&fast)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.check_history().await.unwrap();
    // The skew is measured, exported and reported.
    let out = status_becomes(&stack, 69, Duration::from_secs(30)).await;
    assert!(out.contains("clock skew"), "{out}");
    let c = stack.client().await;
    let skews: Vec<(String, Option<i32>)> = c
        .query("SELECT id, clock_skew_ms FROM collectors ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (id, skew) in &skews {
        let skew = skew.unwrap_or(0);
        let want = if id == "fast" { 300_000 } else { -300_000 };
        assert!(
            (skew - want).abs() < 5_000,
            "{id}: measured skew {skew} ms, want about {want}"
        );
    }
    // Rows are ordered by the database's clock; the collectors' own times are kept aside.
    let off: f64 = c
        .query_one(
            "SELECT max(abs(extract(epoch FROM received_at - now())))::float8 FROM raw_events
             WHERE source = 'realtime' AND received_at > now() - interval '2 minutes'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(off < 120.0, "received_at is the database's clock ({off}s)");
    for s in [&mut fast, &mut slow, &mut writer] {
        assert_eq!(s.terminate(), Some(0), "{}", stack.log_tail(s));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_while_busy_never_stalls_the_services_beyond_its_lock_timeout() {
    let mut r = running().await;
    // Background flips on streamers 0-39; the measured flips are on 50-59 (never both at once).
    r.stack
        .control("/control/flap", json!({"rate": 20, "streamers": 40}))
        .await;
    // A long reader holds a lock the migration needs.
    let blocker = r.stack.client().await;
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM raw_events;")
        .await
        .unwrap();
    let cfg = r.stack.db.config.clone();
    let migration = tokio::spawn(async move {
        let m = refinery::Migration::unapplied(
            "V900__busy_test",
            "ALTER TABLE raw_events ADD COLUMN busy_test integer;",
        )
        .unwrap();
        let t0 = Instant::now();
        let mut all = kick_shared::db::embedded_migrations();
        all.push(m);
        let applied = kick_shared::db::migrate_with(&cfg, refinery::Runner::new(&all)).await;
        (applied, t0.elapsed())
    });
    // While the migration waits for the lock (and retries), flips keep being applied.
    let mut worst = Duration::ZERO;
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        let slug = r.stack.slug(50 + i % 10);
        i += 1;
        let live = !r.stack.truth()[&slug];
        let flipped = Instant::now();
        r.stack
            .control(
                &format!(
                    "/control/streamers/{slug}/{}",
                    if live { "live" } else { "offline" }
                ),
                json!({}),
            )
            .await;
        let want = if live { "online" } else { "offline" };
        let c = r.stack.client().await;
        loop {
            let s: String = c
                .query_one("SELECT status FROM streamers WHERE username = $1", &[&slug])
                .await
                .unwrap()
                .get(0);
            if s == want {
                break;
            }
            assert!(
                flipped.elapsed() < Duration::from_secs(15),
                "{slug} never became {want}\n{}\n{}",
                r.stack.log_tail(&r.collector),
                r.stack.log_tail(&r.writer)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worst = worst.max(flipped.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    blocker.batch_execute("COMMIT").await.unwrap();
    let (applied, took) = migration.await.unwrap();
    assert_eq!(applied.unwrap(), vec!["V900__busy_test".to_owned()]);
    assert!(
        took >= Duration::from_secs(9),
        "it waited for the reader: {took:?}"
    );
    let limit = kick_shared::db::MIGRATION_LOCK_TIMEOUT + Duration::from_secs(2);
    assert!(
        worst < limit,
        "a flip took {worst:?} to apply while the migration waited (limit {limit:?})"
    );
    r.stack.control("/control/flap/stop", json!({})).await;
    r.stack.converge(Duration::from_secs(30)).await.unwrap();
    assert_eq!(r.collector.terminate(), Some(0));
    assert_eq!(r.writer.terminate(), Some(0));
}

/// An operator holds one streamer's row (`SELECT … FOR UPDATE` in an open psql transaction)
/// for longer than the writer's statement timeout: every batch waits for it (the claim locks
/// the batch's streamers), and when the timeout ends the wait the writer names who holds the
/// lock and retries, as a transient wait, not as something broken that "an operator must act"
/// on; `status` says what it waits for. Released, nothing is lost and nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_held_by_an_operator_is_a_named_wait_not_a_failure() {
    let r = running().await;
    let seq = r.stack.last_seq().await;
    r.stack
        .control("/control/flap", json!({"rate": 20, "streamers": 40}))
        .await;
    let blocker = r.stack.client().await;
    let slug = r.stack.slug(0);
    blocker
        .batch_execute("SET application_name = 'operator-psql'; BEGIN")
        .await
        .unwrap();
    blocker
        .execute(
            "SELECT 1 FROM streamers WHERE username = $1 FOR UPDATE",
            &[&slug],
        )
        .await
        .unwrap();
    // The writer's statement timeout is 30 s.
    let t0 = Instant::now();
    let line = loop {
        let log = std::fs::read_to_string(&r.writer.log).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| l.contains("lock held elsewhere")) {
            break l.to_owned();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the writer never reported the lock wait\n{}",
            r.stack.log_tail(&r.writer)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(line.contains("operator-psql"), "names the holder: {line}");
    let (code, out, err, _) = r.stack.admin(&["status"]);
    assert_ne!(code, 0, "status says the queue is stuck\n{out}\n{err}");
    assert!(
        out.contains("waiting for a lock held by pid") && out.contains("operator-psql"),
        "status names the lock's holder:\n{out}\n{err}"
    );
    blocker.batch_execute("COMMIT").await.unwrap();
    // A whole table locked: `status` waits out its statement timeout, then says the database
    // answers and who holds the lock, not "unreachable".
    blocker
        .batch_execute("BEGIN; LOCK TABLE streamers IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let (code, out, err, took) = r.stack.admin(&["status", "--json"]);
    blocker.batch_execute("COMMIT").await.unwrap();
    assert_ne!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["database"]["reachable"], json!(true), "{out}");
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("waited 3s for a lock held elsewhere")
            && problems.contains("operator-psql"),
        "status names the lock and its holder: {out}"
    );
    assert!(
        took < Duration::from_secs(10),
        "status answered in {took:?}"
    );
    let log = std::fs::read_to_string(&r.writer.log).unwrap_or_default();
    assert!(
        !log.contains("an operator must act"),
        "a lock wait is not reported as a failure\n{}",
        r.stack.log_tail(&r.writer)
    );
    assert!(r.notify_writer.saw("WATCHDOG=1"));
    r.ends_clean(seq).await;
}

/// The stager's barrier connection (the second connection, which confirms each batch durable
/// while the next is inserted) killed again and again under flips: each time the unconfirmed
/// batches are staged again (deduplicated) and nothing published is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_barrier_connection_killed_under_flips_loses_nothing() {
    let r = running().await;
    let seq = r.stack.last_seq().await;
    r.stack.control("/control/flap", json!({"rate": 40})).await;
    let admin = r.stack.client().await;
    let mut killed = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
                 WHERE application_name = 'kick-collector'
                   AND query LIKE 'INSERT INTO staging_barriers%'",
                &[],
            )
            .await
            .unwrap()
            .get("n");
        killed += n;
    }
    assert!(
        killed >= 5,
        "the barrier connection was found and killed ({killed} times)"
    );
    r.ends_clean(seq).await;
}

/// Locks every row of `staging_barriers` in an open transaction, as an operator's `psql` might:
/// the stager's durable barrier waits, its asynchronous inserts do not. `COMMIT` on the returned
/// client releases them.
async fn lock_barrier_rows(stack: &Stack) -> tokio_postgres::Client {
    let blocker = stack.client().await;
    blocker
        .batch_execute(
            "SET application_name = 'operator-psql';
             BEGIN; SELECT * FROM staging_barriers FOR UPDATE",
        )
        .await
        .unwrap();
    blocker
}

/// A flush that does not come back (emulated by the barrier's row locked: the durable barrier
/// waits, the asynchronous inserts do not) for longer than the stager's 500 ms `SUSPECT`:
/// statuses keep reaching `streamers` within a second, while copies of the unconfirmed batches
/// wait in the spool (a crash of the server loses nothing); health says "staging flush" after
/// 5 s; once the flush returns every event is staged exactly once. Before, the stager replayed
/// the spool behind a durable barrier of its own first, and every status waited for the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_flush_does_not_hold_back_statuses() {
    let r = running().await;
    let seq = r.stack.last_seq().await;
    let blocker = lock_barrier_rows(&r.stack).await;
    let locked = Instant::now();
    flips_arrive_within_a_second(&r, locked, 8).await;
    let out = status_becomes(&r.stack, 69, Duration::from_secs(10)).await;
    assert!(out.contains("flush"), "{out}");
    blocker.batch_execute("COMMIT").await.unwrap();
    r.ends_clean(seq).await;
}

/// The same late flush with a spool that fills up (`KICK_SPOOL_MAX_MB=1`, then a burst of about
/// 3,000 events): the batches whose copy does not fit stay inserted without one, so statuses still
/// reach `streamers` within a second, health names the spool, and a collector killed meanwhile
/// loses nothing (the rows are in the database, flushed when it can). Before, the stager took the
/// batches back when their copy failed and replayed the spool behind a barrier that waited for
/// the flush: every status was held until it returned, and what did not fit was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_flush_with_a_full_spool_still_shows_statuses() {
    let mut r = running().await;
    let mut env_c: Vec<(&str, &str)> = vec![("KICK_SPOOL_MAX_MB", "1")];
    let watchdog = r.notify_collector.env(WATCHDOG);
    env_c.extend(as_refs(&watchdog));
    assert_eq!(r.collector.terminate(), Some(0));
    // kick-sim forgets the old sockets first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.collector = r.stack.spawn("kick-collector", &env_c);
    r.stack
        .settle(
            STREAMERS as i64,
            Duration::from_secs(30),
            Duration::from_secs(30),
            &r.collector,
        )
        .await;
    let seq = r.stack.last_seq().await;
    let blocker = lock_barrier_rows(&r.stack).await;
    let locked = Instant::now();
    r.stack
        .control("/control/flap", json!({"rate": 1000}))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.stack.control("/control/flap/stop", json!({})).await;
    flips_arrive_within_a_second(&r, locked, 6).await;
    let out = status_becomes(&r.stack, 69, Duration::from_secs(10)).await;
    assert!(out.contains("spool"), "{out}");
    let log = std::fs::read_to_string(&r.collector.log).unwrap();
    assert!(
        log.contains("cannot copy batches whose flush is late to the spool"),
        "the spool filled up\n{}",
        r.stack.log_tail(&r.collector)
    );
    // Killed with the batches since the lock unconfirmed, most without a copy: they are inserted.
    r.collector.kill9();
    blocker.batch_execute("COMMIT").await.unwrap();
    all_staged(&r.stack, seq, Duration::from_secs(10)).await;
    r.collector = r.stack.spawn("kick-collector", &env_c);
    r.ends_clean(seq).await;
}

/// A collector killed during a late flush (its barrier row locked) and started again while the
/// lock holds: its spool (copies of the unconfirmed batches) is replayed beside the barriers, so
/// new statuses reach `streamers` within a second while the replay waits for its flush, and once
/// the lock goes every event is staged once. Before, the replay's barriers were inline: every
/// new status waited behind the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_restarted_during_a_late_flush_still_shows_statuses() {
    let mut r = running().await;
    let watchdog = r.notify_collector.env(WATCHDOG);
    let seq = r.stack.last_seq().await;
    let blocker = lock_barrier_rows(&r.stack).await;
    let locked = Instant::now();
    r.stack.control("/control/flap", json!({"rate": 40})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.stack.control("/control/flap/stop", json!({})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.collector.kill9();
    // kick-sim forgets the old sockets first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.collector = r.stack.spawn("kick-collector", &as_refs(&watchdog));
    r.stack
        .wait_subscribed(STREAMERS as i64, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.stack.log_tail(&r.collector)));
    let log = std::fs::read_to_string(&r.collector.log).unwrap();
    assert!(
        log.contains("replaying the spool"),
        "the killed collector left copies in its spool\n{}",
        r.stack.log_tail(&r.collector)
    );
    // What changed while it was down is found by its start-up reconcile, staged like the rest.
    r.stack
        .converge(Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.stack.log_tail(&r.collector)));
    flips_arrive_within_a_second(&r, locked, 6).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    r.ends_clean(seq).await;
}

/// `n` streamers go live one every 0.7 s, each reaching `streamers` within a second.
async fn flips_arrive_within_a_second(r: &Running, locked: Instant, n: usize) {
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis(700)).await;
        set_status(&r.stack, i, "live").await;
        let took = r
            .stack
            .converge(Duration::from_secs(1))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "flip {i}, {:?} after the barrier row was locked: {e}\n{}",
                    locked.elapsed(),
                    r.stack.log_tail(&r.collector)
                )
            });
        assert!(took < Duration::from_secs(1), "flip {i} took {took:?}");
    }
}

/// The stager's own barrier row locked by someone else (`SELECT … FOR UPDATE` on
/// `staging_barriers`) under flips for 22 s: batches stay unconfirmed, copies go to the spool,
/// health says "staging flush" (past 15 s, replaying: "staging slow") while it lasts; once
/// released every event is staged exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_barrier_row_is_reported_and_loses_nothing() {
    let r = running().await;
    let seq = r.stack.last_seq().await;
    r.stack.control("/control/flap", json!({"rate": 40})).await;
    let blocker = lock_barrier_rows(&r.stack).await;
    let locked = Instant::now();
    let out = status_becomes(&r.stack, 69, Duration::from_secs(20)).await;
    assert!(out.contains("has not answered a staging insert"), "{out}");
    // Past the stager's 15 s stall, its probe (`SELECT 1`) answers while the lock still holds
    // every batch: the collector must stay unhealthy for as long as the lock lasts.
    while locked.elapsed() < Duration::from_secs(22) {
        let (code, out, _, _) = r.stack.admin(&["status"]);
        assert_ne!(
            code,
            0,
            "healthy at {:?} while the barrier row is locked:\n{out}\n{}",
            locked.elapsed(),
            r.stack.log_tail(&r.collector)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    blocker.batch_execute("COMMIT").await.unwrap();
    r.ends_clean(seq).await;
}
