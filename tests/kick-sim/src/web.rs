//! The website API (kick.com): `GET /api/v2/channels/{slug}`, the unofficial endpoint the
//! kick.com frontend uses, in the shape of the recorded 2023-11 answer: no `data` envelope,
//! top-level `id` = the channel id (the realtime `channel.{id}` feeds), `user_id` = the official
//! API's `broadcaster_user_id`, `livestream` null or an object, and `chatroom`.
//!
//! Kick puts Cloudflare in front of it: the `web` fault family refuses it (403 challenge, 429…),
//! `Options::web_challenge_every` challenges every n-th request, and every request is counted
//! per second in `/control/stats` (`web_requests`).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::Sim;
use crate::faults::Family;
use crate::world::{Streamer, laravel_time};

pub fn routes() -> Router<Arc<Sim>> {
    Router::new().route("/api/v2/channels/{slug}", get(channel))
}

async fn channel(State(sim): State<Arc<Sim>>, Path(slug): Path<String>) -> Response {
    sim.counters.web.lock().unwrap().hit();
    if let Err(r) = sim.gate(Family::Web).await {
        return r;
    }
    let streamer = {
        let w = sim.world.lock().unwrap();
        w.by_slug
            .get(&slug.to_lowercase())
            .map(|i| w.streamers[*i].clone())
    };
    match streamer {
        Some(s) => Json(channel_body(&s)).into_response(),
        // Laravel's answer for a missing model; a renamed channel's old slug gets it too.
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "No query results for model [App\\Models\\Channel]."})),
        )
            .into_response(),
    }
}

/// Laravel's database timestamp format, as in the website API's livestream objects.
fn db_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn livestream(s: &Streamer) -> Value {
    let started = s.started_at.unwrap_or_else(chrono::Utc::now);
    json!({
        "id": s.livestream_id,
        "slug": format!("{}-{}", s.livestream_id.unwrap_or(0), s.title.replace(' ', "-")),
        "channel_id": s.channel_id,
        "created_at": db_time(started),
        "session_title": s.title,
        "is_live": true,
        "risk_level_id": null,
        "start_time": db_time(started),
        "source": null,
        "twitch_channel": null,
        "duration": 0,
        "language": "English",
        "is_mature": false,
        "viewer_count": 10,
        "thumbnail": {"url": ""},
        "categories": [category()],
        "tags": [],
    })
}

fn category() -> Value {
    json!({
        "id": 15,
        "category_id": 2,
        "name": "Just Chatting",
        "slug": "just-chatting",
        "tags": ["IRL"],
        "description": null,
        "deleted_at": null,
        "viewers": 10,
        "banner": {"responsive": "", "url": ""},
        "category": {"id": 2, "name": "IRL", "slug": "irl", "icon": "🎙️"},
    })
}

fn channel_body(s: &Streamer) -> Value {
    let created = laravel_time(chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(19_400));
    json!({
        "id": s.channel_id,
        "user_id": s.user_id,
        "slug": s.slug,
        "is_banned": false,
        "playback_url": format!("https://playback.kick-sim.invalid/api/video/v1/{}.m3u8?token=sim", s.slug),
        "vod_enabled": true,
        "subscription_enabled": true,
        "followers_count": s.followers,
        "following": false,
        "subscription": null,
        "subscriber_badges": [{
            "id": s.channel_id,
            "channel_id": s.channel_id,
            "months": 1,
            "badge_image": {"srcset": "", "src": ""},
        }],
        "banner_image": {"url": ""},
        "livestream": if s.live { livestream(s) } else { Value::Null },
        "role": null,
        "muted": false,
        "follower_badges": [],
        "offline_banner_image": {"src": "", "srcset": ""},
        "verified": false,
        "recent_categories": [category()],
        "can_host": true,
        "user": {
            "id": s.user_id,
            "username": s.display_name,
            "agreed_to_terms": true,
            "email_verified_at": created,
            "bio": "",
            "country": null,
            "state": null,
            "city": null,
            "instagram": "",
            "twitter": "",
            "youtube": "",
            "discord": "",
            "tiktok": "",
            "facebook": "",
            "profile_pic": "",
        },
        "chatroom": {
            "id": s.chatroom_id,
            "chatable_type": "App\\Models\\Channel",
            "channel_id": s.channel_id,
            "created_at": created,
            "updated_at": created,
            "chat_mode_old": "public",
            "chat_mode": "public",
            "slow_mode": false,
            "chatable_id": s.channel_id,
            "followers_mode": false,
            "subscribers_mode": false,
            "emotes_mode": false,
            "message_interval": 0,
            "following_min_duration": 0,
        },
    })
}
