//! Fault injection on the full pipeline: the real binaries, a few hundred streamers flapping in
//! kick-sim, and one fault at a time — kill -9 the collector, kill -9 the writer, restart
//! PostgreSQL, drop every socket with each close-code class, the API answering 429 and 500.
//! After each, once everything is back: the database equals kick-sim's truth, every staged row is
//! processed, no staged row produced two history rows, and each streamer's history chains.

use std::time::Duration;

use kick_e2e::{Service, Stack};
use kick_sim::Options;
use serde_json::json;

const STREAMERS: usize = 300;

fn opts() -> Options {
    Options {
        streamers: STREAMERS,
        ping_interval: Duration::from_secs(1),
        activity_timeout: Duration::from_secs(2),
        noise_rate: 20.0,
        ..Options::default()
    }
}

const SETTINGS: &[(&str, &str)] = &[
    ("KICK_SILENCE_GRACE", "1s"),
    ("KICK_TERMINAL_RETRY", "2s"),
    ("KICK_RECONCILE_INTERVAL", "5s"),
    ("KICK_CHANNELS_PER_CONNECTION", "50"),
    ("WRITER_POLL_INTERVAL", "200ms"),
];

async fn running(transport: &str) -> (Stack, Service, Service) {
    running_with(transport, &[]).await
}

/// [`running`] with settings of the collector's own.
async fn running_with(
    transport: &str,
    collector_env: &[(&str, &str)],
) -> (Stack, Service, Service) {
    let mut settings = SETTINGS.to_vec();
    settings.push(("KICK_REALTIME_TRANSPORT", transport));
    let stack = Stack::start(opts(), &settings).await;
    let writer = stack.spawn("kick-writer", &[]);
    let collector = stack.spawn("kick-collector", collector_env);
    stack
        .settle(
            STREAMERS as i64,
            Duration::from_secs(30),
            Duration::from_secs(30),
            &collector,
        )
        .await;
    stack.control("/control/flap", json!({"rate": 40})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    (stack, writer, collector)
}

/// History rows written during `span` (the flapping goes on meanwhile).
async fn transitions_within(stack: &Stack, span: Duration) -> i64 {
    let c = stack.client().await;
    let history = async || -> i64 {
        c.query_one("SELECT count(*) FROM status_events", &[])
            .await
            .unwrap()
            .get(0)
    };
    let before = history().await;
    tokio::time::sleep(span).await;
    history().await - before
}

/// Stops the flapping and checks the final state.
async fn settle(stack: &Stack, services: &mut [&mut Service]) {
    stack.control("/control/flap/stop", json!({})).await;
    let took = stack.converge(Duration::from_secs(40)).await;
    let logs: Vec<String> = services
        .iter()
        .map(|s| format!("--- {}\n{}", s.name, stack.log_tail(s)))
        .collect();
    let took = took.unwrap_or_else(|e| panic!("{e}\n{}", logs.join("\n")));
    // Let the writer finish the rows staged by the last reconcile, then check the history.
    tokio::time::sleep(Duration::from_millis(800)).await;
    stack
        .check_history()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs.join("\n")));
    for s in services.iter_mut() {
        assert!(s.is_running(), "{} died\n{}", s.name, stack.log_tail(s));
        assert_eq!(
            s.terminate(),
            Some(0),
            "{} exits cleanly on SIGTERM",
            s.name
        );
    }
    eprintln!("converged {took:?} after the fault");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_collector() {
    let (stack, mut writer, mut collector) = running("centrifugo").await;
    collector.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut collector = stack.spawn("kick-collector", &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle(&stack, &mut [&mut writer, &mut collector]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_writer() {
    let (stack, mut writer, mut collector) = running("pusher").await;
    writer.kill9();
    // The collector applies the plain cases itself (a live of a new session, the end of the
    // current one): statuses keep changing while the writer is dead.
    let during = transitions_within(&stack, Duration::from_secs(2)).await;
    assert!(
        during > 20,
        "{during} transitions in 2 s of flapping at 40/s with the writer dead"
    );
    let mut writer = stack.spawn("kick-writer", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle(&stack, &mut [&mut writer, &mut collector]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_writer_that_applies_everything() {
    let (stack, mut writer, mut collector) =
        running_with("pusher", &[("KICK_STAGING_APPLY", "writer")]).await;
    writer.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (pending, _) = kick_shared::db::pending_events(&stack.client().await)
        .await
        .unwrap();
    assert!(
        pending > 0,
        "events staged while the writer was dead wait in raw_events"
    );
    let mut writer = stack.spawn("kick-writer", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle(&stack, &mut [&mut writer, &mut collector]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_postgresql() {
    let (stack, mut writer, mut collector) = running("centrifugo").await;
    stack.cluster.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.cluster.start_again();
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle(&stack, &mut [&mut writer, &mut collector]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_every_socket_with_each_close_code_class() {
    for (transport, codes) in [
        ("pusher", &[4200u16, 4100, 4001][..]),
        ("centrifugo", &[3001u16, 4000, 3500, 4500][..]),
    ] {
        let (stack, mut writer, mut collector) = running(transport).await;
        for code in codes {
            // Every socket (with regions, each region has its own).
            let (sockets, _) = stack.sim.sim.socket_count();
            assert!(sockets >= 3, "{transport}: {sockets} sockets");
            let v = stack
                .control(
                    "/control/sockets/drop",
                    json!({"code": code, "reason": "e2e"}),
                )
                .await;
            assert_eq!(v["dropped"], sockets, "{transport} {code}");
            tokio::time::sleep(Duration::from_secs(3)).await;
            stack
                .wait_subscribed(STREAMERS as i64, Duration::from_secs(30))
                .await
                .unwrap();
        }
        settle(&stack, &mut [&mut writer, &mut collector]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_429_then_500_for_a_while() {
    let (stack, mut writer, mut collector) = running("centrifugo").await;
    stack
        .control(
            "/control/rest",
            json!({"mode": "429", "seconds": 6, "retry_after": 1}),
        )
        .await;
    // A socket drop while the API is failing: coverage falls back to the API, which fails too.
    stack
        .control("/control/sockets/drop", json!({"code": 3001}))
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    stack
        .control("/control/rest", json!({"mode": "500", "seconds": 6}))
        .await;
    stack
        .control("/control/sockets/drop", json!({"code": 3001}))
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle(&stack, &mut [&mut writer, &mut collector]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_under_least_privilege_roles() {
    let stack = Stack::start(opts(), SETTINGS).await;
    let (mut writer, mut collector) = stack.spawn_least_privileged(STREAMERS as i64).await;
    stack.control("/control/flap", json!({"rate": 40})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The collector's role applies the plain cases through `stage_applying` (it may not update
    // `streamers` itself): with the writer dead, statuses keep changing.
    writer.kill9();
    let during = transitions_within(&stack, Duration::from_secs(2)).await;
    let log = std::fs::read_to_string(&collector.log).unwrap_or_default();
    assert!(
        during > 20 && !log.contains("may not write statuses"),
        "{during} transitions in 2 s with the writer dead\n{}",
        stack.log_tail(&collector)
    );
    let mut writer = stack.spawn("kick-writer", &[("DATABASE_USER", "kick_writer")]);
    stack
        .control("/control/sockets/drop", json!({"code": 3001}))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle(&stack, &mut [&mut writer, &mut collector]).await;
    let gaps: i64 = stack
        .client()
        .await
        .query_one("SELECT count(*) FROM coverage_gaps", &[])
        .await
        .unwrap()
        .get(0);
    assert!(gaps >= 1, "the collector role records coverage gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_notify_systemd_ready_and_watchdog() {
    let stack = Stack::start(opts(), SETTINGS).await;
    for name in ["kick-writer", "kick-collector"] {
        let path = stack.db.cluster.socket_dir().join(format!("notify-{name}"));
        let _ = std::fs::remove_file(&path);
        let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
        let p = path.display().to_string();
        // As systemd starts a Type=notify unit with WatchdogSec=2s.
        let mut svc = stack.spawn(
            name,
            &[("NOTIFY_SOCKET", p.as_str()), ("WATCHDOG_USEC", "2000000")],
        );
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !(seen.iter().any(|m: &String| m.contains("READY=1"))
            && seen.iter().any(|m| m.contains("WATCHDOG=1")))
        {
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{name}: saw only {seen:?}\n{}", stack.log_tail(&svc)))
                .unwrap();
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(svc.terminate(), Some(0));
        let mut buf = [0u8; 256];
        let mut stopping = false;
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
        {
            stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
        assert!(stopping, "{name} says STOPPING=1 on SIGTERM");
    }
}

/// SIGTERM in the middle of a reconcile run: at the official API's pace (10 requests a second,
/// 50 streamers each, the collector's own limiter) a start-up reconcile of 10,000 streamers
/// lasts about 20 s, and the collector must not wait it out (systemd's stop timeout, and the
/// operator, are waiting). It used to: the supervisor gave the reconciler up after 15 s ("task
/// did not stop"). Nothing it staged is lost, and the next start reconciles again and
/// converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_stops_at_once_in_the_middle_of_a_reconcile() {
    let streamers = 10_000;
    let stack = Stack::start(
        Options {
            streamers,
            ..Options::default()
        },
        SETTINGS,
    )
    .await;
    let mut writer = stack.spawn("kick-writer", &[]);
    let mut collector = stack.spawn("kick-collector", &[]);
    // The run is under way, past the limiter's burst, once the API has answered 40 pages.
    let t0 = std::time::Instant::now();
    while stack.sim.sim.api_requests() < 40 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no reconcile started\n{}",
            stack.log_tail(&collector)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopping = std::time::Instant::now();
    assert_eq!(
        collector.terminate(),
        Some(0),
        "{}",
        stack.log_tail(&collector)
    );
    let took = stopping.elapsed();
    let log = std::fs::read_to_string(&collector.log).unwrap_or_default();
    assert!(
        took < Duration::from_secs(5) && !log.contains("did not stop"),
        "the collector took {took:?} to stop\n{}",
        stack.log_tail(&collector)
    );
    eprintln!("stopped {took:?} after SIGTERM, mid-reconcile");
    // Started again: the reconcile and the sockets bring every status right.
    let collector = stack.spawn("kick-collector", &[]);
    stack
        .settle(
            streamers as i64,
            Duration::from_secs(60),
            Duration::from_secs(120),
            &collector,
        )
        .await;
    stack.check_history().await.unwrap();
    assert_eq!(writer.terminate(), Some(0));
}
