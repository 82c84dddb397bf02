//! The two realtime WebSocket protocols.
//!
//! Centrifugo (`/connection/websocket`): JSON commands with ids, replies echoing them, several
//! replies per frame separated by `\n`, connect with the guest JWT (expired → error 109, unknown
//! → disconnect 3500), server pings `{}` answered by `{}` (no pong in time → disconnect 3012),
//! refresh, subscribe/unsubscribe, publications as `{"push":{"channel","pub":{"data"}}}`, Origin
//! check (403 on a foreign Origin).
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
use serde_json::{Value, json};

use crate::{Out, Sim, Transport};

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/connection/websocket", get(centrifugo))
        .route("/app/{key}", get(pusher))
}

async fn centrifugo(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !crate::api::origin_ok(&headers) {
        return (StatusCode::FORBIDDEN, "Forbidden").into_response();
    }
    ws.max_message_size(1 << 20)
        .on_upgrade(move |socket| centrifugo_session(socket, sim))
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

async fn centrifugo_session(socket: WebSocket, sim: Arc<Sim>) {
    let (id, mut rx) = sim.register_socket(Transport::Centrifugo);
    let (mut tx, mut incoming) = socket.split();
    let ping_every = sim.opts.ping_interval;
    let mut ticker = tokio::time::interval(ping_every);
    ticker.tick().await;
    let mut connected = false;
    let mut stalled = false;
    let mut awaiting_pong: Option<Instant> = None;
    // The connection expires with its token unless the client refreshes it (Centrifugo: 3005).
    let mut expires_at: Option<Instant> = None;
    let hello_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Text(t)) if !stalled && connected => {
                    if tx.send(Message::Text(t.as_ref().into())).await.is_err() { break; }
                }
                Some(Out::Text(_)) => {}
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
                    if cmd.as_object().is_some_and(|o| o.is_empty()) {
                        awaiting_pong = None;
                        continue;
                    }
                    let cid = cmd.get("id").and_then(Value::as_u64).unwrap_or(0);
                    if let Some(c) = cmd.get("connect") {
                        match check_token(&sim, c.get("token").and_then(Value::as_str)) {
                            Ok(ttl) => {
                                connected = true;
                                expires_at = Some(Instant::now() + Duration::from_secs(ttl));
                                replies.push(json!({"id": cid, "connect": {
                                    "client": format!("{:032x}", rand::random::<u128>()),
                                    "version": "6.9.6 PRO", "expires": true, "ttl": ttl,
                                    "ping": ping_every.as_secs().max(1), "pong": true}}));
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
                                if sim.subscribe(id, ch) {
                                    replies.push(json!({"id": cid, "subscribe": {}}));
                                } else {
                                    replies.push(json!({"id": cid, "error": {"code": 105, "message": "already subscribed"}}));
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
                            Ok(ttl) => {
                                expires_at = Some(Instant::now() + Duration::from_secs(ttl));
                                replies.push(json!({"id": cid, "refresh": {"expires": true, "ttl": ttl}}));
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
            _ = ticker.tick() => {
                if stalled { continue; }
                if !connected {
                    if Instant::now() > hello_deadline {
                        let _ = tx.send(close(3501, "bad request")).await;
                        break;
                    }
                    continue;
                }
                if expires_at.is_some_and(|t| Instant::now() >= t) {
                    let _ = tx.send(close(3005, "expired")).await;
                    break;
                }
                if let Some(since) = awaiting_pong {
                    if since.elapsed() >= ping_every {
                        let _ = tx.send(close(3012, "no pong")).await;
                        break;
                    }
                } else {
                    if tx.send(Message::Text("{}".into())).await.is_err() { break; }
                    awaiting_pong = Some(Instant::now());
                }
            }
        }
    }
    sim.unregister_socket(id);
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
    let (id, mut rx) = sim.register_socket(Transport::Pusher);
    let activity = sim.opts.activity_timeout;
    let socket_id = format!(
        "{}.{}",
        rand::random::<u32>() % 1_000_000,
        rand::random::<u32>() % 10_000_000
    );
    let established =
        json!({"socket_id": socket_id, "activity_timeout": activity.as_secs()}).to_string();
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
                Some(Out::Text(_)) => {}
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
                            sim.subscribe(id, ch);
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
