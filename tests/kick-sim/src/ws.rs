//! The two realtime WebSocket protocols.
//!
//! Centrifugo (`/connection/websocket`, and `/region/{region}/connection/websocket` per region):
//! JSON commands with ids, replies echoing them, several replies per frame separated by `\n`,
//! connect with the guest JWT (expired → error 109, unknown → disconnect 3500), server pings `{}`
//! answered by `{}` (no pong in time → disconnect 3012), refresh, subscribe/unsubscribe (beyond
//! the subscription limit → error 106), publications as `{"push":{"channel","pub":{"data"}}}`,
//! Origin check (403 on a foreign Origin). The connect reply's `ping`, `ttl` and `pong` can be
//! overridden with hostile values, or the connect refused (`POST /control/centrifugo`).
//!
//! Pusher protocol 7 (`/app/{key}`): `pusher:connection_established` with socket id and activity
//! timeout, subscribe/unsubscribe with `pusher_internal:subscription_succeeded`, ping/pong, the
//! activity timeout enforced (ping after silence, close 4201 without a pong), an unknown app key
//! answered with `pusher:error` 4001 and close 4001; event `data` is a JSON string.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};

use crate::sockets::SubscribeError;
use crate::{Out, Sim, Transport};

/// Timer values the server enforces: from 1 s to a year; anything else means "never".
const MAX_TIMER_SECS: u64 = 365 * 86_400;

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/connection/websocket", get(centrifugo))
        .route(
            "/region/{region}/connection/websocket",
            get(centrifugo_region),
        )
        .route("/app/{key}", get(pusher))
}

async fn centrifugo(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade_centrifugo(sim, &headers, ws, 0)
}

async fn centrifugo_region(
    State(sim): State<Arc<Sim>>,
    Path(region): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    match sim.opts.regions.iter().position(|r| *r == region) {
        Some(idx) => upgrade_centrifugo(sim, &headers, ws, idx),
        None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
}

fn upgrade_centrifugo(
    sim: Arc<Sim>,
    headers: &HeaderMap,
    ws: WebSocketUpgrade,
    region: usize,
) -> Response {
    if !crate::api::origin_ok(headers) {
        return (StatusCode::FORBIDDEN, "Forbidden").into_response();
    }
    ws.max_message_size(1 << 20)
        .on_upgrade(move |socket| centrifugo_session(socket, sim, region))
}

async fn pusher(
    State(sim): State<Arc<Sim>>,
    Path(key): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(1 << 20)
        .on_upgrade(move |socket| pusher_session(socket, sim, key))
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// A timer the server enforces, or `None` for 0 and absurdly large values.
fn timer(secs: u64) -> Option<Duration> {
    (1..=MAX_TIMER_SECS)
        .contains(&secs)
        .then(|| Duration::from_secs(secs))
}

/// What a Centrifugo connection's timers are, decided at connect.
#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    /// The server's ping interval (`None`: it does not ping).
    ping: Option<Duration>,
    /// Whether an unanswered ping closes the connection.
    pong: bool,
}

async fn centrifugo_session(socket: WebSocket, sim: Arc<Sim>, region: usize) {
    let (id, mut rx) = sim.register_socket(Transport::Centrifugo, region);
    let (mut tx, mut incoming) = socket.split();
    let mut connected = false;
    let mut stalled = false;
    let mut heartbeat = Heartbeat {
        ping: None,
        pong: true,
    };
    let mut next_ping: Option<Instant> = None;
    let mut pong_due: Option<Instant> = None;
    // The connection expires with its token unless the client refreshes it (Centrifugo: 3005).
    let mut expires_at: Option<Instant> = None;
    let hello_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let deadline = if stalled {
            None
        } else {
            [
                next_ping,
                pong_due,
                expires_at,
                (!connected).then_some(hello_deadline),
            ]
            .into_iter()
            .flatten()
            .min()
        };
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Text(t)) if !stalled && connected => {
                    if tx.send(Message::Text(t.as_ref().into())).await.is_err() { break; }
                }
                Some(Out::Binary(b)) if !stalled && connected => {
                    if tx.send(Message::Binary(b)).await.is_err() { break; }
                }
                Some(Out::Text(_) | Out::Binary(_)) => {}
                Some(Out::Close(code, reason)) => {
                    let _ = tx.send(close(code, &reason)).await;
                    break;
                }
                Some(Out::Stall) => stalled = true,
                None => break,
            },
            msg = incoming.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(_))) => {
                        let _ = tx.send(close(3501, "bad request")).await;
                        break;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                if stalled {
                    continue;
                }
                let mut replies = Vec::new();
                let mut end: Option<(u16, &str)> = None;
                for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
                    let Ok(cmd) = serde_json::from_str::<Value>(line) else {
                        end = Some((3501, "bad request"));
                        break;
                    };
                    if cmd.as_object().is_some_and(Map::is_empty) {
                        pong_due = None;
                        continue;
                    }
                    let cid = cmd.get("id").and_then(Value::as_u64).unwrap_or(0);
                    if let Some(c) = cmd.get("connect") {
                        let settings = sim.settings.lock().unwrap().centrifugo.clone();
                        if let Some(err) = settings.connect_error {
                            replies.push(json!({"id": cid, "error": err}));
                            continue;
                        }
                        match check_token(&sim, c.get("token").and_then(Value::as_str)) {
                            Ok(left) => {
                                connected = true;
                                let mut reply = Map::new();
                                reply.insert("client".into(), json!(format!("{:032x}", rand::random::<u128>())));
                                reply.insert("version".into(), json!("6.9.6 PRO"));
                                let ttl = settings.ttl.unwrap_or(Some(left));
                                if let Some(ttl) = ttl {
                                    reply.insert("expires".into(), json!(true));
                                    reply.insert("ttl".into(), json!(ttl));
                                }
                                expires_at = ttl.and_then(timer).map(|d| Instant::now() + d);
                                heartbeat = match settings.ping {
                                    None => {
                                        reply.insert("ping".into(), json!(sim.opts.ping_interval.as_secs().max(1)));
                                        Heartbeat { ping: Some(sim.opts.ping_interval.max(Duration::from_millis(100))), pong: settings.pong }
                                    }
                                    Some(None) => Heartbeat { ping: None, pong: settings.pong },
                                    Some(Some(secs)) => {
                                        reply.insert("ping".into(), json!(secs));
                                        Heartbeat { ping: timer(secs), pong: settings.pong }
                                    }
                                };
                                reply.insert("pong".into(), json!(settings.pong));
                                next_ping = heartbeat.ping.map(|p| Instant::now() + p);
                                replies.push(json!({"id": cid, "connect": reply}));
                            }
                            Err(TokenError::Expired) => replies.push(json!({"id": cid, "error": {"code": 109, "message": "token expired"}})),
                            Err(TokenError::Invalid) => { end = Some((3500, "invalid token")); break; }
                        }
                    } else if !connected {
                        end = Some((3501, "bad request"));
                        break;
                    } else if let Some(s) = cmd.get("subscribe") {
                        match s.get("channel").and_then(Value::as_str) {
                            Some(ch) if ch.starts_with("private-") => replies.push(json!({"id": cid, "error": {"code": 103, "message": "permission denied"}})),
                            Some(ch) if !ch.is_empty() && ch.len() <= 255 => {
                                let limit = sim.settings.lock().unwrap().centrifugo.subscription_limit;
                                match sim.subscribe(id, ch, limit) {
                                    Ok(()) => replies.push(json!({"id": cid, "subscribe": {}})),
                                    Err(SubscribeError::AlreadySubscribed) => replies.push(json!({"id": cid, "error": {"code": 105, "message": "already subscribed"}})),
                                    Err(SubscribeError::LimitExceeded) => replies.push(json!({"id": cid, "error": {"code": 106, "message": "limit exceeded"}})),
                                    Err(SubscribeError::Closed) => {}
                                }
                            }
                            _ => replies.push(json!({"id": cid, "error": {"code": 107, "message": "bad request"}})),
                        }
                    } else if let Some(u) = cmd.get("unsubscribe") {
                        if let Some(ch) = u.get("channel").and_then(Value::as_str) {
                            sim.unsubscribe(id, ch);
                        }
                        replies.push(json!({"id": cid, "unsubscribe": {}}));
                    } else if let Some(r) = cmd.get("refresh") {
                        match check_token(&sim, r.get("token").and_then(Value::as_str)) {
                            Ok(left) => {
                                let ttl = sim.settings.lock().unwrap().centrifugo.ttl.unwrap_or(Some(left));
                                expires_at = ttl.and_then(timer).map(|d| Instant::now() + d);
                                match ttl {
                                    Some(ttl) => replies.push(json!({"id": cid, "refresh": {"expires": true, "ttl": ttl}})),
                                    None => replies.push(json!({"id": cid, "refresh": {}})),
                                }
                            }
                            Err(_) => replies.push(json!({"id": cid, "error": {"code": 109, "message": "token expired"}})),
                        }
                    } else {
                        replies.push(json!({"id": cid, "error": {"code": 104, "message": "method not found"}}));
                    }
                }
                if !replies.is_empty() {
                    let frame: Vec<String> = replies.iter().map(Value::to_string).collect();
                    if tx.send(Message::Text(frame.join("\n").into())).await.is_err() { break; }
                }
                if let Some((code, reason)) = end {
                    let _ = tx.send(close(code, reason)).await;
                    break;
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                let now = Instant::now();
                if !connected && now >= hello_deadline {
                    let _ = tx.send(close(3501, "bad request")).await;
                    break;
                }
                if expires_at.is_some_and(|t| now >= t) {
                    let _ = tx.send(close(3005, "expired")).await;
                    break;
                }
                if pong_due.is_some_and(|t| now >= t) {
                    let _ = tx.send(close(3012, "no pong")).await;
                    break;
                }
                if let (Some(at), Some(every)) = (next_ping, heartbeat.ping)
                    && now >= at
                {
                    if tx.send(Message::Text("{}".into())).await.is_err() { break; }
                    next_ping = Some(now + every);
                    if heartbeat.pong {
                        pong_due = Some(now + every);
                    }
                }
            }
        }
    }
    sim.unregister_socket(id);
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

enum TokenError {
    Expired,
    Invalid,
}

fn check_token(sim: &Sim, token: Option<&str>) -> Result<u64, TokenError> {
    let token = token.ok_or(TokenError::Invalid)?;
    let tokens = sim.guest_tokens.lock().unwrap();
    let exp = tokens.get(token).ok_or(TokenError::Invalid)?;
    let left = exp.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(TokenError::Expired)
    } else {
        Ok(left.as_secs())
    }
}

fn pusher_frame(event: &str, data: &str, channel: Option<&str>) -> Message {
    let mut v = json!({"event": event, "data": data});
    if let Some(c) = channel {
        v["channel"] = json!(c);
    }
    Message::Text(v.to_string().into())
}

async fn pusher_session(socket: WebSocket, sim: Arc<Sim>, key: String) {
    let (mut tx, mut incoming) = socket.split();
    if key != sim.opts.pusher_key {
        let err = json!({"event": "pusher:error", "data": {"code": 4001, "message": format!("App key {key} not in this cluster. Did you forget to specify the cluster?")}});
        let _ = tx.send(Message::Text(err.to_string().into())).await;
        let _ = tx.send(close(4001, "Application does not exist")).await;
        return;
    }
    let (id, mut rx) = sim.register_socket(Transport::Pusher, 0);
    // The announced timeout, and the silence after which the server pings (`None`: never).
    let (announced, activity) = match sim.settings.lock().unwrap().pusher_activity_timeout {
        None => (
            sim.opts.activity_timeout.as_secs(),
            Some(sim.opts.activity_timeout),
        ),
        Some(secs) => (secs, timer(secs)),
    };
    let socket_id = format!(
        "{}.{}",
        rand::random::<u32>() % 1_000_000,
        rand::random::<u32>() % 10_000_000
    );
    let established = json!({"socket_id": socket_id, "activity_timeout": announced}).to_string();
    if tx
        .send(pusher_frame(
            "pusher:connection_established",
            &established,
            None,
        ))
        .await
        .is_err()
    {
        sim.unregister_socket(id);
        return;
    }
    let mut last_client = Instant::now();
    let mut pinged: Option<Instant> = None;
    let mut stalled = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Text(t)) if !stalled => {
                    if tx.send(Message::Text(t.as_ref().into())).await.is_err() { break; }
                }
                Some(Out::Binary(b)) if !stalled => {
                    if tx.send(Message::Binary(b)).await.is_err() { break; }
                }
                Some(Out::Text(_) | Out::Binary(_)) => {}
                Some(Out::Close(code, reason)) => {
                    let _ = tx.send(close(code, &reason)).await;
                    break;
                }
                Some(Out::Stall) => stalled = true,
                None => break,
            },
            msg = incoming.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                if stalled { continue; }
                last_client = Instant::now();
                pinged = None;
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    let err = json!({"event": "pusher:error", "data": {"code": null, "message": "Invalid JSON"}});
                    let _ = tx.send(Message::Text(err.to_string().into())).await;
                    continue;
                };
                // `data` is an object from pusher-js, a string from some clients.
                let data = match v.get("data") {
                    Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
                    Some(d) => d.clone(),
                    None => Value::Null,
                };
                match v.get("event").and_then(Value::as_str) {
                    Some("pusher:subscribe") => {
                        let ch = data.get("channel").and_then(Value::as_str).unwrap_or("");
                        if ch.starts_with("private-") || ch.starts_with("presence-") {
                            let e = json!({"event": "pusher:subscription_error", "channel": ch, "data": json!({"type": "AuthError", "error": "Unauthorized", "status": 401}).to_string()});
                            let _ = tx.send(Message::Text(e.to_string().into())).await;
                        } else if !ch.is_empty() && ch.len() <= 164 {
                            // Pusher answers a repeated subscribe with success too.
                            let _ = sim.subscribe(id, ch, None);
                            if tx.send(pusher_frame("pusher_internal:subscription_succeeded", "{}", Some(ch))).await.is_err() { break; }
                        }
                    }
                    Some("pusher:unsubscribe") => {
                        if let Some(ch) = data.get("channel").and_then(Value::as_str) {
                            sim.unsubscribe(id, ch);
                        }
                    }
                    Some("pusher:ping") => {
                        let pong = json!({"event": "pusher:pong", "data": "{}"});
                        if tx.send(Message::Text(pong.to_string().into())).await.is_err() { break; }
                    }
                    _ => {}
                }
            }
            _ = ticker.tick() => {
                if stalled { continue; }
                let Some(activity) = activity else { continue };
                match pinged {
                    Some(at) if at.elapsed() >= Duration::from_secs(30).min(activity) => {
                        let _ = tx.send(close(4201, "Pong reply not received")).await;
                        break;
                    }
                    None if last_client.elapsed() >= activity => {
                        let ping = json!({"event": "pusher:ping", "data": "{}"});
                        if tx.send(Message::Text(ping.to_string().into())).await.is_err() { break; }
                        pinged = Some(Instant::now());
                    }
                    _ => {}
                }
            }
        }
    }
    sim.unregister_socket(id);
}
