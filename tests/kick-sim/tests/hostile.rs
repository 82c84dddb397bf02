//! Hostile inputs kick-sim can produce, checked with real clients: raw and generated WebSocket
//! frames arrive exactly as asked, hostile Centrifugo and Pusher handshakes, and the REST faults
//! per endpoint family.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::*;

fn opts() -> kick_sim::Options {
    kick_sim::Options {
        streamers: 5,
        ..kick_sim::Options::ideal()
    }
}

#[tokio::test]
async fn raw_frames_arrive_byte_exact_where_asked() {
    let s = start(opts()).await;
    let url = format!("{}/connection/websocket", s.url().replace("http", "ws"));
    let (mut subscribed, _) = centrifugo(&s, &url).await;
    assert_eq!(
        subscribe(&mut subscribed, 2, "channel.2000013").await,
        json!({"id": 2, "subscribe": {}})
    );
    let (mut other, _) = centrifugo(&s, &url).await;
    let mut p = pusher(&s, &["channel.2000026"]).await;

    // NUL, a lone control character and broken JSON, only to the sockets on channel.2000013.
    let text = "a\u{0}b\u{1}{\"not\": json \u{fffd}";
    let v = control(
        &s,
        "/control/sockets/raw",
        json!({"text": text, "channel": "channel.2000013", "repeat": 3}),
    )
    .await;
    assert_eq!(
        (v["sockets"].as_u64(), v["frames"].as_u64()),
        (Some(1), Some(3))
    );
    for _ in 0..3 {
        assert_eq!(next_text(&mut subscribed).await.as_bytes(), text.as_bytes());
    }
    assert_eq!(
        text_within(&mut other, Duration::from_millis(300)).await,
        None
    );
    assert_eq!(text_within(&mut p, Duration::from_millis(300)).await, None);

    // One transport only.
    let v = control(
        &s,
        "/control/sockets/raw",
        json!({"text": "\u{0}", "transport": "pusher"}),
    )
    .await;
    assert_eq!(v["sockets"], 1);
    assert_eq!(next_text(&mut p).await, "\u{0}");
    assert_eq!(
        text_within(&mut other, Duration::from_millis(300)).await,
        None
    );

    // A binary frame, to everyone.
    let bytes = [0u8, 159, 146, 150, 255];
    let v = control(
        &s,
        "/control/sockets/raw",
        json!({"binary": base64::engine::general_purpose::STANDARD.encode(bytes)}),
    )
    .await;
    assert_eq!(v["sockets"], 3);
    for w in [&mut subscribed, &mut other, &mut p] {
        match next_message(w, Duration::from_secs(5)).await {
            Some(Message::Binary(b)) => assert_eq!(b.as_ref(), bytes),
            other => panic!("{other:?}"),
        }
    }

    // Bad requests.
    for body in [
        json!({}),
        json!({"text": "a", "binary": "AA=="}),
        json!({"binary": "not base64!"}),
        json!({"text": "a", "nonsense": 1}),
    ] {
        assert_eq!(
            control_answer(&s, "/control/sockets/raw", body.clone())
                .await
                .status
                / 100,
            4,
            "{body}"
        );
    }
}

#[tokio::test]
async fn generated_frames_are_hostile_in_each_envelope() {
    let s = start(opts()).await;
    let url = format!("{}/connection/websocket", s.url().replace("http", "ws"));
    let (mut c, _) = centrifugo(&s, &url).await;
    subscribe(&mut c, 2, "channel.2000013").await;
    let mut p = pusher(&s, &["channel.2000013"]).await;
    let raw = |generate: Value| json!({"generate": generate, "channel": "channel.2000013"});

    // A StreamerIsLive whose title holds U+0000, valid JSON in both envelopes.
    control(
        &s,
        "/control/sockets/raw",
        raw(json!({"kind": "nul-title"})),
    )
    .await;
    let pf: Value = serde_json::from_str(&next_text(&mut p).await).unwrap();
    let cf: Value = serde_json::from_str(&next_text(&mut c).await).unwrap();
    assert_eq!(pf["event"], "App\\Events\\StreamerIsLive");
    assert_eq!(pf["channel"], "channel.2000013");
    assert_eq!(cf["push"]["channel"], "channel.2000013");
    for data in [&pf["data"], &cf["push"]["pub"]["data"]["data"]] {
        let inner: Value = serde_json::from_str(data.as_str().unwrap()).unwrap();
        assert_eq!(inner["livestream"]["channel_id"], 2_000_013);
        assert!(
            inner["livestream"]["session_title"]
                .as_str()
                .unwrap()
                .contains('\u{0}')
        );
    }
    control(
        &s,
        "/control/sockets/raw",
        raw(json!({"kind": "nul-title", "event": "offline"})),
    )
    .await;
    let pf: Value = serde_json::from_str(&next_text(&mut p).await).unwrap();
    assert_eq!(pf["event"], "App\\Events\\StopStreamBroadcast");
    next_text(&mut c).await;

    // A valid frame of exactly 10 MiB on both transports.
    let size = 10 << 20;
    control(
        &s,
        "/control/sockets/raw",
        raw(json!({"kind": "huge-frame", "bytes": size})),
    )
    .await;
    for w in [&mut p, &mut c] {
        let t = next_text(w).await;
        assert_eq!(t.len(), size);
        assert!(serde_json::from_str::<Value>(&t).is_ok());
    }

    // 3000 nested arrays as data: more than a default JSON parser takes.
    control(
        &s,
        "/control/sockets/raw",
        raw(json!({"kind": "deep-json", "depth": 3000})),
    )
    .await;
    let t = next_text(&mut p).await;
    assert!(t.contains(&"[".repeat(3000)));
    assert!(
        serde_json::from_str::<Value>(&t).is_err(),
        "recursion limit"
    );
    next_text(&mut c).await;
    control(
        &s,
        "/control/sockets/raw",
        raw(json!({"kind": "deep-json", "depth": 3000, "in_string": true})),
    )
    .await;
    let v: Value = serde_json::from_str(&next_text(&mut p).await).unwrap();
    assert!(serde_json::from_str::<Value>(v["data"].as_str().unwrap()).is_err());
    next_text(&mut c).await;

    // Wrong types: every frame parses, and its ids are not plain integers.
    let v = control(
        &s,
        "/control/sockets/raw",
        raw(json!({"kind": "wrong-types"})),
    )
    .await;
    let n = v["frames_per_socket"].as_u64().unwrap();
    assert!(n >= 10, "{v}");
    let mut kinds = std::collections::HashSet::new();
    for _ in 0..n {
        let f: Value = serde_json::from_str(&next_text(&mut p).await).unwrap();
        next_text(&mut c).await;
        let inner = match &f["data"] {
            Value::String(d) => serde_json::from_str::<Value>(d).unwrap(),
            other => other.clone(),
        };
        let id = &inner["livestream"]["id"];
        kinds.insert(match id {
            Value::Object(_) => "object",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_f64() => "float",
            Value::Number(n) if n.as_u64() == Some(u64::MAX) => "u64::MAX",
            Value::Number(n) if n.as_i64().is_some_and(|i| i < 0) => "negative",
            _ => "other",
        });
    }
    for k in ["object", "bool", "float", "u64::MAX", "negative"] {
        assert!(kinds.contains(k), "{k} missing from {kinds:?}");
    }

    // Huge numbers: 1e400 does not even fit an f64.
    let v = control(
        &s,
        "/control/sockets/raw",
        raw(json!({"kind": "huge-numbers"})),
    )
    .await;
    let n = v["frames_per_socket"].as_u64().unwrap();
    let mut texts = String::new();
    for _ in 0..n {
        texts.push_str(&next_text(&mut p).await);
        next_text(&mut c).await;
    }
    for literal in ["1e400", "123456789012345678901234567890", "1e-400", "-0"] {
        assert!(texts.contains(literal), "{literal}");
    }
}

#[tokio::test]
async fn centrifugo_connect_reply_can_be_hostile() {
    let s = start(kick_sim::Options {
        streamers: 5,
        ping_interval: Duration::from_secs(1),
        ..kick_sim::Options::ideal()
    })
    .await;
    let url = format!("{}/connection/websocket", s.url().replace("http", "ws"));

    // u64::MAX everywhere: sent as is, and the server never pings.
    control(
        &s,
        "/control/centrifugo",
        json!({"ping": u64::MAX, "ttl": u64::MAX, "pong": false}),
    )
    .await;
    let (mut w, reply) = centrifugo(&s, &url).await;
    assert_eq!(reply["connect"]["ping"].as_u64(), Some(u64::MAX));
    assert_eq!(reply["connect"]["ttl"].as_u64(), Some(u64::MAX));
    assert_eq!(reply["connect"]["pong"], false);
    assert_eq!(text_within(&mut w, Duration::from_millis(2500)).await, None);

    // No ping field: the server does not ping; no ttl: no expiry fields.
    let v = control(
        &s,
        "/control/centrifugo",
        json!({"ping": null, "ttl": null}),
    )
    .await;
    assert_eq!(v["ping"], Value::Null);
    let (mut w, reply) = centrifugo(&s, &url).await;
    let connect = reply["connect"].as_object().unwrap();
    for absent in ["ping", "ttl", "expires"] {
        assert!(!connect.contains_key(absent), "{absent} in {reply}");
    }
    assert_eq!(text_within(&mut w, Duration::from_millis(2500)).await, None);

    // A refused connect.
    control(
        &s,
        "/control/centrifugo",
        json!({"connect_error": {"code": 101, "message": "unauthorized"}}),
    )
    .await;
    let (_w, reply) = centrifugo(&s, &url).await;
    assert_eq!(
        reply,
        json!({"id": 1, "error": {"code": 101, "message": "unauthorized"}})
    );

    // Reset: Kick's reply again, and a ping within the interval.
    control(&s, "/control/centrifugo", json!({"reset": true})).await;
    let (mut w, reply) = centrifugo(&s, &url).await;
    assert_eq!(reply["connect"]["ping"], 1);
    assert_eq!(reply["connect"]["pong"], true);
    assert_eq!(
        text_within(&mut w, Duration::from_secs(3)).await.as_deref(),
        Some("{}")
    );
    assert_eq!(
        control_answer(&s, "/control/centrifugo", json!({"ping": -1}))
            .await
            .status
            / 100,
        4
    );
}

#[tokio::test]
async fn pusher_activity_timeout_can_be_any_u64() {
    let s = start(kick_sim::Options {
        streamers: 5,
        activity_timeout: Duration::from_secs(1),
        ..kick_sim::Options::ideal()
    })
    .await;
    control(&s, "/control/pusher", json!({"activity_timeout": u64::MAX})).await;
    let mut w = ws(&s.pusher_url(), None).await;
    let hello: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["activity_timeout"].as_u64(), Some(u64::MAX));
    // The server does not ping after 1 s of silence any more.
    assert_eq!(text_within(&mut w, Duration::from_millis(2000)).await, None);
    // Back to the option: a ping after a second of silence.
    control(&s, "/control/pusher", json!({"activity_timeout": null})).await;
    let mut w = ws(&s.pusher_url(), None).await;
    next_text(&mut w).await;
    let ping: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    assert_eq!(ping["event"], "pusher:ping");
}

#[tokio::test]
async fn rest_faults_hit_only_their_family() {
    let s = start(opts()).await;
    let t = token(&s).await;
    let channels = "/public/v1/channels?broadcaster_user_id=1000007&broadcaster_user_id=1000014";

    // A huge body: valid JSON, exactly the size asked (10 MiB by default).
    control(
        &s,
        "/control/rest",
        json!({"mode": "huge-body", "requests": 1}),
    )
    .await;
    let a = get(&s, &t, channels).await;
    assert_eq!((a.status, a.text.len()), (200, 10 << 20));
    assert!(a.json.is_object());
    control(
        &s,
        "/control/rest",
        json!({"mode": "huge-body", "bytes": 4096, "requests": 1, "endpoints": ["oauth"]}),
    )
    .await;
    assert_eq!(token_answer(&s).await.text.len(), 4096);
    assert_eq!(
        get(&s, &t, channels).await.json["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Hostile expires_in: u64::MAX by default, then any JSON value, then none; the tokens work.
    control(
        &s,
        "/control/rest",
        json!({"mode": "huge-expires-in", "seconds": 60}),
    )
    .await;
    let a = token_answer(&s).await;
    assert_eq!(a.json["expires_in"].as_u64(), Some(u64::MAX));
    let t2 = a.json["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(&s, &t2, channels).await.status, 200, "api unaffected");
    for value in [json!("3600"), json!(-1), json!(1.5e300), Value::Null] {
        control(
            &s,
            "/control/rest",
            json!({"mode": "huge-expires-in", "expires_in": value}),
        )
        .await;
        let a = token_answer(&s).await;
        assert_eq!(a.json["expires_in"], value);
        assert!(a.json.as_object().unwrap().contains_key("expires_in"));
    }
    control(
        &s,
        "/control/rest",
        json!({"mode": "huge-expires-in", "omit_expires_in": true}),
    )
    .await;
    let a = token_answer(&s).await;
    assert!(
        !a.json.as_object().unwrap().contains_key("expires_in"),
        "{}",
        a.text
    );
    assert!(a.json["access_token"].is_string());
    control(
        &s,
        "/control/rest",
        json!({"mode": "normal", "endpoints": ["oauth"]}),
    )
    .await;

    // Wrong types in API items.
    control(
        &s,
        "/control/rest",
        json!({"mode": "wrong-types", "requests": 1}),
    )
    .await;
    let a = get(&s, &t, channels).await;
    let items = a.json["data"].as_array().unwrap();
    assert!(items[0]["broadcaster_user_id"].is_string());
    assert!(items[1]["broadcaster_user_id"].is_object());
    assert!(items.iter().all(|i| i["stream"]["is_live"].is_string()));
    assert!(get(&s, &t, channels).await.json["data"][0]["broadcaster_user_id"].is_i64());

    // Slow.
    control(
        &s,
        "/control/rest",
        json!({"mode": "slow", "delay_ms": 400, "requests": 1}),
    )
    .await;
    let at = Instant::now();
    assert_eq!(get(&s, &t, channels).await.status, 200);
    assert!(at.elapsed() >= Duration::from_millis(400));

    // Cloudflare challenge (403), country block (423), 429 with Retry-After on OAuth only.
    control(&s, "/control/rest", json!({"mode": "403", "requests": 1})).await;
    let a = get(&s, &t, channels).await;
    assert_eq!(a.status, 403);
    assert!(a.text.contains("Just a moment") && a.text.contains("_cf_chl_opt"));
    assert_eq!(a.header("cf-mitigated"), Some("challenge"));
    assert!(a.header("content-type").unwrap().starts_with("text/html"));
    control(&s, "/control/rest", json!({"mode": "423", "requests": 1})).await;
    assert_eq!(get(&s, &t, channels).await.status, 423);
    control(
        &s,
        "/control/rest",
        json!({"mode": "429", "endpoints": ["oauth"], "retry_after": 9, "seconds": 60}),
    )
    .await;
    let a = token_answer(&s).await;
    assert_eq!((a.status, a.header("retry-after")), (429, Some("9")));
    assert_eq!(get(&s, &t, channels).await.status, 200, "api unaffected");

    // Every other request, for four faulted requests.
    control(
        &s,
        "/control/rest",
        json!({"mode": "500", "every": 2, "requests": 4}),
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(get(&s, &t, channels).await.status);
    }
    assert_eq!(codes, [200, 500, 200, 500, 200, 500, 200, 500, 200, 200]);

    // Normal clears every family.
    control(
        &s,
        "/control/rest",
        json!({"mode": "500", "endpoints": ["api", "oauth", "negotiation", "web"]}),
    )
    .await;
    let stats = control_get(&s, "/control/stats").await;
    assert_eq!(stats["faults"].as_object().unwrap().len(), 4, "{stats}");
    control(&s, "/control/rest", json!({"mode": "normal"})).await;
    assert_eq!(get(&s, &t, channels).await.status, 200);
    assert_eq!(token_answer(&s).await.status, 200);
    assert!(
        control_get(&s, "/control/settings").await["faults"]
            .as_object()
            .unwrap()
            .is_empty()
    );

    // Modes that make no sense for a family are refused.
    for body in [
        json!({"mode": "wrong-types", "endpoints": ["oauth"]}),
        json!({"mode": "huge-expires-in", "endpoints": ["api"]}),
        json!({"mode": "teapot"}),
        json!({"mode": "500", "requests": 0}),
    ] {
        assert_eq!(
            control_answer(&s, "/control/rest", body.clone())
                .await
                .status,
            400,
            "{body}"
        );
    }
}
