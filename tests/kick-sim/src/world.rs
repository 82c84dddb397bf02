//! The simulated world: streamers (slug, user id, channel id, chatroom id, all different numbers
//! as on Kick), each online or offline with a livestream id, the Centrifugo region that serves
//! its channel, and the log of what was published.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::Options;

/// Kick slugs are at most 25 characters.
pub const MAX_SLUG_LEN: usize = 25;

#[derive(Debug, Clone, Serialize)]
pub struct Streamer {
    pub slug: String,
    /// The username (what the users API and webhooks call `name`/`username`).
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
    /// The Centrifugo region serving this channel (absent when regions are off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Index of `region` in `Options::regions` (0 when regions are off).
    #[serde(skip)]
    pub region_idx: usize,
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

/// How generated streamers look (from the options).
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub regions: Vec<String>,
    pub underscore_usernames_every: Option<usize>,
}

impl Shape {
    pub fn of(opts: &Options) -> Self {
        Self {
            regions: opts.regions.clone(),
            underscore_usernames_every: opts.underscore_usernames_every,
        }
    }
}

#[derive(Debug, Default)]
pub struct World {
    pub streamers: Vec<Streamer>,
    pub by_slug: HashMap<String, usize>,
    pub by_user: HashMap<i64, usize>,
    pub by_channel: HashMap<i64, usize>,
    pub by_chatroom: HashMap<i64, usize>,
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

/// Whether `slug` could be a Kick slug: 1 to 25 characters, lowercase letters, digits and
/// hyphens (usernames' underscores become hyphens).
pub fn valid_slug(slug: &str) -> bool {
    (1..=MAX_SLUG_LEN).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl World {
    pub fn generate(n: usize, shape: &Shape) -> Self {
        let mut w = World {
            next_livestream: 74_000_000,
            ..Default::default()
        };
        for i in 0..n {
            let underscore = shape
                .underscore_usernames_every
                .is_some_and(|every| every > 0 && i % every == every - 1);
            let (slug, display_name) = if underscore {
                (format!("the-streamer-{i}"), format!("The_Streamer_{i}"))
            } else {
                (format!("streamer{i}"), format!("Streamer{i}"))
            };
            let region_idx = if shape.regions.is_empty() {
                0
            } else {
                i % shape.regions.len()
            };
            w.add(Streamer {
                slug,
                display_name,
                user_id: 1_000_000 + i as i64 * 7,
                channel_id: 2_000_000 + i as i64 * 13,
                chatroom_id: 3_000_000 + i as i64 * 11,
                live: false,
                livestream_id: None,
                started_at: None,
                title: format!("stream {i}"),
                followers: 100 + i as i64,
                region: shape.regions.get(region_idx).cloned(),
                region_idx,
            });
        }
        w
    }

    /// Replaces the streamers with `n` generated ones. Livestream ids keep increasing, as Kick's
    /// do: a new session never reuses an old id.
    pub fn reseed(&mut self, n: usize, shape: &Shape) {
        let next = self.next_livestream;
        *self = World::generate(n, shape);
        self.next_livestream = next;
    }

    pub fn add(&mut self, s: Streamer) {
        let i = self.streamers.len();
        self.by_slug.insert(s.slug.clone(), i);
        self.by_user.insert(s.user_id, i);
        self.by_channel.insert(s.channel_id, i);
        self.by_chatroom.insert(s.chatroom_id, i);
        self.streamers.push(s);
    }

    /// Gives streamer `idx` a new slug; the old one becomes unknown.
    ///
    /// # Errors
    ///
    /// When `slug` is not a valid Kick slug or belongs to another streamer.
    pub fn rename(&mut self, idx: usize, slug: &str) -> Result<(), &'static str> {
        if !valid_slug(slug) {
            return Err("a slug is 1 to 25 characters: a-z, 0-9 and '-'");
        }
        if self.by_slug.get(slug).is_some_and(|i| *i != idx) {
            return Err("slug already taken");
        }
        let old = std::mem::replace(&mut self.streamers[idx].slug, slug.to_owned());
        self.by_slug.remove(&old);
        self.by_slug.insert(slug.to_owned(), idx);
        Ok(())
    }

    /// The streamer a feed belongs to (`channel.{id}`, `channel_{id}`, `chatrooms.{id}.v2`,
    /// `chatrooms.{id}`, `chatroom_{id}`).
    pub fn feed_owner(&self, feed: &str) -> Option<usize> {
        let num = |s: &str| s.parse::<i64>().ok();
        if let Some(id) = feed
            .strip_prefix("channel.")
            .or_else(|| feed.strip_prefix("channel_"))
        {
            return self.by_channel.get(&num(id)?).copied();
        }
        let room = feed
            .strip_prefix("chatrooms.")
            .map(|r| r.strip_suffix(".v2").unwrap_or(r))
            .or_else(|| feed.strip_prefix("chatroom_"))?;
        self.by_chatroom.get(&num(room)?).copied()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscore_usernames_get_hyphen_slugs_and_regions_alternate() {
        let shape = Shape {
            regions: vec!["a".into(), "b".into()],
            underscore_usernames_every: Some(10),
        };
        let w = World::generate(20, &shape);
        assert_eq!(w.streamers[9].slug, "the-streamer-9");
        assert_eq!(w.streamers[9].display_name, "The_Streamer_9");
        assert_eq!(w.streamers[8].slug, "streamer8");
        assert_eq!(w.streamers[3].region.as_deref(), Some("b"));
        assert!(w.streamers.iter().all(|s| valid_slug(&s.slug)));
        assert_eq!(w.feed_owner("channel.2000013"), Some(1));
        assert_eq!(w.feed_owner("chatrooms.3000011.v2"), Some(1));
        assert_eq!(w.feed_owner("chatroom_3000011"), Some(1));
        assert_eq!(w.feed_owner("channel.x"), None);
    }

    #[test]
    fn slugs_are_at_most_25_characters() {
        assert!(valid_slug(&"a".repeat(25)));
        assert!(!valid_slug(&"a".repeat(26)));
        assert!(!valid_slug("some_user"));
        assert!(!valid_slug("Some-User"));
        assert!(!valid_slug(""));
    }
}
