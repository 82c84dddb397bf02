//! The Kick protocol: realtime frames (Pusher protocol 7 and Centrifugo JSON) decoded into closed
//! enums, and the official REST API client (OAuth client credentials, channels, livestreams).
//! See `shared/kick/PROTOCOL.md` in the project's reference material for every shape handled here.

pub mod api;
pub mod frame;

/// The Origin Kick's realtime servers and negotiation endpoints require.
pub const KICK_ORIGIN: &str = "https://kick.com";
