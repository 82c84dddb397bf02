//! One task per realtime socket ("shard"): up to `KICK_CHANNELS_PER_CONNECTION` subscriptions to
//! `channel.{id}` feeds, over Centrifugo or Pusher. The task negotiates, connects with Kick's
//! Origin, subscribes, stages live/offline events, answers pings, detects silence, honours close
//! codes by class, and reconnects with full-jitter exponential backoff. A socket's failure is
//! logged and retried; it never ends the process.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use kick_shared::config::Transport;
use kick_shared::kick::KICK_ORIGIN;
use kick_shared::kick::frame::{self, CentrifugoMsg, CloseAction, KickEvent, PusherFrame};
use kick_shared::model::{Source, event_name};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, http};

use crate::Ctx;
use crate::stager::Staged;

/// Frames larger than this are counted as oversized and skipped (the socket stays up).
pub const MAX_FRAME: usize = 256 * 1024;

/// Changes to a shard's channel set while it runs.
#[derive(Debug)]
pub enum ShardCmd {
    Subscribe(Vec<i64>),
    Unsubscribe(Vec<i64>),
}

/// What the rest of the collector can see of a shard.
#[derive(Debug, Default)]
pub struct ShardState {
    pub up: AtomicBool,
    pub subscribed: AtomicUsize,
    pub ever_up: AtomicBool,
}

/// How a session ended.
#[derive(Debug)]
struct End {
    code: Option<u16>,
    reason: String,
    action: CloseAction,
    /// The socket had been connected and subscribed.
    was_up: bool,
}

impl End {
    fn io(reason: impl Into<String>, was_up: bool) -> Self {
        End {
            code: None,
            reason: reason.into(),
            action: CloseAction::Backoff,
            was_up,
        }
    }
}

enum Endpoint {
    Centrifugo { url: String },
    Pusher { url: String },
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

/// When to refresh a connection token that lives `ttl` seconds: 2 minutes early (as Kick's
/// own clients do), or at 80% of a short lifetime.
fn refresh_deadline(ttl: u64) -> Instant {
    let t = Duration::from_secs(ttl);
    Instant::now()
        + t.saturating_sub(Duration::from_secs(120))
            .max(t.mul_f64(0.8))
}

/// Full-jitter exponential backoff: uniform in [0, min(cap, base · 2^attempt)].
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = (1000u64 << attempt.min(16)).min(60_000);
    Duration::from_millis(rand::random_range(0..=ceiling))
}

async fn post_kick(ctx: &Ctx, path: &str, body: Value) -> Result<Value, String> {
    let resp = ctx
        .api
        .http()
        .post(format!("{}{path}", ctx.cfg.kick.web_url))
        .header("Origin", KICK_ORIGIN)
        .header("Referer", format!("{KICK_ORIGIN}/"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("{path}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{path}: http {}", status.as_u16()));
    }
    serde_json::from_str(&text).map_err(|_| format!("{path}: not json"))
}

/// Kick's web-client negotiation: the first offered provider we implement.
async fn negotiate(ctx: &Ctx, client_id: &str) -> Result<Endpoint, String> {
    if ctx.cfg.kick.transport == Transport::Pusher {
        return Ok(Endpoint::Pusher {
            url: ctx.cfg.kick.pusher_url.clone(),
        });
    }
    let accepted: Vec<Value> = match ctx.cfg.kick.transport {
        Transport::Centrifugo => vec![json!({"provider": "centrifugo"})],
        _ => vec![
            json!({"provider": "pusher"}),
            json!({"provider": "centrifugo"}),
        ],
    };
    let body = json!({"client": {"id": client_id, "type": "web"}, "capabilities": {"accepted_providers": accepted}});
    let v = post_kick(ctx, "/api/v1/realtime/connection", body).await?;
    let conns = v
        .pointer("/data/connections")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in conns {
        match c.get("provider").and_then(Value::as_str) {
            Some("centrifugo") => {
                if let Some(url) = c.pointer("/credentials/url").and_then(Value::as_str) {
                    return Ok(Endpoint::Centrifugo {
                        url: url.to_owned(),
                    });
                }
            }
            Some("pusher") if ctx.cfg.kick.transport == Transport::Auto => {
                let key = c.pointer("/credentials/app_key").and_then(Value::as_str);
                return Ok(Endpoint::Pusher {
                    url: pusher_url_with_key(&ctx.cfg.kick.pusher_url, key),
                });
            }
            _ => {}
        }
    }
    Err("negotiation offered no provider we implement".into())
}

/// `KICK_PUSHER_URL` with the app key the negotiation handed out (Kick changed keys before).
fn pusher_url_with_key(base: &str, key: Option<&str>) -> String {
    let Some(key) = key else {
        return base.to_owned();
    };
    match base.find("/app/") {
        Some(i) => {
            let rest = &base[i + 5..];
            let end = rest.find(['?', '/']).unwrap_or(rest.len());
            format!("{}/app/{key}{}", &base[..i], &rest[end..])
        }
        None => base.to_owned(),
    }
}

async fn guest_token(ctx: &Ctx, client_id: &str) -> Result<String, String> {
    let v = post_kick(
        ctx,
        "/api/v1/realtime/auth/connection",
        json!({"client_id": client_id}),
    )
    .await?;
    v.pointer("/data/token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "auth/connection: no token".into())
}

/// One TLS configuration (root store included) shared by every socket: built once, not per
/// connection.
fn tls() -> tokio_tungstenite::Connector {
    tokio_tungstenite::Connector::Rustls(kick_shared::tls_client_config())
}

async fn connect(url: &str) -> Result<Ws, String> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("bad realtime url: {e}"))?;
    req.headers_mut().insert(
        http::header::ORIGIN,
        http::HeaderValue::from_static(KICK_ORIGIN),
    );
    // Small buffers: a collector holds hundreds of sockets.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(8 << 20))
        .max_frame_size(Some(8 << 20));
    let fut =
        tokio_tungstenite::connect_async_tls_with_config(req, Some(config), true, Some(tls()));
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

fn truncated(s: &str) -> String {
    let mut t: String = s.chars().take(120).collect();
    if s.len() > t.len() {
        t.push('…');
    }
    t
}

/// Stages a live/offline event; counts every event by name.
fn on_event(ctx: &Ctx, topic: &str, event: KickEvent, arrived: Instant) {
    let received_at = Utc::now();
    match event {
        KickEvent::Live(l) => {
            ctx.metrics.frames.add(event_name::STREAMER_IS_LIVE, 1);
            ctx.stager.stage(Staged {
                source: Source::Realtime,
                topic: Some(topic.to_owned()),
                event_name: event_name::STREAMER_IS_LIVE,
                channel_id: Some(l.channel_id),
                user_id: None,
                livestream_id: Some(l.livestream_id),
                event_time: l.created_at,
                payload: json!({"livestream": {"id": l.livestream_id, "channel_id": l.channel_id, "session_title": l.session_title, "created_at": l.created_at}}).to_string(),
                dedupe_key: format!("rt:live:{}:{}", l.channel_id, l.livestream_id),
                received_at,
                arrived,
            });
        }
        KickEvent::Stop(s) => {
            ctx.metrics.frames.add(event_name::STOP_STREAM_BROADCAST, 1);
            ctx.stager.stage(Staged {
                source: Source::Realtime,
                topic: Some(topic.to_owned()),
                event_name: event_name::STOP_STREAM_BROADCAST,
                channel_id: Some(s.channel_id),
                user_id: None,
                livestream_id: Some(s.livestream_id),
                event_time: Some(received_at),
                payload: json!({"livestream": {"id": s.livestream_id, "channel": {"id": s.channel_id, "is_banned": s.is_banned}}}).to_string(),
                dedupe_key: format!("rt:stop:{}:{}", s.channel_id, s.livestream_id),
                received_at,
                arrived,
            });
        }
        KickEvent::Other(name) => ctx.metrics.frames.add(&name, 1),
    }
}

fn malformed(ctx: &Ctx, shard: usize, kind: &str, detail: &str) {
    ctx.metrics.malformed.add(kind, 1);
    tracing::warn!(shard, kind, frame = %truncated(detail), "malformed realtime frame skipped");
}

/// Runs one shard until shutdown or until its command channel closes.
pub async fn run(
    ctx: Arc<Ctx>,
    shard: usize,
    mut channels: BTreeSet<i64>,
    mut cmds: mpsc::UnboundedReceiver<ShardCmd>,
    state: Arc<ShardState>,
    start_delay: Duration,
) {
    ctx.metrics.sockets_total.fetch_add(1, Ordering::Relaxed);
    tokio::select! {
        _ = tokio::time::sleep(start_delay) => {}
        _ = ctx.shutdown.cancelled() => {}
    }
    let mut attempt: u32 = 0;
    let mut down_since: Option<(chrono::DateTime<Utc>, i64)> = None;
    while !ctx.shutdown.is_cancelled() {
        let client_id = uuid();
        let end = session(
            &ctx,
            shard,
            &client_id,
            &mut channels,
            &mut cmds,
            &state,
            &mut down_since,
        )
        .await;
        let Some(end) = end else { break };
        if state.up.swap(false, Ordering::Relaxed) {
            ctx.metrics.sockets_up.fetch_sub(1, Ordering::Relaxed);
        }
        ctx.metrics.subscriptions.fetch_sub(
            state.subscribed.swap(0, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        if ctx.shutdown.is_cancelled() {
            break;
        }
        let label = end.code.map_or_else(|| "io".to_owned(), |c| c.to_string());
        ctx.metrics.reconnects.add(&label, 1);
        if end.was_up {
            attempt = 0;
            tracing::warn!(shard, code = ?end.code, reason = %end.reason, "realtime socket lost, reconnecting");
            down_since =
                crate::gaps::socket_down(&ctx, shard, &channels, end.code, &end.reason).await;
        } else {
            tracing::info!(shard, code = ?end.code, reason = %end.reason, attempt, "realtime connection failed");
        }
        let wait = match end.action {
            CloseAction::Immediately => Duration::from_millis(rand::random_range(0..250)),
            CloseAction::Backoff => {
                attempt += 1;
                backoff(attempt)
            }
            CloseAction::Terminal => {
                tracing::warn!(shard, code = ?end.code, wait_s = ctx.cfg.terminal_retry.as_secs(), "terminal close code: waiting before starting again from negotiation");
                ctx.cfg.terminal_retry
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.shutdown.cancelled() => break,
        }
    }
    ctx.metrics.sockets_total.fetch_sub(1, Ordering::Relaxed);
}

/// Marks the shard subscribed: metrics, gap closing and the reconcile of its channels.
fn became_up(
    ctx: &Arc<Ctx>,
    shard: usize,
    channels: &BTreeSet<i64>,
    state: &ShardState,
    down_since: &mut Option<(chrono::DateTime<Utc>, i64)>,
) {
    if !state.up.swap(true, Ordering::Relaxed) {
        ctx.metrics.sockets_up.fetch_add(1, Ordering::Relaxed);
    }
    let first = !state.ever_up.swap(true, Ordering::Relaxed);
    tracing::debug!(
        shard,
        channels = channels.len(),
        "realtime socket subscribed"
    );
    if !first {
        // After a reconnect: reconcile this socket's channels, and close the gap record.
        let ctx = ctx.clone();
        let chans: Vec<i64> = channels.iter().copied().collect();
        let gap = down_since.take();
        tokio::spawn(async move {
            let found = crate::reconcile::run(&ctx, crate::reconcile::Scope::Channels(chans))
                .await
                .ok();
            if let Some((_, gap_id)) = gap {
                crate::gaps::socket_up(&ctx, gap_id, found).await;
            }
        });
    }
}

/// One connection: negotiate, connect, subscribe, read until it ends. `None` = shutdown.
async fn session(
    ctx: &Arc<Ctx>,
    shard: usize,
    client_id: &str,
    channels: &mut BTreeSet<i64>,
    cmds: &mut mpsc::UnboundedReceiver<ShardCmd>,
    state: &ShardState,
    down_since: &mut Option<(chrono::DateTime<Utc>, i64)>,
) -> Option<End> {
    let endpoint = match negotiate(ctx, client_id).await {
        Ok(e) => e,
        Err(e) => return Some(End::io(e, false)),
    };
    match endpoint {
        Endpoint::Centrifugo { url } => {
            ctx.set_transport("centrifugo");
            let token = match guest_token(ctx, client_id).await {
                Ok(t) => t,
                Err(e) => return Some(End::io(e, false)),
            };
            let ws = match connect(&url).await {
                Ok(ws) => ws,
                Err(e) => return Some(End::io(e, false)),
            };
            centrifugo(
                ctx, shard, client_id, ws, token, channels, cmds, state, down_since,
            )
            .await
        }
        Endpoint::Pusher { url } => {
            ctx.set_transport("pusher");
            let ws = match connect(&url).await {
                Ok(ws) => ws,
                Err(e) => return Some(End::io(e, false)),
            };
            pusher(ctx, shard, ws, channels, cmds, state, down_since).await
        }
    }
}

fn close_end(
    frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
    was_up: bool,
    classify: fn(u16) -> CloseAction,
) -> End {
    match frame {
        Some(f) => {
            let code = u16::from(f.code);
            End {
                code: Some(code),
                reason: f.reason.to_string(),
                action: classify(code),
                was_up,
            }
        }
        None => End::io("closed without a code", was_up),
    }
}

/// What a read from the socket amounts to, for either protocol.
enum Incoming {
    /// A text frame to decode.
    Text(tokio_tungstenite::tungstenite::Utf8Bytes),
    /// Nothing to decode (a control frame, or a frame counted as malformed).
    Skip,
    /// The connection ended.
    End(End),
}

/// Classifies one read: text frames under `MAX_FRAME` are decoded; binary and oversized frames
/// are counted as malformed and skipped; a close frame ends the session by its code's class.
fn incoming(
    ctx: &Ctx,
    shard: usize,
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    up: bool,
    classify: fn(u16) -> CloseAction,
) -> Incoming {
    match msg {
        Some(Ok(Message::Text(t))) if t.len() > MAX_FRAME => {
            malformed(ctx, shard, "oversized", &t);
            Incoming::Skip
        }
        Some(Ok(Message::Text(t))) => Incoming::Text(t),
        Some(Ok(Message::Close(f))) => Incoming::End(close_end(f, up, classify)),
        Some(Ok(Message::Binary(_))) => {
            malformed(ctx, shard, "binary", "");
            Incoming::Skip
        }
        Some(Ok(_)) => Incoming::Skip,
        Some(Err(e)) => Incoming::End(End::io(format!("read: {e}"), up)),
        None => Incoming::End(End::io("connection closed", up)),
    }
}

/// Closes the socket with 1000 at shutdown.
async fn close_normally(ws: &mut Ws) {
    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "shutdown".into(),
    };
    let _ = ws.close(Some(frame)).await;
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

#[allow(clippy::too_many_arguments)]
async fn centrifugo(
    ctx: &Arc<Ctx>,
    shard: usize,
    client_id: &str,
    mut ws: Ws,
    token: String,
    channels: &mut BTreeSet<i64>,
    cmds: &mut mpsc::UnboundedReceiver<ShardCmd>,
    state: &ShardState,
    down_since: &mut Option<(chrono::DateTime<Utc>, i64)>,
) -> Option<End> {
    let mut next_id: u64 = 1;
    let mut pending_subs: HashMap<u64, i64> = HashMap::new();
    // Connect, then the subscriptions, a few commands per frame (Centrifugo takes several per
    // frame, `\n`-separated). Small frames keep each socket's write buffer small.
    if let Err(e) = send(
        &mut ws,
        json!({"connect": {"token": token, "name": "js"}, "id": 1}).to_string(),
    )
    .await
    {
        return Some(End::io(e, false));
    }
    let subscribe_ids: Vec<(u64, i64)> = channels
        .iter()
        .map(|ch| {
            next_id += 1;
            (next_id, *ch)
        })
        .collect();
    for chunk in subscribe_ids.chunks(16) {
        let frame: Vec<String> = chunk
            .iter()
            .map(|(id, ch)| {
                pending_subs.insert(*id, *ch);
                json!({"subscribe": {"channel": format!("channel.{ch}"), "flag": 0}, "id": id})
                    .to_string()
            })
            .collect();
        if let Err(e) = send(&mut ws, frame.join("\n")).await {
            return Some(End::io(e, false));
        }
    }
    drop(subscribe_ids);
    let mut up = false;
    let mut connected = false;
    let mut pong = false;
    let mut ping_every = Duration::from_secs(25);
    let mut refresh_at: Option<Instant> = None;
    let mut refresh_id: Option<u64> = None;
    let mut last_msg = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let connect_deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                close_normally(&mut ws).await;
                return None;
            }
            msg = ws.next() => {
                let arrived = Instant::now();
                last_msg = arrived;
                let text = match incoming(ctx, shard, msg, up, frame::centrifugo_close_action) {
                    Incoming::Text(t) => t,
                    Incoming::Skip => continue,
                    Incoming::End(end) => return Some(end),
                };
                for m in frame::decode_centrifugo(&text) {
                    match m {
                        Err(e) => malformed(ctx, shard, "undecodable", &format!("{e}: {text}")),
                        Ok(CentrifugoMsg::Ping) => {
                            if pong && let Err(e) = send(&mut ws, "{}".into()).await {
                                return Some(End::io(e, up));
                            }
                        }
                        Ok(CentrifugoMsg::Connect { ping, ttl, pong: p, .. }) => {
                            connected = true;
                            pong = p;
                            if let Some(p) = ping { ping_every = Duration::from_secs(p.max(1)); }
                            // Refresh well before the token runs out: 2 minutes early, or at 80%.
                            refresh_at = ttl.map(refresh_deadline);
                            if pending_subs.is_empty() && !up {
                                up = true;
                                became_up(ctx, shard, channels, state, down_since);
                            }
                        }
                        Ok(CentrifugoMsg::Subscribed { id }) => {
                            if pending_subs.remove(&id).is_some() {
                                state.subscribed.fetch_add(1, Ordering::Relaxed);
                                ctx.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
                            }
                            if pending_subs.is_empty() && connected && !up {
                                pending_subs.shrink_to_fit();
                                up = true;
                                became_up(ctx, shard, channels, state, down_since);
                            }
                        }
                        Ok(CentrifugoMsg::Error { id, code, message }) => {
                            if id == 1 {
                                // Connect refused (e.g. 109 token expired): start over with a new token.
                                return Some(End { code: None, reason: format!("connect error {code}: {message}"), action: CloseAction::Backoff, was_up: false });
                            }
                            if Some(id) == refresh_id {
                                return Some(End { code: None, reason: format!("refresh error {code}: {message}"), action: CloseAction::Immediately, was_up: up });
                            }
                            if let Some(ch) = pending_subs.remove(&id) {
                                if code == 105 {
                                    state.subscribed.fetch_add(1, Ordering::Relaxed);
                                    ctx.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    tracing::warn!(shard, channel = ch, code, message = %message, "subscription refused");
                                }
                                if pending_subs.is_empty() && connected && !up {
                                    up = true;
                                    became_up(ctx, shard, channels, state, down_since);
                                }
                            }
                        }
                        Ok(CentrifugoMsg::Publication { channel, event }) => on_event(ctx, &channel, event, arrived),
                        Ok(CentrifugoMsg::Disconnect { code, reason }) => {
                            return Some(End { code: Some(code), reason, action: frame::centrifugo_close_action(code), was_up: up });
                        }
                        Ok(CentrifugoMsg::Unsub { channel, code }) => {
                            if (2500..3000).contains(&code) && let Some(ch) = frame::channel_id_of_topic(&channel) && channels.contains(&ch) {
                                next_id += 1;
                                pending_subs.insert(next_id, ch);
                                state.subscribed.fetch_sub(1, Ordering::Relaxed);
                                ctx.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
                                let cmd = json!({"subscribe": {"channel": channel, "flag": 0}, "id": next_id}).to_string();
                                if let Err(e) = send(&mut ws, cmd).await { return Some(End::io(e, up)); }
                            }
                        }
                        Ok(CentrifugoMsg::Refreshed { ttl, .. }) => {
                            // The next refresh, from the new token's lifetime.
                            refresh_at = ttl.map(refresh_deadline);
                        }
                        Ok(CentrifugoMsg::Unsubscribed { .. } | CentrifugoMsg::Other) => {}
                    }
                }
            }
            cmd = cmds.recv() => {
                let cmd = cmd?;
                let mut lines = Vec::new();
                match cmd {
                    ShardCmd::Subscribe(chs) => for ch in chs {
                        if channels.insert(ch) {
                            next_id += 1;
                            pending_subs.insert(next_id, ch);
                            lines.push(json!({"subscribe": {"channel": format!("channel.{ch}"), "flag": 0}, "id": next_id}).to_string());
                        }
                    },
                    ShardCmd::Unsubscribe(chs) => for ch in chs {
                        if channels.remove(&ch) {
                            next_id += 1;
                            lines.push(json!({"unsubscribe": {"channel": format!("channel.{ch}")}, "id": next_id}).to_string());
                            if state.subscribed.load(Ordering::Relaxed) > 0 {
                                state.subscribed.fetch_sub(1, Ordering::Relaxed);
                                ctx.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                    },
                }
                if connected && !lines.is_empty() && let Err(e) = send(&mut ws, lines.join("\n")).await {
                    return Some(End::io(e, up));
                }
            }
            _ = ticker.tick() => {
                if !connected && Instant::now() > connect_deadline {
                    return Some(End::io("no connect reply", false));
                }
                // A server that pings every N s and has been silent for N s + grace is dead.
                if last_msg.elapsed() > ping_every + ctx.cfg.silence_grace {
                    return Some(End::io(format!("silent for {}s", last_msg.elapsed().as_secs()), up));
                }
                if let Some(at) = refresh_at && Instant::now() >= at {
                    refresh_at = None;
                    match guest_token(ctx, client_id).await {
                        Ok(t) => {
                            next_id += 1;
                            refresh_id = Some(next_id);
                            let cmd = json!({"refresh": {"token": t}, "id": next_id}).to_string();
                            if let Err(e) = send(&mut ws, cmd).await { return Some(End::io(e, up)); }
                        }
                        Err(e) => tracing::warn!(shard, error = %e, "token refresh failed; the server will disconnect at expiry"),
                    }
                }
            }
        }
    }
}

async fn pusher(
    ctx: &Arc<Ctx>,
    shard: usize,
    mut ws: Ws,
    channels: &mut BTreeSet<i64>,
    cmds: &mut mpsc::UnboundedReceiver<ShardCmd>,
    state: &ShardState,
    down_since: &mut Option<(chrono::DateTime<Utc>, i64)>,
) -> Option<End> {
    let subscribe = |ch: i64| {
        json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": format!("channel.{ch}")}}).to_string()
    };
    let mut established = false;
    let mut up = false;
    let mut pending: BTreeSet<i64> = BTreeSet::new();
    let mut activity = Duration::from_secs(120);
    let mut last_msg = Instant::now();
    let mut pinged: Option<Instant> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                close_normally(&mut ws).await;
                return None;
            }
            msg = ws.next() => {
                let arrived = Instant::now();
                last_msg = arrived;
                pinged = None;
                let text = match incoming(ctx, shard, msg, up, frame::pusher_close_action) {
                    Incoming::Text(t) => t,
                    Incoming::Skip => continue,
                    Incoming::End(end) => return Some(end),
                };
                match frame::decode_pusher(&text) {
                    Err(e) => malformed(ctx, shard, "undecodable", &format!("{e}: {text}")),
                    Ok(PusherFrame::ConnectionEstablished { activity_timeout, .. }) => {
                        established = true;
                        if let Some(a) = activity_timeout { activity = Duration::from_secs(a.clamp(1, 120)); }
                        for ch in channels.iter() {
                            pending.insert(*ch);
                            if let Err(e) = send(&mut ws, subscribe(*ch)).await { return Some(End::io(e, false)); }
                        }
                        if pending.is_empty() && !up {
                            up = true;
                            became_up(ctx, shard, channels, state, down_since);
                        }
                    }
                    Ok(PusherFrame::SubscriptionSucceeded { channel }) => {
                        if let Some(ch) = frame::channel_id_of_topic(&channel) && pending.remove(&ch) {
                            state.subscribed.fetch_add(1, Ordering::Relaxed);
                            ctx.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
                        }
                        if pending.is_empty() && established && !up {
                            up = true;
                            became_up(ctx, shard, channels, state, down_since);
                        }
                    }
                    Ok(PusherFrame::SubscriptionError { channel, message }) => {
                        tracing::warn!(shard, channel = ?channel, message = %message, "subscription refused");
                        if let Some(ch) = channel.as_deref().and_then(frame::channel_id_of_topic) { pending.remove(&ch); }
                    }
                    Ok(PusherFrame::Ping) => {
                        if let Err(e) = send(&mut ws, json!({"event": "pusher:pong", "data": {}}).to_string()).await {
                            return Some(End::io(e, up));
                        }
                    }
                    Ok(PusherFrame::Error { code, message }) => {
                        tracing::warn!(shard, code = ?code, message = %message, "pusher error");
                    }
                    Ok(PusherFrame::Event { channel, event }) => on_event(ctx, &channel, event, arrived),
                    Ok(PusherFrame::Pong | PusherFrame::Other { .. }) => {}
                }
            }
            cmd = cmds.recv() => {
                let cmd = cmd?;
                match cmd {
                    ShardCmd::Subscribe(chs) => for ch in chs {
                        if channels.insert(ch) && established {
                            pending.insert(ch);
                            if let Err(e) = send(&mut ws, subscribe(ch)).await { return Some(End::io(e, up)); }
                        }
                    },
                    ShardCmd::Unsubscribe(chs) => for ch in chs {
                        if channels.remove(&ch) && established {
                            pending.remove(&ch);
                            if state.subscribed.load(Ordering::Relaxed) > 0 {
                                state.subscribed.fetch_sub(1, Ordering::Relaxed);
                                ctx.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
                            }
                            let m = json!({"event": "pusher:unsubscribe", "data": {"channel": format!("channel.{ch}")}}).to_string();
                            if let Err(e) = send(&mut ws, m).await { return Some(End::io(e, up)); }
                        }
                    },
                }
            }
            _ = ticker.tick() => {
                if !established && started.elapsed() > Duration::from_secs(15) {
                    return Some(End::io("no connection_established", false));
                }
                match pinged {
                    // Silence after our ping: the socket is dead or stalled.
                    Some(at) if at.elapsed() > ctx.cfg.silence_grace => {
                        return Some(End::io(format!("no pong for {}s", at.elapsed().as_secs()), up));
                    }
                    None if last_msg.elapsed() >= activity => {
                        if let Err(e) = send(&mut ws, json!({"event": "pusher:ping", "data": {}}).to_string()).await {
                            return Some(End::io(e, up));
                        }
                        pinged = Some(Instant::now());
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            assert!(d <= Duration::from_secs(60));
            if attempt == 0 {
                assert!(d <= Duration::from_secs(1));
            }
        }
        // Full jitter: repeated draws differ.
        let draws: std::collections::HashSet<_> = (0..20).map(|_| backoff(10)).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn negotiated_pusher_key_replaces_the_configured_one() {
        let base = "wss://ws-us2.pusher.com/app/32cbd69e4b950bf97679?protocol=7&client=js&version=8.4.0&flash=false";
        assert_eq!(
            pusher_url_with_key(base, Some("newkey")),
            "wss://ws-us2.pusher.com/app/newkey?protocol=7&client=js&version=8.4.0&flash=false"
        );
        assert_eq!(pusher_url_with_key(base, None), base);
    }

    #[test]
    fn client_ids_are_uuids() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
