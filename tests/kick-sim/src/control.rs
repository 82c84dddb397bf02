//! The control API (`/control/*`): the truth about every streamer, making streamers go live or
//! offline, renaming them or moving them to another region, random flapping, dropping or
//! stalling sockets, sending malformed or oversized frames (raw ones are in `hostile`), REST
//! faults per endpoint family, hostile Centrifugo and Pusher handshakes, the realistic switches
//! (v1 livestreams removed, missing channels, rate limit, dead Pusher key, Events API limits),
//! statistics, and the log of what was published when.
//!
//! Every settings endpoint changes only the keys it is given and answers the resulting settings.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::faults::{ALL_FAMILIES, Family, Fault, FaultMode};
use crate::limits::RateLimit;
use crate::{Out, Sim, Transport};

type S = State<Arc<Sim>>;

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/control/streamers", get(streamers))
        .route("/control/streamers/{slug}/live", post(live))
        .route("/control/streamers/{slug}/offline", post(offline))
        .route("/control/streamers/{slug}/region", post(move_region))
        .route("/control/streamers/{slug}/rename", post(rename))
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
        .route("/control/centrifugo", post(centrifugo_settings))
        .route("/control/pusher", post(pusher_settings))
        .route("/control/api", post(api_settings))
        .route("/control/negotiation", post(negotiation_settings))
        .route("/control/events", post(events_settings))
        .route("/control/subscriptions", get(subscriptions))
        .route("/control/settings", get(settings))
}

/// Deserializes a key that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Deserializes a key that may be absent (`None`) or any JSON value, `null` included.
fn present_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

fn no_such_streamer() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no such streamer"})),
    )
        .into_response()
}

fn index_of(sim: &Sim, slug: &str) -> Option<usize> {
    sim.world.lock().unwrap().by_slug.get(slug).copied()
}

async fn streamers(State(sim): S) -> Response {
    let w = sim.world.lock().unwrap();
    Json(json!({ "streamers": w.streamers })).into_response()
}

fn set(sim: &Arc<Sim>, slug: &str, live: bool, title: Option<String>) -> Response {
    let Some(i) = index_of(sim, slug) else {
        return no_such_streamer();
    };
    if let Some(title) = title {
        sim.world.lock().unwrap().streamers[i].title = title;
    }
    let changed = sim.set_live(i, live);
    let w = sim.world.lock().unwrap();
    Json(json!({"changed": changed, "streamer": w.streamers[i]})).into_response()
}

/// The optional body of `/live`: the session title to go live with (any text, U+0000 included).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoLive {
    title: Option<String>,
}

async fn live(State(sim): S, Path(slug): Path<String>, body: Option<Json<GoLive>>) -> Response {
    set(&sim, &slug, true, body.and_then(|b| b.0.title))
}

async fn offline(State(sim): S, Path(slug): Path<String>) -> Response {
    set(&sim, &slug, false, None)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveRegion {
    region: String,
}

/// Moves a channel to another Centrifugo region: from now on its publications reach only
/// sockets of the new region (subscriptions on the old one stay, silent).
async fn move_region(
    State(sim): S,
    Path(slug): Path<String>,
    Json(m): Json<MoveRegion>,
) -> Response {
    let Some(i) = index_of(&sim, &slug) else {
        return no_such_streamer();
    };
    let Some(region_idx) = sim.opts.regions.iter().position(|r| *r == m.region) else {
        return bad_request(&format!(
            "unknown region; the regions are {:?} (--regions)",
            sim.opts.regions
        ));
    };
    let mut w = sim.world.lock().unwrap();
    let s = &mut w.streamers[i];
    s.region = Some(m.region);
    s.region_idx = region_idx;
    Json(json!({"streamer": s})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    slug: String,
}

/// Renames a channel: same user id and channel id, a new slug; the old slug becomes unknown.
async fn rename(State(sim): S, Path(slug): Path<String>, Json(r): Json<Rename>) -> Response {
    let Some(i) = index_of(&sim, &slug) else {
        return no_such_streamer();
    };
    let mut w = sim.world.lock().unwrap();
    match w.rename(i, &r.slug) {
        Ok(()) => Json(json!({"streamer": w.streamers[i]})).into_response(),
        Err(e) => bad_request(e),
    }
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

/// `POST /control/rest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rest {
    /// "429", "500", "html", "403", "423", "huge-body", "huge-expires-in", "wrong-types",
    /// "slow" or "normal".
    mode: String,
    /// Families: "api", "oauth", "negotiation", "web" (default: ["oauth"] for
    /// huge-expires-in, every family for normal, ["api"] otherwise).
    endpoints: Option<Vec<Family>>,
    /// How long the fault lasts (default 30 s, or until `requests` are used up when given).
    seconds: Option<f64>,
    /// The fault ends after this many faulted requests.
    requests: Option<u64>,
    /// Only every n-th request is faulted (default 1: all).
    every: Option<u64>,
    #[serde(default = "default_retry_after")]
    retry_after: u64,
    /// huge-body: the body size (default 10 MiB).
    bytes: Option<usize>,
    /// slow: the delay (default 5000 ms).
    delay_ms: Option<u64>,
    /// huge-expires-in: the value of `expires_in`, any JSON (default 18446744073709551615).
    #[serde(default, deserialize_with = "present_value")]
    expires_in: Option<Value>,
    /// huge-expires-in: leave `expires_in` out of the answer.
    #[serde(default)]
    omit_expires_in: bool,
}

fn default_retry_after() -> u64 {
    2
}

async fn rest_fault(State(sim): S, Json(r): Json<Rest>) -> Response {
    let mode = match r.mode.as_str() {
        "429" => Some(FaultMode::RateLimited {
            retry_after: r.retry_after,
        }),
        "500" => Some(FaultMode::ServerError),
        "html" => Some(FaultMode::Html),
        "403" => Some(FaultMode::Challenge),
        "423" => Some(FaultMode::CountryBlocked),
        "huge-body" => Some(FaultMode::HugeBody {
            bytes: r.bytes.unwrap_or(10 << 20),
        }),
        "huge-expires-in" => Some(FaultMode::HugeExpiresIn {
            expires_in: if r.omit_expires_in {
                None
            } else {
                Some(r.expires_in.clone().unwrap_or(json!(u64::MAX)))
            },
        }),
        "wrong-types" => Some(FaultMode::WrongTypes),
        "slow" => Some(FaultMode::Slow {
            delay: Duration::from_millis(r.delay_ms.unwrap_or(5000)),
        }),
        "normal" => None,
        _ => {
            return bad_request(
                "mode is 429, 500, html, 403, 423, huge-body, huge-expires-in, wrong-types, slow or normal",
            );
        }
    };
    let endpoints = r.endpoints.clone().unwrap_or_else(|| match &mode {
        None => ALL_FAMILIES.to_vec(),
        Some(FaultMode::HugeExpiresIn { .. }) => vec![Family::Oauth],
        Some(_) => vec![Family::Api],
    });
    match &mode {
        Some(FaultMode::HugeExpiresIn { .. }) if endpoints != [Family::Oauth] => {
            return bad_request("huge-expires-in applies to the oauth endpoints only");
        }
        Some(FaultMode::WrongTypes) if endpoints != [Family::Api] => {
            return bad_request("wrong-types applies to the api endpoints only");
        }
        _ => {}
    }
    if r.requests == Some(0) || r.every == Some(0) {
        return bad_request("requests and every are at least 1");
    }
    let seconds = r.seconds.or(if r.requests.is_some() {
        None
    } else {
        Some(30.0)
    });
    {
        let mut faults = sim.faults.lock().unwrap();
        for family in &endpoints {
            match &mode {
                None => {
                    faults.remove(family);
                }
                Some(m) => {
                    faults.insert(
                        *family,
                        Fault::new(m.clone(), seconds, r.requests, r.every.unwrap_or(1)),
                    );
                }
            }
        }
    }
    Json(json!({
        "mode": r.mode,
        "seconds": seconds,
        "endpoints": endpoints,
        "faults": sim.faults_json(),
    }))
    .into_response()
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
    let mut v = sim.socket_stats();
    let (streamers, live) = {
        let w = sim.world.lock().unwrap();
        (
            w.streamers.len(),
            w.streamers.iter().filter(|s| s.live).count(),
        )
    };
    let c = &sim.counters;
    let extra = json!({
        "streamers": streamers,
        "live": live,
        "published": sim.seq.load(Ordering::Relaxed),
        "api_requests": c.api_requests.load(Ordering::Relaxed),
        "api_rate_limited": c.api_rate_limited.load(Ordering::Relaxed),
        "negotiation_requests": c.negotiation.lock().unwrap().snapshot(),
        "web_requests": c.web.lock().unwrap().snapshot(),
        "webhooks": {
            "sent": c.webhook_sent.load(Ordering::Relaxed),
            "failed": c.webhook_failed.load(Ordering::Relaxed),
            "auto_unsubscribed": c.webhook_unsubscribed.load(Ordering::Relaxed),
        },
        "faults": sim.faults_json(),
    });
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    Json(v).into_response()
}

#[derive(Debug, Deserialize)]
struct SubscriptionsQuery {
    /// Only channels subscribed on more than one socket.
    #[serde(default)]
    duplicated: bool,
}

/// Channel → how many sockets are subscribed to it.
async fn subscriptions(State(sim): S, Query(q): Query<SubscriptionsQuery>) -> Response {
    let all = sim.channel_subscriptions();
    let duplicated = all.values().filter(|n| **n > 1).count();
    let channels: std::collections::BTreeMap<_, _> = all
        .iter()
        .filter(|(_, n)| !q.duplicated || **n > 1)
        .collect();
    Json(json!({
        "channels": channels,
        "channels_subscribed": all.len(),
        "subscriptions_duplicated": duplicated,
    }))
    .into_response()
}

async fn settings(State(sim): S) -> Response {
    let mut v = sim.settings.lock().unwrap().to_json(&sim.opts);
    v["faults"] = sim.faults_json();
    Json(v).into_response()
}

fn settings_section(sim: &Sim, section: &str) -> Response {
    Json(sim.settings.lock().unwrap().to_json(&sim.opts)[section].clone()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectError {
    code: u64,
    message: String,
}

/// `POST /control/centrifugo`: the connect reply of new connections, and the subscription
/// limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CentrifugoControl {
    /// A number (any u64) or null (no ping field, no server pings).
    #[serde(default, deserialize_with = "present")]
    ping: Option<Option<u64>>,
    /// A number (any u64) or null (no expires/ttl fields, no expiry).
    #[serde(default, deserialize_with = "present")]
    ttl: Option<Option<u64>>,
    pong: Option<bool>,
    /// `{"code", "message"}` answers every connect with that error; null stops it.
    #[serde(default, deserialize_with = "present")]
    connect_error: Option<Option<ConnectError>>,
    /// Subscriptions per connection before error 106; null: unlimited.
    #[serde(default, deserialize_with = "present")]
    subscription_limit: Option<Option<usize>>,
    /// Back to the start-up options first.
    #[serde(default)]
    reset: bool,
}

async fn centrifugo_settings(State(sim): S, Json(c): Json<CentrifugoControl>) -> Response {
    {
        let mut settings = sim.settings.lock().unwrap();
        let s = &mut settings.centrifugo;
        if c.reset {
            s.ping = None;
            s.ttl = None;
            s.pong = true;
            s.connect_error = None;
            s.subscription_limit = sim.opts.centrifugo_subscription_limit;
        }
        if let Some(ping) = c.ping {
            s.ping = Some(ping);
        }
        if let Some(ttl) = c.ttl {
            s.ttl = Some(ttl);
        }
        if let Some(pong) = c.pong {
            s.pong = pong;
        }
        if let Some(err) = c.connect_error {
            s.connect_error = err.map(|e| json!({"code": e.code, "message": e.message}));
        }
        if let Some(limit) = c.subscription_limit {
            s.subscription_limit = limit;
        }
    }
    settings_section(&sim, "centrifugo")
}

/// `POST /control/pusher`: the `activity_timeout` of new connections (any u64; null: back to
/// the start-up option).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PusherControl {
    #[serde(default, deserialize_with = "present")]
    activity_timeout: Option<Option<u64>>,
}

async fn pusher_settings(State(sim): S, Json(p): Json<PusherControl>) -> Response {
    if let Some(t) = p.activity_timeout {
        sim.settings.lock().unwrap().pusher_activity_timeout = t;
    }
    settings_section(&sim, "pusher")
}

/// `POST /control/api`: the official API's realistic switches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiControl {
    v1_livestreams_removed: Option<bool>,
    /// Replaces the set of user ids absent from `/public/v1/channels` answers.
    missing_user_ids: Option<Vec<i64>>,
    /// `{"per_second", "burst"}` per app token; null: no limit.
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<RateLimit>>,
}

async fn api_settings(State(sim): S, Json(a): Json<ApiControl>) -> Response {
    if let Some(Some(limit)) = a.rate_limit
        && !(limit.per_second > 0.0 && limit.per_second.is_finite() && limit.burst >= 1)
    {
        return bad_request("rate_limit: per_second > 0 and burst >= 1");
    }
    {
        let mut s = sim.settings.lock().unwrap();
        if let Some(removed) = a.v1_livestreams_removed {
            s.v1_livestreams_removed = removed;
        }
        if let Some(ids) = a.missing_user_ids {
            s.missing_user_ids = ids.into_iter().collect();
        }
        if let Some(limit) = a.rate_limit {
            s.api_rate_limit = limit;
            sim.buckets.lock().unwrap().clear();
        }
    }
    settings_section(&sim, "api")
}

/// `POST /control/negotiation`: whether a dead Pusher key is offered first. (Refusals are REST
/// faults: `/control/rest` with `"endpoints": ["negotiation"]`.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NegotiationControl {
    pusher_dead_key_first: Option<bool>,
}

async fn negotiation_settings(State(sim): S, Json(n): Json<NegotiationControl>) -> Response {
    if let Some(on) = n.pusher_dead_key_first {
        sim.settings.lock().unwrap().pusher_dead_key_first = on;
    }
    settings_section(&sim, "negotiation")
}

/// `POST /control/events`: the Events API's limits (null: none).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsControl {
    #[serde(default, deserialize_with = "present")]
    subscription_limit: Option<Option<usize>>,
    #[serde(default, deserialize_with = "present")]
    delete_limit: Option<Option<usize>>,
    #[serde(default, deserialize_with = "present")]
    unsubscribe_after: Option<Option<u32>>,
}

async fn events_settings(State(sim): S, Json(e): Json<EventsControl>) -> Response {
    {
        let mut s = sim.settings.lock().unwrap();
        if let Some(v) = e.subscription_limit {
            s.events_subscription_limit = v;
        }
        if let Some(v) = e.delete_limit {
            s.events_delete_limit = v;
        }
        if let Some(v) = e.unsubscribe_after {
            s.webhook_unsubscribe_after = v;
        }
    }
    settings_section(&sim, "events")
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
/// `--streamers`). Sockets stay connected; their subscriptions keep their feed names. The
/// missing channels go back to those of `--missing-channels-every`.
async fn seed(State(sim): S, Json(s): Json<Seed>) -> Response {
    if s.streamers > 1_000_000 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "at most 1,000,000 streamers"})),
        )
            .into_response();
    }
    let shape = crate::world::Shape::of(&sim.opts);
    let missing = {
        let mut w = sim.world.lock().unwrap();
        w.reseed(s.streamers, &shape);
        crate::settings::missing_by_option(&sim.opts, &w)
    };
    sim.settings.lock().unwrap().missing_user_ids = missing;
    Json(json!({"streamers": s.streamers})).into_response()
}
