//! The control API (`/control/*`): the truth about every streamer, making streamers go live or
//! offline, random flapping, dropping or stalling sockets, sending malformed or oversized frames,
//! REST faults (429 with Retry-After, 500, an HTML challenge with status 200), and the log of
//! what was published when.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{Out, RestFault, Sim, Transport};

type S = State<Arc<Sim>>;

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/control/streamers", get(streamers))
        .route("/control/streamers/{slug}/live", post(live))
        .route("/control/streamers/{slug}/offline", post(offline))
        .route("/control/flap", post(flap))
        .route("/control/flap/stop", post(flap_stop))
        .route("/control/sockets/drop", post(drop_sockets))
        .route("/control/sockets/stall", post(stall_sockets))
        .route("/control/sockets/malformed", post(malformed))
        .route("/control/rest", post(rest_fault))
        .route("/control/published", get(published))
        .route("/control/stats", get(stats))
        .route("/control/webhooks", post(webhook_target))
        .route("/control/seed", post(seed))
}

async fn streamers(State(sim): S) -> Response {
    let w = sim.world.lock().unwrap();
    Json(json!({ "streamers": w.streamers })).into_response()
}

fn set(sim: &Arc<Sim>, slug: &str, live: bool) -> Response {
    let idx = sim.world.lock().unwrap().by_slug.get(slug).copied();
    match idx {
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such streamer"})),
        )
            .into_response(),
        Some(i) => {
            let changed = sim.set_live(i, live);
            let w = sim.world.lock().unwrap();
            Json(json!({"changed": changed, "streamer": w.streamers[i]})).into_response()
        }
    }
}

async fn live(State(sim): S, Path(slug): Path<String>) -> Response {
    set(&sim, &slug, true)
}

async fn offline(State(sim): S, Path(slug): Path<String>) -> Response {
    set(&sim, &slug, false)
}

#[derive(Debug, Deserialize)]
struct Flap {
    /// Flips per second across all streamers.
    rate: f64,
    /// Only the first `streamers` streamers flap (default: all).
    streamers: Option<usize>,
    /// Stop by itself after this many seconds (default: until /control/flap/stop).
    seconds: Option<f64>,
}

async fn flap(State(sim): S, Json(f): Json<Flap>) -> Response {
    if !(f.rate > 0.0 && f.rate <= 100_000.0) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "rate must be in (0, 100000]"})),
        )
            .into_response();
    }
    let token = CancellationToken::new();
    if let Some(old) = sim.flapping.lock().unwrap().replace(token.clone()) {
        old.cancel();
    }
    let n = f
        .streamers
        .unwrap_or(usize::MAX)
        .min(sim.world.lock().unwrap().streamers.len());
    let until = f
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    tokio::spawn(async move {
        let start = Instant::now();
        let mut done: u64 = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            if until.is_some_and(|u| Instant::now() > u) {
                return;
            }
            let due = (start.elapsed().as_secs_f64() * f.rate) as u64;
            while done < due {
                let i = rand::random_range(0..n.max(1));
                let live = !sim.world.lock().unwrap().streamers[i].live;
                sim.set_live(i, live);
                done += 1;
            }
        }
    });
    Json(json!({"flapping": true, "rate": f.rate, "streamers": n})).into_response()
}

async fn flap_stop(State(sim): S) -> Response {
    if let Some(t) = sim.flapping.lock().unwrap().take() {
        t.cancel();
    }
    Json(json!({"flapping": false})).into_response()
}

#[derive(Debug, Deserialize)]
struct Drop {
    code: u16,
    #[serde(default)]
    reason: String,
    transport: Option<Transport>,
    fraction: Option<f64>,
}

async fn drop_sockets(State(sim): S, Json(d): Json<Drop>) -> Response {
    let n = sim.to_sockets(
        d.transport,
        d.fraction.unwrap_or(1.0),
        &Out::Close(d.code, d.reason),
    );
    Json(json!({"dropped": n})).into_response()
}

#[derive(Debug, Deserialize)]
struct Stall {
    transport: Option<Transport>,
    fraction: Option<f64>,
}

async fn stall_sockets(State(sim): S, Json(s): Json<Stall>) -> Response {
    let n = sim.to_sockets(s.transport, s.fraction.unwrap_or(1.0), &Out::Stall);
    Json(json!({"stalled": n})).into_response()
}

#[derive(Debug, Deserialize)]
struct Malformed {
    /// "garbage" (not JSON), "truncated" (cut JSON), "oversized" (a valid 2 MB frame),
    /// "bad-live" (a StreamerIsLive without ids).
    kind: String,
    transport: Option<Transport>,
}

async fn malformed(State(sim): S, Json(m): Json<Malformed>) -> Response {
    let text: Arc<str> = match m.kind.as_str() {
        "garbage" => "\u{1}not json at all \u{fffd}".into(),
        "truncated" => r#"{"event":"App\\Events\\StreamerIsLive","data":"{\"livest"#.into(),
        "oversized" => {
            let pad = "x".repeat(2 << 20);
            json!({"event": "App\\Events\\FollowersUpdated", "data": json!({"pad": pad}).to_string(), "channel": "channel.1"}).to_string().into()
        }
        "bad-live" => {
            // A StreamerIsLive without ids, in each transport's envelope.
            let pusher = json!({"event": "App\\Events\\StreamerIsLive", "data": "[]", "channel": "channel.1"});
            let centrifugo = json!({"push": {"channel": "channel.1", "pub": {"data": {"event": "App\\Events\\StreamerIsLive", "data": "[]"}}}});
            let mut n = 0;
            if m.transport != Some(Transport::Centrifugo) {
                n += sim.to_sockets(
                    Some(Transport::Pusher),
                    1.0,
                    &Out::Text(pusher.to_string().into()),
                );
            }
            if m.transport != Some(Transport::Pusher) {
                n += sim.to_sockets(
                    Some(Transport::Centrifugo),
                    1.0,
                    &Out::Text(centrifugo.to_string().into()),
                );
            }
            return Json(json!({"sent": n})).into_response();
        }
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "unknown kind"})),
            )
                .into_response();
        }
    };
    let n = sim.to_sockets(m.transport, 1.0, &Out::Text(text));
    Json(json!({"sent": n})).into_response()
}

#[derive(Debug, Deserialize)]
struct Rest {
    /// "429", "500", "html" or "normal".
    mode: String,
    #[serde(default = "default_seconds")]
    seconds: f64,
    #[serde(default = "default_retry_after")]
    retry_after: u64,
}

fn default_seconds() -> f64 {
    30.0
}
fn default_retry_after() -> u64 {
    2
}

async fn rest_fault(State(sim): S, Json(r): Json<Rest>) -> Response {
    let fault = match r.mode.as_str() {
        "429" => Some(RestFault::RateLimited {
            retry_after: r.retry_after,
        }),
        "500" => Some(RestFault::ServerError),
        "html" => Some(RestFault::Html),
        "normal" => None,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "mode is 429, 500, html or normal"})),
            )
                .into_response();
        }
    };
    *sim.rest_fault.lock().unwrap() =
        fault.map(|f| (f, Instant::now() + Duration::from_secs_f64(r.seconds)));
    Json(json!({"mode": r.mode, "seconds": r.seconds})).into_response()
}

#[derive(Debug, Deserialize)]
struct Since {
    since: Option<u64>,
    limit: Option<usize>,
}

async fn published(State(sim): S, Query(q): Query<Since>) -> Response {
    let since = q.since.unwrap_or(0);
    let limit = q.limit.unwrap_or(100_000);
    let p = sim.published.lock().unwrap();
    let start = p.partition_point(|e| e.seq <= since);
    let items: Vec<_> = p[start..].iter().take(limit).collect();
    Json(json!({"published": items, "last_seq": sim.seq.load(Ordering::Relaxed)})).into_response()
}

async fn stats(State(sim): S) -> Response {
    let (sockets, subscriptions) = sim.socket_count();
    let w = sim.world.lock().unwrap();
    Json(json!({
        "streamers": w.streamers.len(),
        "live": w.streamers.iter().filter(|s| s.live).count(),
        "sockets": sockets,
        "subscriptions": subscriptions,
        "published": sim.seq.load(Ordering::Relaxed),
        "api_requests": sim.api_requests.load(Ordering::Relaxed),
    }))
    .into_response()
}

/// Realistic noise on `channel.{id}` feeds: followers and subscription events from the recorded
/// shapes, so clients must filter.
pub async fn noise(sim: Arc<Sim>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let start = Instant::now();
    let mut done: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = (start.elapsed().as_secs_f64() * sim.opts.noise_rate) as u64;
        while done < due {
            done += 1;
            let (channel_id, followers, slug) = {
                let w = sim.world.lock().unwrap();
                if w.streamers.is_empty() {
                    return;
                }
                let s = &w.streamers[rand::random_range(0..w.streamers.len())];
                (s.channel_id, s.followers, s.slug.clone())
            };
            let ch = format!("channel.{channel_id}");
            if done.is_multiple_of(2) {
                let data = json!({"followersCount": followers, "channel_id": channel_id, "username": null, "created_at": chrono::Utc::now().timestamp(), "followed": true});
                sim.publish(&ch, "App\\Events\\FollowersUpdated", &data.to_string());
            } else {
                let data =
                    json!({"user_ids": [75609757], "username": slug, "channel_id": channel_id});
                sim.publish(
                    &ch,
                    "App\\Events\\ChannelSubscriptionEvent",
                    &data.to_string(),
                );
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct WebhookTarget {
    /// The app's webhook URL (Kick: a setting of the app, not of a subscription).
    url: Option<String>,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    duplicate: bool,
}

/// Sets where `livestream.status.updated` deliveries go, their delay, and whether each is sent
/// twice (Kick has been seen to deliver duplicates).
async fn webhook_target(State(sim): S, Json(t): Json<WebhookTarget>) -> Response {
    *sim.webhook_target.lock().unwrap() = crate::webhooks::Target {
        url: t.url.clone(),
        delay: Duration::from_millis(t.delay_ms),
        duplicate: t.duplicate,
    };
    Json(json!({"url": t.url, "delay_ms": t.delay_ms, "duplicate": t.duplicate})).into_response()
}

#[derive(Debug, Deserialize)]
struct Seed {
    streamers: usize,
}

/// Replaces the world with `streamers` generated streamers, all offline (the same numbering as
/// `--streamers`). Sockets stay connected; their subscriptions keep their feed names.
async fn seed(State(sim): S, Json(s): Json<Seed>) -> Response {
    if s.streamers > 1_000_000 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "at most 1,000,000 streamers"})),
        )
            .into_response();
    }
    sim.world.lock().unwrap().reseed(s.streamers);
    Json(json!({"streamers": s.streamers})).into_response()
}
