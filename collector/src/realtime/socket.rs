//! One loop per WebSocket: negotiate, connect (Kick's Origin, our User-Agent), then feed the
//! protocol session with frames, ticks and channel changes, and carry out its actions. What the
//! socket sees (up, down, refused, events) is reported to the placement, which owns coverage
//! gaps and reconciles; events go to the stager. The loop reconnects by the class of each end:
//! at once, with full-jitter backoff, or after a long wait for terminal codes and refusals.
//!
//! The socket's channel set is the placement's decision ([`SocketShared::desired`]); the loop
//! reads it at each connect and whenever it is told it changed.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use kick_shared::config::Transport;
use kick_shared::kick::KICK_ORIGIN;
use kick_shared::kick::frame::{self, KickEvent};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, http};

use crate::ctx::Ctx;
use crate::reconcile::Request;
use crate::rows;
use kick_shared::kick::realtime::negotiate::{Endpoint, NegotiateError, USER_AGENT};
use kick_shared::kick::realtime::{Action, End, Retry, centrifugo, pusher};

/// Text frames larger than this are rejected (kept as `rejected: oversized`); the socket stays up.
pub const MAX_FRAME: usize = 256 * 1024;
/// Frames larger than this are not even read: the connection is dropped and reconnected (a
/// frame that large from Kick is hostile). Up to it, a frame is read whole and then rejected, so
/// the events right behind it on the same socket still arrive; the price is a transient buffer
/// of that size per socket receiving such a frame.
pub const MAX_MESSAGE: usize = 16 << 20;

/// What the placement can see of a socket.
#[derive(Debug)]
pub struct SocketShared {
    pub id: usize,
    /// The Centrifugo server this socket connects to (a channel's region); `None`: wherever the
    /// general negotiation says.
    pub server: Option<String>,
    /// The channels this socket should carry: the placement's decision.
    pub desired: std::sync::Mutex<BTreeSet<i64>>,
    /// Rung when `desired` changes.
    pub changed: Notify,
    pub up: AtomicBool,
    pub subscribed: AtomicUsize,
    /// Retires the socket (a child of the shutdown token): its task ends for good.
    pub stop: tokio_util::sync::CancellationToken,
    /// The server it is connected to now (what the negotiation answered, for a general socket).
    pub connected_url: std::sync::Mutex<Option<String>>,
}

impl SocketShared {
    pub fn new(
        id: usize,
        server: Option<String>,
        channels: BTreeSet<i64>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        SocketShared {
            stop,
            connected_url: std::sync::Mutex::new(None),
            id,
            server,
            desired: std::sync::Mutex::new(channels),
            changed: Notify::new(),
            up: AtomicBool::new(false),
            subscribed: AtomicUsize::new(0),
        }
    }

    pub fn desired(&self) -> BTreeSet<i64> {
        self.desired.lock().unwrap().clone()
    }
}

/// What a socket tells the placement.
#[derive(Debug, Clone)]
pub enum SocketEvent {
    Up {
        socket: usize,
    },
    Down {
        socket: usize,
        end: End,
        was_up: bool,
    },
    Refused {
        socket: usize,
        channel: i64,
        code: i64,
        message: String,
    },
    Unsubscribed {
        socket: usize,
        channel: i64,
    },
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Full-jitter exponential backoff: uniform in [0, min(cap, base · 2^attempt)].
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = (1000u64 << attempt.min(16)).min(60_000);
    Duration::from_millis(rand::random_range(0..=ceiling))
}

/// Runs one socket until shutdown (supervised: a panic restarts it from here).
pub async fn run(
    ctx: Arc<Ctx>,
    sock: Arc<SocketShared>,
    events: mpsc::UnboundedSender<SocketEvent>,
) -> anyhow::Result<()> {
    let mut attempt: u32 = 0;
    // Terminal ends in a row without the socket coming up in between.
    let mut terminal_streak: u32 = 0;
    // A restart after a panic: the old connection is gone.
    mark_down(&ctx, &sock);
    while !sock.stop.is_cancelled() {
        if !wait_for_channels(&sock).await {
            break;
        }
        let Some(end) = session(&ctx, &sock, &events).await else {
            break;
        };
        let was_up = mark_down(&ctx, &sock);
        let label = end.code.map_or_else(|| "io".to_owned(), |c| c.to_string());
        ctx.metrics.reconnects.add(&label, 1);
        if was_up {
            attempt = 0;
            terminal_streak = 0;
            tracing::warn!(socket = sock.id, end = %end, "realtime socket lost, reconnecting");
        } else {
            tracing::info!(socket = sock.id, end = %end, attempt, "realtime connection failed");
        }
        let _ = events.send(SocketEvent::Down {
            socket: sock.id,
            end: end.clone(),
            was_up,
        });
        let wait = match end.retry {
            Retry::Now => Duration::from_millis(rand::random_range(0..250)),
            Retry::Backoff => {
                attempt = attempt.saturating_add(1);
                backoff(attempt)
            }
            Retry::Terminal => {
                // One terminal end (a single hostile or mistaken error frame) costs 10 s; only
                // a server that keeps refusing us gets the full KICK_TERMINAL_RETRY wait
                // (10 s, 20 s, 40 s … up to it). A refusal pause of the web limiter still wins.
                terminal_streak = terminal_streak.saturating_add(1);
                let escalating =
                    Duration::from_secs(10).saturating_mul(1 << (terminal_streak - 1).min(10));
                let wait = escalating
                    .min(ctx.cfg().terminal_retry)
                    .max(ctx.web.limiter.paused_for())
                    .saturating_add(Duration::from_millis(rand::random_range(0..5000)));
                tracing::warn!(
                    socket = sock.id,
                    wait_s = wait.as_secs(),
                    "terminal: waiting before starting again from negotiation with a new client id"
                );
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = sock.stop.cancelled() => break,
        }
    }
    mark_down(&ctx, &sock);
    Ok(())
}

/// Waits until the socket has channels to carry (a socket without any does not connect);
/// `false`: stopped meanwhile.
async fn wait_for_channels(sock: &SocketShared) -> bool {
    loop {
        if !sock.desired.lock().unwrap().is_empty() {
            return true;
        }
        tokio::select! {
            _ = sock.changed.notified() => {}
            _ = sock.stop.cancelled() => return false,
        }
    }
}

/// Marks the socket down; returns whether it was up. The up count changes only on a real
/// transition, so it cannot drift.
fn mark_down(ctx: &Ctx, sock: &SocketShared) -> bool {
    set_subscribed(ctx, sock, 0);
    let was_up = sock.up.swap(false, Ordering::Relaxed);
    if was_up {
        ctx.metrics.sockets_up.fetch_sub(1, Ordering::Relaxed);
    }
    was_up
}

fn negotiation_end(e: &NegotiateError) -> End {
    End {
        code: None,
        reason: e.to_string(),
        retry: if e.is_refusal() {
            Retry::Terminal
        } else {
            Retry::Backoff
        },
    }
}

/// One connection: negotiate, connect, run the session. `None` = shutdown.
async fn session(
    ctx: &Arc<Ctx>,
    sock: &Arc<SocketShared>,
    events: &mpsc::UnboundedSender<SocketEvent>,
) -> Option<End> {
    let cfg = ctx.cfg();
    let client_id = kick_shared::kick::realtime::negotiate::new_client_id();
    let negotiated = match &sock.server {
        // The channel's region, as its per-channel negotiation answered (see `regions`).
        Some(url) if cfg.kick.transport != Transport::Pusher => {
            Ok(Endpoint::Centrifugo { url: url.clone() })
        }
        _ => {
            ctx.web
                .connection(
                    &cfg.kick.web_url,
                    &client_id,
                    cfg.kick.transport,
                    &cfg.kick.pusher_url,
                    None,
                )
                .await
        }
    };
    let endpoint = match negotiated {
        Ok(Endpoint::Pusher { .. })
            if cfg.kick.transport == Transport::Auto && ctx.pusher_dead.load(Ordering::Relaxed) =>
        {
            return Some(End::io(
                "negotiation offered only pusher, whose app key is gone",
            ));
        }
        Ok(e) => e,
        Err(e) => return Some(negotiation_end(&e)),
    };
    ctx.set_transport(endpoint.transport());
    *sock.connected_url.lock().unwrap() = match &endpoint {
        Endpoint::Centrifugo { url } | Endpoint::Pusher { url } => Some(url.clone()),
    };
    // Emptied while it negotiated (a restarted collector's channels go to their regions'
    // sockets as soon as their cached regions are read): it connects only when the placement
    // gives it channels again (it now knows where this socket lands), not to idle.
    if !wait_for_channels(sock).await {
        return None;
    }
    let now = Instant::now();
    let grace = cfg.silence_grace;
    let (ws, mut proto, opening) = match endpoint {
        Endpoint::Centrifugo { url } => {
            let token = match ctx.web.guest_token(&cfg.kick.web_url, &client_id).await {
                Ok(t) => t,
                Err(e) => return Some(negotiation_end(&e)),
            };
            let ws = match connect(&url).await {
                Ok(ws) => ws,
                Err(e) => return Some(e),
            };
            let mut s = centrifugo::Session::new(sock.desired(), now, grace);
            let opening = s.open(&token, now);
            (ws, Proto::Centrifugo(s), opening)
        }
        Endpoint::Pusher { url } => {
            let ws = match connect(&url).await {
                Ok(ws) => ws,
                Err(e) => return Some(e),
            };
            (
                ws,
                Proto::Pusher(pusher::Session::new(sock.desired(), now, grace)),
                Vec::new(),
            )
        }
    };
    let transport = proto.name();
    let mut driver = Driver {
        ctx,
        sock,
        events,
        ws,
        transport,
        client_id,
        refresh: None,
        budget: std::collections::HashMap::new(),
        flooded: std::collections::HashMap::new(),
    };
    let end = driver.drive(&mut proto, opening).await;
    if end.as_ref().is_some_and(|e| e.code == Some(4001)) && transport == "pusher" {
        // Kick's Pusher app key is gone: in `auto`, negotiate Centrifugo from now on.
        ctx.pusher_dead.store(true, Ordering::Relaxed);
    }
    end
}

/// Either protocol's session, behind one interface for the loop.
enum Proto {
    Centrifugo(centrifugo::Session),
    Pusher(pusher::Session),
}

impl Proto {
    fn name(&self) -> &'static str {
        match self {
            Proto::Centrifugo(_) => "centrifugo",
            Proto::Pusher(_) => "pusher",
        }
    }
    fn on_text(&mut self, t: &str, now: Instant) -> Vec<Action> {
        match self {
            Proto::Centrifugo(s) => s.on_text(t, now),
            Proto::Pusher(s) => s.on_text(t, now),
        }
    }
    fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        match self {
            Proto::Centrifugo(s) => s.on_tick(now),
            Proto::Pusher(s) => s.on_tick(now),
        }
    }
    fn on_activity(&mut self, now: Instant) {
        match self {
            Proto::Centrifugo(s) => s.on_activity(now),
            Proto::Pusher(s) => s.on_activity(now),
        }
    }
    fn subscribe(&mut self, chs: &[i64]) -> Vec<Action> {
        match self {
            Proto::Centrifugo(s) => s.subscribe(chs),
            Proto::Pusher(s) => s.subscribe(chs),
        }
    }
    fn unsubscribe(&mut self, chs: &[i64]) -> Vec<Action> {
        match self {
            Proto::Centrifugo(s) => s.unsubscribe(chs),
            Proto::Pusher(s) => s.unsubscribe(chs),
        }
    }
    fn channels(&self) -> &BTreeSet<i64> {
        match self {
            Proto::Centrifugo(s) => s.channels(),
            Proto::Pusher(s) => s.channels(),
        }
    }
    fn subscribed(&self) -> usize {
        match self {
            Proto::Centrifugo(s) => s.subscribed().len(),
            Proto::Pusher(s) => s.subscribed().len(),
        }
    }
    fn close_retry(&self, code: u16) -> Retry {
        match self {
            Proto::Centrifugo(_) => frame::centrifugo_close_action(code).into(),
            Proto::Pusher(_) => frame::pusher_close_action(code).into(),
        }
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, NegotiateError>> + Send>>;

struct Driver<'a> {
    ctx: &'a Arc<Ctx>,
    sock: &'a Arc<SocketShared>,
    events: &'a mpsc::UnboundedSender<SocketEvent>,
    ws: Ws,
    transport: &'static str,
    client_id: String,
    /// A token refresh in flight (Centrifugo).
    refresh: Option<TokenFuture>,
    /// Status events staged per channel in the current window (see [`EVENTS_PER_CHANNEL`]).
    budget: std::collections::HashMap<i64, (Instant, u32)>,
    /// Channels whose events the budget cut, with when it last cut one: once a channel's flood
    /// pauses for [`FLOOD_SETTLE`], the API is asked for its status (see [`Driver::flood_settled`]).
    flooded: std::collections::HashMap<i64, Instant>,
}

/// Status events one channel may stage per [`BUDGET_WINDOW`]: a stream starts and stops a few
/// times an hour at most, so a flood for one channel (a broken or hostile server) is cut here
/// instead of filling the staging buffer that every other streamer's events pass through.
/// What is cut is counted (`malformed_frames_total{kind="flood"}`), and the channel's status is
/// asked of the API once its flood pauses (what was cut may hold the last change).
pub const EVENTS_PER_CHANNEL: u32 = 60;
pub const BUDGET_WINDOW: Duration = Duration::from_secs(60);
/// A channel whose events were cut is reconciled once none has been cut for this long: soon
/// after the flood, not during it (one API call per pause, not per event).
pub const FLOOD_SETTLE: Duration = Duration::from_secs(2);

impl Driver<'_> {
    async fn drive(&mut self, proto: &mut Proto, opening: Vec<Action>) -> Option<End> {
        if let Some(end) = self.perform(proto, opening).await {
            return Some(end);
        }
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let shutdown = self.sock.stop.clone();
            let sock = self.sock.clone();
            let ws = &mut self.ws;
            let refresh = &mut self.refresh;
            let actions = tokio::select! {
                _ = shutdown.cancelled() => {
                    close_normally(&mut self.ws).await;
                    return None;
                }
                msg = ws.next() => match self.incoming(proto, msg) {
                    Ok(a) => a,
                    Err(end) => return Some(end),
                },
                _ = sock.changed.notified() => {
                    let desired = self.sock.desired();
                    let current = proto.channels().clone();
                    let add: Vec<i64> = desired.difference(&current).copied().collect();
                    let remove: Vec<i64> = current.difference(&desired).copied().collect();
                    let mut a = proto.unsubscribe(&remove);
                    a.extend(proto.subscribe(&add));
                    a
                }
                _ = ticker.tick() => {
                    let now = Instant::now();
                    self.flood_settled(now);
                    proto.on_tick(now)
                }
                token = async { refresh.as_mut().unwrap().await }, if refresh.is_some() => {
                    self.refresh = None;
                    match (token, &mut *proto) {
                        (Ok(t), Proto::Centrifugo(s)) => s.on_token(&t),
                        (Err(e), Proto::Centrifugo(s)) => {
                            tracing::warn!(socket = self.sock.id, error = %e, "token refresh failed; the server will disconnect at expiry");
                            s.on_token_failed();
                            Vec::new()
                        }
                        _ => Vec::new(),
                    }
                }
            };
            if let Some(end) = self.perform(proto, actions).await {
                return Some(end);
            }
            set_subscribed(self.ctx, self.sock, proto.subscribed());
        }
    }

    /// One read from the socket, as actions; `Err` when the connection ended.
    fn incoming(
        &mut self,
        proto: &mut Proto,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Vec<Action>, End> {
        let now = Instant::now();
        match msg {
            Some(Ok(Message::Text(t))) if t.len() > MAX_FRAME => {
                proto.on_activity(now);
                self.reject("oversized", t.as_bytes());
                Ok(Vec::new())
            }
            Some(Ok(Message::Text(t))) => Ok(proto.on_text(&t, now)),
            Some(Ok(Message::Binary(b))) => {
                proto.on_activity(now);
                self.reject("binary frame", &b);
                Ok(Vec::new())
            }
            Some(Ok(Message::Close(f))) => Err(match f {
                Some(f) => {
                    let code = u16::from(f.code);
                    End {
                        code: Some(code),
                        reason: format!("closed by the server: {}", f.reason),
                        retry: proto.close_retry(code),
                    }
                }
                None => End::io("closed without a code"),
            }),
            Some(Ok(_)) => {
                // Ping/pong at the WebSocket level (tungstenite answers pings itself).
                proto.on_activity(now);
                Ok(Vec::new())
            }
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                // Kept visible like any rejected frame (its bytes were never read: the error
                // names its size).
                self.reject("oversized", format!("connection dropped: {e}").as_bytes());
                // A frame too large to read at all: drop the connection, come back at once.
                Err(End {
                    code: None,
                    reason: format!("frame too large: {e}"),
                    retry: Retry::Now,
                })
            }
            Some(Err(e)) => Err(End::io(format!("read: {e}"))),
            None => Err(End::io("connection closed")),
        }
    }

    /// Carries out a session's actions; `Some` when the connection must end.
    async fn perform(&mut self, proto: &mut Proto, actions: Vec<Action>) -> Option<End> {
        for a in actions {
            match a {
                Action::Send(text) => {
                    if let Err(e) = self.ws.send(Message::Text(text.into())).await {
                        return Some(End::io(format!("send: {e}")));
                    }
                }
                Action::Ping => {
                    if let Err(e) = self.ws.send(Message::Ping(Vec::new().into())).await {
                        return Some(End::io(format!("send: {e}")));
                    }
                }
                Action::Up => {
                    if !self.sock.up.swap(true, Ordering::Relaxed) {
                        self.ctx.metrics.sockets_up.fetch_add(1, Ordering::Relaxed);
                    }
                    set_subscribed(self.ctx, self.sock, proto.subscribed());
                    tracing::debug!(
                        socket = self.sock.id,
                        transport = self.transport,
                        channels = proto.subscribed(),
                        "realtime socket up"
                    );
                    let _ = self.events.send(SocketEvent::Up {
                        socket: self.sock.id,
                    });
                }
                Action::Subscribed(_) => set_subscribed(self.ctx, self.sock, proto.subscribed()),
                Action::Refused {
                    channel,
                    code,
                    message,
                } => {
                    self.ctx.metrics.subscriptions_refused.inc();
                    tracing::warn!(socket = self.sock.id, channel, code, message = %message, "subscription refused");
                    let _ = self.events.send(SocketEvent::Refused {
                        socket: self.sock.id,
                        channel,
                        code,
                        message,
                    });
                }
                Action::Unsubscribed(channel) => {
                    let _ = self.events.send(SocketEvent::Unsubscribed {
                        socket: self.sock.id,
                        channel,
                    });
                }
                Action::Event { topic, event } => self.on_event(&topic, &event),
                Action::Malformed { reason, frame } => self.reject(&reason, frame.as_bytes()),
                Action::RefreshToken => {
                    let ctx = self.ctx.clone();
                    let client_id = self.client_id.clone();
                    self.refresh = Some(Box::pin(async move {
                        let web_url = ctx.cfg().kick.web_url.clone();
                        ctx.web.guest_token(&web_url, &client_id).await
                    }));
                }
                Action::Close(end) => return Some(end),
            }
        }
        None
    }

    /// Stages a live/offline event; counts every event by name.
    fn on_event(&mut self, topic: &str, event: &KickEvent) {
        let name = match event {
            KickEvent::Live(_) => kick_shared::model::event_name::STREAMER_IS_LIVE,
            KickEvent::Stop(_) => kick_shared::model::event_name::STOP_STREAM_BROADCAST,
            KickEvent::Other(n) => n.as_str(),
        };
        // Event names come from Kick: bound the label space.
        let label: String = name.chars().take(64).collect();
        self.ctx.metrics.frames.add(&label, 1);
        // An event about another channel than the feed it came on is not believed: it could
        // set any streamer's status from any subscription.
        let body_channel = match event {
            KickEvent::Live(l) => Some(l.channel_id),
            KickEvent::Stop(s) => Some(s.channel_id),
            KickEvent::Other(_) => None,
        };
        if let (Some(body), Some(feed)) = (body_channel, frame::channel_id_of_topic(topic))
            && body != feed
        {
            let shown = format!("{name} on {topic} names channel {body}");
            self.reject("channel id differs from the feed's", shown.as_bytes());
            return;
        }
        if let Some(ch) = body_channel {
            // Only channels this socket subscribed (a server pushing others is not believed;
            // one just unsubscribed is not watched any more).
            if !self.sock.desired.lock().unwrap().contains(&ch) {
                self.ctx.metrics.malformed.add("not_subscribed", 1);
                tracing::debug!(
                    socket = self.sock.id,
                    channel = ch,
                    "event for a channel not subscribed here: ignored"
                );
                return;
            }
            let now = Instant::now();
            if self.budget.len() > 4 * 1024 {
                self.budget
                    .retain(|_, (t, _)| now.saturating_duration_since(*t) < BUDGET_WINDOW);
            }
            let (since, n) = self.budget.entry(ch).or_insert((now, 0));
            if now.saturating_duration_since(*since) >= BUDGET_WINDOW {
                (*since, *n) = (now, 0);
            }
            *n += 1;
            if *n > EVENTS_PER_CHANNEL {
                self.ctx.metrics.malformed.add("flood", 1);
                self.flooded.insert(ch, now);
                if *n == EVENTS_PER_CHANNEL + 1 {
                    tracing::warn!(
                        socket = self.sock.id,
                        channel = ch,
                        limit = EVENTS_PER_CHANNEL,
                        "status event flood for one channel: further events this minute are dropped; its status is checked against the API once the flood pauses"
                    );
                }
                return;
            }
        }
        if let Some(row) = rows::realtime(topic, event, Utc::now()) {
            self.ctx.stager.stage(row);
        }
    }

    /// Channels whose events were cut and none for [`FLOOD_SETTLE`]: their statuses are asked of
    /// the API (a reconcile of those channels; the writer's API lag guard and re-check apply),
    /// since a cut event may have been the last change. A socket that reconnects reconciles all
    /// its channels anyway, so this map may die with the connection.
    fn flood_settled(&mut self, now: Instant) {
        let settled: Vec<i64> = self
            .flooded
            .extract_if(|_, t| now.saturating_duration_since(*t) >= FLOOD_SETTLE)
            .map(|(c, _)| c)
            .collect();
        if settled.is_empty() {
            return;
        }
        tracing::info!(
            socket = self.sock.id,
            channels = ?settled,
            "flood paused: the channels' statuses are checked against the API"
        );
        self.ctx.reconcile.send(Request::Channels {
            channels: settled,
            close_gap: None,
            unknown_on_failure: None,
        });
    }

    /// A frame we could not use: counted, logged (cut short), and kept as a rejected row when
    /// the rate allows (a flood is counted only).
    fn reject(&self, reason: &str, frame: &[u8]) {
        let kind = if reason.contains("not JSON") {
            "undecodable"
        } else if reason == "oversized" || reason == "binary frame" {
            reason
        } else {
            "malformed"
        };
        self.ctx.metrics.malformed.add(kind, 1);
        // Counted always (kick_collector_malformed_frames_total); logged within a budget.
        if REJECTED_LOG.admit_logging() {
            let shown = String::from_utf8_lossy(&frame[..frame.len().min(120)]);
            tracing::warn!(socket = self.sock.id, transport = self.transport, reason, frame = %shown.escape_debug(), "realtime frame rejected");
        }
        if REJECTED_ROWS.try_acquire() {
            self.ctx.stager.stage(rows::rejected_frame(
                self.transport,
                reason,
                frame,
                Utc::now(),
            ));
        }
    }
}

/// Rejected frames logged: at most 20 per 10 s per collector (a flood is counted only); the
/// placement's once-a-second check writes the summary of a flood followed by silence.
pub(crate) static REJECTED_LOG: std::sync::LazyLock<kick_shared::logbudget::LogBudget> =
    std::sync::LazyLock::new(|| {
        kick_shared::logbudget::LogBudget::new(
            20,
            Duration::from_secs(10),
            "realtime frames rejected and not logged in the last 10 s (all are counted in kick_collector_malformed_frames_total)",
        )
    });

/// Rejected frames kept as rows: at most this rate per collector (a flood is counted only).
static REJECTED_ROWS: std::sync::LazyLock<kick_shared::ratelimit::RateLimiter> =
    std::sync::LazyLock::new(|| {
        kick_shared::ratelimit::RateLimiter::new("rejected rows", 10.0, 100)
    });

/// Opens a WebSocket with Kick's Origin and our User-Agent (within 10 s).
async fn connect(url: &str) -> Result<Ws, End> {
    let mut req = url
        .into_client_request()
        .map_err(|e| End::io(format!("bad realtime url: {e}")))?;
    let h = req.headers_mut();
    h.insert(
        http::header::ORIGIN,
        http::HeaderValue::from_static(KICK_ORIGIN),
    );
    h.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    );
    // Small buffers: a collector holds hundreds of sockets.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let tls = tokio_tungstenite::Connector::Rustls(kick_shared::tls_client_config());
    let fut = tokio_tungstenite::connect_async_tls_with_config(req, Some(config), true, Some(tls));
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            Err(End {
                code: None,
                reason: format!("websocket handshake refused: http {status}"),
                retry: if matches!(status, 403 | 423 | 429) {
                    Retry::Terminal
                } else {
                    Retry::Backoff
                },
            })
        }
        Ok(Err(e)) => Err(End::io(format!("connect: {e}"))),
        Err(_) => Err(End::io("connect: timed out")),
    }
}

/// Sets the socket's confirmed subscriptions and moves the collector's total by the difference
/// (exact: the old value comes from the same swap, so the total cannot drift or underflow).
fn set_subscribed(ctx: &Ctx, sock: &SocketShared, n: usize) {
    let old = sock.subscribed.swap(n, Ordering::Relaxed);
    let total = &ctx.metrics.subscriptions;
    if n > old {
        total.fetch_add(n - old, Ordering::Relaxed);
    } else if old > n {
        total.fetch_sub(old - n, Ordering::Relaxed);
    }
}

/// Closes the socket with 1000 at shutdown.
async fn close_normally(ws: &mut Ws) {
    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "shutdown".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
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
        let draws: std::collections::HashSet<_> = (0..20).map(|_| backoff(10)).collect();
        assert!(draws.len() > 1);
    }
}
