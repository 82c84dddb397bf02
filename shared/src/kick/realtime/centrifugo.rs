//! The Centrifugo client protocol as Kick's realtime servers speak it, as a sans-io session.
//!
//! `open` sends `connect` (the guest token, `name: "js"`) and the subscriptions, several commands
//! per frame. Replies echo command ids; several may share a frame, one per line. The socket is
//! *up* once connected and every subscription has been answered (refusals included: a refused
//! channel is the placement's business, not a reason to stay down). The server pings with `{}`;
//! with `pong: true` we answer `{}`. Silence longer than the ping interval plus the grace means the
//! connection is dead; a connect reply without `ping` means the server will not ping, and then we
//! ping at the WebSocket level ourselves. The guest token is refreshed before its `ttl` runs out
//! (two minutes early, or at 80 % of a short lifetime).
//!
//! Subscriptions are a set: a duplicate `unsub` push or a repeated reply cannot make a count go
//! wrong, because counts are derived from the set.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::kick::frame::{self, CentrifugoMsg, FrameError};
use serde_json::json;

use super::{Action, End, Retry, clamp_secs, limits, silence_limit};

/// What a command we sent was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Connect,
    Subscribe(i64),
    Unsubscribe(i64),
    Refresh,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    /// The channels this connection should carry.
    channels: BTreeSet<i64>,
    /// The channels the server confirmed.
    subscribed: BTreeSet<i64>,
    sent: HashMap<u64, Sent>,
    next_id: u64,
    connected: bool,
    up: bool,
    /// Answer server pings (`connect.pong`).
    pong: bool,
    /// The server's ping interval; `None`: it does not ping.
    ping: Option<Duration>,
    refresh_at: Option<Instant>,
    refreshing: bool,
    last_rx: Instant,
    /// The last protocol message (a WebSocket pong is not one): a server that still answers
    /// pings but sends nothing, not even its own announced pings, is dead all the same.
    last_msg: Instant,
    last_own_ping: Instant,
    opened: Instant,
    grace: Duration,
}

/// When to refresh a token that lives `ttl`: two minutes early (as Kick's own clients do), or
/// at 80 % of a short lifetime.
fn refresh_after(ttl: Duration) -> Duration {
    ttl.saturating_sub(Duration::from_secs(120))
        .max(ttl.mul_f64(0.8))
}

fn channel_name(ch: i64) -> String {
    format!("channel.{ch}")
}

impl Session {
    /// A session for `channels`; `grace` is `KICK_SILENCE_GRACE`.
    pub fn new(channels: BTreeSet<i64>, now: Instant, grace: Duration) -> Self {
        Session {
            channels,
            subscribed: BTreeSet::new(),
            sent: HashMap::new(),
            next_id: 0,
            connected: false,
            up: false,
            pong: false,
            ping: None,
            refresh_at: None,
            refreshing: false,
            last_rx: now,
            last_msg: now,
            last_own_ping: now,
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

    fn command(&mut self, what: Sent, body: serde_json::Value) -> String {
        self.next_id = self.next_id.saturating_add(1);
        self.sent.insert(self.next_id, what);
        let mut v = body;
        v["id"] = json!(self.next_id);
        v.to_string()
    }

    fn subscribe_frames(&mut self, chs: &[i64]) -> Vec<Action> {
        let mut out = Vec::new();
        for chunk in chs.chunks(limits::COMMANDS_PER_FRAME) {
            let lines: Vec<String> = chunk
                .iter()
                .map(|ch| {
                    self.command(
                        Sent::Subscribe(*ch),
                        json!({"subscribe": {"channel": channel_name(*ch), "flag": 0}}),
                    )
                })
                .collect();
            out.push(Action::Send(lines.join("\n")));
        }
        out
    }

    /// The connect command and every subscription, to send once the socket is open.
    pub fn open(&mut self, token: &str, now: Instant) -> Vec<Action> {
        self.opened = now;
        self.last_rx = now;
        self.last_msg = now;
        let connect = self.command(
            Sent::Connect,
            json!({"connect": {"token": token, "name": "js"}}),
        );
        let mut out = vec![Action::Send(connect)];
        let chs: Vec<i64> = self.channels.iter().copied().collect();
        out.extend(self.subscribe_frames(&chs));
        out
    }

    fn awaiting_subscriptions(&self) -> bool {
        self.sent.values().any(|s| matches!(s, Sent::Subscribe(_)))
    }

    fn maybe_up(&mut self, out: &mut Vec<Action>) {
        if self.connected && !self.up && !self.awaiting_subscriptions() {
            self.up = true;
            out.push(Action::Up);
        }
    }

    /// Adds channels; subscribes them now if connected (else `open` will).
    pub fn subscribe(&mut self, chs: &[i64]) -> Vec<Action> {
        let new: Vec<i64> = chs
            .iter()
            .copied()
            .filter(|c| self.channels.insert(*c))
            .collect();
        if !self.connected || new.is_empty() {
            return Vec::new();
        }
        self.subscribe_frames(&new)
    }

    /// Removes channels; unsubscribes them if connected.
    pub fn unsubscribe(&mut self, chs: &[i64]) -> Vec<Action> {
        let mut lines = Vec::new();
        for ch in chs {
            if !self.channels.remove(ch) {
                continue;
            }
            self.subscribed.remove(ch);
            // A subscription still unanswered no longer holds the socket down. It was sent,
            // though (perhaps with the connect, before its reply): the server will subscribe
            // it, so it must be unsubscribed even before the connect reply (the server handles
            // a connection's commands in order).
            let was_sent = self.sent.values().any(|s| *s == Sent::Subscribe(*ch));
            self.sent.retain(|_, s| *s != Sent::Subscribe(*ch));
            if self.connected || was_sent {
                lines.push(self.command(
                    Sent::Unsubscribe(*ch),
                    json!({"unsubscribe": {"channel": channel_name(*ch)}}),
                ));
            }
        }
        let mut out = Vec::new();
        for chunk in lines.chunks(limits::COMMANDS_PER_FRAME) {
            out.push(Action::Send(chunk.join("\n")));
        }
        out
    }

    /// A fresh token from `auth/connection` (after [`Action::RefreshToken`]).
    pub fn on_token(&mut self, token: &str) -> Vec<Action> {
        let cmd = self.command(Sent::Refresh, json!({"refresh": {"token": token}}));
        vec![Action::Send(cmd)]
    }

    /// The token could not be refreshed: the server will disconnect at expiry (then we
    /// reconnect with a new one); nothing else to do.
    pub fn on_token_failed(&mut self) {
        self.refreshing = false;
    }

    /// Anything arrived (a WebSocket pong counts too).
    pub fn on_activity(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// One text frame: several messages, one per line, each decoded on its own.
    pub fn on_text(&mut self, text: &str, now: Instant) -> Vec<Action> {
        self.last_rx = now;
        self.last_msg = now;
        let mut out = Vec::new();
        // One result per non-blank line: a bad line is reported with its own bytes (not the
        // whole frame's: 8 MiB of bad one-byte lines would copy the frame four million times),
        // and only the first few are reported one by one.
        let mut bad = 0usize;
        for (line, msg) in frame::centrifugo_messages(text) {
            match msg {
                Err(e) => {
                    bad += 1;
                    if bad <= MALFORMED_PER_FRAME {
                        out.push(malformed(&e, line));
                    }
                }
                Ok(m) => self.on_message(m, &mut out),
            }
            if matches!(out.last(), Some(Action::Close(_))) {
                break;
            }
        }
        if bad > MALFORMED_PER_FRAME {
            out.push(Action::Malformed {
                reason: format!(
                    "{} more undecodable lines in this frame",
                    bad - MALFORMED_PER_FRAME
                ),
                frame: String::new(),
            });
        }
        out
    }

    fn on_message(&mut self, m: CentrifugoMsg, out: &mut Vec<Action>) {
        match m {
            CentrifugoMsg::Ping => {
                if self.pong {
                    out.push(Action::Send("{}".into()));
                }
            }
            CentrifugoMsg::Connect {
                ping, ttl, pong, ..
            } => {
                self.sent.retain(|_, s| *s != Sent::Connect);
                self.connected = true;
                // Channels added after `open` but before this reply were only recorded (there
                // was no connection to send on): subscribe them now, or they would never be.
                let pending: BTreeSet<i64> = self
                    .sent
                    .values()
                    .filter_map(|s| match s {
                        Sent::Subscribe(ch) => Some(*ch),
                        _ => None,
                    })
                    .collect();
                let late: Vec<i64> = self
                    .channels
                    .iter()
                    .filter(|ch| !pending.contains(ch) && !self.subscribed.contains(ch))
                    .copied()
                    .collect();
                out.extend(self.subscribe_frames(&late));
                self.pong = pong;
                self.ping = ping.map(|p| clamp_secs("centrifugo connect.ping", p, &limits::PING));
                self.refresh_at = ttl.map(|t| {
                    self.last_rx
                        + refresh_after(clamp_secs("centrifugo connect.ttl", t, &limits::TOKEN_TTL))
                });
                self.maybe_up(out);
            }
            CentrifugoMsg::Subscribed { id } => {
                if let Some(Sent::Subscribe(ch)) = self.sent.remove(&id) {
                    if self.channels.contains(&ch) {
                        self.subscribed.insert(ch);
                        out.push(Action::Subscribed(ch));
                    }
                    self.maybe_up(out);
                }
            }
            CentrifugoMsg::Unsubscribed { id } => {
                self.sent.remove(&id);
            }
            CentrifugoMsg::Refreshed { id, ttl } => {
                self.sent.remove(&id);
                self.refreshing = false;
                self.refresh_at = ttl.map(|t| {
                    self.last_rx
                        + refresh_after(clamp_secs("centrifugo refresh.ttl", t, &limits::TOKEN_TTL))
                });
            }
            CentrifugoMsg::Error { id, code, message } => match self.sent.remove(&id) {
                Some(Sent::Connect) => out.push(Action::Close(End {
                    code: None,
                    reason: format!("connect refused: error {code}: {message}"),
                    // 101 unauthorized, 103 permission denied: not a passing fault.
                    retry: if matches!(code, 101 | 103) {
                        Retry::Terminal
                    } else {
                        Retry::Backoff
                    },
                })),
                Some(Sent::Refresh) => out.push(Action::Close(End {
                    code: None,
                    reason: format!("token refresh refused: error {code}: {message}"),
                    retry: Retry::Now,
                })),
                Some(Sent::Subscribe(ch)) => {
                    if code == 105 {
                        // Already subscribed: as good as a success.
                        self.subscribed.insert(ch);
                        out.push(Action::Subscribed(ch));
                    } else if self.channels.remove(&ch) {
                        out.push(Action::Refused {
                            channel: ch,
                            code,
                            message,
                        });
                    }
                    self.maybe_up(out);
                }
                Some(Sent::Unsubscribe(_)) | None => {}
            },
            CentrifugoMsg::Publication { channel, event } => out.push(Action::Event {
                topic: channel,
                event,
            }),
            CentrifugoMsg::Disconnect { code, reason } => out.push(Action::Close(End {
                code: Some(code),
                reason: format!("server disconnect: {reason}"),
                retry: frame::centrifugo_close_action(code).into(),
            })),
            CentrifugoMsg::Unsub { channel, code } => {
                let Some(ch) = frame::channel_id_of_topic(&channel) else {
                    return;
                };
                if !self.subscribed.remove(&ch) || !self.channels.contains(&ch) {
                    // Not ours, or a duplicate push: nothing changes.
                    return;
                }
                if (2500..3000).contains(&code) {
                    // "Subscribe again."
                    out.extend(self.subscribe_frames(&[ch]));
                } else {
                    self.channels.remove(&ch);
                    out.push(Action::Unsubscribed(ch));
                }
            }
            CentrifugoMsg::Other => {}
        }
    }

    /// Clock tick (a few per second is plenty): deadlines for the hello, silence, own pings and
    /// the token refresh.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.connected {
            if now.saturating_duration_since(self.opened) > limits::HELLO {
                out.push(Action::Close(End::io("no connect reply")));
            }
            return out;
        }
        let silent = now.saturating_duration_since(self.last_rx);
        // A server that announces a long ping interval (or none) is still probed every
        // OWN_PING at the WebSocket level: a stalled connection is found within OWN_PING +
        // grace whatever the server announced (every WebSocket server answers a ping).
        let probe = self
            .ping
            .map_or(limits::OWN_PING, |p| p.min(limits::OWN_PING));
        let limit = silence_limit(probe, self.grace);
        if silent > limit {
            out.push(Action::Close(End::io(format!(
                "silent for {}s",
                silent.as_secs()
            ))));
            return out;
        }
        // The server announced pings: nothing from it for that long (plus the grace) is a dead
        // server even if its WebSocket layer still answers ours.
        if let Some(ping) = self.ping {
            let quiet = now.saturating_duration_since(self.last_msg);
            if quiet > silence_limit(ping, self.grace) {
                out.push(Action::Close(End::io(format!(
                    "no message for {}s (the server pings every {}s)",
                    quiet.as_secs(),
                    ping.as_secs()
                ))));
                return out;
            }
        }
        let server_pings_often = self.ping.is_some_and(|p| p <= limits::OWN_PING);
        if !server_pings_often
            && silent >= limits::OWN_PING
            && now.saturating_duration_since(self.last_own_ping) >= limits::OWN_PING
        {
            self.last_own_ping = now;
            out.push(Action::Ping);
        }
        if let Some(at) = self.refresh_at
            && now >= at
            && !self.refreshing
        {
            self.refreshing = true;
            self.refresh_at = None;
            out.push(Action::RefreshToken);
        }
        out
    }
}

/// Undecodable lines of one frame reported one by one (the rest are counted in one report).
pub const MALFORMED_PER_FRAME: usize = 8;

fn malformed(e: &FrameError, text: &str) -> Action {
    Action::Malformed {
        reason: e.to_string(),
        frame: text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kick::frame::KickEvent;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kick");

    fn fixture(name: &str) -> String {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap()
            .to_string()
    }

    fn sends(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn session(chs: &[i64]) -> (Session, Instant) {
        let now = Instant::now();
        let mut s = Session::new(chs.iter().copied().collect(), now, Duration::from_secs(20));
        let opened = s.open("tok", now);
        let frames = sends(&opened);
        assert!(frames[0].contains("\"connect\""));
        (s, now)
    }

    /// Answers every subscription the session sent, as the server would.
    fn ack_all(s: &mut Session, now: Instant) -> Vec<Action> {
        let ids: Vec<u64> = s
            .sent
            .iter()
            .filter(|(_, v)| matches!(v, Sent::Subscribe(_)))
            .map(|(k, _)| *k)
            .collect();
        let text: Vec<String> = ids
            .iter()
            .map(|id| format!("{{\"id\":{id},\"subscribe\":{{}}}}"))
            .collect();
        s.on_text(&text.join("\n"), now)
    }

    #[test]
    fn connects_subscribes_and_comes_up_with_the_recorded_reply() {
        let (mut s, now) = session(&[668, 669]);
        // The recorded connect reply (id 1, ping 25, ttl 2699, pong true).
        let out = s.on_text(&fixture("centrifugo-connect.reply.2026-10-03.json"), now);
        assert!(
            out.is_empty(),
            "not up before the subscriptions are answered"
        );
        let out = ack_all(&mut s, now);
        assert!(out.contains(&Action::Up));
        assert_eq!(s.subscribed().len(), 2);
        // Pings are answered.
        assert_eq!(s.on_text("{}", now), vec![Action::Send("{}".into())]);
        // The recorded publications decode to events.
        let out = s.on_text(
            &fixture("centrifugo-publication.push.streamer-is-live.RECONSTRUCTED.json"),
            now,
        );
        assert!(matches!(
            &out[0],
            Action::Event {
                event: KickEvent::Live(_),
                ..
            }
        ));
    }

    #[test]
    fn absurd_numbers_are_clamped_not_panicking() {
        let (mut s, now) = session(&[1]);
        let reply = r#"{"id":1,"connect":{"client":"c","ttl":18446744073709551615,"ping":18446744073709551615,"pong":true}}"#;
        s.on_text(reply, now);
        assert_eq!(s.ping, Some(Duration::from_secs(60)));
        ack_all(&mut s, now);
        // Ticks far in the future: no overflow, the silence is detected.
        let later = now + Duration::from_secs(3600);
        let out = s.on_tick(later);
        assert!(matches!(out[0], Action::Close(_)), "{out:?}");
        // Zero ping and ttl are clamped up.
        let (mut s, now) = session(&[]);
        let out = s.on_text(
            r#"{"id":1,"connect":{"client":"c","ttl":0,"ping":0,"pong":false}}"#,
            now,
        );
        assert_eq!(out, vec![Action::Up]);
        assert_eq!(s.ping, Some(Duration::from_secs(1)));
        assert!(
            s.on_tick(now + Duration::from_secs(9))
                .contains(&Action::RefreshToken)
        );
    }

    #[test]
    fn a_channel_removed_while_connecting_is_unsubscribed_though_its_subscribe_was_sent() {
        let (mut s, now) = session(&[1, 2]);
        // `open` sent the connect and the subscriptions of 1 and 2 in one go; before the
        // connect reply, channel 2 is taken away (its shard moved to another collector).
        let out = s.unsubscribe(&[2]);
        let frames = sends(&out).join("\n");
        assert!(
            frames.contains("unsubscribe") && frames.contains("channel.2"),
            "the server got channel 2's subscribe: it must get the unsubscribe: {frames:?}"
        );
        // A channel never sent needs nothing.
        assert!(s.subscribe(&[3]).is_empty());
        assert!(s.unsubscribe(&[3]).is_empty());
        s.on_text(
            r#"{"id":1,"connect":{"client":"c","ping":25,"pong":true}}"#,
            now,
        );
        ack_all(&mut s, now);
        assert!(s.is_up());
        assert_eq!(s.subscribed().len(), 1);
    }

    #[test]
    fn channels_added_while_connecting_are_subscribed_on_the_connect_reply() {
        let (mut s, now) = session(&[1]);
        // Between `open` (connect + channel 1 sent) and the server's connect reply.
        assert!(
            s.subscribe(&[2, 3]).is_empty(),
            "no connection to send on yet"
        );
        let out = s.on_text(
            r#"{"id":1,"connect":{"client":"c","ping":25,"pong":true}}"#,
            now,
        );
        let frames = sends(&out).join("\n");
        assert!(
            frames.contains("channel.2") && frames.contains("channel.3"),
            "{frames}"
        );
        assert!(
            !frames.contains("channel.1\""),
            "channel 1 was sent with the connect: {frames}"
        );
        assert!(!s.is_up(), "up only once every subscription is answered");
        ack_all(&mut s, now);
        assert!(s.is_up());
        assert_eq!(s.subscribed().len(), 3);
    }

    #[test]
    fn a_frame_of_many_bad_lines_costs_linear_time_and_few_reports() {
        let (mut s, now) = session(&[1]);
        let text = "x\n".repeat(4 * 1024 * 1024);
        let started = Instant::now();
        let out = s.on_text(&text, now);
        assert_eq!(out.len(), MALFORMED_PER_FRAME + 1, "{:?}", &out[..3]);
        match &out[0] {
            Action::Malformed { frame, .. } => assert_eq!(frame, "x", "the line, not the frame"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn a_server_announcing_a_long_ping_is_probed_and_a_stall_found_within_a_minute() {
        let (mut s, now) = session(&[]);
        s.on_text(
            r#"{"id":1,"connect":{"client":"c","ping":600,"pong":true}}"#,
            now,
        );
        assert!(s.is_up());
        assert!(s.on_tick(now + Duration::from_secs(29)).is_empty());
        assert_eq!(s.on_tick(now + Duration::from_secs(30)), vec![Action::Ping]);
        // The pong (any received byte) keeps it up.
        s.on_activity(now + Duration::from_secs(31));
        assert!(s.on_tick(now + Duration::from_secs(55)).is_empty());
        // Nothing after that: closed 30 s + grace (20 s) after the last byte, not 620 s.
        let out = s.on_tick(now + Duration::from_secs(31 + 51));
        assert!(matches!(out[0], Action::Close(_)), "{out:?}");
        // A server whose WebSocket layer answers every ping but that sends no message at all
        // (its announced ping is clamped to 60 s): closed 60 s + grace after its last message.
        let (mut s, now) = session(&[]);
        s.on_text(
            r#"{"id":1,"connect":{"client":"c","ping":600,"pong":true}}"#,
            now,
        );
        for t in (1..=79).map(|t| now + Duration::from_secs(t)) {
            s.on_activity(t);
            assert!(
                !s.on_tick(t).iter().any(|a| matches!(a, Action::Close(_))),
                "closed early at {:?}",
                t - now
            );
        }
        s.on_activity(now + Duration::from_secs(81));
        let out = s.on_tick(now + Duration::from_secs(81));
        assert!(matches!(out.last(), Some(Action::Close(_))), "{out:?}");
    }

    #[test]
    fn a_server_without_ping_is_pinged_and_silence_is_fine_meanwhile() {
        let (mut s, now) = session(&[]);
        s.on_text(r#"{"id":1,"connect":{"client":"c"}}"#, now);
        assert!(s.is_up());
        assert_eq!(s.ping, None);
        assert_eq!(s.on_tick(now + Duration::from_secs(31)), vec![Action::Ping]);
        s.on_activity(now + Duration::from_secs(31));
        assert!(s.on_tick(now + Duration::from_secs(60)).is_empty());
        // No answer to our pings at all: dead after own-ping interval plus grace.
        assert!(matches!(
            s.on_tick(now + Duration::from_secs(31 + 51))[0],
            Action::Close(_)
        ));
    }

    #[test]
    fn duplicate_unsub_pushes_do_not_underflow() {
        let (mut s, now) = session(&[7, 8]);
        s.on_text(
            r#"{"id":1,"connect":{"client":"c","ping":25,"pong":true}}"#,
            now,
        );
        ack_all(&mut s, now);
        let unsub = r#"{"push":{"channel":"channel.7","unsub":{"code":2500}}}"#;
        let out = s.on_text(unsub, now);
        assert_eq!(sends(&out).len(), 1, "resubscribes");
        assert_eq!(s.subscribed().len(), 1);
        // The same push again, and an unknown channel's: nothing changes.
        assert!(s.on_text(unsub, now).is_empty());
        assert!(
            s.on_text(
                r#"{"push":{"channel":"channel.99","unsub":{"code":2500}}}"#,
                now
            )
            .is_empty()
        );
        assert_eq!(s.subscribed().len(), 1);
        // A final unsub (outside 2500–2999) gives the channel back to the placement.
        let out = s.on_text(
            r#"{"push":{"channel":"channel.8","unsub":{"code":0}}}"#,
            now,
        );
        assert_eq!(out, vec![Action::Unsubscribed(8)]);
    }

    #[test]
    fn refused_subscriptions_are_reported_and_do_not_hold_the_socket_down() {
        let (mut s, now) = session(&[1, 2]);
        s.on_text(
            r#"{"id":1,"connect":{"client":"c","ping":25,"pong":true}}"#,
            now,
        );
        let out = s.on_text(
            "{\"id\":2,\"subscribe\":{}}\n{\"id\":3,\"error\":{\"code\":106,\"message\":\"limit exceeded\"}}",
            now,
        );
        assert!(out.contains(&Action::Refused {
            channel: 2,
            code: 106,
            message: "limit exceeded".into()
        }));
        assert!(out.contains(&Action::Up));
        assert!(!s.channels().contains(&2));
    }

    #[test]
    fn connect_refusals_and_disconnects_end_the_connection_by_class() {
        let (mut s, now) = session(&[]);
        let out = s.on_text(
            r#"{"id":1,"error":{"code":101,"message":"unauthorized"}}"#,
            now,
        );
        assert!(matches!(
            &out[0],
            Action::Close(End {
                retry: Retry::Terminal,
                ..
            })
        ));
        let (mut s, now) = session(&[]);
        let out = s.on_text(
            r#"{"push":{"disconnect":{"code":3500,"reason":"invalid token"}}}"#,
            now,
        );
        assert!(matches!(
            &out[0],
            Action::Close(End {
                retry: Retry::Terminal,
                code: Some(3500),
                ..
            })
        ));
        let (mut s, now) = session(&[]);
        let out = s.on_text(
            r#"{"push":{"disconnect":{"code":99999999,"reason":"x"}}}"#,
            now,
        );
        assert!(matches!(&out[0], Action::Close(_)));
        // Garbage is reported, not fatal.
        let (mut s, now) = session(&[]);
        assert!(matches!(
            &s.on_text("\u{0}garbage", now)[0],
            Action::Malformed { .. }
        ));
    }

    #[test]
    fn token_refresh_round_trip() {
        let (mut s, now) = session(&[]);
        s.on_text(
            r#"{"id":1,"connect":{"client":"c","ping":25,"pong":true,"ttl":300}}"#,
            now,
        );
        // 300 s token: refreshed at 240 s (80 %). (The server's pings keep it alive.)
        s.on_text("{}", now + Duration::from_secs(200));
        assert!(
            !s.on_tick(now + Duration::from_secs(200))
                .contains(&Action::RefreshToken)
        );
        let t = now + Duration::from_secs(241);
        s.on_text("{}", t);
        assert!(s.on_tick(t).contains(&Action::RefreshToken));
        assert!(!s.on_tick(t).contains(&Action::RefreshToken), "asked once");
        let cmd = sends(&s.on_token("new"))[0].clone();
        assert!(cmd.contains("\"refresh\""));
        let id: serde_json::Value = serde_json::from_str(&cmd).unwrap();
        let reply = format!("{{\"id\":{},\"refresh\":{{\"ttl\":300}}}}", id["id"]);
        assert!(s.on_text(&reply, t).is_empty());
        assert!(s.refresh_at.is_some());
    }
}
