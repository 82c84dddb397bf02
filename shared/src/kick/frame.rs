//! Realtime frames decoded into closed enums. An event we do not act on is a value
//! ([`KickEvent::Other`]), never an error; only a frame that is not the protocol's JSON, or a
//! live/offline event missing its ids, is a [`FrameError`].
//!
//! Kick's event `data` is normally a JSON-encoded string, but may be an object, `"[]"` or `"{}"`;
//! event names may lack the `App\Events\` prefix. Both transports carry the same inner payloads.

use chrono::{DateTime, Utc};
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame is not JSON: {0}")]
    Json(String),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// A Kick event on a `channel.{id}` feed.
#[derive(Debug, Clone, PartialEq)]
pub enum KickEvent {
    /// `App\Events\StreamerIsLive`.
    Live(LiveEvent),
    /// `App\Events\StopStreamBroadcast`.
    Stop(StopEvent),
    /// Any other event (followers, subscriptions, chat…): counted and dropped.
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    pub livestream_id: i64,
    pub channel_id: i64,
    pub created_at: Option<DateTime<Utc>>,
    pub session_title: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StopEvent {
    pub livestream_id: i64,
    pub channel_id: i64,
    pub is_banned: bool,
}

/// Strips the PHP namespace Kick puts in front of most event names.
pub fn short_event_name(name: &str) -> &str {
    name.strip_prefix("App\\Events\\").unwrap_or(name)
}

/// The channel id in a `channel.{id}` feed name.
pub fn channel_id_of_topic(topic: &str) -> Option<i64> {
    topic
        .strip_prefix("channel.")?
        .parse()
        .ok()
        .filter(|id: &i64| super::valid_id(*id))
}

/// Kick's `data`: a JSON string to parse again, an object, or an empty marker.
fn inner_data(data: &Value) -> Result<Value, FrameError> {
    match data {
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() || t == "[]" || t == "{}" {
                return Ok(Value::Object(Default::default()));
            }
            serde_json::from_str(t)
                .map_err(|e| FrameError::Malformed(format!("event data is not JSON: {e}")))
        }
        Value::Null => Ok(Value::Object(Default::default())),
        other => Ok(other.clone()),
    }
}

/// A Kick id: a positive integer up to [`super::MAX_ID`], as a JSON number or a numeric string.
/// Zero, negative and out-of-range values are not ids.
fn as_id(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|id| super::valid_id(*id))
}

/// A close or disconnect code from the wire: out-of-range values saturate (and then class as
/// "reconnect with backoff", never as a special code).
fn as_code(v: Option<&Value>) -> u16 {
    v.and_then(Value::as_u64)
        .map_or(0, |c| u16::try_from(c).unwrap_or(u16::MAX))
}

/// Decodes one Kick event from its name, `data` and feed name.
pub fn decode_event(name: &str, data: &Value, topic: &str) -> Result<KickEvent, FrameError> {
    let short = short_event_name(name);
    match short {
        "StreamerIsLive" => {
            let d = inner_data(data)?;
            let ls = d
                .get("livestream")
                .ok_or_else(|| FrameError::Malformed("StreamerIsLive without livestream".into()))?;
            let livestream_id = ls.get("id").and_then(as_id).ok_or_else(|| {
                FrameError::Malformed("StreamerIsLive without livestream.id".into())
            })?;
            let channel_id = ls
                .get("channel_id")
                .and_then(as_id)
                .or_else(|| channel_id_of_topic(topic))
                .ok_or_else(|| FrameError::Malformed("StreamerIsLive without channel id".into()))?;
            let created_at = ls
                .get("created_at")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            let session_title = ls
                .get("session_title")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(KickEvent::Live(LiveEvent {
                livestream_id,
                channel_id,
                created_at,
                session_title,
            }))
        }
        "StopStreamBroadcast" => {
            let d = inner_data(data)?;
            let ls = d.get("livestream").ok_or_else(|| {
                FrameError::Malformed("StopStreamBroadcast without livestream".into())
            })?;
            let livestream_id = ls.get("id").and_then(as_id).ok_or_else(|| {
                FrameError::Malformed("StopStreamBroadcast without livestream.id".into())
            })?;
            let channel = ls.get("channel");
            let channel_id = channel
                .and_then(|c| c.get("id"))
                .and_then(as_id)
                .or_else(|| channel_id_of_topic(topic))
                .ok_or_else(|| {
                    FrameError::Malformed("StopStreamBroadcast without channel id".into())
                })?;
            let is_banned = channel
                .and_then(|c| c.get("is_banned"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            Ok(KickEvent::Stop(StopEvent {
                livestream_id,
                channel_id,
                is_banned,
            }))
        }
        other => Ok(KickEvent::Other(other.to_owned())),
    }
}

/// A Pusher protocol 7 message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum PusherFrame {
    ConnectionEstablished {
        socket_id: String,
        activity_timeout: Option<u64>,
    },
    SubscriptionSucceeded {
        channel: String,
    },
    SubscriptionError {
        channel: Option<String>,
        message: String,
    },
    Ping,
    Pong,
    Error {
        code: Option<i64>,
        message: String,
    },
    Event {
        channel: String,
        event: KickEvent,
    },
    /// A `pusher:`/`pusher_internal:` message we do not act on.
    Other {
        event: String,
    },
}

pub fn decode_pusher(text: &str) -> Result<PusherFrame, FrameError> {
    let v: Value = serde_json::from_str(text).map_err(|e| FrameError::Json(e.to_string()))?;
    let event = v
        .get("event")
        .and_then(Value::as_str)
        .ok_or_else(|| FrameError::Malformed("pusher message without event".into()))?;
    let data = v.get("data").cloned().unwrap_or(Value::Null);
    let channel = v.get("channel").and_then(Value::as_str);
    Ok(match event {
        "pusher:connection_established" => {
            let d = inner_data(&data)?;
            let socket_id = d
                .get("socket_id")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    FrameError::Malformed("connection_established without socket_id".into())
                })?
                .to_owned();
            PusherFrame::ConnectionEstablished {
                socket_id,
                activity_timeout: d.get("activity_timeout").and_then(Value::as_u64),
            }
        }
        "pusher_internal:subscription_succeeded" => PusherFrame::SubscriptionSucceeded {
            channel: channel.unwrap_or_default().to_owned(),
        },
        "pusher:subscription_error" => {
            let d = inner_data(&data).unwrap_or(Value::Null);
            PusherFrame::SubscriptionError {
                channel: channel.map(str::to_owned),
                message: d
                    .get("error")
                    .or_else(|| d.get("message"))
                    .map(Value::to_string)
                    .unwrap_or_else(|| d.to_string()),
            }
        }
        "pusher:ping" => PusherFrame::Ping,
        "pusher:pong" => PusherFrame::Pong,
        "pusher:error" => {
            let d = inner_data(&data).unwrap_or(Value::Null);
            PusherFrame::Error {
                code: d.get("code").and_then(Value::as_i64),
                message: d
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            }
        }
        e if e.starts_with("pusher:") || e.starts_with("pusher_internal:") => PusherFrame::Other {
            event: e.to_owned(),
        },
        name => {
            let channel = channel
                .ok_or_else(|| FrameError::Malformed(format!("event {name} without channel")))?;
            PusherFrame::Event {
                channel: channel.to_owned(),
                event: decode_event(name, &data, channel)?,
            }
        }
    })
}

/// One Centrifugo message from the server (a reply to a command, or an async push).
#[derive(Debug, Clone, PartialEq)]
pub enum CentrifugoMsg {
    /// The server's ping `{}`: answer `{}` when the connect reply said `pong: true`.
    Ping,
    Connect {
        id: u64,
        client: String,
        ttl: Option<u64>,
        ping: Option<u64>,
        pong: bool,
    },
    Subscribed {
        id: u64,
    },
    Unsubscribed {
        id: u64,
    },
    Refreshed {
        id: u64,
        ttl: Option<u64>,
    },
    /// An error reply to command `id`.
    Error {
        id: u64,
        code: i64,
        message: String,
    },
    Publication {
        channel: String,
        event: KickEvent,
    },
    Disconnect {
        code: u16,
        reason: String,
    },
    /// The server unsubscribed us from a channel; codes 2500–2999 mean "subscribe again".
    Unsub {
        channel: String,
        code: u16,
    },
    Other,
}

/// Decodes one WebSocket text frame, which may hold several messages separated by `\n`.
/// Each line decodes on its own: one bad line does not hide the others.
pub fn decode_centrifugo(text: &str) -> Vec<Result<CentrifugoMsg, FrameError>> {
    centrifugo_messages(text).map(|(_, m)| m).collect()
}

/// The messages of one Centrifugo frame, lazily: one per non-blank line, each with its line
/// (a bad line is reported with its own bytes, not the whole frame's).
pub fn centrifugo_messages(
    text: &str,
) -> impl Iterator<Item = (&str, Result<CentrifugoMsg, FrameError>)> {
    text.split('\n')
        .filter(|l| !l.trim().is_empty())
        .map(|l| (l, decode_centrifugo_line(l)))
}

fn decode_centrifugo_line(line: &str) -> Result<CentrifugoMsg, FrameError> {
    let v: Value = serde_json::from_str(line).map_err(|e| FrameError::Json(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| FrameError::Malformed("centrifugo message is not an object".into()))?;
    if obj.is_empty() {
        return Ok(CentrifugoMsg::Ping);
    }
    if let Some(push) = obj.get("push") {
        let channel = push
            .get("channel")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if let Some(publication) = push.get("pub") {
            let data = publication.get("data").cloned().unwrap_or(Value::Null);
            let data = inner_data(&data)?;
            let Some(name) = data.get("event").and_then(Value::as_str) else {
                return Ok(CentrifugoMsg::Other);
            };
            let inner = data.get("data").cloned().unwrap_or(Value::Null);
            return Ok(CentrifugoMsg::Publication {
                event: decode_event(name, &inner, &channel)?,
                channel,
            });
        }
        if let Some(d) = push.get("disconnect") {
            return Ok(CentrifugoMsg::Disconnect {
                code: as_code(d.get("code")),
                reason: d
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            });
        }
        if let Some(u) = push.get("unsub") {
            return Ok(CentrifugoMsg::Unsub {
                channel,
                code: as_code(u.get("code")),
            });
        }
        return Ok(CentrifugoMsg::Other);
    }
    let id = obj.get("id").and_then(Value::as_u64).unwrap_or(0);
    if let Some(err) = obj.get("error") {
        return Ok(CentrifugoMsg::Error {
            id,
            code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        });
    }
    if let Some(c) = obj.get("connect") {
        return Ok(CentrifugoMsg::Connect {
            id,
            client: c
                .get("client")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            ttl: c.get("ttl").and_then(Value::as_u64),
            ping: c.get("ping").and_then(Value::as_u64),
            pong: c.get("pong").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    if obj.contains_key("subscribe") {
        return Ok(CentrifugoMsg::Subscribed { id });
    }
    if obj.contains_key("unsubscribe") {
        return Ok(CentrifugoMsg::Unsubscribed { id });
    }
    if let Some(r) = obj.get("refresh") {
        return Ok(CentrifugoMsg::Refreshed {
            id,
            ttl: r.get("ttl").and_then(Value::as_u64),
        });
    }
    Ok(CentrifugoMsg::Other)
}

/// What to do after a WebSocket close, by protocol and code class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Reconnect now (a small jitter only).
    Immediately,
    /// Reconnect with exponential backoff.
    Backoff,
    /// Do not reconnect unchanged: wait long (minutes), then start again from negotiation.
    Terminal,
}

/// Pusher: 4000–4099 do not reconnect unchanged; 4100–4199 back off; 4200–4299 reconnect now.
pub fn pusher_close_action(code: u16) -> CloseAction {
    match code {
        4000..=4099 => CloseAction::Terminal,
        4100..=4199 => CloseAction::Backoff,
        4200..=4299 => CloseAction::Immediately,
        _ => CloseAction::Backoff,
    }
}

/// Centrifugo: 3500–3999 and 4500–4999 are terminal; everything else reconnects with backoff.
pub fn centrifugo_close_action(code: u16) -> CloseAction {
    match code {
        3500..=3999 | 4500..=4999 => CloseAction::Terminal,
        _ => CloseAction::Backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kick");

    /// A recorded payload from `tests/fixtures/kick` (in the repository: a missing file fails).
    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}"))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    #[test]
    fn pusher_live_and_stop_frames() {
        let live = r#"{"event":"App\\Events\\StreamerIsLive","data":"{\"livestream\":{\"id\":74331109,\"channel_id\":668,\"session_title\":\"t\",\"source\":null,\"created_at\":\"2025-09-14T23:18:20.000000Z\"}}","channel":"channel.668"}"#;
        let PusherFrame::Event {
            channel,
            event: KickEvent::Live(l),
        } = decode_pusher(live).unwrap()
        else {
            panic!()
        };
        assert_eq!(channel, "channel.668");
        assert_eq!((l.livestream_id, l.channel_id), (74331109, 668));
        assert_eq!(
            l.created_at.unwrap().to_rfc3339(),
            "2025-09-14T23:18:20+00:00"
        );
        let stop = r#"{"event":"App\\Events\\StopStreamBroadcast","data":"{\"livestream\":{\"id\":129387275,\"channel\":{\"id\":26869410,\"is_banned\":false}}}","channel":"channel.26869410"}"#;
        assert_eq!(
            decode_pusher(stop).unwrap(),
            PusherFrame::Event {
                channel: "channel.26869410".into(),
                event: KickEvent::Stop(StopEvent {
                    livestream_id: 129387275,
                    channel_id: 26869410,
                    is_banned: false
                })
            }
        );
    }

    #[test]
    fn data_forms_and_prefix_drift() {
        // Object data, no prefix.
        let v = serde_json::json!({"livestream": {"id": 5, "channel": {"id": 7}}});
        assert!(matches!(
            decode_event("StopStreamBroadcast", &v, "channel.7"),
            Ok(KickEvent::Stop(_))
        ));
        // "[]" data on an ignored event is fine.
        assert_eq!(
            decode_event(
                "App\\Events\\PinnedMessageDeletedEvent",
                &Value::String("[]".into()),
                "x"
            )
            .unwrap(),
            KickEvent::Other("PinnedMessageDeletedEvent".into())
        );
        // A live event without ids is malformed, not ignored.
        assert!(
            decode_event("StreamerIsLive", &Value::String("[]".into()), "chatrooms.1").is_err()
        );
        // Channel id from the topic when the payload lacks it.
        let v = serde_json::json!({"livestream": {"id": 9}});
        let KickEvent::Live(l) = decode_event("StreamerIsLive", &v, "channel.42").unwrap() else {
            panic!()
        };
        assert_eq!(l.channel_id, 42);
    }

    #[test]
    fn centrifugo_messages() {
        let msgs = decode_centrifugo(
            "{\"id\":1,\"connect\":{\"client\":\"c\",\"expires\":true,\"ttl\":2699,\"ping\":25,\"pong\":true}}\n{\"id\":2,\"subscribe\":{}}\n{}",
        );
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            msgs[0].as_ref().unwrap(),
            &CentrifugoMsg::Connect {
                id: 1,
                client: "c".into(),
                ttl: Some(2699),
                ping: Some(25),
                pong: true
            }
        );
        assert_eq!(
            msgs[1].as_ref().unwrap(),
            &CentrifugoMsg::Subscribed { id: 2 }
        );
        assert_eq!(msgs[2].as_ref().unwrap(), &CentrifugoMsg::Ping);
        let err = decode_centrifugo(r#"{"id":3,"error":{"code":109,"message":"token expired"}}"#);
        assert_eq!(
            err[0].as_ref().unwrap(),
            &CentrifugoMsg::Error {
                id: 3,
                code: 109,
                message: "token expired".into()
            }
        );
        let bad = decode_centrifugo("not json\n{}");
        assert!(bad[0].is_err());
        assert_eq!(bad[1].as_ref().unwrap(), &CentrifugoMsg::Ping);
    }

    #[test]
    fn every_recorded_fixture_decodes() {
        let text = fixture("centrifugo-publication.push.streamer-is-live.RECONSTRUCTED.json");
        let compact: Value = serde_json::from_str(&text).unwrap();
        let msgs = decode_centrifugo(&compact.to_string());
        assert!(matches!(
            msgs[0],
            Ok(CentrifugoMsg::Publication {
                event: KickEvent::Live(_),
                ..
            })
        ));
        let stop: Value = serde_json::from_str(&fixture(
            "centrifugo-publication.push.stop-stream-broadcast.RECONSTRUCTED.json",
        ))
        .unwrap();
        assert!(matches!(
            decode_centrifugo(&stop.to_string())[0],
            Ok(CentrifugoMsg::Publication {
                event: KickEvent::Stop(_),
                ..
            })
        ));
        let connect: Value =
            serde_json::from_str(&fixture("centrifugo-connect.reply.2026-10-03.json")).unwrap();
        assert!(matches!(
            decode_centrifugo(&connect.to_string())[0],
            Ok(CentrifugoMsg::Connect { pong: true, .. })
        ));
        // Every recorded Pusher frame decodes without error; the live/offline ones into their variants.
        let mut frames = 0;
        for entry in std::fs::read_dir(FIXTURES).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.starts_with("pusher-") && name.contains(".frame.") {
                let text = fixture(&name);
                let compact: Value = serde_json::from_str(&text).unwrap();
                let frame =
                    decode_pusher(&compact.to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
                if name.contains("stop-stream-broadcast") {
                    assert!(
                        matches!(
                            frame,
                            PusherFrame::Event {
                                event: KickEvent::Stop(_),
                                ..
                            }
                        ),
                        "{name}"
                    );
                }
                if name.contains("streamer-is-live") {
                    assert!(
                        matches!(
                            frame,
                            PusherFrame::Event {
                                event: KickEvent::Live(_),
                                ..
                            }
                        ),
                        "{name}"
                    );
                }
                frames += 1;
            }
        }
        assert!(frames >= 15, "found {frames} pusher frame fixtures");
    }

    #[test]
    fn hostile_numbers_are_not_ids_or_codes() {
        for bad in [
            r#"{"livestream":{"id":-5,"channel_id":7}}"#,
            r#"{"livestream":{"id":0,"channel_id":7}}"#,
            r#"{"livestream":{"id":18446744073709551615,"channel_id":7}}"#,
            r#"{"livestream":{"id":{"x":1},"channel_id":7}}"#,
            r#"{"livestream":{"id":5,"channel_id":-7}}"#,
            r#"{"livestream":{"id":9223372036854775807,"channel_id":7}}"#,
            r#"{"livestream":{"id":"9007199254740993","channel_id":7}}"#,
            r#"{"livestream":{"id":5,"channel_id":9007199254740993}}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(
                decode_event("StreamerIsLive", &v, "chatrooms.1").is_err(),
                "{bad}"
            );
        }
        assert_eq!(channel_id_of_topic("channel.-3"), None);
        assert_eq!(channel_id_of_topic("channel.0"), None);
        let m = decode_centrifugo(r#"{"push":{"disconnect":{"code":4294967296000,"reason":"x"}}}"#);
        assert_eq!(
            m[0].as_ref().unwrap(),
            &CentrifugoMsg::Disconnect {
                code: u16::MAX,
                reason: "x".into()
            }
        );
        // A code that would truncate into the terminal range does not.
        let m = decode_centrifugo(r#"{"push":{"disconnect":{"code":69036,"reason":"x"}}}"#);
        assert!(matches!(
            m[0],
            Ok(CentrifugoMsg::Disconnect { code: u16::MAX, .. })
        ));
    }

    #[test]
    fn close_code_classes() {
        assert_eq!(pusher_close_action(4001), CloseAction::Terminal);
        assert_eq!(pusher_close_action(4100), CloseAction::Backoff);
        assert_eq!(pusher_close_action(4201), CloseAction::Immediately);
        assert_eq!(centrifugo_close_action(3500), CloseAction::Terminal);
        assert_eq!(centrifugo_close_action(3001), CloseAction::Backoff);
        assert_eq!(centrifugo_close_action(4501), CloseAction::Terminal);
        assert_eq!(centrifugo_close_action(1006), CloseAction::Backoff);
    }
}
