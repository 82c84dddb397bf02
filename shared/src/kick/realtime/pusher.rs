//! Pusher protocol 7 (Kick's legacy realtime transport) as a sans-io session.
//!
//! The server opens with `pusher:connection_established` (its `activity_timeout`, clamped to
//! 1–120 s); we then subscribe every channel (`"auth": ""`: public feeds). The socket is *up*
//! once established and every subscription has been answered, success or error. After
//! `activity_timeout` of silence we send `pusher:ping`; no answer within the grace means the
//! connection is dead. A server ping is answered with a pong. A `pusher:error` with code 4001
//! (an app key Pusher does not know — Kick's old key) ends the connection as terminal, so that
//! `auto` falls back to Centrifugo.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::kick::frame::{self, PusherFrame};
use serde_json::json;

use super::{Action, End, Retry, clamp_secs, limits};

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    channels: BTreeSet<i64>,
    subscribed: BTreeSet<i64>,
    /// Subscriptions sent and not answered yet.
    pending: BTreeSet<i64>,
    established: bool,
    up: bool,
    activity: Duration,
    last_rx: Instant,
    pinged: Option<Instant>,
    opened: Instant,
    grace: Duration,
}

fn subscribe_frame(ch: i64) -> String {
    json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": format!("channel.{ch}")}})
        .to_string()
}

impl Session {
    pub fn new(channels: BTreeSet<i64>, now: Instant, grace: Duration) -> Self {
        Session {
            channels,
            subscribed: BTreeSet::new(),
            pending: BTreeSet::new(),
            established: false,
            up: false,
            activity: *limits::ACTIVITY.end(),
            last_rx: now,
            pinged: None,
            opened: now,
            grace,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn subscribed(&self) -> &BTreeSet<i64> {
        &self.subscribed
    }

    pub fn channels(&self) -> &BTreeSet<i64> {
        &self.channels
    }

    fn maybe_up(&mut self, out: &mut Vec<Action>) {
        if self.established && !self.up && self.pending.is_empty() {
            self.up = true;
            out.push(Action::Up);
        }
    }

    pub fn subscribe(&mut self, chs: &[i64]) -> Vec<Action> {
        let mut out = Vec::new();
        for ch in chs {
            if self.channels.insert(*ch) && self.established {
                self.pending.insert(*ch);
                out.push(Action::Send(subscribe_frame(*ch)));
            }
        }
        out
    }

    pub fn unsubscribe(&mut self, chs: &[i64]) -> Vec<Action> {
        let mut out = Vec::new();
        for ch in chs {
            if !self.channels.remove(ch) {
                continue;
            }
            self.subscribed.remove(ch);
            self.pending.remove(ch);
            if self.established {
                out.push(Action::Send(
                    json!({"event": "pusher:unsubscribe", "data": {"channel": format!("channel.{ch}")}})
                        .to_string(),
                ));
            }
        }
        out
    }

    pub fn on_activity(&mut self, now: Instant) {
        self.last_rx = now;
        self.pinged = None;
    }

    pub fn on_text(&mut self, text: &str, now: Instant) -> Vec<Action> {
        self.on_activity(now);
        let mut out = Vec::new();
        let f = match frame::decode_pusher(text) {
            Ok(f) => f,
            Err(e) => {
                out.push(Action::Malformed {
                    reason: e.to_string(),
                    frame: text.to_owned(),
                });
                return out;
            }
        };
        match f {
            PusherFrame::ConnectionEstablished {
                activity_timeout, ..
            } => {
                self.established = true;
                if let Some(a) = activity_timeout {
                    self.activity = clamp_secs("pusher activity_timeout", a, &limits::ACTIVITY);
                }
                for ch in self.channels.clone() {
                    self.pending.insert(ch);
                    out.push(Action::Send(subscribe_frame(ch)));
                }
                self.maybe_up(&mut out);
            }
            PusherFrame::SubscriptionSucceeded { channel } => {
                if let Some(ch) = frame::channel_id_of_topic(&channel)
                    && self.pending.remove(&ch)
                    && self.channels.contains(&ch)
                {
                    self.subscribed.insert(ch);
                    out.push(Action::Subscribed(ch));
                }
                self.maybe_up(&mut out);
            }
            PusherFrame::SubscriptionError { channel, message } => {
                if let Some(ch) = channel.as_deref().and_then(frame::channel_id_of_topic)
                    && self.pending.remove(&ch)
                {
                    self.channels.remove(&ch);
                    out.push(Action::Refused {
                        channel: ch,
                        code: 0,
                        message,
                    });
                }
                self.maybe_up(&mut out);
            }
            PusherFrame::Ping => out.push(Action::Send(
                json!({"event": "pusher:pong", "data": {}}).to_string(),
            )),
            PusherFrame::Error { code, message } => {
                if let Some(c) = code
                    && (4000..4100).contains(&c)
                {
                    // The app key is unknown or refused: the close frame follows, but do not wait.
                    out.push(Action::Close(End {
                        code: u16::try_from(c).ok(),
                        reason: format!("pusher error: {message}"),
                        retry: Retry::Terminal,
                    }));
                } else {
                    tracing::warn!(code = ?code, message = %message, "pusher error");
                }
            }
            PusherFrame::Event { channel, event } => out.push(Action::Event {
                topic: channel,
                event,
            }),
            PusherFrame::Pong | PusherFrame::Other { .. } => {}
        }
        out
    }

    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        if !self.established {
            if now.saturating_duration_since(self.opened) > limits::HELLO {
                return vec![Action::Close(End::io("no connection_established"))];
            }
            return Vec::new();
        }
        match self.pinged {
            // Silence after our ping: the socket is dead or stalled.
            Some(at) if now.saturating_duration_since(at) > self.grace => {
                vec![Action::Close(End::io(format!(
                    "no pong for {}s",
                    now.saturating_duration_since(at).as_secs()
                )))]
            }
            None if now.saturating_duration_since(self.last_rx) >= self.activity => {
                self.pinged = Some(now);
                vec![Action::Send(
                    json!({"event": "pusher:ping", "data": {}}).to_string(),
                )]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kick");

    fn fixture(name: &str) -> String {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap()
            .to_string()
    }

    fn session(chs: &[i64]) -> (Session, Instant) {
        let now = Instant::now();
        (
            Session::new(chs.iter().copied().collect(), now, Duration::from_secs(20)),
            now,
        )
    }

    fn succeeded(ch: i64) -> String {
        format!(
            "{{\"event\":\"pusher_internal:subscription_succeeded\",\"data\":\"{{}}\",\"channel\":\"channel.{ch}\"}}"
        )
    }

    #[test]
    fn recorded_handshake_subscribes_and_comes_up() {
        let (mut s, now) = session(&[668]);
        let out = s.on_text(
            &fixture("pusher-connection-established.frame.2023-03-06.json"),
            now,
        );
        assert_eq!(out.len(), 1, "one subscribe");
        let out = s.on_text(&succeeded(668), now);
        assert_eq!(out, vec![Action::Subscribed(668), Action::Up]);
        let out = s.on_text(
            &fixture("pusher-stop-stream-broadcast.frame.2026-09-27.json"),
            now,
        );
        assert!(matches!(out[0], Action::Event { .. }));
    }

    #[test]
    fn a_last_subscription_error_still_lets_the_socket_come_up() {
        let (mut s, now) = session(&[1, 2]);
        s.on_text(
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#,
            now,
        );
        s.on_text(&succeeded(1), now);
        let out = s.on_text(
            r#"{"event":"pusher:subscription_error","channel":"channel.2","data":"{\"type\":\"AuthError\",\"error\":\"Unauthorized\",\"status\":401}"}"#,
            now,
        );
        assert!(out.contains(&Action::Up), "{out:?}");
        assert!(matches!(out[0], Action::Refused { channel: 2, .. }));
    }

    #[test]
    fn huge_activity_timeout_is_clamped_and_pings_follow() {
        let (mut s, now) = session(&[]);
        s.on_text(
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":18446744073709551615}"}"#,
            now,
        );
        assert_eq!(s.activity, Duration::from_secs(120));
        let t = now + Duration::from_secs(121);
        assert!(matches!(&s.on_tick(t)[0], Action::Send(p) if p.contains("pusher:ping")));
        assert!(matches!(
            s.on_tick(t + Duration::from_secs(21))[0],
            Action::Close(_)
        ));
    }

    #[test]
    fn a_dead_app_key_is_terminal() {
        let (mut s, now) = session(&[]);
        let out = s.on_text(
            r#"{"event":"pusher:error","data":{"code":4001,"message":"App key 32cb not in this cluster."}}"#,
            now,
        );
        assert!(matches!(
            &out[0],
            Action::Close(End {
                retry: Retry::Terminal,
                code: Some(4001),
                ..
            })
        ));
    }
}
