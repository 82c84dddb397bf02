//! Kick's webhooks with the real binaries: `kick-webhooks` (under its own least-privilege role)
//! receiving kick-sim's signed deliveries, hostile requests answered with their status codes and
//! staging nothing, a late delivery that changes nothing, and `kick-admin webhooks sync` against
//! kick-sim's subscription API.

use std::time::{Duration, Instant};

use base64::Engine as _;
use kick_e2e::{Service, Stack};
use kick_sim::Options;
use serde_json::{Value, json};

const STREAMERS: usize = 6;

fn opts() -> Options {
    Options {
        streamers: STREAMERS,
        ping_interval: Duration::from_secs(1),
        ..Options::default()
    }
}

const SETTINGS: &[(&str, &str)] = &[
    ("KICK_RECONCILE_INTERVAL", "1h"),
    ("KICK_POLL_INTERVAL", "1h"),
    ("WRITER_POLL_INTERVAL", "200ms"),
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running receiver and where it listens.
struct Receiver {
    svc: Service,
    url: String,
    metrics: String,
}

/// `kick-webhooks` as the `kick_webhooks` role (after `db roles`), with `WEBHOOKS=on`.
async fn receiver(stack: &Stack, extra: &[(&str, &str)]) -> Receiver {
    let (code, _, err, _) = stack.admin(&["db", "roles"]);
    assert_eq!(code, 0, "db roles: {err}");
    let port = free_port();
    let mport = free_port();
    let listen = format!("127.0.0.1:{port}");
    let maddr = format!("127.0.0.1:{mport}");
    let mut env: Vec<(&str, &str)> = vec![
        ("DATABASE_USER", "kick_webhooks"),
        ("WEBHOOK_LISTEN", &listen),
        ("METRICS_ADDR", &maddr),
        ("WEBHOOKS", "on"),
    ];
    env.extend_from_slice(extra);
    let svc = stack.spawn("kick-webhooks", &env);
    let r = Receiver {
        svc,
        url: format!("http://{listen}/kick/webhook"),
        metrics: format!("http://{maddr}"),
    };
    // Listening as soon as it is ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{}/healthz", r.metrics))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "kick-webhooks did not start\n{}",
            stack.log_tail(&r.svc)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(stack: &Stack, sql: &str) -> i64 {
    stack
        .client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

async fn status_of(stack: &Stack, slug: &str) -> (String, Option<String>) {
    let r = stack
        .client()
        .await
        .query_one(
            "SELECT status, status_source FROM streamers WHERE username = $1",
            &[&slug],
        )
        .await
        .unwrap();
    (r.get("status"), r.get("status_source"))
}

fn now_ts() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn status_body(user_id: i64, live: bool, started: &str, ended: Option<&str>) -> String {
    json!({
        "broadcaster": {"is_anonymous": false, "user_id": user_id, "username": "x",
                        "is_verified": false, "channel_slug": "x", "identity": null},
        "is_live": live, "title": "t", "started_at": started, "ended_at": ended,
    })
    .to_string()
}

/// POSTs a delivery with Kick's headers; `None` headers are left out.
async fn post(
    url: &str,
    id: Option<&str>,
    ts: Option<&str>,
    sig: Option<&str>,
    event: &str,
    body: String,
) -> u16 {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .header("Kick-Event-Type", event)
        .header("Kick-Event-Version", "1");
    for (name, v) in [
        ("Kick-Event-Message-Id", id),
        ("Kick-Event-Message-Timestamp", ts),
        ("Kick-Event-Signature", sig),
    ] {
        if let Some(v) = v {
            req = req.header(name, v);
        }
    }
    req.body(body).send().await.unwrap().status().as_u16()
}

/// A delivery signed with kick-sim's key (the key its `/public/v1/public-key` serves).
async fn deliver(url: &str, id: &str, ts: &str, body: String) -> u16 {
    let sig = kick_sim::webhooks::sign(id, ts, &body);
    post(
        url,
        Some(id),
        Some(ts),
        Some(&sig),
        "livestream.status.updated",
        body,
    )
    .await
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_become_status_and_history_once() {
    let stack = Stack::start(opts(), SETTINGS).await;
    let writer = stack.spawn("kick-writer", &[]);
    let rx = receiver(&stack, &[]).await;
    // WEBHOOKS=on: the receiver subscribes every enabled streamer and records it.
    wait_for("the subscriptions", Duration::from_secs(20), || async {
        count(&stack, "SELECT count(*) FROM webhook_subscriptions").await == STREAMERS as i64
    })
    .await;
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM v_streamer_status WHERE coverage = 'webhook'"
        )
        .await,
        STREAMERS as i64,
        "no realtime collector runs: every streamer has webhook coverage"
    );
    stack
        .control(
            "/control/webhooks",
            json!({"url": rx.url, "duplicate": true}),
        )
        .await;
    let sim = &stack.sim.sim;
    sim.set_live(0, true);
    wait_for("streamer0 online", Duration::from_secs(10), || async {
        status_of(&stack, "streamer0").await == ("online".into(), Some("webhook".into()))
    })
    .await;
    sim.set_live(0, false);
    wait_for("streamer0 offline", Duration::from_secs(10), || async {
        status_of(&stack, "streamer0").await.0 == "offline"
    })
    .await;
    // Each delivery came twice (duplicate: true): staged once each, two history rows.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM raw_events WHERE source = 'webhook'"
        )
        .await,
        2,
        "a repeated delivery is staged once"
    );
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM status_events e JOIN streamers s ON s.id = e.streamer_id
             WHERE s.username = 'streamer0' AND e.source = 'webhook'"
        )
        .await,
        2
    );
    let m = reqwest::get(format!("{}/metrics", rx.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&m, "kick_webhooks_requests_total{status=\"200\"}"),
        4.0,
        "{m}"
    );
    assert_eq!(metric(&m, "kick_webhooks_healthy"), 1.0, "{m}");
    assert_eq!(metric(&m, "kick_webhooks_subscriptions"), STREAMERS as f64);
    // Removing a streamer unsubscribes it (streamers_changed → sync).
    stack
        .client()
        .await
        .execute(
            "UPDATE streamers SET enabled = false WHERE username = 'streamer5'",
            &[],
        )
        .await
        .unwrap();
    stack
        .client()
        .await
        .batch_execute("NOTIFY streamers_changed")
        .await
        .unwrap();
    wait_for("the removal", Duration::from_secs(20), || async {
        count(&stack, "SELECT count(*) FROM webhook_subscriptions").await == STREAMERS as i64 - 1
    })
    .await;
    for mut s in [writer, rx.svc] {
        assert!(s.is_running(), "{} died", s.name);
        assert_eq!(s.terminate(), Some(0), "{} exits cleanly", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_status_and_stage_nothing() {
    let stack = Stack::start(opts(), SETTINGS).await;
    let rx = receiver(&stack, &[("WEBHOOKS", "off")]).await;
    let url = rx.url.as_str();
    let user = 1_000_000; // streamer0
    let now = now_ts();
    let body = status_body(user, true, &now, None);
    // A valid delivery, then the same delivery again (a replay): 200 both, staged once.
    assert_eq!(deliver(url, "01JGOOD", &now, body.clone()).await, 200);
    assert_eq!(deliver(url, "01JGOOD", &now, body.clone()).await, 200);
    // Signed over another body.
    let sig = kick_sim::webhooks::sign("01JBAD1", &now, "{}");
    let ev = "livestream.status.updated";
    assert_eq!(
        post(
            url,
            Some("01JBAD1"),
            Some(&now),
            Some(&sig),
            ev,
            body.clone()
        )
        .await,
        401
    );
    // Signed by another key.
    let other = {
        use rsa::signature::{SignatureEncoding, Signer};
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
        let sig = signer.sign(format!("01JBAD2.{now}.{body}").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
    };
    assert_eq!(
        post(
            url,
            Some("01JBAD2"),
            Some(&now),
            Some(&other),
            ev,
            body.clone()
        )
        .await,
        401
    );
    // Unsigned.
    assert_eq!(
        post(url, Some("01JBAD3"), Some(&now), None, ev, body.clone()).await,
        401
    );
    // A correct signature over a timestamp 10 minutes old (a captured delivery replayed).
    let old = (chrono::Utc::now() - chrono::Duration::minutes(10))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(deliver(url, "01JBAD4", &old, body.clone()).await, 401);
    // Malformed: a timestamp that is no time, a signature that is no base64.
    assert_eq!(
        deliver(url, "01JBAD5", "yesterday", body.clone()).await,
        400
    );
    assert_eq!(
        post(
            url,
            Some("01JBAD6"),
            Some(&now),
            Some("%%%"),
            ev,
            body.clone()
        )
        .await,
        400
    );
    // Wrong JSON types, correctly signed.
    let wrong = json!({"broadcaster": {"user_id": "1000000"}, "is_live": "yes"}).to_string();
    assert_eq!(deliver(url, "01JBAD7", &now, wrong).await, 400);
    assert_eq!(deliver(url, "01JBAD8", &now, "not json".into()).await, 400);
    // Times that cannot order anything: far in the future (it would outrank every real event),
    // no start at all, an end delivery without its end.
    let future = status_body(user, true, "2999-01-01T00:00:00Z", None);
    assert_eq!(deliver(url, "01JBADA", &now, future).await, 400);
    let no_start = json!({"broadcaster": {"user_id": user}, "is_live": true}).to_string();
    assert_eq!(deliver(url, "01JBADB", &now, no_start).await, 400);
    let no_end = status_body(user, false, &now, None);
    assert_eq!(deliver(url, "01JBADC", &now, no_end).await, 400);
    // A message id that is not ASCII is malformed, not missing.
    let raw = reqwest::Client::new()
        .post(url)
        .header(
            "Kick-Event-Message-Id",
            reqwest::header::HeaderValue::from_bytes("été".as_bytes()).unwrap(),
        )
        .header("Kick-Event-Message-Timestamp", &now)
        .header("Kick-Event-Signature", "AAAA")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    // A version of the event we do not know: acknowledged, not staged.
    let sig = kick_sim::webhooks::sign("01JV2", &now, &body);
    let v2 = reqwest::Client::new()
        .post(url)
        .header("Kick-Event-Message-Id", "01JV2")
        .header("Kick-Event-Message-Timestamp", &now)
        .header("Kick-Event-Signature", &sig)
        .header("Kick-Event-Type", ev)
        .header("Kick-Event-Version", "2")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status().as_u16(), 200);
    // Over 64 KiB.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    assert_eq!(deliver(url, "01JBAD9", &now, big).await, 413);
    // Another method, another path.
    let http = reqwest::Client::new();
    assert_eq!(http.get(url).send().await.unwrap().status().as_u16(), 405);
    let elsewhere = url.replace("/kick/webhook", "/other");
    assert_eq!(
        http.post(&elsewhere)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    // A verified event type we do not act on: acknowledged, ignored.
    let chat = json!({"message_id": "m", "content": "hi"}).to_string();
    let sig = kick_sim::webhooks::sign("01JCHAT", &now, &chat);
    assert_eq!(
        post(
            url,
            Some("01JCHAT"),
            Some(&now),
            Some(&sig),
            "chat.message.sent",
            chat
        )
        .await,
        200
    );

    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM raw_events WHERE source = 'webhook'"
        )
        .await,
        1,
        "only the valid delivery is staged, once"
    );
    let m = reqwest::get(format!("{}/metrics", rx.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures = |r: &str| {
        metric(
            &m,
            &format!("kick_webhooks_verification_failures_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(failures("bad_signature"), 2.0, "{m}");
    assert_eq!(failures("unsigned"), 1.0, "{m}");
    assert_eq!(failures("stale"), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "kick_webhooks_ignored_total{event=\"chat.message.sent\"}"
        ),
        1.0
    );
    assert_eq!(failures("bad_body"), 5.0, "{m}");
    assert_eq!(metric(&m, "kick_webhooks_db_up"), 1.0, "staging works: {m}");
    let log = stack.log_tail(&rx.svc);
    assert!(
        log.contains("01JBAD1") && log.contains("WARN"),
        "refusals are logged at WARN with the message id\n{log}"
    );
    // Still healthy: hostile requests are counted, not fatal.
    let h: Value = reqwest::get(format!("{}/healthz", rx.metrics))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["healthy"], true, "{h}");

    // A flood of refusals logs its budget (20 lines a window of 10 s); when silence follows,
    // the rest is still summed up in one line once the window is over.
    for i in 0..60 {
        let id = format!("01JFLOOD{i}");
        assert_eq!(
            post(
                url,
                Some(&id),
                Some(&now),
                None,
                "livestream.status.updated",
                "{}".into()
            )
            .await,
            401
        );
    }
    let flooded = Instant::now();
    wait_for(
        "the summary line of the refusals not logged",
        Duration::from_secs(20),
        || async {
            stack
                .log_tail(&rx.svc)
                .contains("webhook refusals not logged")
        },
    )
    .await;
    let log = stack.log_tail(&rx.svc);
    let logged = log.matches("01JFLOOD").count();
    assert!(
        logged < 30,
        "{logged} of 60 refusals logged one by one:\n{log}"
    );
    eprintln!(
        "summary line {:?} after the flood; {logged} refusals logged one by one",
        flooded.elapsed()
    );
}

/// Realtime sees session A end and session B start; then the webhook deliveries of A (its start
/// and its end), held back by Kick, arrive: they are stale, and B stays online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delivery_never_overrides_a_newer_session() {
    let stack = Stack::start(opts(), SETTINGS).await;
    let writer = stack.spawn("kick-writer", &[]);
    let collector = stack.spawn("kick-collector", &[]);
    let rx = receiver(&stack, &[]).await;
    stack
        .settle(
            STREAMERS as i64,
            Duration::from_secs(30),
            Duration::from_secs(30),
            &collector,
        )
        .await;
    wait_for("the subscriptions", Duration::from_secs(20), || async {
        count(&stack, "SELECT count(*) FROM webhook_subscriptions").await == STREAMERS as i64
    })
    .await;
    // Deliveries are held back 12 s (Kick's are minutes to hours late).
    stack
        .control(
            "/control/webhooks",
            json!({"url": rx.url, "delay_ms": 12_000}),
        )
        .await;
    let sim = &stack.sim.sim;
    sim.set_live(1, true);
    let a = sim.streamer(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    sim.set_live(1, false);
    // Sessions start more than the same-session tolerance apart.
    tokio::time::sleep(Duration::from_secs(7)).await;
    sim.set_live(1, true);
    let b = sim.streamer(1);
    assert_ne!(a.livestream_id, b.livestream_id);
    stack.converge(Duration::from_secs(5)).await.unwrap();
    // The three deliveries arrive (A live, A ended, B live), late.
    wait_for("the late deliveries", Duration::from_secs(30), || async {
        count(
            &stack,
            "SELECT count(*) FROM raw_events WHERE source = 'webhook' AND processed_at IS NOT NULL",
        )
        .await
            == 3
    })
    .await;
    let c = stack.client().await;
    let outcomes: Vec<String> = c
        .query(
            "SELECT outcome FROM raw_events WHERE source = 'webhook' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("outcome"))
        .collect();
    assert_eq!(
        outcomes,
        ["stale", "stale", "duplicate"],
        "A's two deliveries are stale"
    );
    let r = c
        .query_one(
            "SELECT status, livestream_id FROM streamers WHERE username = 'streamer1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>("status"), "online");
    assert_eq!(r.get::<_, Option<i64>>("livestream_id"), b.livestream_id);
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM status_events e JOIN streamers s ON s.id = e.streamer_id
             WHERE s.username = 'streamer1' AND e.source = 'webhook'"
        )
        .await,
        0,
        "no history from the late deliveries"
    );
    // A hand-made late end of session A, signed now: stale as well.
    let started = a.started_at.unwrap().to_rfc3339();
    let ended = (a.started_at.unwrap() + chrono::Duration::seconds(1)).to_rfc3339();
    let body = status_body(a.user_id, false, &started, Some(&ended));
    assert_eq!(deliver(&rx.url, "01JLATEEND", &now_ts(), body).await, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status_of(&stack, "streamer1").await.0, "online");
    for mut s in [writer, collector, rx.svc] {
        assert_eq!(s.terminate(), Some(0), "{} exits cleanly", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_sync_creates_is_idempotent_removes_and_reports_the_limit() {
    let stack = Stack::start(
        Options {
            streamers: 60,
            events_delete_limit: Some(50),
            ..opts()
        },
        SETTINGS,
    )
    .await;
    // A dry run plans, changes nothing.
    let (code, out, err, _) = stack.admin(&["webhooks", "sync", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["create"].as_array().unwrap().len(), 60);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM webhook_subscriptions").await,
        0
    );
    // Create.
    let (code, out, err, _) = stack.admin(&["webhooks", "sync", "--json"]);
    assert_eq!(code, 0, "{err}");
    let done: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(done["created"], 60, "{done}");
    assert_eq!(
        count(&stack, "SELECT count(*) FROM webhook_subscriptions").await,
        60
    );
    // Idempotent.
    let (code, out, _, _) = stack.admin(&["webhooks", "sync", "--json"]);
    assert_eq!(code, 0);
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (again["created"].clone(), again["deleted"].clone()),
        (json!(0), json!(0)),
        "{again}"
    );
    // `list`: every streamer subscribed.
    let (code, out, _, _) = stack.admin(&["webhooks", "list", "--json"]);
    assert_eq!(code, 0);
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        rows.iter().filter(|r| r["state"] == "subscribed").count(),
        60
    );
    // Removal: 55 streamers disabled → 55 subscriptions deleted (two DELETEs of ≤ 50 ids).
    stack
        .client()
        .await
        .execute(
            "UPDATE streamers SET enabled = false WHERE kick_user_id >= 1000000 + 7 * 5",
            &[],
        )
        .await
        .unwrap();
    let (code, out, err, _) = stack.admin(&["webhooks", "sync", "--json"]);
    assert_eq!(code, 0, "{err}");
    let removed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(removed["deleted"], 55, "{removed}");
    assert_eq!(
        count(&stack, "SELECT count(*) FROM webhook_subscriptions").await,
        5
    );
    let (_, out, _, _) = stack.admin(&["webhooks", "list"]);
    assert!(out.contains("5 subscribed, 0 missing, 0 orphaned"), "{out}");
    // The limit: Kick refuses beyond 8 subscriptions; the refusals are reported, exit 75.
    stack
        .control("/control/events", json!({"subscription_limit": 8}))
        .await;
    stack
        .client()
        .await
        .execute("UPDATE streamers SET enabled = true", &[])
        .await
        .unwrap();
    let (code, out, err, _) = stack.admin(&["webhooks", "sync"]);
    assert_eq!(code, 75, "{out}{err}");
    assert!(out.contains("created 3,"), "{out}");
    assert!(err.contains("subscription limit reached"), "{err}");
    assert_eq!(
        count(&stack, "SELECT count(*) FROM webhook_subscriptions").await,
        8
    );
}
