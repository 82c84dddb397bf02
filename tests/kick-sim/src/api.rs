//! OAuth (id.kick.com), the public API (api.kick.com) and realtime negotiation (web.kick.com),
//! in Kick's shapes: `{"data": …, "message": …}` envelopes, OAuth bodies without an envelope,
//! at most 50 ids or slugs per channels request, a whole request failing with 400 on one unknown
//! slug, and negotiation refusing any Origin but `https://kick.com`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::world::{Streamer, api_time};
use crate::{RestFault, Sim, TokenInfo};

type S = State<Arc<Sim>>;

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .route("/oauth/token/introspect", post(introspect))
        .route("/public/v1/channels", get(channels))
        .route("/public/v1/livestreams", get(livestreams))
        .route("/public/v1/users", get(users))
        .route("/public/v1/public-key", get(public_key))
        .route(
            "/public/v1/events/subscriptions",
            get(list_subs).post(create_subs).delete(delete_subs),
        )
        .route("/api/v1/realtime/connection", post(negotiate))
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

async fn token(State(sim): S, Form(form): Form<HashMap<String, String>>) -> Response {
    let creds_ok = form.get("client_id") == Some(&sim.opts.client_id)
        && form.get("client_secret") == Some(&sim.opts.client_secret);
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") if creds_ok => Json(issue(&sim, false)).into_response(),
        Some("refresh_token") if creds_ok => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let valid = sim
                .tokens
                .lock()
                .unwrap()
                .remove(&rt)
                .is_some_and(|t| t.refresh && t.expires > Instant::now());
            if valid {
                Json(issue(&sim, true)).into_response()
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

/// Checks the app token and any injected REST fault.
#[allow(clippy::result_large_err)] // a handler's early return: it is a response either way
fn authorize(sim: &Sim, headers: &HeaderMap) -> Result<(), Response> {
    sim.api_requests.fetch_add(1, Ordering::Relaxed);
    match sim.rest_fault() {
        Some(RestFault::RateLimited { retry_after }) => {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after.to_string())],
                Json(json!({"message": "Too Many Requests"})),
            )
                .into_response());
        }
        Some(RestFault::ServerError) => {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
            ));
        }
        Some(RestFault::Html) => {
            return Err((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
                "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>cf_chl_opt</body></html>",
            )
                .into_response());
        }
        None => {}
    }
    let valid = bearer(headers).is_some_and(|t| {
        sim.tokens
            .lock()
            .unwrap()
            .get(&t)
            .is_some_and(|i| !i.refresh && i.expires > Instant::now())
    });
    if valid {
        Ok(())
    } else {
        Err(error(StatusCode::UNAUTHORIZED, "Unauthorized"))
    }
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
fn multi(raw: &Option<String>, key: &str) -> Vec<String> {
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
    if let Err(r) = authorize(&sim, &headers) {
        return r;
    }
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
    let w = sim.world.lock().unwrap();
    let mut out = Vec::new();
    for slug in &slugs {
        match w.by_slug.get(&slug.to_lowercase()) {
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
        if let Some(i) = w.by_user.get(&id) {
            out.push(channel_item(&w.streamers[*i]));
        }
    }
    Json(json!({"data": out, "message": "OK"})).into_response()
}

async fn livestreams(State(sim): S, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    if let Err(r) = authorize(&sim, &headers) {
        return r;
    }
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
    let out: Vec<Value> = pick
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
    Json(json!({"data": out, "message": "OK"})).into_response()
}

async fn users(State(sim): S, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    if let Err(r) = authorize(&sim, &headers) {
        return r;
    }
    let w = sim.world.lock().unwrap();
    let out: Vec<Value> = multi(&raw, "id")
        .iter()
        .filter_map(|id| id.parse::<i64>().ok())
        .filter_map(|id| w.by_user.get(&id))
        .map(|i| {
            let s = &w.streamers[*i];
            json!({"email": "", "name": s.display_name, "profile_picture": "", "user_id": s.user_id})
        })
        .collect();
    Json(json!({"data": out, "message": "OK"})).into_response()
}

/// The key webhook deliveries are signed with: the simulator's own (see `webhooks`).
async fn public_key() -> Response {
    let pem = tokio::task::spawn_blocking(crate::webhooks::public_key_pem)
        .await
        .unwrap_or_default();
    Json(json!({"data": {"public_key": pem}, "message": "OK"})).into_response()
}

async fn list_subs(State(sim): S, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&sim, &headers) {
        return r;
    }
    let subs = sim.subscriptions.lock().unwrap().clone();
    Json(json!({"data": subs, "message": "OK"})).into_response()
}

async fn create_subs(State(sim): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Err(r) = authorize(&sim, &headers) {
        return r;
    }
    let Some(user) = body.get("broadcaster_user_id").and_then(Value::as_i64) else {
        return error(
            StatusCode::BAD_REQUEST,
            "broadcaster_user_id is required with an app token",
        );
    };
    let mut out = Vec::new();
    let mut subs = sim.subscriptions.lock().unwrap();
    for e in body
        .get("events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let id = format!("01SIM{:021}", subs.len() + 1);
        let now = api_time(chrono::Utc::now());
        subs.push(json!({"app_id": sim.opts.client_id, "broadcaster_user_id": user, "created_at": now, "event": e["name"], "id": id, "method": "webhook", "updated_at": now, "version": e["version"]}));
        out.push(json!({"name": e["name"], "version": e["version"], "subscription_id": id}));
    }
    Json(json!({"data": out, "message": "OK"})).into_response()
}

async fn delete_subs(State(sim): S, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    if let Err(r) = authorize(&sim, &headers) {
        return r;
    }
    let ids = multi(&raw, "id");
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

async fn negotiate(State(sim): S, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    if !origin_ok(&headers) || headers.get(header::ORIGIN).is_none() {
        return error(StatusCode::FORBIDDEN, "Forbidden");
    }
    let accepted: Vec<String> = body
        .as_ref()
        .and_then(|b| b.0.pointer("/capabilities/accepted_providers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p["provider"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| vec!["centrifugo".into(), "pusher".into()]);
    let base = sim.base_url.lock().unwrap().replace("http://", "ws://");
    let connections: Vec<Value> = sim
        .opts
        .providers
        .iter()
        .filter(|p| accepted.contains(p))
        .map(|p| match p.as_str() {
            "centrifugo" => json!({"provider": "centrifugo", "credentials": {"url": format!("{base}/connection/websocket")}}),
            _ => json!({"provider": "pusher", "credentials": {"app_key": sim.opts.pusher_key, "cluster": "us2"}}),
        })
        .collect();
    Json(json!({"data": {"connections": connections, "mode": "websocket"}})).into_response()
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
    if !origin_ok(&headers) || headers.get(header::ORIGIN).is_none() {
        return error(StatusCode::FORBIDDEN, "Forbidden");
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
