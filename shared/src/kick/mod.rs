//! The Kick protocol: realtime frames (Pusher protocol 7 and Centrifugo JSON) decoded into closed
//! enums, and the official REST API client (OAuth client credentials, channels, livestreams).
//! The recorded payloads these decoders are tested against, and where each came from, are in
//! `tests/fixtures/kick/` (its README).

pub mod api;
pub mod frame;
pub mod realtime;
pub mod subscriptions;
pub mod webhook;

/// The Origin Kick's realtime servers and negotiation endpoints require.
pub const KICK_ORIGIN: &str = "https://kick.com";

/// The largest id believed from Kick: its web app handles ids as JavaScript numbers, so a real
/// id is at most 2^53. A larger one (`i64::MAX` from a hostile or broken server) would outrank
/// every real livestream of the streamer forever; it is refused where it is decoded.
pub const MAX_ID: i64 = 1 << 53;

/// Whether `id` can be a Kick id (user, channel, livestream): from 1 to [`MAX_ID`].
pub fn valid_id(id: i64) -> bool {
    (1..=MAX_ID).contains(&id)
}
