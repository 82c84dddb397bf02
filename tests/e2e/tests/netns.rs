//! Collectors as separate hosts: three network namespaces (`ip netns` + veth; needs root), each
//! with its own link to PostgreSQL and to Kick. One host's database link goes down (packets
//! dropped, connections hanging, as in a real partition) under 20 flips/s:
//! - its leases expire and the other hosts take its shards over within 15 s;
//! - when the link comes back, what it saw during the cut is not staged under its lost tokens
//!   (fencing, audited in `raw_events.lease_token`), and it rejoins with its share;
//! - every streamer ends as kick-sim says, with no history row doubled.

use std::time::{Duration, Instant};

use kick_e2e::netcut::Link;
use kick_e2e::netns::{self, Host};
use kick_e2e::{Stack, bin_dir};
use kick_sim::Options;
use serde_json::json;

const STREAMERS: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_from_postgresql_is_fenced_and_rejoins() {
    if let Err(e) = netns::available() {
        // Root is what `./scripts/test` and CI have; a developer's unprivileged run says why.
        assert!(
            !is_root(),
            "network namespaces should work as root here: {e}"
        );
        eprintln!("SKIPPED: network namespaces need root and iproute2 ({e})");
        return;
    }
    let stack = Stack::start_at(
        "0.0.0.0:0".parse().unwrap(),
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
    let socket = stack.pg_socket();
    let forwarder = bin_dir().join("kick-forward");
    let mut hosts = Vec::new();
    let mut links = Vec::new();
    for i in 1..=3u8 {
        let mut h = Host::create(i).unwrap();
        h.forward_kick(&forwarder, stack.sim.addr.port()).unwrap();
        // PostgreSQL, as the host sees it: the machine's end of its database link.
        links.push(Link::start_on(h.db_ip.into(), socket.clone()).await);
        hosts.push(h);
    }
    let mut writer = stack.spawn("kick-writer", &[]);
    let ids = ["h1", "h2", "h3"];
    let mut collectors = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let (host, port) = (h.db_ip.to_string(), links[i].port.to_string());
        collectors.push(stack.spawn_wrapped(
            "kick-collector",
            &h.wrapper(),
            &[
                ("COLLECTOR_ID", ids[i]),
                ("DATABASE_HOST", host.as_str()),
                ("DATABASE_PORT", port.as_str()),
            ],
        ));
    }
    let t = Instant::now();
    stack
        .wait_balanced(&ids, STREAMERS, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.all_logs(30)));
    eprintln!(
        "3 hosts: every channel subscribed exactly once after {:?}; leases {:?}",
        t.elapsed(),
        stack.lease_owners().await
    );
    stack
        .converge(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.all_logs(30)));

    stack.control("/control/flap", json!({"rate": 20})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let audit = stack.before_cut("h3").await;
    hosts[2].cut_db();
    let t0 = Instant::now();
    stack.wait_taken_over("h3", Duration::from_secs(15)).await;
    let takeover = t0.elapsed();
    eprintln!("h3 cut off from PostgreSQL: its leases taken over after {takeover:?}");
    // The others subscribe h3's channels (h3 still does: its Kick link is up).
    let t = Instant::now();
    while stack.sim.sim.channel_subscriptions().len() < STREAMERS {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    hosts[2].heal_db();
    eprintln!("h3's database link back after {:?}", t0.elapsed());
    let t = Instant::now();
    stack
        .wait_balanced(&ids, STREAMERS, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.all_logs(30)));
    eprintln!("h3 rejoined, rebalanced after {:?}", t.elapsed());
    stack.control("/control/flap/stop", json!({})).await;
    stack
        .converge(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.all_logs(30)));
    // Fencing: nothing h3 staged after the cut carries a token it had lost.
    let stale = stack.staged_under_lost_tokens(&audit).await;
    assert_eq!(stale, 0, "rows staged by h3 under tokens it had lost");
    let refused = std::fs::read_to_string(&collectors[2].log)
        .unwrap()
        .contains("their shard's lease has passed to another collector");
    assert!(
        refused,
        "h3 must have tried to stage what it saw during the cut (and been refused)"
    );
    stack.settle_history(Duration::from_secs(30)).await;
    for svc in collectors.iter_mut() {
        assert_eq!(svc.terminate(), Some(0), "{}", stack.log_tail(svc));
    }
    assert_eq!(writer.terminate(), Some(0));
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
