//! The collector's side of Kick's realtime feed: [`socket`] is the one loop per WebSocket that
//! drives a protocol session (`kick_shared::kick::realtime`) and reports what it sees;
//! [`placement`] decides which channel goes on which socket (and which server: Kick serves each
//! channel in one region), owns coverage gaps and the reconciles a socket's loss triggers, and
//! reacts to refused subscriptions; [`regions`] learns where each channel is served.

pub mod placement;
pub mod regions;
pub mod socket;
