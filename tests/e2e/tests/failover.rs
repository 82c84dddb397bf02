//! PostgreSQL failover with the real binaries: a primary and a synchronous streaming standby,
//! the services given both hosts (`DATABASE_HOST=a,b`, `DATABASE_PORT=p,q`,
//! `DATABASE_TARGET_SESSION_ATTRS=read-write`, libpq's multi-host settings). Under 20 flips/s
//! the standby is promoted and the old primary stopped: the services find the new primary by
//! themselves, re-LISTEN and drain; every streamer ends as kick-sim says, nothing acknowledged
//! is lost and no history row is doubled.

use std::time::{Duration, Instant};

use kick_e2e::Stack;
use kick_shared::config::{DbConfig, Source};
use kick_sim::Options;
use serde_json::json;

const STREAMERS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_follow_a_promoted_standby() {
    let mut stack = Stack::start(
        Options {
            streamers: STREAMERS,
            ping_interval: Duration::from_secs(1),
            activity_timeout: Duration::from_secs(2),
            ..Options::default()
        },
        &[
            ("KICK_SILENCE_GRACE", "2s"),
            ("KICK_RECONCILE_INTERVAL", "10s"),
            ("WRITER_POLL_INTERVAL", "200ms"),
            ("KICK_REALTIME_TRANSPORT", "centrifugo"),
        ],
    )
    .await;
    let primary = stack.cluster;
    let standby = primary.start_standby(true);
    let hosts = format!(
        "{},{}",
        primary.socket_dir().display(),
        standby.socket_dir().display()
    );
    let ports = format!("{},{}", primary.port(), standby.port());
    for (k, v) in [
        ("DATABASE_HOST", hosts.as_str()),
        ("DATABASE_PORT", ports.as_str()),
        ("DATABASE_TARGET_SESSION_ATTRS", "read-write"),
    ] {
        stack.env.retain(|(ek, _)| ek != k);
        stack.env.push((k.into(), v.into()));
    }
    // The test's own connections follow the primary the same way.
    stack.db.config = DbConfig::from_source(&Source::from_pairs(stack.env.clone())).unwrap();
    let mut writer = stack.spawn("kick-writer", &[]);
    let mut collector = stack.spawn("kick-collector", &[]);
    stack
        .settle(
            STREAMERS as i64,
            Duration::from_secs(30),
            Duration::from_secs(30),
            &collector,
        )
        .await;

    stack.control("/control/flap", json!({"rate": 20})).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let staged_before: i64 = stack
        .client()
        .await
        .query_one("SELECT count(*) FROM raw_events", &[])
        .await
        .unwrap()
        .get(0);
    // Fail over: the standby becomes the primary, the old primary goes away.
    let t0 = Instant::now();
    standby.promote();
    primary.stop();
    eprintln!("promoted and the old primary stopped in {:?}", t0.elapsed());
    // Flips go on; the services must find the new primary and apply them: the first history
    // row written there after the failover says when.
    let c = stack.client().await;
    let n0: i64 = c
        .query_one("SELECT count(*) FROM status_events", &[])
        .await
        .unwrap()
        .get(0);
    loop {
        let n: i64 = c
            .query_one("SELECT count(*) FROM status_events", &[])
            .await
            .unwrap()
            .get(0);
        if n > n0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no flip applied on the new primary within 15 s\nwriter:\n{}\ncollector:\n{}",
            stack.log_tail(&writer),
            stack.log_tail(&collector)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "first flip applied on the new primary {:?} after the failover began",
        t0.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    stack.control("/control/flap/stop", json!({})).await;
    let took = stack
        .converge(Duration::from_secs(45))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nwriter:\n{}\ncollector:\n{}",
                stack.log_tail(&writer),
                stack.log_tail(&collector)
            )
        });
    eprintln!("converged {took:?} after the flips stopped");
    // Nothing acknowledged before the failover is missing on the new primary, and every row
    // is applied once.
    let staged_after: i64 = c
        .query_one("SELECT count(*) FROM raw_events", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        staged_after >= staged_before,
        "{staged_after} < {staged_before}"
    );
    let t = Instant::now();
    loop {
        let pending = kick_shared::db::pending_events(&c).await.unwrap().0;
        if pending == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{pending} rows pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.check_history().await.unwrap();
    // The services did not die: they reconnected.
    assert!(writer.is_running(), "{}", stack.log_tail(&writer));
    assert!(collector.is_running(), "{}", stack.log_tail(&collector));
    let (code, out, _, _) = stack.admin(&["status"]);
    assert_eq!(code, 0, "healthy on the new primary\n{out}");
    assert_eq!(collector.terminate(), Some(0));
    assert_eq!(writer.terminate(), Some(0));
}
