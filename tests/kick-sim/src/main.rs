//! `kick-sim`: the local Kick as a process. See the library for what it serves.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

const CONTROL_HELP: &str = "\
Control API (HTTP/JSON, same port):
  POST /control/seed {\"streamers\":N}            replace the world with N generated streamers (all offline)
  GET  /control/streamers                      every streamer: slug, user_id, channel_id, chatroom_id, live, livestream_id
  POST /control/streamers/{slug}/live          go live: publishes App\\Events\\StreamerIsLive on channel.{id}
  POST /control/streamers/{slug}/offline       go offline: publishes App\\Events\\StopStreamBroadcast
  POST /control/flap {\"rate\":N,\"streamers\":M,\"seconds\":S}   random flips, N per second
  POST /control/flap/stop
  POST /control/sockets/drop {\"code\":4200,\"transport\":\"pusher\",\"fraction\":0.5}
  POST /control/sockets/stall {\"transport\":\"centrifugo\"}        stop answering pings and sending
  POST /control/sockets/malformed {\"kind\":\"garbage|truncated|oversized|bad-live\"}
  POST /control/rest {\"mode\":\"429|500|html|normal\",\"seconds\":30,\"retry_after\":2}
  GET  /control/published?since=SEQ            what was published when (at_us: unix microseconds)
  GET  /control/stats                          sockets, subscriptions, published, api requests
  POST /control/webhooks {\"url\":\"http://…\",\"delay_ms\":0,\"duplicate\":false}
       livestream.status.updated deliveries (Kick-Event-* headers, RSA-SHA256 signature over
       id.timestamp.body, verifiable with GET /public/v1/public-key) for subscribed broadcasters

Kick endpoints: POST /oauth/token, /oauth/revoke, /oauth/token/introspect;
GET /public/v1/channels, /livestreams, /users, /public-key; GET|POST|DELETE /public/v1/events/subscriptions;
POST /api/v1/realtime/connection, /api/v1/realtime/auth/connection (Origin: https://kick.com);
WebSockets: /connection/websocket (Centrifugo), /app/{key} (Pusher protocol 7).

Example:
  kick-sim --listen 127.0.0.1:8700 --streamers 1000 --client-id demo --client-secret demo &
  curl -s -X POST http://127.0.0.1:8700/control/streamers/streamer1/live";

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let cli = Cli::parse();
    let opts = kick_sim::Options {
        streamers: cli.streamers,
        client_id: cli.client_id,
        client_secret: cli.client_secret,
        pusher_key: cli.pusher_key,
        providers: cli.providers,
        token_ttl: Duration::from_secs(cli.token_ttl),
        guest_token_ttl: Duration::from_secs(cli.guest_token_ttl),
        ping_interval: Duration::from_secs(cli.ping_interval.max(1)),
        activity_timeout: Duration::from_secs(cli.activity_timeout.max(1)),
        noise_rate: cli.noise_rate,
    };
    let handle = kick_sim::start(cli.listen, opts).await?;
    println!("kick-sim listening on {}", handle.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
