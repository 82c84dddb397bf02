//! Helpers shared by kick-sim's integration tests: a started simulator, an app token, HTTP
//! calls that return status, headers and JSON, and WebSocket clients for both transports.

#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn start(opts: kick_sim::Options) -> kick_sim::SimHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    kick_sim::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

/// An answer: status, headers, body text, and the body as JSON (`Null` when it is not).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        text,
        json,
    }
}

pub async fn token_answer(sim: &kick_sim::SimHandle) -> Answer {
    let r = reqwest::Client::new()
        .post(format!("{}/oauth/token", sim.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "sim-secret"),
        ])
        .send()
        .await
        .unwrap();
    answer(r).await
}

pub async fn token(sim: &kick_sim::SimHandle) -> String {
    let a = token_answer(sim).await;
    a.json["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {}", a.text))
        .to_owned()
}

/// `GET path` with the app token.
pub async fn get(sim: &kick_sim::SimHandle, token: &str, path: &str) -> Answer {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", sim.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    answer(r).await
}

/// `DELETE path` with the app token.
pub async fn delete(sim: &kick_sim::SimHandle, token: &str, path: &str) -> Answer {
    let r = reqwest::Client::new()
        .delete(format!("{}{path}", sim.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    answer(r).await
}

/// `POST path` with a JSON body and the app token.
pub async fn post_api(sim: &kick_sim::SimHandle, token: &str, path: &str, body: Value) -> Answer {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", sim.url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

/// A control call (`POST /control/...`); panics unless it answers 200.
pub async fn control(sim: &kick_sim::SimHandle, path: &str, body: Value) -> Value {
    let a = control_answer(sim, path, body).await;
    assert_eq!(a.status, 200, "{path}: {}", a.text);
    a.json
}

pub async fn control_answer(sim: &kick_sim::SimHandle, path: &str, body: Value) -> Answer {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", sim.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

pub async fn control_get(sim: &kick_sim::SimHandle, path: &str) -> Value {
    let r = reqwest::get(format!("{}{path}", sim.url())).await.unwrap();
    answer(r).await.json
}

/// A realtime POST (`/api/v1/realtime/...`) with Kick's Origin.
pub async fn realtime(sim: &kick_sim::SimHandle, path: &str, body: Value) -> Answer {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", sim.url()))
        .header("Origin", "https://kick.com")
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

pub fn negotiation_body() -> Value {
    json!({"client": {"id": "6f1c2f0e-1111-4222-8333-444455556666", "type": "web"}, "capabilities": {"accepted_providers": [{"provider": "pusher"}, {"provider": "centrifugo"}]}})
}

/// The Centrifugo URL the negotiation gives for `channel_id` (per-channel form).
pub async fn centrifugo_url_for(sim: &kick_sim::SimHandle, channel_id: i64) -> String {
    let a = realtime(
        sim,
        &format!("/api/v1/realtime/channels/{channel_id}/chat/connection"),
        negotiation_body(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    centrifugo_element(&a.json)["credentials"]["url"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub fn centrifugo_element(negotiation: &Value) -> Value {
    negotiation["data"]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["provider"] == "centrifugo")
        .cloned()
        .unwrap_or_else(|| panic!("no centrifugo in {negotiation}"))
}

pub async fn ws(url: &str, origin: Option<&str>) -> Ws {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The next message, or `None` after `wait`.
pub async fn next_message(w: &mut Ws, wait: Duration) -> Option<Message> {
    match tokio::time::timeout(wait, w.next()).await {
        Ok(Some(Ok(m))) => Some(m),
        Ok(Some(Err(e))) => panic!("websocket error: {e}"),
        Ok(None) => panic!("websocket ended"),
        Err(_) => None,
    }
}

/// The next text frame (pings and pongs skipped); panics on a close or after 5 s.
pub async fn next_text(w: &mut Ws) -> String {
    loop {
        match next_message(w, Duration::from_secs(5)).await {
            Some(Message::Text(t)) => return t.to_string(),
            Some(Message::Close(f)) => panic!("closed: {f:?}"),
            Some(_) => {}
            None => panic!("no frame within 5 s"),
        }
    }
}

/// The next text frame within `wait`, or `None`.
pub async fn text_within(w: &mut Ws, wait: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_message(w, left).await {
            Some(Message::Text(t)) => return Some(t.to_string()),
            Some(Message::Close(f)) => panic!("closed: {f:?}"),
            Some(_) => {}
            None => return None,
        }
    }
}

/// The close code the server sends next (within 5 s).
pub async fn close_code(w: &mut Ws) -> u16 {
    loop {
        match next_message(w, Duration::from_secs(5)).await {
            Some(Message::Close(Some(f))) => return u16::from(f.code),
            Some(Message::Close(None)) => panic!("close without a code"),
            Some(_) => {}
            None => panic!("no close within 5 s"),
        }
    }
}

pub async fn send(w: &mut Ws, v: Value) {
    w.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Opens a Centrifugo socket at `url` and connects with a fresh guest token; returns the
/// socket and the connect reply.
pub async fn centrifugo(sim: &kick_sim::SimHandle, url: &str) -> (Ws, Value) {
    let jwt = kick_sim::api::guest_jwt(&sim.sim, "test-client");
    let mut w = ws(url, Some("https://kick.com")).await;
    send(
        &mut w,
        json!({"connect": {"token": jwt, "name": "js"}, "id": 1}),
    )
    .await;
    let reply: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    (w, reply)
}

/// Subscribes (command id `id`) and returns the reply.
pub async fn subscribe(w: &mut Ws, id: u64, channel: &str) -> Value {
    send(
        w,
        json!({"subscribe": {"channel": channel, "flag": 0}, "id": id}),
    )
    .await;
    serde_json::from_str(&next_text(w).await).unwrap()
}

/// A Pusher socket with the simulator's key, subscribed to `channels`.
pub async fn pusher(sim: &kick_sim::SimHandle, channels: &[&str]) -> Ws {
    let mut w = ws(&sim.pusher_url(), None).await;
    let hello: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    assert_eq!(hello["event"], "pusher:connection_established");
    for ch in channels {
        send(
            &mut w,
            json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": ch}}),
        )
        .await;
        let ok: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
        assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    }
    w
}

/// Waits until `check` holds, polling every 50 ms, for at most `wait`.
pub async fn eventually<F: Fn() -> bool>(what: &str, wait: Duration, check: F) {
    let deadline = std::time::Instant::now() + wait;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
