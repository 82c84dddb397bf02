//! Hostile WebSocket frames (`POST /control/sockets/raw`): exactly the text a test gives
//! (any character a JSON string can carry, U+0000 included), a binary frame, or frames made by a
//! generator (a StreamerIsLive whose title holds U+0000, a frame of a given size, deeply nested
//! JSON, ids of the wrong JSON type, numbers no integer type holds), in each socket's own
//! envelope, sent to every socket, to one transport's, or to the sockets subscribed to a feed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use crate::world::laravel_time;
use crate::{Out, Sim, Transport};

pub fn routes() -> Router<Arc<Sim>> {
    Router::new().route("/control/sockets/raw", post(raw))
}

/// `POST /control/sockets/raw`. Exactly one of `text`, `binary` (base64) or `generate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    /// Sent as one text frame, unchanged, to both transports.
    text: Option<String>,
    /// Base64 of the bytes of one binary frame.
    binary: Option<String>,
    generate: Option<Generate>,
    /// Only sockets of this transport (default: both).
    transport: Option<Transport>,
    /// Only sockets subscribed to this feed (e.g. `channel.2000013`); also the feed named in
    /// generated frames (default `channel.0`).
    channel: Option<String>,
    /// How many times each frame is sent (default 1).
    #[serde(default = "one")]
    repeat: u64,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Generate {
    /// A valid `StreamerIsLive` (`"event": "live"`, the default) whose `session_title` holds
    /// U+0000, or a `StopStreamBroadcast` (`"offline"`) with such a title beside its ids.
    NulTitle {
        #[serde(default)]
        event: LiveOrOffline,
    },
    /// A valid frame of exactly `bytes` bytes (a FollowersUpdated with padding).
    HugeFrame { bytes: usize },
    /// `depth` nested arrays as the event's `data` (inside the data string with `in_string`).
    DeepJson {
        depth: usize,
        #[serde(default)]
        in_string: bool,
    },
    /// StreamerIsLive frames with ids as objects, booleans, floats, strings, u64::MAX and
    /// negative numbers; `data` as a number; the event name as a number; a null livestream.
    WrongTypes,
    /// StreamerIsLive frames with ids 1e400, 30-digit integers, -0, 1e-400.
    HugeNumbers,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LiveOrOffline {
    #[default]
    Live,
    Offline,
}

/// One frame, in each transport's envelope.
#[derive(Debug, Clone)]
struct Frame {
    pusher: Arc<str>,
    centrifugo: Arc<str>,
}

/// Wraps an event into both envelopes. `event` and `data` are JSON texts, put in as they are
/// (so that they can hold what `serde_json::Value` cannot, such as `1e400`).
fn envelope(channel: &str, event: &str, data: &str) -> Frame {
    let ch = json!(channel).to_string();
    Frame {
        pusher: format!(r#"{{"event":{event},"data":{data},"channel":{ch}}}"#).into(),
        centrifugo: format!(
            r#"{{"push":{{"channel":{ch},"pub":{{"data":{{"event":{event},"data":{data}}}}}}}}}"#
        )
        .into(),
    }
}

/// A JSON string holding `text` (Kick's JSON-in-JSON `data`).
fn quoted(text: &str) -> String {
    json!(text).to_string()
}

const LIVE: &str = r#""App\\Events\\StreamerIsLive""#;
const STOP: &str = r#""App\\Events\\StopStreamBroadcast""#;

fn channel_number(channel: &str) -> i64 {
    channel
        .rsplit(['.', '_'])
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn generate(sim: &Sim, kind: &Generate, channel: &str) -> Vec<Frame> {
    let cid = channel_number(channel);
    let livestream_id = {
        let w = sim.world.lock().unwrap();
        w.by_channel
            .get(&cid)
            .and_then(|i| w.streamers[*i].livestream_id)
            .unwrap_or(1)
    };
    let now = laravel_time(chrono::Utc::now());
    let live_data = |id: &str, channel_id: &str| {
        format!(
            r#"{{"livestream":{{"id":{id},"channel_id":{channel_id},"session_title":"hostile","source":null,"created_at":"{now}"}}}}"#
        )
    };
    match kind {
        Generate::NulTitle { event } => {
            let title = "before\u{0}after";
            let (name, data) = match event {
                LiveOrOffline::Live => (
                    LIVE,
                    json!({"livestream": {"id": livestream_id, "channel_id": cid, "session_title": title, "source": null, "created_at": now}}),
                ),
                LiveOrOffline::Offline => (
                    STOP,
                    json!({"livestream": {"id": livestream_id, "channel": {"id": cid, "is_banned": false}, "session_title": title}}),
                ),
            };
            vec![envelope(channel, name, &quoted(&data.to_string()))]
        }
        Generate::HugeFrame { bytes } => {
            let event = r#""App\\Events\\FollowersUpdated""#;
            let make = |pad: usize| {
                let data = format!(r#"{{"followersCount":1,"pad":"{}"}}"#, "x".repeat(pad));
                envelope(channel, event, &quoted(&data))
            };
            let bare = make(0);
            let pusher_pad = bytes.saturating_sub(bare.pusher.len());
            let centrifugo_pad = bytes.saturating_sub(bare.centrifugo.len());
            vec![Frame {
                pusher: make(pusher_pad).pusher,
                centrifugo: make(centrifugo_pad).centrifugo,
            }]
        }
        Generate::DeepJson { depth, in_string } => {
            let nested = format!("{}{}", "[".repeat(*depth), "]".repeat(*depth));
            let data = if *in_string { quoted(&nested) } else { nested };
            vec![envelope(channel, LIVE, &data)]
        }
        Generate::WrongTypes => {
            let c = cid.to_string();
            let inner = [
                live_data(r#"{"id":1}"#, &c),
                live_data("true", &c),
                live_data("74000001.5", &c),
                live_data(&u64::MAX.to_string(), &c),
                live_data("-5", &c),
                live_data(&livestream_id.to_string(), &quoted(&c)),
                live_data(&livestream_id.to_string(), "false"),
                live_data(&livestream_id.to_string(), &format!("-{c}")),
                r#"{"livestream":null}"#.to_owned(),
                r#"{"livestream":[]}"#.to_owned(),
            ];
            let mut frames: Vec<Frame> = inner
                .iter()
                .map(|d| envelope(channel, LIVE, &quoted(d)))
                .collect();
            frames.push(envelope(channel, LIVE, "42"));
            frames.push(envelope(channel, "42", &quoted(&live_data("1", &c))));
            frames.push(envelope(channel, LIVE, "null"));
            frames
        }
        Generate::HugeNumbers => {
            let c = cid.to_string();
            let mut frames: Vec<Frame> = [
                live_data("1e400", &c),
                live_data("123456789012345678901234567890", &c),
                live_data("-0", &c),
                live_data("1e-400", &c),
                live_data("1", "99999999999999999999999"),
                live_data(&i64::MIN.to_string(), &c),
            ]
            .iter()
            .map(|d| envelope(channel, LIVE, &quoted(d)))
            .collect();
            // `data` as an object (Kick sometimes sends it decoded) with a huge number.
            frames.push(envelope(channel, LIVE, &live_data("1e400", &c)));
            frames
        }
    }
}

fn bad(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

async fn raw(State(sim): State<Arc<Sim>>, Json(r): Json<Raw>) -> Response {
    let given = [r.text.is_some(), r.binary.is_some(), r.generate.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return bad("give exactly one of text, binary or generate");
    }
    if r.repeat > 1_000_000 {
        return bad("repeat is at most 1000000");
    }
    let out: Vec<(Out, Out)> = if let Some(text) = r.text {
        let t: Arc<str> = text.into();
        vec![(Out::Text(t.clone()), Out::Text(t))]
    } else if let Some(b64) = r.binary {
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(bytes) => {
                let b = Bytes::from(bytes);
                vec![(Out::Binary(b.clone()), Out::Binary(b))]
            }
            Err(_) => return bad("binary is not base64"),
        }
    } else {
        let kind = r.generate.as_ref().unwrap();
        let channel = r.channel.as_deref().unwrap_or("channel.0");
        generate(&sim, kind, channel)
            .into_iter()
            .map(|f| (Out::Text(f.pusher), Out::Text(f.centrifugo)))
            .collect()
    };
    let targets = sim.targets(r.transport, r.channel.as_deref());
    let sockets = targets.len();
    let frames_each = out.len() as u64 * r.repeat;
    let out = Arc::new(out);
    let sends = targets.into_iter().map(|(transport, tx)| {
        let out = out.clone();
        async move {
            let mut sent = 0u64;
            for _ in 0..r.repeat {
                for (pusher, centrifugo) in out.iter() {
                    let frame = match transport {
                        Transport::Pusher => pusher.clone(),
                        Transport::Centrifugo => centrifugo.clone(),
                    };
                    // A socket that cannot take a frame within 5 s is skipped.
                    match tokio::time::timeout(Duration::from_secs(5), tx.send(frame)).await {
                        Ok(Ok(())) => sent += 1,
                        _ => return sent,
                    }
                }
            }
            sent
        }
    });
    let sent: u64 = futures_util::future::join_all(sends).await.iter().sum();
    Json(json!({"sockets": sockets, "frames": sent, "frames_per_socket": frames_each}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_parse_and_hold_the_data() {
        let f = envelope("channel.7", LIVE, &quoted(r#"{"a":1}"#));
        let p: serde_json::Value = serde_json::from_str(&f.pusher).unwrap();
        assert_eq!(p["event"], "App\\Events\\StreamerIsLive");
        assert_eq!(p["channel"], "channel.7");
        let c: serde_json::Value = serde_json::from_str(&f.centrifugo).unwrap();
        assert_eq!(c["push"]["pub"]["data"]["data"], r#"{"a":1}"#);
        assert_eq!(channel_number("channel.2000013"), 2_000_013);
        assert_eq!(channel_number("channel_5"), 5);
    }
}
