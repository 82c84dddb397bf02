//! The simulated world: streamers (slug, user id, channel id, chatroom id, all different numbers
//! as on Kick), each online or offline with a livestream id, and the log of what was published.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Streamer {
    pub slug: String,
    pub display_name: String,
    pub user_id: i64,
    pub channel_id: i64,
    pub chatroom_id: i64,
    pub live: bool,
    /// The current livestream, or the last one (Kick's internal id, increasing).
    pub livestream_id: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
    pub title: String,
    pub followers: i64,
}

/// One published realtime event, for tests and benchmarks (latency, final truth).
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub seq: u64,
    /// Microseconds since the Unix epoch, taken just before the frames were queued.
    pub at_us: i64,
    pub channel: String,
    pub event: String,
    pub slug: String,
    pub live: bool,
    pub livestream_id: Option<i64>,
}

#[derive(Debug, Default)]
pub struct World {
    pub streamers: Vec<Streamer>,
    pub by_slug: HashMap<String, usize>,
    pub by_user: HashMap<i64, usize>,
    pub by_channel: HashMap<i64, usize>,
    next_livestream: i64,
}

/// Laravel's timestamp format in realtime payloads: `2025-09-14T23:18:20.000000Z`.
pub fn laravel_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S.000000Z").to_string()
}

/// The official API's format: `2026-05-17T23:08:28Z`.
pub fn api_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl World {
    pub fn generate(n: usize) -> Self {
        let mut w = World {
            next_livestream: 74_000_000,
            ..Default::default()
        };
        for i in 0..n {
            w.add(Streamer {
                slug: format!("streamer{i}"),
                display_name: format!("Streamer{i}"),
                user_id: 1_000_000 + i as i64 * 7,
                channel_id: 2_000_000 + i as i64 * 13,
                chatroom_id: 3_000_000 + i as i64 * 11,
                live: false,
                livestream_id: None,
                started_at: None,
                title: format!("stream {i}"),
                followers: 100 + i as i64,
            });
        }
        w
    }

    /// Replaces the streamers with `n` generated ones. Livestream ids keep increasing, as Kick's
    /// do: a new session never reuses an old id.
    pub fn reseed(&mut self, n: usize) {
        let next = self.next_livestream;
        *self = World::generate(n);
        self.next_livestream = next;
    }

    pub fn add(&mut self, s: Streamer) {
        let i = self.streamers.len();
        self.by_slug.insert(s.slug.clone(), i);
        self.by_user.insert(s.user_id, i);
        self.by_channel.insert(s.channel_id, i);
        self.streamers.push(s);
    }

    /// Sets a streamer live or offline. Returns the (event name, data JSON string) to publish on
    /// `channel.{id}`, or `None` when nothing changed.
    pub fn set_live(&mut self, idx: usize, live: bool) -> Option<(&'static str, String)> {
        let s = &mut self.streamers[idx];
        if s.live == live {
            return None;
        }
        s.live = live;
        if live {
            self.next_livestream += 1 + (idx as i64 % 3);
            let now = Utc::now();
            s.livestream_id = Some(self.next_livestream);
            s.started_at = Some(now);
            let data = serde_json::json!({
                "livestream": {
                    "id": self.next_livestream,
                    "channel_id": s.channel_id,
                    "session_title": s.title,
                    "source": null,
                    "created_at": laravel_time(now),
                }
            });
            Some(("App\\Events\\StreamerIsLive", data.to_string()))
        } else {
            let data = serde_json::json!({
                "livestream": { "id": s.livestream_id, "channel": { "id": s.channel_id, "is_banned": false } }
            });
            Some(("App\\Events\\StopStreamBroadcast", data.to_string()))
        }
    }
}
