//! OAuth (id.kick.com), the public API (api.kick.com) and realtime negotiation (web.kick.com),
//! in Kick's shapes: `{"data": …, "message": …}` envelopes, OAuth bodies without an envelope,
//! at most 50 ids or slugs per channels request, a whole request failing with 400 on one unknown
//! slug, and negotiation refusing any Origin but `https://kick.com`.
//!
//! Switchable realism: channels missing from `/public/v1/channels` answers, the deprecated
//! `/public/v1/livestreams` gone (404) beside `/public/v2/livestreams` (cursor paging, no
//! broadcaster filter, no channel id), a token bucket per app token, per-channel negotiation
//! answering the channel's region, a dead Pusher key offered first, and the Events API's limits
//! (subscriptions per event type, at most 50 ids per DELETE). Every handler also applies the
//! fault of its family (`faults`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::faults::{Family, Twist, too_many_requests};
use crate::limits::TokenBucket;
use crate::world::{Streamer, api_time};
use crate::{Sim, TokenInfo};

type S = State<Arc<Sim>>;

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .route("/oauth/token/introspect", post(introspect))
        .route("/public/v1/channels", get(channels))
        .route("/public/v1/livestreams", get(livestreams))
        .route("/public/v2/livestreams", get(livestreams_v2))
        .route("/public/v1/users", get(users))
        .route("/public/v1/public-key", get(public_key))
        .route(
            "/public/v1/events/subscriptions",
            get(list_subs).post(create_subs).delete(delete_subs),
        )
        .route("/api/v1/realtime/connection", post(negotiate))
        .route(
            "/api/v1/realtime/channels/{channel_id}/chat/connection",
            post(negotiate_channel),
        )
        .route("/api/v1/realtime/auth/connection", post(guest_token))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

fn new_token(prefix: &str) -> String {
    let bytes: [u8; 24] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn issue(sim: &Sim, refresh: bool) -> Value {
    let access = new_token("sim_at_");
    let mut tokens = sim.tokens.lock().unwrap();
    tokens.insert(
        access.clone(),
        TokenInfo {
            expires: Instant::now() + sim.opts.token_ttl,
            refresh: false,
        },
    );
    if refresh {
        let rt = new_token("sim_rt_");
        tokens.insert(
            rt.clone(),
            TokenInfo {
                expires: Instant::now() + Duration::from_secs(30 * 86400),
                refresh: true,
            },
        );
        json!({"access_token": access, "token_type": "Bearer", "refresh_token": rt, "expires_in": sim.opts.token_ttl.as_secs(), "scope": ""})
    } else {
        json!({"access_token": access, "token_type": "Bearer", "expires_in": sim.opts.token_ttl.as_secs()})
    }
}

/// A token answer, with a hostile `expires_in` when the OAuth fault says so (the token itself
/// is valid for `token_ttl` either way).
fn token_answer(mut answer: Value, twist: &Twist) -> Response {
    match &twist.expires_in {
        None => {}
        Some(None) => {
            answer.as_object_mut().unwrap().remove("expires_in");
        }
        Some(Some(v)) => answer["expires_in"] = v.clone(),
    }
    Json(answer).into_response()
}

async fn token(State(sim): S, Form(form): Form<HashMap<String, String>>) -> Response {
    let twist = match sim.gate(Family::Oauth).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let creds_ok = form.get("client_id") == Some(&sim.opts.client_id)
        && form.get("client_secret") == Some(&sim.opts.client_secret);
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") if creds_ok => token_answer(issue(&sim, false), &twist),
        Some("refresh_token") if creds_ok => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let valid = sim
                .tokens
                .lock()
                .unwrap()
                .remove(&rt)
                .is_some_and(|t| t.refresh && t.expires > Instant::now());
            if valid {
                token_answer(issue(&sim, true), &twist)
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "Invalid refresh token"})),
                )
                    .into_response()
            }
        }
        Some("client_credentials" | "refresh_token") => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "Invalid client"})),
        )
            .into_response(),
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Invalid request"})),
        )
            .into_response(),
    }
}

async fn revoke(State(sim): S, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(t) = q.get("token") {
        sim.tokens.lock().unwrap().remove(t);
    }
    "OK".into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

/// Applies the API's fault, checks the app token, then its rate limit.
#[allow(clippy::result_large_err)] // a handler's early return: it is a response either way
async fn authorize(sim: &Sim, headers: &HeaderMap) -> Result<Twist, Response> {
    sim.counters.api_requests.fetch_add(1, Ordering::Relaxed);
    let twist = sim.gate(Family::Api).await?;
    let token = bearer(headers).filter(|t| {
        sim.tokens
            .lock()
            .unwrap()
            .get(t)
            .is_some_and(|i| !i.refresh && i.expires > Instant::now())
    });
    let Some(token) = token else {
        return Err(error(StatusCode::UNAUTHORIZED, "Unauthorized"));
    };
    let limit = sim.settings.lock().unwrap().api_rate_limit;
    if let Some(limit) = limit {
        let mut buckets = sim.buckets.lock().unwrap();
        let bucket = buckets
            .entry(token)
            .or_insert_with(|| TokenBucket::full(limit));
        if let Err(wait) = bucket.take(limit, Instant::now()) {
            sim.counters
                .api_rate_limited
                .fetch_add(1, Ordering::Relaxed);
            return Err(too_many_requests(wait.as_secs_f64().ceil().max(1.0) as u64));
        }
    }
    Ok(twist)
}

async fn introspect(State(sim): S, headers: HeaderMap) -> Response {
    let token = bearer(&headers).unwrap_or_default();
    let info = sim.tokens.lock().unwrap().get(&token).map(|t| t.expires);
    let active = info.is_some_and(|e| e > Instant::now());
    let exp = info.map(|e| {
        chrono::Utc::now().timestamp()
            + e.saturating_duration_since(Instant::now()).as_secs() as i64
    });
    Json(json!({"data": {"active": active, "client_id": sim.opts.client_id, "token_type": "app", "scope": "", "exp": exp.unwrap_or(0)}, "message": "OK"}))
        .into_response()
}

/// Repeated query parameters (`?slug=a&slug=b`).
pub(crate) fn multi(raw: &Option<String>, key: &str) -> Vec<String> {
    url_pairs(raw.as_deref().unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `wrong-types` fault: ids become strings or objects (alternately), `is_live` a string.
fn mangle(items: &mut [Value], id_fields: &[&str]) {
    for (k, item) in items.iter_mut().enumerate() {
        for field in id_fields {
            if let Some(v) = item.get(*field).cloned() {
                item[*field] = if k % 2 == 0 {
                    json!(v.to_string())
                } else {
                    json!({ "id": v })
                };
            }
        }
        if let Some(live) = item.pointer_mut("/stream/is_live") {
            *live = json!(live.to_string());
        }
    }
}

fn channel_item(s: &Streamer) -> Value {
    json!({
        "active_subscribers_count": 0,
        "banner_picture": "",
        "broadcaster_user_id": s.user_id,
        "canceled_subscribers_count": 0,
        "category": {"id": 15, "name": "Just Chatting", "thumbnail": ""},
        "channel_description": "",
        "slug": s.slug,
        "stream": {
            "custom_tags": [],
            "is_live": s.live,
            "is_mature": false,
            "key": "",
            "language": "en",
            "start_time": if s.live { s.started_at.map(api_time).unwrap_or_default() } else { "0001-01-01T00:00:00Z".into() },
            "url": "",
            "viewer_count": if s.live { 10 } else { 0 },
            "thumbnail": ""
        },
        "stream_title": s.title,
    })
}

async fn channels(State(sim): S, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let twist = match authorize(&sim, &headers).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let slugs = multi(&raw, "slug");
    let ids = multi(&raw, "broadcaster_user_id");
    if slugs.len() + ids.len() > 50 {
        return error(StatusCode::BAD_REQUEST, "too many values: at most 50");
    }
    if !slugs.is_empty() && !ids.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "use either slug or broadcaster_user_id",
        );
    }
    let missing = sim.settings.lock().unwrap().missing_user_ids.clone();
    let w = sim.world.lock().unwrap();
    let mut out = Vec::new();
    for slug in &slugs {
        match w.by_slug.get(&slug.to_lowercase()) {
            // Banned or otherwise hidden channels are simply absent from the answer.
            Some(i) if missing.contains(&w.streamers[*i].user_id) => {}
            Some(i) => out.push(channel_item(&w.streamers[*i])),
            // Kick fails the whole request on one unknown slug.
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid request: channel not found",
                );
            }
        }
    }
    for id in &ids {
        let Ok(id) = id.parse::<i64>() else {
            return error(StatusCode::BAD_REQUEST, "Invalid request");
        };
        if missing.contains(&id) {
            continue;
        }
        if let Some(i) = w.by_user.get(&id) {
            out.push(channel_item(&w.streamers[*i]));
        }
    }
    if twist.wrong_types {
        mangle(&mut out, &["broadcaster_user_id"]);
    }
    Json(json!({"data": out, "message": "OK"})).into_response()
}

async fn livestreams(State(sim): S, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    if sim.settings.lock().unwrap().v1_livestreams_removed {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let twist = match authorize(&sim, &headers).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let ids = multi(&raw, "broadcaster_user_id");
    if ids.len() > 50 {
        return error(StatusCode::BAD_REQUEST, "too many values: at most 50");
    }
    let limit: usize = multi(&raw, "limit")
        .first()
        .and_then(|l| l.parse().ok())
        .unwrap_or(25)
        .clamp(1, 100);
    let w = sim.world.lock().unwrap();
    let pick: Vec<&Streamer> = if ids.is_empty() {
        w.streamers.iter().filter(|s| s.live).take(limit).collect()
    } else {
        ids.iter()
            .filter_map(|id| id.parse::<i64>().ok())
            .filter_map(|id| w.by_user.get(&id))
            .map(|i| &w.streamers[*i])
            .filter(|s| s.live)
            .take(limit)
            .collect()
    };
    let mut out: Vec<Value> = pick
        .iter()
        .map(|s| {
            json!({
                "broadcaster_user_id": s.user_id,
                "category": {"id": 15, "name": "Just Chatting", "thumbnail": ""},
                "channel_id": s.channel_id,
                "has_mature_content": false,
                "language": "en",
                "profile_picture": "https://kick.com/img/default-profile-pictures/default2.jpeg",
                "slug": s.slug,
                "started_at": s.started_at.map(api_time),
                "stream_title": s.title,
                "thumbnail": "",
                "viewer_count": 10,
                "custom_tags": []
            })
        })
        .collect();
    if twist.wrong_types {
        mangle(&mut out, &["broadcaster_user_id", "channel_id"]);
    }
    Json(json!({"data": out, "message": "OK"})).into_response()
}

/// Where a v2 page starts: after the stream with this (start instant, user id).
fn cursor_key(s: &Streamer) -> (i64, i64) {
    (
        s.started_at.map(|t| t.timestamp_micros()).unwrap_or(0),
        s.user_id,
    )
}

fn encode_cursor(key: (i64, i64)) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", key.0, key.1))
}

fn decode_cursor(cursor: &str) -> Option<(i64, i64)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let (a, b) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `GET /public/v2/livestreams`: every live stream, oldest-started first, paged by an opaque
/// cursor (`pagination.next_cursor`, empty on the last page); no broadcaster filter and no
/// channel id.
async fn livestreams_v2(State(sim): S, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let twist = match authorize(&sim, &headers).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let first = |k: &str| multi(&raw, k).into_iter().next();
    let limit = match first("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=1000).contains(&l) => l,
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit must be from 1 to 1000"),
    };
    let after = match first("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match decode_cursor(&c) {
            Some(k) => Some(k),
            None => return error(StatusCode::BAD_REQUEST, "Invalid cursor"),
        },
    };
    let languages = multi(&raw, "language_code");
    if languages.len() > 25 {
        return error(StatusCode::BAD_REQUEST, "too many values: at most 25");
    }
    // Every simulated stream is in category 15 ("Just Chatting") and in English.
    let category_ok = first("category_id").is_none_or(|c| c == "15");
    let language_ok = languages.is_empty() || languages.iter().any(|l| l == "en");
    let w = sim.world.lock().unwrap();
    let mut live: Vec<&Streamer> = w
        .streamers
        .iter()
        .filter(|s| s.live && category_ok && language_ok)
        .filter(|s| after.is_none_or(|a| cursor_key(s) > a))
        .collect();
    live.sort_by_key(|s| cursor_key(s));
    let more = live.len() > limit;
    live.truncate(limit);
    let next_cursor = match (more, live.last()) {
        (true, Some(last)) => encode_cursor(cursor_key(last)),
        _ => String::new(),
    };
    let mut out: Vec<Value> = live
        .iter()
        .map(|s| {
            json!({
                "id": s.livestream_id,
                "title": s.title,
                "viewer_count": 10,
                "thumbnail": "",
                "broadcaster_user": {
                    "id": s.user_id,
                    "username": s.display_name,
                    "profile_picture": "https://kick.com/img/default-profile-pictures/default2.jpeg",
                },
                "channel": {"slug": s.slug},
                "category": {"id": 15, "name": "Just Chatting", "thumbnail": ""},
                "language_code": "en",
                "started_at": s.started_at.map(api_time),
                "tags": [],
                "has_mature_content": false,
            })
        })
        .collect();
    if twist.wrong_types {
        mangle(&mut out, &["id"]);
    }
    Json(json!({"data": out, "message": "OK", "pagination": {"next_cursor": next_cursor}}))
        .into_response()
}

async fn users(State(sim): S, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let twist = match authorize(&sim, &headers).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let w = sim.world.lock().unwrap();
    let mut out: Vec<Value> = multi(&raw, "id")
        .iter()
        .filter_map(|id| id.parse::<i64>().ok())
        .filter_map(|id| w.by_user.get(&id))
        .map(|i| {
            let s = &w.streamers[*i];
            json!({"email": "", "name": s.display_name, "profile_picture": "", "user_id": s.user_id})
        })
        .collect();
    if twist.wrong_types {
        mangle(&mut out, &["user_id"]);
    }
    Json(json!({"data": out, "message": "OK"})).into_response()
}

/// The key webhook deliveries are signed with: the simulator's own (see `webhooks`).
async fn public_key() -> Response {
    let pem = tokio::task::spawn_blocking(crate::webhooks::public_key_pem)
        .await
        .unwrap_or_default();
    Json(json!({"data": {"public_key": pem}, "message": "OK"})).into_response()
}

async fn list_subs(State(sim): S, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    if let Err(r) = authorize(&sim, &headers).await {
        return r;
    }
    let filter: Vec<i64> = multi(&raw, "broadcaster_user_id")
        .iter()
        .filter_map(|id| id.parse().ok())
        .collect();
    let subs: Vec<Value> = sim
        .subscriptions
        .lock()
        .unwrap()
        .iter()
        .filter(|s| {
            filter.is_empty()
                || s["broadcaster_user_id"]
                    .as_i64()
                    .is_some_and(|id| filter.contains(&id))
        })
        .cloned()
        .collect();
    Json(json!({"data": subs, "message": "OK"})).into_response()
}

async fn create_subs(State(sim): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Err(r) = authorize(&sim, &headers).await {
        return r;
    }
    // With an app token the broadcaster must be named (a user token would imply it).
    let Some(user) = body.get("broadcaster_user_id").and_then(Value::as_i64) else {
        return error(
            StatusCode::BAD_REQUEST,
            "broadcaster_user_id is required with an app token",
        );
    };
    let limit = sim.settings.lock().unwrap().events_subscription_limit;
    let mut out = Vec::new();
    let mut subs = sim.subscriptions.lock().unwrap();
    for e in body
        .get("events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let in_use = subs.iter().filter(|s| s["event"] == e["name"]).count();
        if limit.is_some_and(|l| in_use >= l) {
            out.push(json!({"name": e["name"], "version": e["version"], "error": "subscription limit reached"}));
            continue;
        }
        let id = crate::webhooks::ulid();
        let now = api_time(chrono::Utc::now());
        subs.push(json!({"app_id": sim.opts.client_id, "broadcaster_user_id": user, "created_at": now, "event": e["name"], "id": id, "method": "webhook", "updated_at": now, "version": e["version"]}));
        out.push(json!({"name": e["name"], "version": e["version"], "subscription_id": id}));
    }
    Json(json!({"data": out, "message": "OK"})).into_response()
}

async fn delete_subs(State(sim): S, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    if let Err(r) = authorize(&sim, &headers).await {
        return r;
    }
    let ids = multi(&raw, "id");
    let limit = sim.settings.lock().unwrap().events_delete_limit;
    if limit.is_some_and(|l| ids.len() > l) {
        return error(StatusCode::BAD_REQUEST, "Invalid request");
    }
    sim.subscriptions
        .lock()
        .unwrap()
        .retain(|s| !ids.iter().any(|id| s["id"] == *id));
    StatusCode::NO_CONTENT.into_response()
}

/// The realtime endpoints answer only Kick's own Origin (or none).
pub fn origin_ok(headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(o) => o.as_bytes() == b"https://kick.com",
    }
}

/// What every `/api/v1/realtime/*` request goes through: counted, then the negotiation fault,
/// then the Origin check (the POSTs want `Origin: https://kick.com`).
#[allow(clippy::result_large_err)] // a handler's early return: it is a response either way
async fn realtime_gate(sim: &Sim, headers: &HeaderMap) -> Result<(), Response> {
    sim.counters.negotiation.lock().unwrap().hit();
    sim.gate(Family::Negotiation).await?;
    if !origin_ok(headers) || headers.get(header::ORIGIN).is_none() {
        return Err(error(StatusCode::FORBIDDEN, "Forbidden"));
    }
    Ok(())
}

/// The negotiation answer for a client accepting `body`'s providers, pointing Centrifugo at
/// region `region`.
fn connections(sim: &Sim, body: Option<&Value>, region: usize) -> Response {
    let accepted: Vec<String> = body
        .and_then(|b| b.pointer("/capabilities/accepted_providers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p["provider"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| vec!["centrifugo".into(), "pusher".into()]);
    let dead_first = sim.settings.lock().unwrap().pusher_dead_key_first;
    let pusher = |key: &str| json!({"provider": "pusher", "credentials": {"app_key": key, "cluster": "us2"}});
    let centrifugo =
        json!({"provider": "centrifugo", "credentials": {"url": sim.centrifugo_url(region)}});
    let offered: Vec<Value> = if dead_first {
        vec![pusher(&sim.opts.dead_pusher_key), centrifugo]
    } else {
        sim.opts
            .providers
            .iter()
            .map(|p| match p.as_str() {
                "centrifugo" => centrifugo.clone(),
                _ => pusher(&sim.opts.pusher_key),
            })
            .collect()
    };
    let connections: Vec<Value> = offered
        .into_iter()
        .filter(|c| accepted.iter().any(|a| c["provider"] == a.as_str()))
        .collect();
    Json(json!({"data": {"connections": connections, "mode": "websocket"}})).into_response()
}

/// `POST /api/v1/realtime/connection`: the general negotiation (the first region).
async fn negotiate(State(sim): S, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    if let Err(r) = realtime_gate(&sim, &headers).await {
        return r;
    }
    connections(&sim, body.as_ref().map(|b| &b.0), 0)
}

/// `POST /api/v1/realtime/channels/{channel_id}/chat/connection`: the channel's own region.
async fn negotiate_channel(
    State(sim): S,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if let Err(r) = realtime_gate(&sim, &headers).await {
        return r;
    }
    let region = channel_id.parse::<i64>().ok().and_then(|id| {
        let w = sim.world.lock().unwrap();
        w.by_channel.get(&id).map(|i| w.streamers[*i].region_idx)
    });
    match region {
        Some(region) => connections(&sim, body.as_ref().map(|b| &b.0), region),
        None => error(StatusCode::NOT_FOUND, "Channel not found"),
    }
}

/// A guest connection JWT (`sub: guest:<uuid>`), valid for `guest_token_ttl`.
pub fn guest_jwt(sim: &Sim, client_id: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = chrono::Utc::now().timestamp();
    let exp = now + sim.opts.guest_token_ttl.as_secs() as i64;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64
        .encode(json!({"sub": format!("guest:{client_id}"), "iat": now, "exp": exp}).to_string());
    let sig: [u8; 32] = rand::random();
    let jwt = format!("{header}.{payload}.{}", b64.encode(sig));
    sim.guest_tokens
        .lock()
        .unwrap()
        .insert(jwt.clone(), Instant::now() + sim.opts.guest_token_ttl);
    jwt
}

async fn guest_token(State(sim): S, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    if let Err(r) = realtime_gate(&sim, &headers).await {
        return r;
    }
    let client = body
        .as_ref()
        .and_then(|b| b.0["client_id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    if client.is_empty() {
        return error(StatusCode::BAD_REQUEST, "client_id is required");
    }
    Json(json!({"data": {"token": guest_jwt(&sim, &client)}, "message": "success"})).into_response()
}
