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
