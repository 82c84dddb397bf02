//! `kick-sim`: the local Kick as a process. See the library for what it serves.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use kick_sim::limits::RateLimit;

const CONTROL_HELP: &str = "\
Realistic behaviours (all on by default, as Kick behaves; --ideal switches all off; a flag sets one):
  --regions us-east-1,us-west-2      streamer i is served by region i % n; one Centrifugo endpoint
                                     per region; publications reach only the channel's region
  --centrifugo-subscription-limit 128   the next subscribe gets error 106 \"limit exceeded\"
  --underscore-usernames-every 10    streamers 9, 19, …: username The_Streamer_9, slug the-streamer-9
  --v1-livestreams-removed           GET /public/v1/livestreams answers 404 (v2 still works)
  --pusher-dead-key-first            negotiation offers pusher (--dead-pusher-key) first, then centrifugo
  --missing-channels-every 50        streamers 25, 75, …: absent from /public/v1/channels answers
  --api-rate-limit 10/20             token bucket per app token: 10 requests/s, burst 20; 429 + Retry-After
  --web-challenge-every 4            every 4th GET /api/v2/channels/{slug}: 403 Cloudflare challenge
  --events-subscription-limit 10000  per event type; beyond it a per-item \"subscription limit reached\"
  --events-delete-limit 50           DELETE /public/v1/events/subscriptions with more ids: 400
  --webhook-unsubscribe-after 20     consecutive failed deliveries before the app is unsubscribed
  Numbers accept \"off\"; switches accept =true/=false.

Control API (HTTP/JSON, same port). Settings endpoints change only the keys given and answer
the result; null switches a limit off.
  POST /control/seed {\"streamers\":N}            replace the world with N generated streamers (all offline)
  GET  /control/streamers                      every streamer: slug, display_name, user_id, channel_id,
                                               chatroom_id, live, livestream_id, title, region
  POST /control/streamers/{slug}/live [{\"title\":\"…\"}]   go live (with this session title, U+0000 allowed):
                                               publishes App\\Events\\StreamerIsLive on channel.{id}
  POST /control/streamers/{slug}/offline       go offline: publishes App\\Events\\StopStreamBroadcast
  POST /control/streamers/{slug}/region {\"region\":\"us-west-2\"}   move the channel to another region
  POST /control/streamers/{slug}/rename {\"slug\":\"new-slug\"}     same ids, new slug; the old one is unknown
  POST /control/flap {\"rate\":N,\"streamers\":M,\"seconds\":S}   random flips, N per second
  POST /control/flap/stop
  POST /control/sockets/drop {\"code\":4200,\"transport\":\"pusher\",\"fraction\":0.5}
  POST /control/sockets/stall {\"transport\":\"centrifugo\"}        stop answering pings and sending
  POST /control/sockets/malformed {\"kind\":\"garbage|truncated|oversized|bad-live\"}
  POST /control/sockets/raw {\"text\":\"…\"|\"binary\":\"<base64>\"|\"generate\":{…},
                             \"transport\":\"pusher|centrifugo\",\"channel\":\"channel.123\",\"repeat\":1}
       exactly this text frame (U+0000 allowed) or binary frame, to every socket, to one transport's,
       or to the sockets subscribed to channel; generate (in each transport's envelope, on channel):
         {\"kind\":\"nul-title\",\"event\":\"live|offline\"}  StreamerIsLive/StopStreamBroadcast, title with U+0000
         {\"kind\":\"huge-frame\",\"bytes\":10485760}     a valid frame of exactly that size
         {\"kind\":\"deep-json\",\"depth\":3000,\"in_string\":false}   nested arrays as data
         {\"kind\":\"wrong-types\"}   ids as objects, booleans, floats, strings, u64::MAX, negative
         {\"kind\":\"huge-numbers\"}  ids 1e400, 30-digit integers, -0, 1e-400
  POST /control/centrifugo {\"ping\":25|null,\"ttl\":2700|null,\"pong\":true,
                            \"connect_error\":{\"code\":101,\"message\":\"unauthorized\"}|null,
                            \"subscription_limit\":128|null,\"reset\":false}
       the connect reply of new connections: any u64 (null: field absent; then no server pings or
       no expiry); the server enforces ping/ttl from 1 s to a year; pong false: pongs not required
  POST /control/pusher {\"activity_timeout\":120|null}   announced to new connections (any u64)
  POST /control/rest {\"mode\":M,\"endpoints\":[\"api\",\"oauth\",\"negotiation\",\"web\"],
                      \"seconds\":30,\"requests\":N,\"every\":1,\"retry_after\":2,
                      \"bytes\":10485760,\"delay_ms\":5000,\"expires_in\":<any JSON>,\"omit_expires_in\":false}
       M: 429 (Retry-After), 500, html (challenge, 200), 403 (challenge), 423 (country block),
          huge-body (valid JSON of `bytes`), huge-expires-in (oauth; default 18446744073709551615),
          wrong-types (api: ids as strings/objects, is_live as a string), slow (after delay_ms),
          normal (clears the given families; all by default, the --web-challenge-every one too)
       api = /public/*, oauth = /oauth/token, negotiation = /api/v1/realtime/*,
       web = /api/v2/channels/{slug}; default [\"api\"] ([\"oauth\"] for huge-expires-in)
  POST /control/api {\"v1_livestreams_removed\":true,\"missing_user_ids\":[1000007],
                     \"rate_limit\":{\"per_second\":10,\"burst\":20}|null}
  POST /control/negotiation {\"pusher_dead_key_first\":true}
  POST /control/events {\"subscription_limit\":N|null,\"delete_limit\":50|null,\"unsubscribe_after\":N|null}
  POST /control/webhooks {\"url\":\"http://…\",\"delay_ms\":0,\"duplicate\":false}
       livestream.status.updated deliveries (Kick-Event-* headers, RSA-SHA256 signature over
       id.timestamp.body, verifiable with GET /public/v1/public-key) for subscribed broadcasters
  GET  /control/published?since=SEQ            what was published when (at_us: unix microseconds)
  GET  /control/stats      sockets, subscriptions, channels_subscribed, subscriptions_duplicated,
                           regions and transports {sockets, subscriptions}, published, api_requests,
                           api_rate_limited, negotiation_requests and web_requests {total, last_1s,
                           max_1s}, webhooks {sent, failed, auto_unsubscribed}, faults
  GET  /control/subscriptions[?duplicated=true]   channel -> number of sockets subscribed
  GET  /control/settings   every runtime setting and the faults in force

Kick endpoints: POST /oauth/token, /oauth/revoke, /oauth/token/introspect;
GET /public/v1/channels, /livestreams, /users, /public-key, /public/v2/livestreams;
GET|POST|DELETE /public/v1/events/subscriptions;
POST /api/v1/realtime/connection, /api/v1/realtime/channels/{channel_id}/chat/connection,
/api/v1/realtime/auth/connection (Origin: https://kick.com); GET /api/v2/channels/{slug};
WebSockets: /connection/websocket and /region/{region}/connection/websocket (Centrifugo),
/app/{key} (Pusher protocol 7).

Example:
  kick-sim --listen 127.0.0.1:8700 --streamers 1000 --client-id demo --client-secret demo &
  curl -s -X POST http://127.0.0.1:8700/control/streamers/streamer1/live";

/// A value, or "off".
#[derive(Debug, Clone)]
struct Setting<T>(Option<T>);

impl<T: FromStr> FromStr for Setting<T> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Setting(None));
        }
        s.parse()
            .map(|v| Setting(Some(v)))
            .map_err(|_| format!("{s:?}: expected a number or \"off\""))
    }
}

/// `PER_SECOND/BURST`, or "off".
#[derive(Debug, Clone)]
struct Rate(Option<RateLimit>);

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Rate(None));
        }
        let parsed = s.split_once('/').and_then(|(rate, burst)| {
            Some(RateLimit {
                per_second: rate.parse().ok().filter(|r: &f64| *r > 0.0)?,
                burst: burst.parse().ok().filter(|b| *b >= 1)?,
            })
        });
        parsed
            .map(|l| Rate(Some(l)))
            .ok_or_else(|| format!("{s:?}: expected PER_SECOND/BURST (e.g. 10/20) or \"off\""))
    }
}

/// Comma-separated region names, or "off".
#[derive(Debug, Clone)]
struct Regions(Vec<String>);

impl FromStr for Regions {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Regions(Vec::new()));
        }
        let names: Vec<String> = s.split(',').map(|r| r.trim().to_owned()).collect();
        if names
            .iter()
            .any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(format!("{s:?}: region names are letters, digits and '-'"));
        }
        Ok(Regions(names))
    }
}

#[derive(Debug, Parser)]
#[command(name = "kick-sim", version, about = "A faithful local Kick: OAuth, public API, realtime negotiation, Centrifugo and Pusher WebSockets, with a control API.", after_help = CONTROL_HELP)]
struct Cli {
    /// Address to listen on (all endpoints share it).
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Number of generated streamers (streamer0, streamer1, …).
    #[arg(long, default_value_t = 100)]
    streamers: usize,
    #[arg(long, default_value = "sim-client")]
    client_id: String,
    #[arg(long, default_value = "sim-secret")]
    client_secret: String,
    /// Pusher app key accepted at /app/{key}; others get 4001.
    #[arg(long, default_value = "32cbd69e4b950bf97679")]
    pusher_key: String,
    /// Providers offered by the negotiation, in order.
    #[arg(long, default_value = "centrifugo,pusher", value_delimiter = ',')]
    providers: Vec<String>,
    /// App access token lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,
    /// Centrifugo guest token lifetime in seconds.
    #[arg(long, default_value_t = 2700)]
    guest_token_ttl: u64,
    /// Centrifugo server ping interval in seconds.
    #[arg(long, default_value_t = 25)]
    ping_interval: u64,
    /// Pusher activity timeout in seconds.
    #[arg(long, default_value_t = 120)]
    activity_timeout: u64,
    /// Noise events per second (FollowersUpdated, ChannelSubscriptionEvent).
    #[arg(long, default_value_t = 0.0)]
    noise_rate: f64,
    /// Every realistic behaviour on (the default; listed below with its realistic value).
    #[arg(long, conflicts_with = "ideal")]
    realistic: bool,
    /// Every realistic behaviour off: a Kick without quirks (a flag below still sets one).
    #[arg(long)]
    ideal: bool,
    /// Centrifugo regions, comma-separated, or "off".
    #[arg(long, value_name = "NAMES")]
    regions: Option<Regions>,
    /// Subscriptions per Centrifugo connection, or "off".
    #[arg(long, value_name = "N")]
    centrifugo_subscription_limit: Option<Setting<usize>>,
    /// Every n-th streamer has an underscore username and a hyphen slug, or "off".
    #[arg(long, value_name = "N")]
    underscore_usernames_every: Option<Setting<usize>>,
    /// GET /public/v1/livestreams answers 404.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    v1_livestreams_removed: Option<bool>,
    /// The negotiation offers the dead Pusher key first, then Centrifugo.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pusher_dead_key_first: Option<bool>,
    /// The Pusher key offered by --pusher-dead-key-first (the endpoint refuses it with 4001).
    #[arg(long, default_value = "eb1d5f283081a78b932c")]
    dead_pusher_key: String,
    /// Every n-th streamer is absent from /public/v1/channels answers, or "off".
    #[arg(long, value_name = "N")]
    missing_channels_every: Option<Setting<usize>>,
    /// Official API token bucket per app token, PER_SECOND/BURST, or "off".
    #[arg(long, value_name = "RATE/BURST")]
    api_rate_limit: Option<Rate>,
    /// Every n-th website API request gets a 403 Cloudflare challenge, or "off".
    #[arg(long, value_name = "N")]
    web_challenge_every: Option<Setting<u64>>,
    /// Webhook subscriptions per event type, or "off".
    #[arg(long, value_name = "N")]
    events_subscription_limit: Option<Setting<usize>>,
    /// Most subscription ids one DELETE may name, or "off".
    #[arg(long, value_name = "N")]
    events_delete_limit: Option<Setting<usize>>,
    /// Consecutive failed webhook deliveries before auto-unsubscribe, or "off".
    #[arg(long, value_name = "N")]
    webhook_unsubscribe_after: Option<Setting<u32>>,
}

impl Cli {
    fn options(self) -> kick_sim::Options {
        let base = if self.ideal {
            kick_sim::Options::ideal()
        } else {
            kick_sim::Options::realistic()
        };
        let or = |flag: Option<Setting<usize>>, base: Option<usize>| flag.map_or(base, |s| s.0);
        kick_sim::Options {
            streamers: self.streamers,
            client_id: self.client_id,
            client_secret: self.client_secret,
            pusher_key: self.pusher_key,
            providers: self.providers,
            token_ttl: Duration::from_secs(self.token_ttl),
            guest_token_ttl: Duration::from_secs(self.guest_token_ttl),
            ping_interval: Duration::from_secs(self.ping_interval.max(1)),
            activity_timeout: Duration::from_secs(self.activity_timeout.max(1)),
            noise_rate: self.noise_rate,
            regions: self.regions.map_or(base.regions, |r| r.0),
            centrifugo_subscription_limit: or(
                self.centrifugo_subscription_limit,
                base.centrifugo_subscription_limit,
            ),
            underscore_usernames_every: or(
                self.underscore_usernames_every,
                base.underscore_usernames_every,
            ),
            v1_livestreams_removed: self
                .v1_livestreams_removed
                .unwrap_or(base.v1_livestreams_removed),
            pusher_dead_key_first: self
                .pusher_dead_key_first
                .unwrap_or(base.pusher_dead_key_first),
            dead_pusher_key: self.dead_pusher_key,
            missing_channels_every: or(self.missing_channels_every, base.missing_channels_every),
            api_rate_limit: self.api_rate_limit.map_or(base.api_rate_limit, |r| r.0),
            web_challenge_every: self
                .web_challenge_every
                .map_or(base.web_challenge_every, |s| s.0),
            events_subscription_limit: or(
                self.events_subscription_limit,
                base.events_subscription_limit,
            ),
            events_delete_limit: or(self.events_delete_limit, base.events_delete_limit),
            webhook_unsubscribe_after: self
                .webhook_unsubscribe_after
                .map_or(base.webhook_unsubscribe_after, |s| s.0),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let cli = Cli::parse();
    let listen = cli.listen;
    let handle = kick_sim::start(listen, cli.options()).await?;
    println!("kick-sim listening on {}", handle.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> kick_sim::Options {
        Cli::try_parse_from(std::iter::once("kick-sim").chain(args.iter().copied()))
            .unwrap()
            .options()
    }

    #[test]
    fn realistic_by_default_ideal_then_single_flags() {
        let o = parse(&["--ideal"]);
        assert!(o.regions.is_empty() && o.api_rate_limit.is_none() && !o.pusher_dead_key_first);
        assert_eq!(
            parse(&[]).regions,
            ["us-east-1", "us-west-2"],
            "realistic by default"
        );
        let o = parse(&["--realistic"]);
        assert_eq!(o.regions, ["us-east-1", "us-west-2"]);
        assert_eq!(o.centrifugo_subscription_limit, Some(128));
        assert!(o.v1_livestreams_removed);
        let o = parse(&[
            "--realistic",
            "--regions",
            "off",
            "--api-rate-limit",
            "5/7",
            "--v1-livestreams-removed=false",
            "--centrifugo-subscription-limit",
            "off",
        ]);
        assert!(o.regions.is_empty());
        assert_eq!(o.api_rate_limit.map(|l| l.burst), Some(7));
        assert!(!o.v1_livestreams_removed);
        assert_eq!(o.centrifugo_subscription_limit, None);
        assert!(o.pusher_dead_key_first, "the rest stays realistic");
        let o = parse(&[
            "--ideal",
            "--pusher-dead-key-first",
            "--web-challenge-every",
            "1",
        ]);
        assert!(o.pusher_dead_key_first);
        assert_eq!(o.web_challenge_every, Some(1));
        assert!(Cli::try_parse_from(["kick-sim", "--api-rate-limit", "10"]).is_err());
    }
}
