//! The properties the fuzz targets check, beyond "does not panic". Each target is one call into
//! this file, so that a property shared by two targets (positive ids, no NUL from nowhere) is
//! written once.
//!
//! A failed `assert!` is a finding: libFuzzer saves the input under `fuzz/artifacts/<target>/`.
//! Fix the decoder, and add the input as a named regression test next to the decoder's tests.

use std::time::{Duration, Instant};

use kick_shared::kick::api::{self, Channel, Livestream, User};
use kick_shared::kick::frame::{self, CentrifugoMsg, KickEvent, PusherFrame};
use serde_json::Value;

/// The longest a collector timer may be set from a decoded number and still be added to now and
/// to a grace period without overflowing (`Instant + Duration` panics on overflow).
const TIMER_HEADROOM: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The WebSocket text frames are UTF-8 (tungstenite checks), and so are the API bodies (read
/// lossily): anything else never reaches a decoder.
pub fn as_text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Whether a decoded string may hold a NUL: only if the input holds one, raw or as the escape
/// `\u0000` (also when that escape is itself escaped inside a JSON string, `\\u0000`).
fn input_may_hold_nul(text: &str) -> bool {
    text.contains('\0') || text.contains("u0000")
}

/// `input_has_nul` is [`input_may_hold_nul`] of the input, computed once per input: computed per
/// decoded string, it would make this check quadratic on a page of many items.
fn check_no_nul_from_nowhere(input_has_nul: bool, strings: &[&str]) {
    if input_has_nul {
        return;
    }
    for s in strings {
        assert!(
            !s.contains('\0'),
            "decoded string {s:?} holds a NUL the input did not have"
        );
    }
}

/// A live or offline event names a real stream: its ids are positive.
fn check_event(text: &str, event: &KickEvent, topic: &str) {
    match event {
        KickEvent::Live(l) => {
            assert!(
                l.livestream_id > 0,
                "live event with livestream id {}",
                l.livestream_id
            );
            assert!(
                l.channel_id > 0,
                "live event with channel id {}",
                l.channel_id
            );
            check_no_nul_from_nowhere(
                input_may_hold_nul(text),
                &[topic, l.session_title.as_deref().unwrap_or("")],
            );
        }
        KickEvent::Stop(s) => {
            assert!(
                s.livestream_id > 0,
                "stop event with livestream id {}",
                s.livestream_id
            );
            assert!(
                s.channel_id > 0,
                "stop event with channel id {}",
                s.channel_id
            );
            check_no_nul_from_nowhere(input_may_hold_nul(text), &[topic]);
        }
        KickEvent::Other(name) => {
            check_no_nul_from_nowhere(input_may_hold_nul(text), &[topic, name])
        }
    }
}

/// `pusher_frame`: one Pusher protocol 7 text frame.
pub fn check_pusher(text: &str) {
    let frame = match frame::decode_pusher(text) {
        Ok(frame) => frame,
        Err(e) => {
            // The collector logs every error: its message must format.
            let _ = e.to_string();
            return;
        }
    };
    match &frame {
        PusherFrame::Event { channel, event } => check_event(text, event, channel),
        PusherFrame::ConnectionEstablished { socket_id, .. } => {
            check_no_nul_from_nowhere(input_may_hold_nul(text), &[socket_id]);
        }
        PusherFrame::SubscriptionSucceeded { channel } => {
            check_no_nul_from_nowhere(input_may_hold_nul(text), &[channel]);
        }
        PusherFrame::SubscriptionError { channel, message } => {
            check_no_nul_from_nowhere(
                input_may_hold_nul(text),
                &[channel.as_deref().unwrap_or(""), message],
            );
        }
        PusherFrame::Error { message, .. } => {
            check_no_nul_from_nowhere(input_may_hold_nul(text), &[message])
        }
        PusherFrame::Other { event } => {
            check_no_nul_from_nowhere(input_may_hold_nul(text), &[event])
        }
        PusherFrame::Ping | PusherFrame::Pong => {}
    }
}

/// A number the collector turns into a timer (`Instant::now() + Duration::from_secs(n)`, plus a
/// grace period) must not overflow there.
fn check_timer_seconds(what: &str, seconds: Option<u64>) {
    if let Some(n) = seconds {
        let d = Duration::from_secs(n);
        assert!(
            d <= TIMER_HEADROOM && Instant::now().checked_add(d + TIMER_HEADROOM).is_some(),
            "{what} of {n} s would overflow the collector's timers"
        );
    }
}

/// A close or unsubscribe code is the number Kick sent when it fits in `u16`, else 0 (unknown):
/// never a truncation of a larger number into another class of codes.
fn check_code(what: &str, decoded: u16, sent: Option<&Value>) {
    let want = sent
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(0);
    assert_eq!(decoded, want, "{what} code {sent:?} decoded as {decoded}");
}

/// `centrifugo_frame`: one Centrifugo text frame (one message per line).
pub fn check_centrifugo(text: &str) {
    let msgs = frame::decode_centrifugo(text);
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(msgs.len(), lines.len(), "one result per non-blank line");
    for (msg, line) in msgs.iter().zip(lines) {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        match msg {
            CentrifugoMsg::Publication { channel, event } => check_event(line, event, channel),
            CentrifugoMsg::Connect {
                client, ttl, ping, ..
            } => {
                check_no_nul_from_nowhere(input_may_hold_nul(line), &[client]);
                check_timer_seconds("connect ttl", *ttl);
                check_timer_seconds("connect ping", *ping);
            }
            CentrifugoMsg::Refreshed { ttl, .. } => check_timer_seconds("refresh ttl", *ttl),
            CentrifugoMsg::Error { message, .. } => {
                check_no_nul_from_nowhere(input_may_hold_nul(line), &[message])
            }
            CentrifugoMsg::Disconnect { code, reason } => {
                check_no_nul_from_nowhere(input_may_hold_nul(line), &[reason]);
                let v: Value = serde_json::from_str(line).expect("the decoder parsed this line");
                check_code("disconnect", *code, v.pointer("/push/disconnect/code"));
            }
            CentrifugoMsg::Unsub { channel, code } => {
                check_no_nul_from_nowhere(input_may_hold_nul(line), &[channel]);
                let v: Value = serde_json::from_str(line).expect("the decoder parsed this line");
                check_code("unsub", *code, v.pointer("/push/unsub/code"));
            }
            CentrifugoMsg::Ping
            | CentrifugoMsg::Subscribed { .. }
            | CentrifugoMsg::Unsubscribed { .. }
            | CentrifugoMsg::Other => {}
        }
    }
}

/// An HTML body (a challenge page) is always [`api::ApiError::Html`], never a decode error or a
/// value; every error formats.
fn check_api_error(body: &str, res: Result<(), &api::ApiError>) {
    if api::looks_like_html(body) {
        assert!(
            matches!(res, Err(api::ApiError::Html)),
            "html body not refused as html"
        );
    }
    if let Err(e) = res {
        let _ = e.to_string();
    }
}

/// `api_channels`: a `GET /public/v1/channels` body.
pub fn check_channels(body: &str) {
    let body_has_nul = input_may_hold_nul(body);
    let res = api::decode_page::<Vec<Channel>>("/public/v1/channels", body);
    check_api_error(body, res.as_ref().map(|_| ()));
    for c in res.iter().flatten() {
        assert!(
            c.broadcaster_user_id > 0,
            "channel with user id {}",
            c.broadcaster_user_id
        );
        if let Some(id) = c.channel_id {
            assert!(id > 0, "channel with channel id {id}");
        }
        let _ = (c.is_live(), c.start_time());
        check_no_nul_from_nowhere(body_has_nul, &[&c.slug]);
    }
}

/// `api_livestreams`: a `GET /public/v1/livestreams` body.
pub fn check_livestreams(body: &str) {
    let res = api::decode_page::<Vec<Livestream>>("/public/v1/livestreams", body);
    check_api_error(body, res.as_ref().map(|_| ()));
    for l in res.iter().flatten() {
        assert!(
            l.broadcaster_user_id > 0,
            "livestream with user id {}",
            l.broadcaster_user_id
        );
        assert!(
            l.channel_id > 0,
            "livestream with channel id {}",
            l.channel_id
        );
        if let Some(t) = l.started_at.as_deref() {
            let _ = api::parse_time(t);
        }
    }
}

/// `api_users`: a `GET /public/v1/users` body.
pub fn check_users(body: &str) {
    let body_has_nul = input_may_hold_nul(body);
    let res = api::decode_page::<Vec<User>>("/public/v1/users", body);
    check_api_error(body, res.as_ref().map(|_| ()));
    for u in res.iter().flatten() {
        assert!(u.user_id > 0, "user with id {}", u.user_id);
        check_no_nul_from_nowhere(body_has_nul, &[u.name.as_deref().unwrap_or("")]);
    }
}

/// `api_token`: an OAuth client-credentials answer. A granted lifetime is always in range.
pub fn check_token(body: &str) {
    let res = api::decode_token(body);
    check_api_error(body, res.as_ref().map(|_| ()));
    if let Ok(grant) = res {
        assert!(
            api::TOKEN_LIFETIME.contains(&grant.lifetime),
            "token lifetime {:?} out of range",
            grant.lifetime
        );
    }
}

/// A text field of a staged row: PostgreSQL refuses NUL in `text` (and `\u0000` in `jsonb`).
fn check_insertable(what: &str, text: &str) {
    assert!(!text.contains('\0'), "{what} holds a NUL: {text:?}");
}

/// Whether any string (or key) in `v` holds U+0000.
fn json_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(json_has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

/// One staged row: every text field insertable, the payload JSON without `\u0000`, the
/// sizes bounded whatever the frame's size.
fn check_row(row: &kick_collector::rows::Staged) {
    check_insertable("payload", &row.payload);
    // jsonb refuses a NUL in any string (the escape `\u0000`); an escaped backslash followed
    // by "u0000" is fine, so the parsed strings are checked, not the text.
    let payload: Value = serde_json::from_str(&row.payload).expect("the payload is JSON");
    assert!(
        !json_has_nul(&payload),
        "payload holds a NUL (jsonb refuses it): {}",
        row.payload
    );
    check_insertable("dedupe_key", &row.dedupe_key);
    check_insertable("event_name", &row.event_name);
    if let Some(t) = &row.topic {
        check_insertable("topic", t);
    }
    if let Some(o) = &row.outcome {
        check_insertable("outcome", o);
    }
    assert!(
        row.payload.len() < 64 * 1024,
        "payload of {} bytes",
        row.payload.len()
    );
    for id in [row.channel_id, row.livestream_id, row.user_id].into_iter().flatten() {
        assert!(kick_shared::kick::valid_id(id), "id {id} staged");
    }
}

/// `staged_row`: a frame (either transport) through the decoder and the collector's row
/// builder, exactly as a socket does: a live/offline event becomes a row, anything undecodable
/// a rejected-frame row. Every row must be insertable (the NUL in one title once stopped
/// staging for every streamer).
pub fn check_staged_row(text: &str) {
    use kick_collector::rows;
    let now: chrono::DateTime<chrono::Utc> = "2026-11-29T00:00:00Z".parse().unwrap();
    let mut events: Vec<(String, KickEvent)> = Vec::new();
    match frame::decode_pusher(text) {
        Ok(PusherFrame::Event { channel, event }) => events.push((channel, event)),
        Ok(_) => {}
        Err(e) => check_row(&rows::rejected_frame("pusher", &e.to_string(), text.as_bytes(), now)),
    }
    // One result per non-blank line; a bad line is rejected on its own (and the collector
    // keeps at most a few rejected rows a second: the first ones are checked here).
    let mut rejected = 0;
    for (line, msg) in frame::centrifugo_messages(text) {
        match msg {
            Ok(CentrifugoMsg::Publication { channel, event }) => events.push((channel, event)),
            Ok(_) => {}
            Err(e) if rejected < 8 => {
                rejected += 1;
                check_row(&rows::rejected_frame(
                    "centrifugo",
                    &e.to_string(),
                    line.as_bytes(),
                    now,
                ));
            }
            Err(_) => {}
        }
    }
    for (topic, event) in &events {
        if let Some(row) = rows::realtime(topic, event, now) {
            check_row(&row);
        }
    }
}

/// `webhook_body`: a `livestream.status.updated` body through `webhook::decode_status`. An
/// accepted body names a Kick user id and times that can order something.
pub fn check_webhook_body(body: &[u8]) {
    use kick_shared::kick::webhook;
    let now: chrono::DateTime<chrono::Utc> = "2026-11-29T00:00:00Z".parse().unwrap();
    let Ok(s) = webhook::decode_status(body, now) else {
        return;
    };
    assert!(kick_shared::kick::valid_id(s.broadcaster.user_id));
    let started = s.started_at.expect("an accepted body names its session start");
    assert!(started <= now + chrono::Duration::minutes(10), "started {started}");
    match (s.is_live, s.ended_at) {
        (true, None) => {}
        (false, Some(ended)) => assert!(ended >= started, "ended {ended} before {started}"),
        other => panic!("accepted an inconsistent body: {other:?}"),
    }
}
