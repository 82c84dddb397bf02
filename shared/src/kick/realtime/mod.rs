//! Kick's realtime feed as sans-io protocol sessions: the collector's socket loop (and
//! `kick-admin probe`) drive them.
//!
//! - [`centrifugo::Session`] and [`pusher::Session`] are pure state machines: decoded frames,
//!   commands and clock ticks go in, [`Action`]s come out (send this text, the socket is up, a
//!   subscription was refused, stage this event, close for this reason). They own the protocol
//!   state (pending commands, subscriptions, ping and token deadlines) and are tested without
//!   sockets against the recorded fixtures.
//! - [`negotiate`] asks Kick's web endpoints where to connect and for a guest token.
//!
//! Every number a server sends (ping intervals, token lifetimes, activity timeouts, close codes)
//! is clamped to a documented range before any arithmetic; see [`limits`].

pub mod centrifugo;
pub mod negotiate;
pub mod pusher;

use std::time::Duration;

use crate::kick::frame::KickEvent;

/// Ranges for numbers from Kick's realtime servers. Values outside are clamped with a WARN.
pub mod limits {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    /// Centrifugo's `connect.ping` (Kick: 25 s). At most a minute: the announced interval is
    /// also how long a silent server is believed alive.
    pub const PING: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(60);
    /// Centrifugo's `connect.ttl` / `refresh.ttl`, the guest token's lifetime (Kick: 2,700 s).
    pub const TOKEN_TTL: RangeInclusive<Duration> =
        Duration::from_secs(2)..=Duration::from_secs(86_400);
    /// Pusher's `activity_timeout` (Kick: 120 s; Pusher's own clients never wait longer).
    pub const ACTIVITY: RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(120);
    /// When the server announces no ping, we ping at the WebSocket level this often.
    pub const OWN_PING: Duration = Duration::from_secs(30);
    /// A connection must be established (connect reply / connection_established) within this.
    pub const HELLO: Duration = Duration::from_secs(15);
    /// Commands per frame when subscribing many channels (small frames, small buffers).
    pub const COMMANDS_PER_FRAME: usize = 16;
}

/// Clamps a number of seconds from a server into `range`, with a WARN when it was outside.
pub fn clamp_secs(
    what: &'static str,
    secs: u64,
    range: &std::ops::RangeInclusive<Duration>,
) -> Duration {
    let (lo, hi) = (range.start().as_secs(), range.end().as_secs());
    let v = secs.clamp(lo, hi);
    if v != secs {
        tracing::warn!(
            what,
            value = secs,
            clamped = v,
            "value from kick's realtime server out of range: clamped"
        );
    }
    Duration::from_secs(v)
}

/// How to retry after a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reconnect now (a small jitter only).
    Now,
    /// Reconnect with exponential backoff.
    Backoff,
    /// Do not reconnect unchanged: wait long, then start again from negotiation with a new
    /// client id.
    Terminal,
}

impl From<crate::kick::frame::CloseAction> for Retry {
    fn from(a: crate::kick::frame::CloseAction) -> Self {
        use crate::kick::frame::CloseAction;
        match a {
            CloseAction::Immediately => Retry::Now,
            CloseAction::Backoff => Retry::Backoff,
            CloseAction::Terminal => Retry::Terminal,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}{}", .code.map(|c| format!(" (code {c})")).unwrap_or_default())]
pub struct End {
    /// The close or disconnect code, when the server gave one.
    pub code: Option<u16>,
    pub reason: String,
    pub retry: Retry,
}

impl End {
    pub fn io(reason: impl Into<String>) -> Self {
        End {
            code: None,
            reason: reason.into(),
            retry: Retry::Backoff,
        }
    }
}

/// What a session asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this text frame.
    Send(String),
    /// Send a WebSocket-level ping (the server announced no protocol ping).
    Ping,
    /// Connected, and every subscription has been answered.
    Up,
    Subscribed(i64),
    /// The server refused a subscription (e.g. Centrifugo 106 "limit exceeded").
    Refused {
        channel: i64,
        code: i64,
        message: String,
    },
    /// The server dropped a subscription and it is not coming back by itself.
    Unsubscribed(i64),
    /// A live/offline (or other) Kick event on feed `topic`.
    Event {
        topic: String,
        event: KickEvent,
    },
    /// A frame that is not the protocol's JSON, or a live event without its ids.
    Malformed {
        reason: String,
        frame: String,
    },
    /// The connection token runs out soon: fetch a new one and pass it to `on_token`.
    RefreshToken,
    /// End the connection.
    Close(End),
}

/// How long after the last received byte a server that pings every `ping` is dead.
pub fn silence_limit(ping: Duration, grace: Duration) -> Duration {
    ping.saturating_add(grace)
}
