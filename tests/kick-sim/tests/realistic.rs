//! The realistic Kick (`Options::realistic()` and the single switches), checked with real
//! clients: regions, the Centrifugo subscription limit, slugs that differ from usernames,
//! renames, v1 livestreams gone and v2 paging, negotiation refusals, a dead Pusher key offered
//! first, missing channels, the API rate limit, the website API, the Events API's limits and
//! auto-unsubscribe, and the per-channel subscription statistics.

mod common;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};

use common::*;

fn realistic(streamers: usize) -> kick_sim::Options {
    kick_sim::Options {
        streamers,
        ..kick_sim::Options::realistic()
    }
}

fn default(streamers: usize) -> kick_sim::Options {
    kick_sim::Options {
        streamers,
        ..kick_sim::Options::ideal()
    }
}

#[tokio::test]
async fn publications_reach_only_the_channels_region() {
    let s = start(realistic(6)).await;
    let general = realtime(&s, "/api/v1/realtime/connection", negotiation_body()).await;
    let east = centrifugo_element(&general.json)["credentials"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        east.ends_with("/region/us-east-1/connection/websocket"),
        "{east}"
    );
    // streamer1 (channel 2000013) is served by the second region.
    let west = centrifugo_url_for(&s, 2_000_013).await;
    assert!(
        west.ends_with("/region/us-west-2/connection/websocket"),
        "{west}"
    );
    assert_eq!(centrifugo_url_for(&s, 2_000_000).await, east);
    let unknown = realtime(
        &s,
        "/api/v1/realtime/channels/999/chat/connection",
        negotiation_body(),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json["message"].is_string());

    // Both regions accept the subscription; only the channel's own delivers.
    let (mut a, _) = centrifugo(&s, &east).await;
    let (mut b, _) = centrifugo(&s, &west).await;
    assert_eq!(
        subscribe(&mut a, 2, "channel.2000013").await,
        json!({"id": 2, "subscribe": {}})
    );
    assert_eq!(
        subscribe(&mut b, 2, "channel.2000013").await,
        json!({"id": 2, "subscribe": {}})
    );
    let stats = control_get(&s, "/control/stats").await;
    assert_eq!(
        stats["regions"]["us-east-1"],
        json!({"sockets": 1, "subscriptions": 1})
    );
    assert_eq!(
        stats["regions"]["us-west-2"],
        json!({"sockets": 1, "subscriptions": 1})
    );
    s.sim.set_live(1, true);
    let push: Value = serde_json::from_str(&next_text(&mut b).await).unwrap();
    assert_eq!(
        push["push"]["pub"]["data"]["event"],
        "App\\Events\\StreamerIsLive"
    );
    assert_eq!(text_within(&mut a, Duration::from_millis(500)).await, None);

    // Moved to the first region: now only that one delivers. The plain path is the first region.
    let v = control(
        &s,
        "/control/streamers/streamer1/region",
        json!({"region": "us-east-1"}),
    )
    .await;
    assert_eq!(v["streamer"]["region"], "us-east-1");
    assert_eq!(centrifugo_url_for(&s, 2_000_013).await, east);
    let plain = format!("{}/connection/websocket", s.url().replace("http", "ws"));
    let (mut c, _) = centrifugo(&s, &plain).await;
    subscribe(&mut c, 2, "channel.2000013").await;
    s.sim.set_live(1, false);
    for w in [&mut a, &mut c] {
        let push: Value = serde_json::from_str(&next_text(w).await).unwrap();
        assert_eq!(
            push["push"]["pub"]["data"]["event"],
            "App\\Events\\StopStreamBroadcast"
        );
    }
    assert_eq!(text_within(&mut b, Duration::from_millis(500)).await, None);
    // Pusher is one cluster: it gets every channel.
    let mut p = pusher(&s, &["channel.2000013"]).await;
    s.sim.set_live(1, true);
    let f: Value = serde_json::from_str(&next_text(&mut p).await).unwrap();
    assert_eq!(f["event"], "App\\Events\\StreamerIsLive");

    let bad = control_answer(
        &s,
        "/control/streamers/streamer1/region",
        json!({"region": "eu-central-1"}),
    )
    .await;
    assert_eq!(bad.status, 400);
    // Without regions there is nothing to move to, and no region endpoints.
    let plain_sim = start(default(3)).await;
    assert_eq!(
        control_answer(
            &plain_sim,
            "/control/streamers/streamer1/region",
            json!({"region": "us-east-1"})
        )
        .await
        .status,
        400
    );
    let url = format!(
        "{}/region/us-east-1/connection/websocket",
        plain_sim.url().replace("http", "ws")
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_129th_subscription_gets_error_106() {
    let s = start(realistic(2)).await;
    let url = centrifugo_url_for(&s, 2_000_000).await;
    let (mut w, _) = centrifugo(&s, &url).await;
    // 129 subscribes in one frame, as chatterino7 batches them.
    let frame: Vec<String> = (0..129)
        .map(|i| {
            json!({"subscribe": {"channel": format!("channel.{}", 10 + i), "flag": 0}, "id": 2 + i})
                .to_string()
        })
        .collect();
    w.send(tokio_tungstenite::tungstenite::Message::Text(
        frame.join("\n").into(),
    ))
    .await
    .unwrap();
    let replies: Vec<Value> = next_text(&mut w)
        .await
        .split('\n')
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), 129);
    assert!(replies[..128].iter().all(|r| r["subscribe"] == json!({})));
    assert_eq!(
        replies[128],
        json!({"id": 130, "error": {"code": 106, "message": "limit exceeded"}})
    );
    // Changed at runtime: one more fits, then unlimited.
    let v = control(
        &s,
        "/control/centrifugo",
        json!({"subscription_limit": 129}),
    )
    .await;
    assert_eq!(v["subscription_limit"], 129);
    assert_eq!(
        subscribe(&mut w, 200, "channel.500").await["subscribe"],
        json!({})
    );
    assert_eq!(
        subscribe(&mut w, 201, "channel.501").await["error"]["code"],
        106
    );
    control(
        &s,
        "/control/centrifugo",
        json!({"subscription_limit": null}),
    )
    .await;
    assert_eq!(
        subscribe(&mut w, 202, "channel.501").await["subscribe"],
        json!({})
    );
    // An unsubscribe frees a place.
    control(
        &s,
        "/control/centrifugo",
        json!({"subscription_limit": 130}),
    )
    .await;
    assert_eq!(
        subscribe(&mut w, 203, "channel.502").await["error"]["code"],
        106
    );
    send(
        &mut w,
        json!({"unsubscribe": {"channel": "channel.10"}, "id": 204}),
    )
    .await;
    next_text(&mut w).await;
    assert_eq!(
        subscribe(&mut w, 205, "channel.502").await["subscribe"],
        json!({})
    );
}

#[tokio::test]
async fn slugs_differ_from_usernames_and_follow_renames() {
    let s = start(realistic(20)).await;
    let t = token(&s).await;
    let streamer9 = s.sim.streamer(9);
    assert_eq!(
        (streamer9.slug.as_str(), streamer9.display_name.as_str()),
        ("the-streamer-9", "The_Streamer_9")
    );
    assert_eq!(
        get(&s, &t, "/public/v1/channels?slug=the_streamer_9")
            .await
            .status,
        400,
        "the username is not a slug"
    );
    let a = get(&s, &t, "/public/v1/channels?slug=the-streamer-9").await;
    assert_eq!(a.json["data"][0]["broadcaster_user_id"], streamer9.user_id);
    let a = get(
        &s,
        &t,
        &format!("/public/v1/users?id={}", streamer9.user_id),
    )
    .await;
    assert_eq!(a.json["data"][0]["name"], "The_Streamer_9");

    // A rename keeps the ids; the old slug becomes unknown everywhere.
    let v = control(
        &s,
        "/control/streamers/the-streamer-9/rename",
        json!({"slug": "renamed-nine"}),
    )
    .await;
    assert_eq!(v["streamer"]["user_id"], streamer9.user_id);
    assert_eq!(v["streamer"]["channel_id"], streamer9.channel_id);
    assert_eq!(
        get(&s, &t, "/public/v1/channels?slug=the-streamer-9")
            .await
            .status,
        400
    );
    let a = get(
        &s,
        &t,
        &format!(
            "/public/v1/channels?broadcaster_user_id={}",
            streamer9.user_id
        ),
    )
    .await;
    assert_eq!(a.json["data"][0]["slug"], "renamed-nine");
    for bad in ["a_b", "Upper", &"x".repeat(26), "streamer1", ""] {
        let a = control_answer(
            &s,
            "/control/streamers/renamed-nine/rename",
            json!({"slug": bad}),
        )
        .await;
        assert_eq!(a.status, 400, "{bad}: {}", a.text);
    }
    assert_eq!(
        control_answer(&s, "/control/streamers/nobody/rename", json!({"slug": "x"}))
            .await
            .status,
        404
    );
    assert!(s.sim.truth().contains_key("renamed-nine"));
}

#[tokio::test]
async fn v1_livestreams_removed_and_v2_pages_oldest_first() {
    let s = start(realistic(12)).await;
    let t = token(&s).await;
    let a = get(&s, &t, "/public/v1/livestreams").await;
    assert_eq!(a.status, 404);
    for i in [7, 2, 11, 4, 0] {
        s.sim.set_live(i, true);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut order = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let a = get(
            &s,
            &t,
            &format!("/public/v2/livestreams?limit=2&cursor={cursor}"),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text);
        pages += 1;
        for item in a.json["data"].as_array().unwrap() {
            assert!(
                item.get("channel_id").is_none(),
                "no channel id in v2: {item}"
            );
            for key in [
                "id",
                "title",
                "viewer_count",
                "thumbnail",
                "broadcaster_user",
                "channel",
                "category",
                "language_code",
                "started_at",
                "tags",
                "has_mature_content",
            ] {
                assert!(item.get(key).is_some(), "{key} missing: {item}");
            }
            order.push(item["channel"]["slug"].as_str().unwrap().to_owned());
        }
        cursor = a.json["pagination"]["next_cursor"]
            .as_str()
            .unwrap()
            .to_owned();
        if cursor.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        order,
        [
            "streamer7",
            "streamer2",
            "streamer11",
            "streamer4",
            "streamer0"
        ]
    );
    assert_eq!(
        get(&s, &t, "/public/v2/livestreams?limit=0").await.status,
        400
    );
    assert_eq!(
        get(&s, &t, "/public/v2/livestreams?cursor=%21")
            .await
            .status,
        400
    );
    assert_eq!(
        get(&s, &t, "/public/v2/livestreams?category_id=99")
            .await
            .json["data"],
        json!([])
    );
    // Switched back at runtime.
    control(&s, "/control/api", json!({"v1_livestreams_removed": false})).await;
    let a = get(&s, &t, "/public/v1/livestreams").await;
    assert_eq!(a.json["data"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn negotiation_refusals_and_request_counting() {
    let s = start(default(3)).await;
    control(
        &s,
        "/control/rest",
        json!({"mode": "429", "endpoints": ["negotiation"], "requests": 3, "retry_after": 7}),
    )
    .await;
    for path in [
        "/api/v1/realtime/connection",
        "/api/v1/realtime/channels/2000013/chat/connection",
        "/api/v1/realtime/auth/connection",
    ] {
        let a = realtime(&s, path, json!({"client_id": "c"})).await;
        assert_eq!(
            (a.status, a.header("retry-after")),
            (429, Some("7")),
            "{path}"
        );
    }
    let a = realtime(&s, "/api/v1/realtime/connection", negotiation_body()).await;
    assert_eq!(a.status, 200, "after three requests");
    for (mode, status) in [("403", 403), ("423", 423), ("500", 500)] {
        control(
            &s,
            "/control/rest",
            json!({"mode": mode, "endpoints": ["negotiation"], "seconds": 30}),
        )
        .await;
        let a = realtime(&s, "/api/v1/realtime/connection", negotiation_body()).await;
        assert_eq!(a.status, status, "{mode}");
        if mode == "403" {
            assert!(a.text.contains("Just a moment"));
        }
    }
    // The other families are untouched.
    assert_eq!(token_answer(&s).await.status, 200);
    control(&s, "/control/rest", json!({"mode": "normal"})).await;
    let stats = control_get(&s, "/control/stats").await;
    let n = &stats["negotiation_requests"];
    assert_eq!(n["total"], 7, "{stats}");
    assert!(n["max_1s"].as_u64().unwrap() >= 1);
    assert!(n["last_1s"].as_u64().unwrap() <= 7);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stats = control_get(&s, "/control/stats").await;
    assert_eq!(stats["negotiation_requests"]["last_1s"], 0);
}

#[tokio::test]
async fn a_dead_pusher_key_is_offered_first() {
    let s = start(realistic(3)).await;
    let a = realtime(&s, "/api/v1/realtime/connection", negotiation_body()).await;
    let connections = a.json["data"]["connections"].as_array().unwrap().clone();
    assert_eq!(connections.len(), 2, "{}", a.text);
    assert_eq!(connections[0]["provider"], "pusher");
    assert_eq!(connections[1]["provider"], "centrifugo");
    let key = connections[0]["credentials"]["app_key"].as_str().unwrap();
    assert_ne!(key, s.sim.opts.pusher_key);
    let mut w = ws(&s.pusher_url().replace(&s.sim.opts.pusher_key, key), None).await;
    let err: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    assert_eq!(err["event"], "pusher:error");
    assert_eq!(err["data"]["code"], 4001);
    assert_eq!(close_code(&mut w).await, 4001);
    // A client that only speaks Centrifugo is offered Centrifugo alone.
    let body = json!({"client": {"id": "x", "type": "web"}, "capabilities": {"accepted_providers": [{"provider": "centrifugo"}]}});
    let a = realtime(&s, "/api/v1/realtime/connection", body).await;
    assert_eq!(a.json["data"]["connections"].as_array().unwrap().len(), 1);
    // Off at runtime: the configured order and the working key.
    control(
        &s,
        "/control/negotiation",
        json!({"pusher_dead_key_first": false}),
    )
    .await;
    let a = realtime(&s, "/api/v1/realtime/connection", negotiation_body()).await;
    assert_eq!(a.json["data"]["connections"][0]["provider"], "centrifugo");
    assert_eq!(
        a.json["data"]["connections"][1]["credentials"]["app_key"],
        s.sim.opts.pusher_key
    );
}

#[tokio::test]
async fn channels_can_be_missing_from_answers() {
    let s = start(realistic(60)).await;
    let t = token(&s).await;
    // Realistic: streamer25 is missing (as banned channels are).
    let ids: String = [0, 1, 25]
        .iter()
        .map(|i| format!("broadcaster_user_id={}&", s.sim.streamer(*i).user_id))
        .collect();
    let a = get(&s, &t, &format!("/public/v1/channels?{ids}")).await;
    let slugs: Vec<&str> = a.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["streamer0", "streamer1"]);
    // Chosen at runtime (the set is replaced).
    let v = control(
        &s,
        "/control/api",
        json!({"missing_user_ids": [s.sim.streamer(1).user_id]}),
    )
    .await;
    assert_eq!(v["missing_user_ids"], json!([s.sim.streamer(1).user_id]));
    let a = get(&s, &t, &format!("/public/v1/channels?{ids}")).await;
    let slugs: Vec<&str> = a.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["streamer0", "streamer25"]);
    let a = get(&s, &t, "/public/v1/channels?slug=streamer1&slug=streamer0").await;
    assert_eq!(a.status, 200, "absent, not unknown");
    assert_eq!(a.json["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_api_rate_limit_answers_429_with_retry_after() {
    let s = start(default(3)).await;
    let t = token(&s).await;
    let path = "/public/v1/channels?slug=streamer1";
    assert_eq!(get(&s, &t, path).await.status, 200);
    // One token per 10 s, a burst of 3: the fourth request is refused whatever the machine's load.
    control(
        &s,
        "/control/api",
        json!({"rate_limit": {"per_second": 0.1, "burst": 3}}),
    )
    .await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&s, &t, path).await);
    }
    assert_eq!(
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        [200, 200, 200, 429]
    );
    let retry: u64 = answers[3].header("retry-after").unwrap().parse().unwrap();
    assert!((9..=10).contains(&retry), "{retry}");
    assert_eq!(answers[3].json["message"], "Too Many Requests");
    // Per app token: a new token has its own bucket.
    let t2 = token(&s).await;
    assert_eq!(get(&s, &t2, path).await.status, 200);
    let stats = control_get(&s, "/control/stats").await;
    assert_eq!(stats["api_rate_limited"], 1);
    // The bucket refills at the rate (a new limit starts with full buckets).
    control(
        &s,
        "/control/api",
        json!({"rate_limit": {"per_second": 2, "burst": 1}}),
    )
    .await;
    assert_eq!(get(&s, &t, path).await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&s, &t, path).await.status, 200);
    control(&s, "/control/api", json!({"rate_limit": null})).await;
    for _ in 0..10 {
        assert_eq!(get(&s, &t, path).await.status, 200);
    }
    // Realistic: 10/s with a burst of 20.
    let r = start(realistic(3)).await;
    let t = token(&r).await;
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get(&r, &t, path).await.status);
    }
    let refilled = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");
    let n_ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(n_ok <= 20 + refilled, "{n_ok} within {refilled} refills");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
}

#[tokio::test]
async fn the_website_channel_endpoint_matches_the_fixture_and_can_be_walled() {
    let s = start(default(3)).await;
    let http = reqwest::Client::new();
    let get_web = |slug: &str| {
        let url = format!("{}/api/v2/channels/{slug}", s.url());
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let (status, body) = get_web("streamer1").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/kick/website-api-v2-channels.adinross.offline.2023-11.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&v), keys(&fixture));
    assert_eq!(keys(&v["chatroom"]), keys(&fixture["chatroom"]));
    assert_eq!(keys(&v["user"]), keys(&fixture["user"]));
    let streamer = s.sim.streamer(1);
    assert_eq!(v["id"], streamer.channel_id, "id is the channel id");
    assert_eq!(v["user_id"], streamer.user_id);
    assert_eq!(v["chatroom"]["id"], streamer.chatroom_id);
    assert_eq!(v["chatroom"]["chatable_type"], "App\\Models\\Channel");
    assert_eq!(v["livestream"], Value::Null);
    s.sim.set_live(1, true);
    let (_, body) = get_web("streamer1").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["livestream"]["id"],
        s.sim.streamer(1).livestream_id.unwrap()
    );
    assert_eq!(v["livestream"]["is_live"], true);
    let (status, body) = get_web("nobody").await;
    assert_eq!(status, 404);
    assert!(body.contains("No query results for model"));

    // Walled: a Cloudflare challenge, then a 429.
    control(
        &s,
        "/control/rest",
        json!({"mode": "403", "endpoints": ["web"], "requests": 1}),
    )
    .await;
    let (status, body) = get_web("streamer1").await;
    assert_eq!(status, 403);
    assert!(body.contains("Just a moment"));
    control(
        &s,
        "/control/rest",
        json!({"mode": "429", "endpoints": ["web"], "requests": 1}),
    )
    .await;
    assert_eq!(get_web("streamer1").await.0, 429);
    assert_eq!(get_web("streamer1").await.0, 200);
    let stats = control_get(&s, "/control/stats").await;
    assert_eq!(stats["web_requests"]["total"], 6, "{stats}");
    assert!(stats["web_requests"]["max_1s"].as_u64().unwrap() >= 1);

    // Realistic: every fourth request is challenged.
    let r = start(realistic(3)).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        let r = http
            .get(format!("{}/api/v2/channels/streamer1", r.url()))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 403, 200, 200, 200, 403]);
}

#[tokio::test]
async fn events_api_limits() {
    let s = start(default(3)).await;
    let t = token(&s).await;
    let path = "/public/v1/events/subscriptions";
    let no_broadcaster = post_api(
        &s,
        &t,
        path,
        json!({"events": [{"name": "livestream.status.updated", "version": 1}], "method": "webhook"}),
    )
    .await;
    assert_eq!(
        no_broadcaster.status, 400,
        "an app token must name the broadcaster"
    );
    control(
        &s,
        "/control/events",
        json!({"subscription_limit": 2, "delete_limit": 50}),
    )
    .await;
    let body = |user: i64, names: &[&str]| json!({"broadcaster_user_id": user, "events": names.iter().map(|n| json!({"name": n, "version": 1})).collect::<Vec<_>>(), "method": "webhook"});
    let a = post_api(
        &s,
        &t,
        path,
        body(
            1_000_000,
            &["livestream.status.updated", "chat.message.sent"],
        ),
    )
    .await;
    assert_eq!(a.status, 200);
    let a = post_api(
        &s,
        &t,
        path,
        body(
            1_000_007,
            &["livestream.status.updated", "livestream.status.updated"],
        ),
    )
    .await;
    assert_eq!(a.status, 200);
    let items = a.json["data"].as_array().unwrap();
    assert!(items[0]["subscription_id"].is_string());
    assert_eq!(
        items[1],
        json!({"name": "livestream.status.updated", "version": 1, "error": "subscription limit reached"})
    );
    // Filtered listing.
    let a = get(&s, &t, &format!("{path}?broadcaster_user_id=1000007")).await;
    let listed = a.json["data"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["broadcaster_user_id"], 1_000_007);
    assert_eq!(
        get(&s, &t, path).await.json["data"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // More than 50 ids in one DELETE fails; 50 work.
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let many: String = (0..51).map(|i| format!("id=x{i}&")).collect();
    let a = delete(&s, &t, &format!("{path}?{many}id={id}")).await;
    assert_eq!(a.status, 400);
    let fifty: String = (0..49).map(|i| format!("id=x{i}&")).collect();
    assert_eq!(
        delete(&s, &t, &format!("{path}?{fifty}id={id}"))
            .await
            .status,
        204
    );
    assert_eq!(
        get(&s, &t, path).await.json["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let v = control(&s, "/control/events", json!({"subscription_limit": null})).await;
    assert_eq!(v["subscription_limit"], Value::Null);
    assert_eq!(v["delete_limit"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_webhook_deliveries_unsubscribe_the_app() {
    let s = start(default(3)).await;
    let t = token(&s).await;
    // A receiver that always fails.
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    control(&s, "/control/events", json!({"unsubscribe_after": 3})).await;
    control(&s, "/control/webhooks", json!({"url": hook})).await;
    for user in [1_000_000, 1_000_007] {
        let body = json!({"broadcaster_user_id": user, "events": [{"name": "livestream.status.updated", "version": 1}], "method": "webhook"});
        post_api(&s, &t, "/public/v1/events/subscriptions", body).await;
    }
    s.sim.set_live(1, true);
    s.sim.set_live(1, false);
    let stats = || {
        let s = &s;
        async move { control_get(s, "/control/stats").await }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats().await["webhooks"]["failed"] != 2 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let subs = get(&s, &t, "/public/v1/events/subscriptions").await;
    assert_eq!(
        subs.json["data"].as_array().unwrap().len(),
        2,
        "still subscribed"
    );
    s.sim.set_live(0, true);
    while stats().await["webhooks"]["auto_unsubscribed"] != 2 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let subs = get(&s, &t, "/public/v1/events/subscriptions").await;
    assert_eq!(subs.json["data"], json!([]));
    assert_eq!(stats().await["webhooks"]["sent"], 3);
}

#[tokio::test]
async fn stats_show_channels_subscribed_more_than_once() {
    let s = start(default(5)).await;
    let url = format!("{}/connection/websocket", s.url().replace("http", "ws"));
    let (mut a, _) = centrifugo(&s, &url).await;
    let (mut b, _) = centrifugo(&s, &url).await;
    subscribe(&mut a, 2, "channel.2000013").await;
    subscribe(&mut a, 3, "channel.2000026").await;
    subscribe(&mut b, 2, "channel.2000013").await;
    let _p = pusher(&s, &["channel.2000039"]).await;
    let stats = control_get(&s, "/control/stats").await;
    assert_eq!(stats["channels_subscribed"], 3, "{stats}");
    assert_eq!(stats["subscriptions_duplicated"], 1);
    assert_eq!(stats["subscriptions"], 4);
    assert_eq!(
        stats["transports"]["pusher"],
        json!({"sockets": 1, "subscriptions": 1})
    );
    assert_eq!(
        stats["regions"]["default"],
        json!({"sockets": 2, "subscriptions": 3})
    );
    let subs = control_get(&s, "/control/subscriptions").await;
    assert_eq!(
        subs["channels"],
        json!({"channel.2000013": 2, "channel.2000026": 1, "channel.2000039": 1})
    );
    let dup = control_get(&s, "/control/subscriptions?duplicated=true").await;
    assert_eq!(dup["channels"], json!({"channel.2000013": 2}));
    // An unsubscribe and a closed socket leave no trace.
    send(
        &mut b,
        json!({"unsubscribe": {"channel": "channel.2000013"}, "id": 9}),
    )
    .await;
    next_text(&mut b).await;
    drop(a);
    eventually("socket a unregistered", Duration::from_secs(5), || {
        s.sim.socket_count().0 == 2
    })
    .await;
    let subs = control_get(&s, "/control/subscriptions").await;
    assert_eq!(subs["channels"], json!({"channel.2000039": 1}));
    assert_eq!(subs["subscriptions_duplicated"], 0);
}

#[tokio::test]
async fn settings_are_reported() {
    let s = start(realistic(3)).await;
    let v = control_get(&s, "/control/settings").await;
    assert_eq!(v["centrifugo"]["subscription_limit"], 128);
    assert_eq!(
        v["api"]["rate_limit"],
        json!({"per_second": 10.0, "burst": 20})
    );
    assert_eq!(v["api"]["v1_livestreams_removed"], true);
    assert_eq!(
        v["negotiation"]["regions"],
        json!(["us-east-1", "us-west-2"])
    );
    assert_eq!(
        v["events"],
        json!({"subscription_limit": 10000, "delete_limit": 50, "unsubscribe_after": 20})
    );
    assert_eq!(v["faults"]["web"]["every"], 4);
    let d = start(default(3)).await;
    let v = control_get(&d, "/control/settings").await;
    assert_eq!(v["centrifugo"]["subscription_limit"], Value::Null);
    assert_eq!(v["api"]["rate_limit"], Value::Null);
    assert_eq!(v["faults"], json!({}));
    // Unknown keys are refused, so a typo does not silently do nothing.
    assert_eq!(
        control_answer(&d, "/control/api", json!({"v1_livestream_removed": true}))
            .await
            .status
            / 100,
        4
    );
}
