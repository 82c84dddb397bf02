//! The rows the collector stages into `raw_events`, one constructor per source, so that every
//! dedupe-key format and payload shape lives in one place.
//!
//! Everything from Kick is made safe for PostgreSQL here, before it reaches the stager: text
//! loses its NUL characters (which neither `text` nor `jsonb` accept) and is cut to a sane
//! length, and whenever a value had to change, its original bytes are kept in the payload
//! (`unsafe_original`, base64) so nothing is lost. Numbers are already typed and range-checked by
//! the decoders. What the stager inserts can therefore only be refused for a reason we did not
//! foresee, and then the stager isolates the row (see `stager`).

use std::collections::BTreeMap;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use kick_shared::kick::frame::{KickEvent, LiveEvent, StopEvent};
use kick_shared::model::{Source, event_name};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// `event_name` of a frame we could not use, stored already processed with its reason.
pub const REJECTED_FRAME: &str = "RejectedFrame";

/// Longest text kept from a Kick field (titles are ~100 characters; a longer one is hostile).
pub const MAX_TEXT_CHARS: usize = 1000;
/// Longest feed name kept (Pusher allows 164 characters).
pub const MAX_TOPIC_CHARS: usize = 200;
/// The most of a rejected frame kept verbatim (its length and hash are always kept).
pub const MAX_REJECTED_BYTES: usize = 16 * 1024;

/// One row for `raw_events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Staged {
    pub source: Source,
    pub topic: Option<String>,
    pub event_name: String,
    pub channel_id: Option<i64>,
    pub user_id: Option<i64>,
    pub livestream_id: Option<i64>,
    /// When it happened by Kick's clock (a stream's start), when Kick said.
    pub event_time: Option<DateTime<Utc>>,
    /// The event's JSON, compact and safe for `jsonb`.
    pub payload: String,
    pub dedupe_key: String,
    /// When the collector observed it, by its own clock.
    pub observed_at: DateTime<Utc>,
    /// The database's clock at observation, estimated (observation + measured skew); set when
    /// the event waited long enough that the insert time would misplace it (see `stager`).
    #[serde(default)]
    pub received_at: Option<DateTime<Utc>>,
    /// Set for rows stored already processed (rejected frames).
    #[serde(default)]
    pub outcome: Option<String>,
    /// The id whose shard this status row belongs to (the channel id, or for a streamer without
    /// one its user id); `None`: not a status row, never fenced (see `leases`).
    #[serde(default)]
    pub shard_key: Option<i64>,
    /// The shard and lease token it was stamped with when it was seen (kept in the spool).
    #[serde(default)]
    pub lease: Option<(i32, i64)>,
    /// When the frame arrived, for the frame → staged latency (not persisted).
    #[serde(skip, default = "Instant::now")]
    pub arrived: Instant,
    /// Who waits to hear that the row is durable (the webhook receiver answers Kick only then).
    #[serde(skip)]
    pub ack: Option<Ack>,
}

/// How durable a staged row became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Committed in `raw_events` (or found there already: a duplicate).
    Committed,
    /// Written to the local spool (fsync'd): replayed once the database answers.
    Spooled,
}

/// The waiting side of an acknowledgement: dropped unanswered means refused (buffer or spool
/// full).
pub type AckWait = tokio::sync::oneshot::Receiver<Durability>;

/// The answering side, shared by the copies of a row (the first answer wins).
#[derive(Debug, Clone)]
pub struct Ack(std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Durability>>>>);

impl Ack {
    pub fn new() -> (Ack, AckWait) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Ack(std::sync::Arc::new(std::sync::Mutex::new(Some(tx)))),
            rx,
        )
    }

    pub fn answer(&self, d: Durability) {
        if let Some(tx) = self.0.lock().unwrap().take() {
            let _ = tx.send(d);
        }
    }
}

/// Text made safe for PostgreSQL: NUL replaced by U+FFFD, cut to `max` characters. Returns
/// whether anything changed.
pub fn safe_text(s: &str, max: usize) -> (String, bool) {
    let mut changed = false;
    let mut out = String::with_capacity(s.len().min(max.saturating_mul(4)));
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            changed = true;
            break;
        }
        if c == '\0' {
            changed = true;
            out.push('\u{fffd}');
        } else {
            out.push(c);
        }
    }
    (out, changed)
}

/// Collects the originals of values that had to change, for the payload.
#[derive(Default)]
struct Originals(BTreeMap<&'static str, String>);

impl Originals {
    fn text(&mut self, field: &'static str, s: &str, max: usize) -> String {
        let (safe, changed) = safe_text(s, max);
        if changed {
            self.0.insert(field, B64.encode(s.as_bytes()));
        }
        safe
    }

    fn into_payload(self, mut payload: Value) -> String {
        if !self.0.is_empty() {
            payload["unsafe_original"] = json!(self.0);
        }
        payload.to_string()
    }
}

fn base(source: Source, name: &str, key: String, observed_at: DateTime<Utc>) -> Staged {
    Staged {
        source,
        topic: None,
        event_name: name.to_owned(),
        channel_id: None,
        user_id: None,
        livestream_id: None,
        event_time: None,
        payload: "{}".into(),
        dedupe_key: key,
        observed_at,
        received_at: None,
        outcome: None,
        shard_key: None,
        lease: None,
        arrived: Instant::now(),
        ack: None,
    }
}

/// A live or offline event from a realtime feed. Other events are not staged.
pub fn realtime(topic: &str, event: &KickEvent, observed_at: DateTime<Utc>) -> Option<Staged> {
    let mut orig = Originals::default();
    let topic = orig.text("topic", topic, MAX_TOPIC_CHARS);
    let row = match event {
        KickEvent::Live(LiveEvent {
            livestream_id,
            channel_id,
            created_at,
            session_title,
        }) => {
            let title = session_title
                .as_deref()
                .map(|t| orig.text("session_title", t, MAX_TEXT_CHARS));
            let payload = json!({"livestream": {"id": livestream_id, "channel_id": channel_id,
                "session_title": title, "created_at": created_at}});
            Staged {
                topic: Some(topic),
                channel_id: Some(*channel_id),
                shard_key: Some(*channel_id),
                livestream_id: Some(*livestream_id),
                // Kick's own time for the start of the stream.
                event_time: *created_at,
                payload: orig.into_payload(payload),
                ..base(
                    Source::Realtime,
                    event_name::STREAMER_IS_LIVE,
                    format!("rt:live:{channel_id}:{livestream_id}"),
                    observed_at,
                )
            }
        }
        KickEvent::Stop(StopEvent {
            livestream_id,
            channel_id,
            is_banned,
        }) => {
            let payload = json!({"livestream": {"id": livestream_id,
                "channel": {"id": channel_id, "is_banned": is_banned}}});
            Staged {
                topic: Some(topic),
                channel_id: Some(*channel_id),
                shard_key: Some(*channel_id),
                livestream_id: Some(*livestream_id),
                // Kick gives no time for an end: the database stamps the row.
                event_time: None,
                payload: orig.into_payload(payload),
                ..base(
                    Source::Realtime,
                    event_name::STOP_STREAM_BROADCAST,
                    format!("rt:stop:{channel_id}:{livestream_id}"),
                    observed_at,
                )
            }
        }
        KickEvent::Other(_) => return None,
    };
    Some(row)
}

/// A frame we could not use (undecodable, oversized, binary, or a live event without ids): kept
/// in `raw_events` already processed, as `rejected: <reason>`, with its length, its SHA-256 and
/// (up to [`MAX_REJECTED_BYTES`]) its original bytes, so an operator can see it with psql.
/// Identical frames are stored once (the key is their hash).
pub fn rejected_frame(
    transport: &str,
    reason: &str,
    frame: &[u8],
    observed_at: DateTime<Utc>,
) -> Staged {
    let hash = hex(&Sha256::digest(frame));
    let kept = &frame[..frame.len().min(MAX_REJECTED_BYTES)];
    let (reason, _) = safe_text(reason, 300);
    let payload = json!({"transport": transport, "reason": reason, "length": frame.len(),
        "sha256": hash, "original_b64": B64.encode(kept), "truncated": kept.len() < frame.len()});
    Staged {
        payload: payload.to_string(),
        outcome: Some(format!("rejected: {reason}")),
        ..base(
            Source::Realtime,
            REJECTED_FRAME,
            format!("rej:{hash}"),
            observed_at,
        )
    }
}

/// What the official API says about a streamer whose stored status differs (or whose realtime
/// channel id it revealed). `run_ms` makes keys unique per reconciliation run: an answer the
/// writer refused (API lag) must not block the same answer in a later run.
#[derive(Debug)]
pub struct ApiStatus<'a> {
    pub user_id: i64,
    pub channel_id: Option<i64>,
    pub slug: &'a str,
    pub live: bool,
    pub start_time: Option<DateTime<Utc>>,
    pub stored_status: &'a str,
    /// The streamer's status differs from the stored one (else only its channel id is news).
    pub differs: bool,
    pub learned_channel: Option<i64>,
    pub run_ms: i64,
}

pub fn api_status(a: &ApiStatus<'_>, observed_at: DateTime<Utc>) -> Staged {
    let mut orig = Originals::default();
    let slug = orig.text("slug", a.slug, 100);
    let name = if a.live {
        event_name::STREAMER_IS_LIVE
    } else {
        event_name::STOP_STREAM_BROADCAST
    };
    let key = match (a.differs, a.learned_channel) {
        (false, Some(c)) => format!("api:{}:channel:{c}", a.user_id),
        _ => format!(
            "api:{}:{}:{}:{}",
            a.user_id,
            if a.live { "live" } else { "offline" },
            a.start_time.map_or(0, |t| t.timestamp_millis()),
            a.run_ms
        ),
    };
    let payload = json!({"slug": slug, "is_live": a.live, "start_time": a.start_time,
        "stored_status": a.stored_status});
    Staged {
        channel_id: a.learned_channel.or(a.channel_id),
        // The shard reconciliation chose it by: the stored channel id, else the user id.
        shard_key: Some(a.channel_id.unwrap_or(a.user_id)),
        user_id: Some(a.user_id),
        // A live stream's start by Kick's clock; an offline has no time from Kick.
        event_time: if a.live { a.start_time } else { None },
        payload: orig.into_payload(payload),
        ..base(Source::Api, name, key, observed_at)
    }
}

/// A collector-declared outage: a socket is down and the API fails too, so the status is unknown.
pub fn unknown(
    user_id: i64,
    channel_id: Option<i64>,
    gap_key: &str,
    observed_at: DateTime<Utc>,
    reason: &str,
) -> Staged {
    Staged {
        channel_id,
        shard_key: Some(channel_id.unwrap_or(user_id)),
        user_id: Some(user_id),
        payload: json!({ "reason": reason }).to_string(),
        ..base(
            Source::Realtime,
            event_name::STATUS_UNKNOWN,
            format!("outage:{user_id}:{gap_key}"),
            observed_at,
        )
    }
}

/// Kick's channels answer left this streamer out twice in a row (banned, renamed or deleted):
/// its status is unknown, and the payload says why (the writer shows it as `status_reason`).
pub fn missing(
    user_id: i64,
    channel_id: Option<i64>,
    run_ms: i64,
    observed_at: DateTime<Utc>,
) -> Staged {
    Staged {
        channel_id,
        shard_key: Some(channel_id.unwrap_or(user_id)),
        user_id: Some(user_id),
        payload: json!({"reason": "missing from kick's channels answer twice (banned, renamed or deleted?)"})
            .to_string(),
        ..base(
            Source::Api,
            event_name::STATUS_UNKNOWN,
            format!("missing:{user_id}:{run_ms}"),
            observed_at,
        )
    }
}

/// A realtime channel id learned for a streamer (no status). `how` says where from.
pub fn channel_id(user_id: i64, channel_id: i64, how: &str, observed_at: DateTime<Utc>) -> Staged {
    Staged {
        channel_id: Some(channel_id),
        user_id: Some(user_id),
        payload: json!({"learned_from": how}).to_string(),
        ..base(
            Source::Api,
            event_name::CHANNEL_ID,
            format!("channel:{user_id}:{channel_id}"),
            observed_at,
        )
    }
}

/// Kick reports a new slug for a stored user id.
pub fn slug_changed(user_id: i64, old: &str, new: &str, observed_at: DateTime<Utc>) -> Staged {
    let mut orig = Originals::default();
    let new_safe = orig.text("slug", new, 100);
    let payload = json!({"slug": new_safe, "was": old});
    Staged {
        user_id: Some(user_id),
        payload: orig.into_payload(payload),
        ..base(
            Source::Api,
            event_name::SLUG_CHANGED,
            format!("slug:{user_id}:{new_safe}"),
            observed_at,
        )
    }
}

/// A verified `livestream.status.updated` delivery. The message id is Kick's idempotency key:
/// the same delivery repeated any number of times is staged once. The session's start is kept
/// in the payload (`started_at`): the writer pairs starts and ends by it, so a delivery delayed
/// by an hour never overrides a newer session.
pub fn webhook(
    message_id: &str,
    body: &kick_shared::kick::webhook::StatusUpdated,
    observed_at: DateTime<Utc>,
) -> Staged {
    let mut orig = Originals::default();
    let title = body
        .title
        .as_deref()
        .map(|t| orig.text("title", t, MAX_TEXT_CHARS));
    let slug = body
        .broadcaster
        .channel_slug
        .as_deref()
        .map(|t| orig.text("channel_slug", t, 100));
    let (name, event_time) = if body.is_live {
        (event_name::STREAMER_IS_LIVE, body.started_at)
    } else {
        (event_name::STOP_STREAM_BROADCAST, body.ended_at)
    };
    let payload = json!({"message_id": message_id, "is_live": body.is_live,
        "started_at": body.started_at, "ended_at": body.ended_at, "title": title,
        "broadcaster": {"user_id": body.broadcaster.user_id, "channel_slug": slug}});
    Staged {
        user_id: Some(body.broadcaster.user_id),
        event_time,
        payload: orig.into_payload(payload),
        ..base(
            Source::Webhook,
            name,
            format!("wh:{message_id}"),
            observed_at,
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_length_are_made_safe_and_the_original_kept() {
        let ev = KickEvent::Live(LiveEvent {
            livestream_id: 7,
            channel_id: 9,
            created_at: None,
            session_title: Some("a\0b".into()),
        });
        let row = realtime("channel.9", &ev, Utc::now()).unwrap();
        assert!(!row.payload.contains("\\u0000"), "{}", row.payload);
        let v: Value = serde_json::from_str(&row.payload).unwrap();
        assert_eq!(v["livestream"]["session_title"], "a\u{fffd}b");
        let orig = B64
            .decode(v["unsafe_original"]["session_title"].as_str().unwrap())
            .unwrap();
        assert_eq!(orig, b"a\0b");
        let (long, changed) = safe_text(&"x".repeat(5000), MAX_TEXT_CHARS);
        assert!(changed);
        assert_eq!(long.chars().count(), MAX_TEXT_CHARS);
        assert_eq!(safe_text("fine", 10), ("fine".into(), false));
    }

    #[test]
    fn rejected_frames_keep_bounded_evidence() {
        let frame = vec![b'x'; 100_000];
        let row = rejected_frame("pusher", "oversized", &frame, Utc::now());
        assert_eq!(row.outcome.as_deref(), Some("rejected: oversized"));
        let v: Value = serde_json::from_str(&row.payload).unwrap();
        assert_eq!(v["length"], 100_000);
        assert_eq!(v["truncated"], true);
        assert!(row.payload.len() < MAX_REJECTED_BYTES * 2);
        // The same frame gets the same key (stored once).
        assert_eq!(
            row.dedupe_key,
            rejected_frame("pusher", "oversized", &frame, Utc::now()).dedupe_key
        );
    }
}
