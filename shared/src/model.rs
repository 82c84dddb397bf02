//! Domain values stored in the database: statuses, event sources and the staged event names.
//! Their string forms are the database contract (CHECK constraints in `migrations/`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A streamer's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Offline,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Offline => "offline",
            Status::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "online" => Ok(Status::Online),
            "offline" => Ok(Status::Offline),
            "unknown" => Ok(Status::Unknown),
            other => Err(format!(
                "'{other}' is not a status (online, offline, unknown)"
            )),
        }
    }
}

/// Where a staged event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Realtime,
    Api,
    Webhook,
    Admin,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Realtime => "realtime",
            Source::Api => "api",
            Source::Webhook => "webhook",
            Source::Admin => "admin",
        }
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "realtime" => Ok(Source::Realtime),
            "api" => Ok(Source::Api),
            "webhook" => Ok(Source::Webhook),
            "admin" => Ok(Source::Admin),
            other => Err(format!("'{other}' is not a source")),
        }
    }
}

/// `raw_events.event_name` values the writer understands. Realtime rows carry Kick's event name
/// without the `App\Events\` prefix; API rows use the same names for "the API says live/offline";
/// `StatusUnknown` is a collector-declared outage (socket down and API failing).
pub mod event_name {
    pub const STREAMER_IS_LIVE: &str = "StreamerIsLive";
    pub const STOP_STREAM_BROADCAST: &str = "StopStreamBroadcast";
    pub const STATUS_UNKNOWN: &str = "StatusUnknown";
    /// A streamer's realtime channel id, learned (no status): the writer stores it.
    pub const CHANNEL_ID: &str = "ChannelId";
    /// Kick reports another slug for the same user id (a rename): the writer follows it. The
    /// new slug is `payload.slug`.
    pub const SLUG_CHANGED: &str = "SlugChanged";
}

/// NOTIFY channel names.
pub mod channel {
    /// Staged rows are waiting (payload empty: a doorbell).
    pub const RAW_EVENTS: &str = "raw_events";
    /// The set of streamers to watch changed.
    pub const STREAMERS_CHANGED: &str = "streamers_changed";
    /// A transition was applied; the payload is the username.
    pub const STATUS_CHANGED: &str = "status_changed";
    /// Settings in the `config` table changed.
    pub const CONFIG_CHANGED: &str = "config_changed";
    /// Shard leases changed owner (collectors run their lease round at once).
    pub const SHARDS_CHANGED: &str = "shards_changed";
}

/// Shards: how collectors share the channels (migration V8, the collector's `leases`).
pub mod shard {
    /// The number of shards (rows per replica in `shard_leases`; fixed by the migration).
    pub const COUNT: i32 = 64;

    /// The shard of a channel id (or, for a streamer without one, of its user id): the same
    /// as `mod(coalesce(kick_channel_id, kick_user_id), 64)` in SQL.
    pub fn of(id: i64) -> i32 {
        id.rem_euclid(i64::from(COUNT)) as i32
    }
}

/// How long a realtime observation outranks a contradicting answer of the official API, which
/// lags Kick's realtime feed by seconds. The writer calls such an API answer `stale`; the
/// collector therefore checks every difference again after [`API_RECHECK`], when the API has
/// caught up (or still disagrees, and then wins).
pub const API_LAG_GUARD: std::time::Duration = std::time::Duration::from_secs(10);

/// When the collector re-checks statuses the API contradicted (see [`API_LAG_GUARD`]).
pub const API_RECHECK: std::time::Duration = std::time::Duration::from_secs(12);
