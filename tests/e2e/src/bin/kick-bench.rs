//! `kick-bench`: benchmarks of the whole pipeline on this machine, printed as tables.
//! Run through `./scripts/bench` (release build); every figure in BENCHMARKS.md comes from here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use kick_e2e::Stack;
use kick_sim::Options;
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Debug, Parser)]
#[command(
    name = "kick-bench",
    about = "Benchmarks of kick-monitor (run via ./scripts/bench)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Everything below with the default sizes.
    All,
    /// Writer drain rate over N staged events.
    Drain {
        #[arg(long, default_value_t = 100_000)]
        events: i64,
    },
    /// Staged-row commit → streamers commit latency at a steady rate.
    WriterLatency {
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// kick-sim publish → streamers row committed, through collector and writer processes.
    Pipeline {
        #[arg(long, default_value_t = 10_000)]
        streamers: usize,
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        rates: Vec<u64>,
        #[arg(long, default_value_t = 15)]
        seconds: u64,
    },
    /// RSS of collector and writer, time to all subscribed, at several sizes.
    Rss {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
        streamers: Vec<usize>,
    },
    /// All sockets dropped while streamers change: time until every status is right again.
    Recovery {
        #[arg(long, default_value_t = 10_000)]
        streamers: usize,
    },
    /// Long run with flapping: RSS at start and end.
    Soak {
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        #[arg(long, default_value_t = 10_000)]
        streamers: usize,
        #[arg(long, default_value_t = 100)]
        rate: u64,
    },
    /// kick-monitor (collector + writer) against the single-process reference (one durable
    /// commit per event, no staging), side by side on the same stack, per transport and rate.
    Compare {
        #[arg(long, default_value_t = 10_000)]
        streamers: usize,
        #[arg(long, value_delimiter = ',', default_value = "20,100,1000")]
        rates: Vec<u64>,
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        #[arg(long, value_delimiter = ',', default_value = "centrifugo,pusher")]
        transports: Vec<String>,
        /// Alternate kick-monitor and the reference this many times per rate.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
    },
    /// (used by `compare`) the reference implementation as its own process.
    #[command(hide = true)]
    Reference,
    /// kick-sim at scale: streamers, sockets and published events per second.
    SimScale {
        #[arg(long, default_value_t = 50_000)]
        streamers: usize,
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        pct(&v, 0.5) * 1e3,
        pct(&v, 0.99) * 1e3,
        v.last().copied().unwrap_or(f64::NAN) * 1e3
    )
}

fn sim_opts(streamers: usize) -> Options {
    Options {
        streamers,
        ..Options::ideal()
    }
}

const QUIET: &[(&str, &str)] = &[("LOG_LEVEL", "warn")];

async fn drain(events: i64) {
    let stack = Stack::start(sim_opts(0), &[]).await;
    let c = stack.client().await;
    let streamers: i64 = 10_000;
    kick_e2e::add_streamers(&c, streamers).await;
    // Alternating live/offline per streamer with increasing sessions: every event is a transition.
    c.execute(
        "INSERT INTO raw_events (source, event_name, kick_channel_id, livestream_id, dedupe_key, received_at)
         SELECT 'realtime', CASE WHEN (n / $2) % 2 = 0 THEN 'StreamerIsLive' ELSE 'StopStreamBroadcast' END,
                2000000 + 13 * (n % $2), 1000 + n / $2 / 2, 'bench:' || n,
                now() - interval '1 hour' + n * interval '1 microsecond'
         FROM generate_series(0::bigint, $1::bigint - 1) n",
        &[&events, &streamers],
    )
    .await
    .unwrap();
    for sql in ["VACUUM ANALYZE raw_events", "CHECKPOINT"] {
        c.batch_execute(sql).await.unwrap();
    }
    for batch in ["100"] {
        for sql in [
            "UPDATE raw_events SET processed_at = NULL, outcome = NULL",
            "DELETE FROM status_events",
            "UPDATE streamers SET status = 'unknown', livestream_id = NULL, last_observed_at = NULL, status_source = NULL",
            "VACUUM ANALYZE raw_events",
            "VACUUM ANALYZE streamers",
            "CHECKPOINT",
        ] {
            c.batch_execute(sql).await.unwrap();
        }
        let t0 = Instant::now();
        let level = std::env::var("BENCH_WRITER_LOG").unwrap_or_else(|_| "warn".into());
        let mut w = stack.spawn(
            "kick-writer",
            &[("BATCH_SIZE", batch), ("LOG_LEVEL", level.as_str())],
        );
        loop {
            let (pending, _) = kick_shared::db::pending_events(&c).await.unwrap();
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = t0.elapsed();
        let span: f64 = c
            .query_one("SELECT extract(epoch FROM max(processed_at) - min(processed_at))::float8 FROM raw_events", &[])
            .await
            .unwrap()
            .get(0);
        let history: i64 = c
            .query_one("SELECT count(*) FROM status_events", &[])
            .await
            .unwrap()
            .get(0);
        let (_, hwm) = w.rss_kib();
        w.terminate();
        if let Ok(dir) = std::env::var("BENCH_KEEP_LOG") {
            let _ = std::fs::copy(&w.log, format!("{dir}/writer-drain-{batch}.log"));
        }
        println!(
            "| writer drain | {events} staged events, 10,000 streamers, BATCH_SIZE={batch} | {:.0} events/s (first→last batch {:.2} s; wall incl. start {:.2} s); {history} history rows; writer peak RSS {:.1} MB |",
            events as f64 / span.max(1e-9),
            span,
            wall.as_secs_f64(),
            hwm as f64 / 1024.0
        );
    }
}

async fn writer_latency(rate: u64, seconds: u64) {
    let stack = Stack::start(sim_opts(0), &[]).await;
    let c = stack.client().await;
    let streamers: i64 = 10_000;
    kick_e2e::add_streamers(&c, streamers).await;
    let mut w = stack.spawn("kick-writer", QUIET);
    let (_l, mut changed) = kick_shared::db::listen(&stack.db.config, &["status_changed"])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let (c2, l2) = (committed.clone(), lat.clone());
    let listener = tokio::spawn(async move {
        while let Some(n) = changed.recv().await {
            let now = Instant::now();
            if let Some(t) = c2.lock().await.remove(n.payload()) {
                l2.lock().await.push(now.duration_since(t).as_secs_f64());
            }
        }
    });
    // A producer like the collector: every 2 ms, the due rows in one durable transaction + NOTIFY.
    let producer = kick_shared::db::connect(&stack.db.config).await.unwrap();
    let stmt = producer
        .prepare(
            "INSERT INTO raw_events (source, event_name, kick_channel_id, livestream_id, dedupe_key)
             SELECT 'realtime', 'StreamerIsLive', 2000000 + 13 * s, 5000 + s, 'wl:' || s FROM unnest($1::bigint[]) s",
        )
        .await
        .unwrap();
    let start = Instant::now();
    let total = rate * seconds;
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due <= sent {
            continue;
        }
        let ids: Vec<i64> = (sent..due).map(|i| i as i64 % streamers).collect();
        sent = due;
        producer.batch_execute("BEGIN").await.unwrap();
        producer.execute(&stmt, &[&ids]).await.unwrap();
        producer
            .batch_execute("NOTIFY raw_events; COMMIT")
            .await
            .unwrap();
        let now = Instant::now();
        let mut m = committed.lock().await;
        for id in ids {
            m.insert(format!("streamer{id}"), now);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    listener.abort();
    let v = lat.lock().await.clone();
    let (_, hwm) = w.rss_kib();
    w.terminate();
    println!(
        "| writer latency | {rate} events/s for {seconds} s, staged commit ack → status_changed received | {} ; writer peak RSS {:.1} MB |",
        summary(v),
        hwm as f64 / 1024.0
    );
}

/// Where a process's resident memory is, by mapping (for memory work).
fn print_smaps(pid: u32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: HashMap<String, u64> = HashMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let name = line.split_whitespace().nth(5).unwrap_or("[anon]");
            let perms = line.split_whitespace().nth(1).unwrap_or("");
            current = format!("{name} {perms}");
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kb: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            *by.entry(current.clone()).or_default() += kb;
        }
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    for (k, kb) in v.iter().take(8) {
        eprintln!("  smaps {kb:>7} kB  {k}");
    }
}

/// Extra environment for the collector from `BENCH_COLLECTOR_ENV` (`K=V,K=V`), for experiments.
fn collector_env() -> Vec<(String, String)> {
    std::env::var("BENCH_COLLECTOR_ENV")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Flips streamers round-robin at `rate` for `seconds`, measuring publish → status_changed.
async fn measure_pipeline(stack: &Stack, rate: u64, seconds: u64, offset: usize) -> Vec<f64> {
    let (_l, mut changed) = kick_shared::db::listen(&stack.db.config, &["status_changed"])
        .await
        .unwrap();
    let published: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let (p2, l2) = (published.clone(), lat.clone());
    let t0 = Instant::now();
    let wall0 = chrono::Utc::now();
    // (publish time since t0, latency, streamer) of every event, for BENCH_TRACE.
    let trace: Arc<std::sync::Mutex<Vec<(f64, f64, String)>>> = Arc::default();
    let tr2 = trace.clone();
    let listener = tokio::spawn(async move {
        while let Some(n) = changed.recv().await {
            let now = Instant::now();
            if let Some(t) = p2.lock().await.remove(n.payload()) {
                let l = now.duration_since(t).as_secs_f64();
                l2.lock().await.push(l);
                tr2.lock().unwrap().push((
                    t.duration_since(t0).as_secs_f64(),
                    l,
                    n.payload().to_owned(),
                ));
            }
        }
    });
    let sim = stack.sim.sim.clone();
    let n = sim.streamer_count();
    let total = rate * seconds;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let i = (offset + sent as usize) % n;
            let live = !sim.truth_of(i);
            // Registered before the publish: the listener may hear the change before this task
            // runs again (it shares a core with kick-sim), and an unregistered notification
            // would be dropped and the event reported as never announced.
            let mut p = published.lock().await;
            let t = Instant::now();
            p.insert(format!("streamer{i}"), t);
            sim.set_live(i, live);
            drop(p);
            sent += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    listener.abort();
    // Events whose change was never announced: say what became of them (a lost event is a
    // defect, not a latency).
    let missing: Vec<String> = published.lock().await.keys().take(5).cloned().collect();
    if !missing.is_empty() {
        let c = stack.client().await;
        for name in &missing {
            let i = streamer_index(name);
            let channel = sim.streamer(i).channel_id;
            let rows = c
                .query(
                    "SELECT id, source, event_name, outcome, received_at, processed_at FROM raw_events
                     WHERE kick_channel_id = $1 AND received_at >= $2::timestamptz - interval '1 minute' ORDER BY id",
                    &[&channel, &wall0],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            format!(
                                "#{} {} {} {:?}",
                                r.get::<_, i64>("id"),
                                r.get::<_, String>("source"),
                                r.get::<_, String>("event_name"),
                                r.get::<_, Option<String>>("outcome")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_else(|e| e.to_string());
            eprintln!(
                "  no status_changed for {name} (live now: {}): staged rows: [{rows}]",
                sim.truth_of(i)
            );
        }
    }
    // BENCH_TRACE=FILE: every event's publish time (ms since the run began) and latency (ms),
    // appended, to find when the slow ones happened.
    // With staging (kick-monitor), also when the row was staged and when the writer's
    // transaction began (ms after the publish, from the database's clock: the same machine).
    if let Ok(path) = std::env::var("BENCH_TRACE") {
        let c = stack.client().await;
        let rows = trace.lock().unwrap().clone();
        let mut text = String::new();
        for (t, l, name) in rows {
            let i = streamer_index(&name);
            let channel = sim.streamer(i).channel_id;
            let published = wall0 + chrono::Duration::microseconds((t * 1e6) as i64);
            let staged = c
                .query_opt(
                    "SELECT (extract(epoch FROM received_at - $2) * 1e3)::float8 AS staged,
                            (extract(epoch FROM processed_at - $2) * 1e3)::float8 AS applied
                     FROM raw_events WHERE kick_channel_id = $1 AND received_at >= $2::timestamptz - interval '50 ms'
                     ORDER BY id LIMIT 1",
                    &[&channel, &published],
                )
                .await
                .ok()
                .flatten()
                .map(|r| {
                    let f = |c: &str| r.get::<_, Option<f64>>(c).unwrap_or(f64::NAN);
                    format!(" staged {:.3} writer {:.3}", f("staged"), f("applied"))
                })
                .unwrap_or_default();
            text.push_str(&format!("{:.1} {:.3}{staged}\n", t * 1e3, l * 1e3));
        }
        append(
            &path,
            &format!(
                "# run of {rate} events/s, began {}\n{text}",
                wall0.format("%H:%M:%S%.3f")
            ),
        );
    }
    lat.lock().await.clone()
}

/// The index in kick-sim of a streamer `measure_pipeline` named (`streamer{i}`, the username
/// its `status_changed` notification carries).
fn streamer_index(name: &str) -> usize {
    name.strip_prefix("streamer")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a streamer kick-bench published: {name}"))
}

/// Appends `text` to the file at `path` (bench traces; a failure is reported, not fatal).
fn append(path: &str, text: &str) {
    use std::io::Write as _;
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = r {
        eprintln!("bench trace {path}: {e}");
    }
}

/// p50/p95/p99/max in ms.
fn percentiles(mut v: Vec<f64>) -> (usize, [f64; 4]) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    (
        n,
        [
            pct(&v, 0.5) * 1e3,
            pct(&v, 0.95) * 1e3,
            pct(&v, 0.99) * 1e3,
            v.last().copied().unwrap_or(f64::NAN) * 1e3,
        ],
    )
}

/// Waits (up to 3 minutes) until the collector has located every channel's region.
async fn regions_known(stack: &Stack, channels: i64) {
    let c = stack.client().await;
    let t0 = Instant::now();
    loop {
        let n: i64 = c
            .query_one("SELECT count(*) AS n FROM channel_regions", &[])
            .await
            .unwrap()
            .get("n");
        if n >= channels {
            return;
        }
        if t0.elapsed() > Duration::from_secs(180) {
            eprintln!(
                "  regions: {n} of {channels} channels located after 3 minutes; measuring anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (up to 3 minutes) until kick-sim's official API has had no request for 3 s: the
/// collector's start-up reconcile is over.
async fn api_quiet(stack: &Stack) {
    let t0 = Instant::now();
    let mut last = (stack.sim.sim.api_requests(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(3) {
        if t0.elapsed() > Duration::from_secs(180) {
            eprintln!("  reconcile: the official API still busy after 3 minutes; measuring anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = stack.sim.sim.api_requests();
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
}

async fn compare(
    streamers: usize,
    rates: &[u64],
    seconds: u64,
    transports: &[String],
    rounds: u32,
) {
    println!(
        "| compare | transport, rate | kick-monitor p50 / p95 / p99 / max | reference p50 / p95 / p99 / max | p99 ratio |"
    );
    for transport in transports {
        let mut env = QUIET.to_vec();
        env.push(("KICK_REALTIME_TRANSPORT", transport.as_str()));
        let stack = Stack::start(sim_opts(streamers), &env).await;
        let (n, floor) = percentiles(durable_commits(&stack, 200).await);
        println!(
            "| compare | {transport}: one durable one-row commit on this cluster (the floor) | {:.2} / {:.2} / {:.2} / {:.2} ms (n={n}) | | |",
            floor[0], floor[1], floor[2], floor[3]
        );
        let mut offset = 0;
        for rate in rates {
            for _ in 0..rounds {
                let level = std::env::var("BENCH_WRITER_LOG").unwrap_or_else(|_| "warn".into());
                let mut w = stack.spawn("kick-writer", &[("LOG_LEVEL", level.as_str())]);
                let level = std::env::var("BENCH_COLLECTOR_LOG").unwrap_or_else(|_| "warn".into());
                let mut c = stack.spawn("kick-collector", &[("LOG_LEVEL", level.as_str())]);
                stack
                    .wait_subscribed(streamers as i64, Duration::from_secs(120))
                    .await
                    .unwrap();
                stack.converge(Duration::from_secs(120)).await.unwrap();
                if transport == "centrifugo" {
                    // Steady state: the first start asks Kick where every channel lives (paced
                    // lookups, about 40 s of background work at 10,000 channels); the reference
                    // does none of it, so kick-monitor is measured after it.
                    regions_known(&stack, streamers as i64).await;
                }
                // Steady state: the start-up reconcile (every streamer checked against the
                // paced official API, about a minute at 10,000) is over.
                api_quiet(&stack).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let t_km = chrono::Utc::now();
                let km = measure_pipeline(&stack, *rate, seconds, offset).await;
                offset += (*rate * seconds) as usize;
                // Where kick-monitor's time goes, from the database's own clock: staged (insert
                // statement) → the writer's transaction start.
                let r = stack
                    .client()
                    .await
                    .query_one(
                        "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) AS p
                         FROM raw_events WHERE source = 'realtime' AND received_at >= $1",
                        &[&t_km],
                    )
                    .await
                    .unwrap();
                let p: Vec<f64> = r.get("p");
                eprintln!(
                    "  {transport} {rate}/s: staged → writer transaction start p50 {:.2} ms, p99 {:.2} ms",
                    p[0] * 1e3,
                    p[1] * 1e3
                );
                c.terminate();
                w.terminate();
                if let Ok(dir) = std::env::var("BENCH_KEEP_LOG") {
                    let _ = std::fs::copy(&w.log, format!("{dir}/writer-compare-{rate}.log"));
                    let _ = std::fs::copy(&c.log, format!("{dir}/collector-compare-{rate}.log"));
                    let _ = std::fs::write(
                        format!("{dir}/postgres-compare-{rate}.log"),
                        stack.cluster.log(),
                    );
                }
                stack.sockets_gone(Duration::from_secs(30)).await;
                let mut r = stack.spawn_with_args("kick-bench", &[], &["reference"], &[]);
                stack
                    .wait_subscribed(streamers as i64, Duration::from_secs(120))
                    .await
                    .unwrap_or_else(|e| panic!("reference: {e}\n{}", stack.log_tail(&r)));
                tokio::time::sleep(Duration::from_secs(1)).await;
                let rf = measure_pipeline(&stack, *rate, seconds, offset).await;
                offset += (*rate * seconds) as usize;
                r.kill9();
                stack.sockets_gone(Duration::from_secs(30)).await;
                let ((kn, k), (rn, f)) = (percentiles(km), percentiles(rf));
                println!(
                    "| compare | {transport}, {rate} events/s × {seconds} s, {streamers} streamers | {:.1} / {:.1} / {:.1} / {:.1} ms (n={kn}) | {:.1} / {:.1} / {:.1} / {:.1} ms (n={rn}) | {:.2} |",
                    k[0],
                    k[1],
                    k[2],
                    k[3],
                    f[0],
                    f[1],
                    f[2],
                    f[3],
                    k[2] / f[2]
                );
            }
        }
    }
}

/// The physical floor of the run: `n` durable commits of one row each, one after another, timed
/// from the client (what one event costs the reference at the least).
async fn durable_commits(stack: &Stack, n: usize) -> Vec<f64> {
    let c = stack.client().await;
    c.batch_execute(
        "SET synchronous_commit = on;
         CREATE TABLE IF NOT EXISTS bench_floor (id int PRIMARY KEY, n bigint NOT NULL)",
    )
    .await
    .unwrap();
    let st = c
        .prepare(
            "INSERT INTO bench_floor VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = bench_floor.n + 1",
        )
        .await
        .unwrap();
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.execute(&st, &[]).await.unwrap();
        v.push(t.elapsed().as_secs_f64());
    }
    c.batch_execute("DROP TABLE bench_floor").await.unwrap();
    v
}

/// A free loopback port for a metrics endpoint.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A Prometheus histogram's cumulative bucket counts, from its text exposition.
async fn hist_counts(addr: &str, name: &str) -> Vec<(f64, f64)> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.parse().ok()?))
        })
        .collect()
}

/// Upper bounds (ms) of p50 and p99 for the observations between two snapshots.
fn hist_between(before: &[(f64, f64)], after: &[(f64, f64)]) -> String {
    let d: Vec<(f64, f64)> = after
        .iter()
        .zip(before)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let total = d.last().map_or(0.0, |b| b.1);
    let q = |p: f64| {
        d.iter()
            .find(|(_, c)| *c >= total * p)
            .map_or(f64::NAN, |(le, _)| le * 1e3)
    };
    format!("n={total} p50 ≤ {} ms, p99 ≤ {} ms", q(0.5), q(0.99))
}

async fn pipeline(streamers: usize, rates: &[u64], seconds: u64) {
    let stack = Stack::start(sim_opts(streamers), QUIET).await;
    // For experiments: extra SQL before the services start (e.g. table settings).
    if let Ok(sql) = std::env::var("BENCH_SQL") {
        stack.client().await.batch_execute(&sql).await.unwrap();
    }
    let (wm, cm) = (free_addr(), free_addr());
    let mut w = stack.spawn("kick-writer", &[("METRICS_ADDR", wm.as_str())]);
    let mut c = stack.spawn("kick-collector", &[("METRICS_ADDR", cm.as_str())]);
    let sub = stack
        .wait_subscribed(streamers as i64, Duration::from_secs(120))
        .await
        .unwrap();
    stack.converge(Duration::from_secs(120)).await.unwrap();
    let mut offset = 0;
    for rate in rates {
        let (c0, w0) = (
            hist_counts(&cm, "kick_collector_stage_latency_seconds").await,
            hist_counts(&wm, "kick_writer_latency_seconds").await,
        );
        let v = measure_pipeline(&stack, *rate, seconds, offset).await;
        offset += (*rate * seconds) as usize;
        let stage = hist_between(
            &c0,
            &hist_counts(&cm, "kick_collector_stage_latency_seconds").await,
        );
        let apply = hist_between(&w0, &hist_counts(&wm, "kick_writer_latency_seconds").await);
        println!(
            "| pipeline breakdown | {rate} events/s: collector frame received → staged row committed (durable); writer: frame received → writer commit | collector {stage}; writer {apply} (bucket bounds) |"
        );
        let (crss, chwm) = c.rss_kib();
        let (wrss, whwm) = w.rss_kib();
        println!(
            "| pipeline latency | {streamers} streamers, {rate} events/s for {seconds} s, kick-sim publish → status_changed (collector durable commit + writer commit) | {} ; RSS collector {:.1} MB (peak {:.1}), writer {:.1} MB (peak {:.1}); all subscribed in {:.2} s |",
            summary(v),
            crss as f64 / 1024.0,
            chwm as f64 / 1024.0,
            wrss as f64 / 1024.0,
            whwm as f64 / 1024.0,
            sub.as_secs_f64()
        );
    }
    stack.converge(Duration::from_secs(60)).await.unwrap();
    stack.check_history().await.unwrap();
    c.terminate();
    w.terminate();
}

async fn rss(sizes: &[usize]) {
    for &n in sizes {
        let stack = Stack::start(sim_opts(n), QUIET).await;
        let mut w = stack.spawn("kick-writer", &[]);
        let t0 = Instant::now();
        let extra = collector_env();
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut c = stack.spawn("kick-collector", &extra);
        stack
            .wait_subscribed(n as i64, Duration::from_secs(300))
            .await
            .unwrap();
        let sub = t0.elapsed();
        stack.converge(Duration::from_secs(300)).await.unwrap();
        let converged = t0.elapsed();
        // Steady flapping for a while, then read RSS.
        let rate = 100;
        let _ = measure_pipeline(&stack, rate, 20, 0).await;
        let (crss, chwm) = c.rss_kib();
        let (wrss, whwm) = w.rss_kib();
        let sockets = stack.sim.sim.socket_count().0;
        if std::env::var_os("BENCH_SMAPS").is_some() {
            print_smaps(c.pid());
        }
        println!(
            "| RSS | {n} streamers ({sockets} sockets), after 20 s at {rate} flips/s | collector {:.1} MB (peak {:.1}), writer {:.1} MB (peak {:.1}), together {:.1} MB; all subscribed {:.2} s, all statuses known {:.2} s after start |",
            crss as f64 / 1024.0,
            chwm as f64 / 1024.0,
            wrss as f64 / 1024.0,
            whwm as f64 / 1024.0,
            (crss + wrss) as f64 / 1024.0,
            sub.as_secs_f64(),
            converged.as_secs_f64()
        );
        c.terminate();
        w.terminate();
    }
}

async fn recovery(streamers: usize) {
    let stack = Stack::start(sim_opts(streamers), QUIET).await;
    let mut w = stack.spawn("kick-writer", &[]);
    let mut c = stack.spawn("kick-collector", &[]);
    stack
        .wait_subscribed(streamers as i64, Duration::from_secs(120))
        .await
        .unwrap();
    stack.converge(Duration::from_secs(120)).await.unwrap();
    // Settle past the API lag guard so that reconciliation can win at once.
    tokio::time::sleep(Duration::from_secs(11)).await;
    for (code, label) in [(3001u16, "Centrifugo 3001 (reconnect with backoff)")] {
        let t0 = Instant::now();
        let dropped = stack
            .control("/control/sockets/drop", json!({"code": code}))
            .await;
        // While the sockets are down, 500 streamers change.
        let sim = stack.sim.sim.clone();
        for i in 0..500.min(streamers) {
            let idx = (i * 17) % streamers;
            sim.set_live(idx, !sim.truth_of(idx));
        }
        let wrong = stack.mismatches().await.len();
        let took = stack.converge(Duration::from_secs(120)).await.unwrap();
        let took = t0.elapsed().max(took);
        eprintln!("  recovery: dropped {dropped}, {wrong} statuses wrong right after the changes");
        println!(
            "| recovery | {streamers} streamers, every socket dropped with {label}, 500 statuses changed while down | all statuses correct again {:.2} s after the drop |",
            took.as_secs_f64()
        );
    }
    c.terminate();
    w.terminate();
}

async fn soak(minutes: u64, streamers: usize, rate: u64) {
    let stack = Stack::start(sim_opts(streamers), QUIET).await;
    let mut w = stack.spawn("kick-writer", &[]);
    let mut c = stack.spawn("kick-collector", &[]);
    stack
        .wait_subscribed(streamers as i64, Duration::from_secs(120))
        .await
        .unwrap();
    stack.converge(Duration::from_secs(120)).await.unwrap();
    let _ = measure_pipeline(&stack, rate, 30, 0).await;
    let (c0, _) = c.rss_kib();
    let (w0, _) = w.rss_kib();
    let mut samples = Vec::new();
    let mut offset = 30 * rate as usize;
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let mut lat = Vec::new();
    while Instant::now() < end {
        lat.extend(measure_pipeline(&stack, rate, 60, offset).await);
        offset += 60 * rate as usize;
        samples.push((c.rss_kib().0, w.rss_kib().0));
    }
    let (c1, chwm) = c.rss_kib();
    let (w1, whwm) = w.rss_kib();
    stack.converge(Duration::from_secs(60)).await.unwrap();
    stack.check_history().await.unwrap();
    let trace: Vec<String> = samples
        .iter()
        .map(|(c, w)| format!("{:.1}/{:.1}", *c as f64 / 1024.0, *w as f64 / 1024.0))
        .collect();
    println!(
        "| soak | {minutes} min, {streamers} streamers, {rate} flips/s | collector RSS {:.1} → {:.1} MB (peak {:.1}), writer {:.1} → {:.1} MB (peak {:.1}); latency {}; per-minute collector/writer MB: {} |",
        c0 as f64 / 1024.0,
        c1 as f64 / 1024.0,
        chwm as f64 / 1024.0,
        w0 as f64 / 1024.0,
        w1 as f64 / 1024.0,
        whwm as f64 / 1024.0,
        summary(lat),
        trace.join(" ")
    );
    c.terminate();
    w.terminate();
}

async fn sim_scale(streamers: usize, rate: u64, seconds: u64) {
    let stack = Stack::start(sim_opts(streamers), QUIET).await;
    let mut w = stack.spawn("kick-writer", &[]);
    let mut c = stack.spawn("kick-collector", &[]);
    let sub = stack
        .wait_subscribed(streamers as i64, Duration::from_secs(300))
        .await
        .unwrap();
    let (sockets, subs) = stack.sim.sim.socket_count();
    stack.converge(Duration::from_secs(300)).await.unwrap();
    let client = stack.client().await;
    let before: i64 = client
        .query_one(
            "SELECT count(*) FROM raw_events WHERE source = 'realtime'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let t0 = Instant::now();
    let v = measure_pipeline(&stack, rate, seconds, 0).await;
    let elapsed = t0.elapsed().as_secs_f64() - 2.0;
    let after: i64 = client
        .query_one(
            "SELECT count(*) FROM raw_events WHERE source = 'realtime'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!(
        "| kick-sim scale | {streamers} streamers, {sockets} concurrent sockets, {subs} subscriptions (all in {:.2} s), {rate} events/s for {seconds} s | published {:.0} events/s; {} staged by the collector ({:.0}/s); latency {} |",
        sub.as_secs_f64(),
        (rate * seconds) as f64 / elapsed,
        after - before,
        (after - before) as f64 / elapsed,
        summary(v)
    );
    c.terminate();
    w.terminate();
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Cmd::Reference = cli.cmd {
        let cfg =
            kick_shared::config::Config::from_env_for(kick_shared::config::Service::Collector)
                .expect("reference: configuration");
        if let Err(e) = kick_e2e::reference::run(cfg).await {
            eprintln!("reference: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Ok(cpus) = std::env::var("KICK_BENCH_SERVICE_CPUS") {
        eprintln!(
            "pinned: PostgreSQL and the measured processes on CPU {cpus} (see scripts/bench)"
        );
    }
    println!("| benchmark | setup | result |\n|---|---|---|");
    match cli.cmd {
        Cmd::All => {
            drain(100_000).await;
            writer_latency(1000, 10).await;
            pipeline(10_000, &[100, 1000], 15).await;
            rss(&[1000, 10_000, 50_000]).await;
            recovery(10_000).await;
            sim_scale(50_000, 5000, 10).await;
        }
        Cmd::Reference => unreachable!("handled above"),
        Cmd::Compare {
            streamers,
            rates,
            seconds,
            transports,
            rounds,
        } => compare(streamers, &rates, seconds, &transports, rounds).await,
        Cmd::Drain { events } => drain(events).await,
        Cmd::WriterLatency { rate, seconds } => writer_latency(rate, seconds).await,
        Cmd::Pipeline {
            streamers,
            rates,
            seconds,
        } => pipeline(streamers, &rates, seconds).await,
        Cmd::Rss { streamers } => rss(&streamers).await,
        Cmd::Recovery { streamers } => recovery(streamers).await,
        Cmd::Soak {
            minutes,
            streamers,
            rate,
        } => soak(minutes, streamers, rate).await,
        Cmd::SimScale {
            streamers,
            rate,
            seconds,
        } => sim_scale(streamers, rate, seconds).await,
    }
}
