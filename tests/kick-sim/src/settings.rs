//! The behaviours the control API can change while the simulator runs, initialised from the
//! start-up `Options`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::Options;
use crate::limits::RateLimit;
use crate::world::World;

/// Overrides of the Centrifugo connect reply, for new connections (`POST /control/centrifugo`).
#[derive(Debug, Clone)]
pub struct CentrifugoSettings {
    /// `None`: the `ping` field is `Options::ping_interval`. `Some(None)`: no `ping` field, and
    /// the server does not ping. `Some(Some(n))`: `"ping": n`, and the server pings every `n`
    /// seconds when `n` is from 1 s to a year (never otherwise).
    pub ping: Option<Option<u64>>,
    /// `None`: `expires`/`ttl` from the guest token's remaining life. `Some(None)`: neither field,
    /// and the connection never expires. `Some(Some(n))`: `"ttl": n`, enforced (close 3005) when
    /// `n` is from 1 s to a year.
    pub ttl: Option<Option<u64>>,
    /// The `pong` field; when false the server does not require pongs.
    pub pong: bool,
    /// When set, every connect command is answered with this error (`{"code", "message"}`).
    pub connect_error: Option<Value>,
    /// Subscriptions per connection before error 106.
    pub subscription_limit: Option<usize>,
}

/// Everything that can change at runtime.
#[derive(Debug, Clone)]
pub struct Settings {
    pub centrifugo: CentrifugoSettings,
    /// Override of the Pusher `activity_timeout` for new connections (any u64; the server pings
    /// after that much silence when it is from 1 s to a year, never otherwise).
    pub pusher_activity_timeout: Option<u64>,
    pub v1_livestreams_removed: bool,
    pub pusher_dead_key_first: bool,
    /// User ids absent from `/public/v1/channels` answers.
    pub missing_user_ids: BTreeSet<i64>,
    pub api_rate_limit: Option<RateLimit>,
    pub events_subscription_limit: Option<usize>,
    pub events_delete_limit: Option<usize>,
    pub webhook_unsubscribe_after: Option<u32>,
}

impl Settings {
    pub fn from_options(opts: &Options, world: &World) -> Self {
        Self {
            centrifugo: CentrifugoSettings {
                ping: None,
                ttl: None,
                pong: true,
                connect_error: None,
                subscription_limit: opts.centrifugo_subscription_limit,
            },
            pusher_activity_timeout: None,
            v1_livestreams_removed: opts.v1_livestreams_removed,
            pusher_dead_key_first: opts.pusher_dead_key_first,
            missing_user_ids: missing_by_option(opts, world),
            api_rate_limit: opts.api_rate_limit,
            events_subscription_limit: opts.events_subscription_limit,
            events_delete_limit: opts.events_delete_limit,
            webhook_unsubscribe_after: opts.webhook_unsubscribe_after,
        }
    }

    pub fn to_json(&self, opts: &Options) -> Value {
        let c = &self.centrifugo;
        let field = |v: &Option<Option<u64>>, default: Value| match v {
            None => default,
            Some(v) => json!(v),
        };
        json!({
            "centrifugo": {
                "ping": field(&c.ping, json!(opts.ping_interval.as_secs().max(1))),
                "ttl": field(&c.ttl, json!("token")),
                "pong": c.pong,
                "connect_error": c.connect_error,
                "subscription_limit": c.subscription_limit,
            },
            "pusher": {
                "activity_timeout": self.pusher_activity_timeout.unwrap_or(opts.activity_timeout.as_secs()),
            },
            "api": {
                "v1_livestreams_removed": self.v1_livestreams_removed,
                "missing_user_ids": self.missing_user_ids,
                "rate_limit": self.api_rate_limit,
            },
            "negotiation": {
                "pusher_dead_key_first": self.pusher_dead_key_first,
                "dead_pusher_key": opts.dead_pusher_key,
                "regions": opts.regions,
            },
            "events": {
                "subscription_limit": self.events_subscription_limit,
                "delete_limit": self.events_delete_limit,
                "unsubscribe_after": self.webhook_unsubscribe_after,
            },
        })
    }
}

/// The user ids `Options::missing_channels_every` hides (index ≡ n/2 mod n).
pub fn missing_by_option(opts: &Options, world: &World) -> BTreeSet<i64> {
    let Some(every) = opts.missing_channels_every.filter(|n| *n > 0) else {
        return BTreeSet::new();
    };
    world
        .streamers
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == every / 2)
        .map(|(_, s)| s.user_id)
        .collect()
}
