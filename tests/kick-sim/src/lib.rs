//! kick-sim: a local Kick that behaves like the real one on the wire, so the collector, the admin
//! CLI, the demo, the end-to-end tests and the benchmarks run against a real network server.
//!
//! One HTTP port serves everything: OAuth (`/oauth/*`, id.kick.com shapes), the public API
//! (`/public/v1/*`, `/public/v2/livestreams`, api.kick.com shapes), realtime negotiation
//! (`/api/v1/realtime/*`, web.kick.com shapes), the website API (`/api/v2/channels/{slug}`,
//! kick.com shapes), the Centrifugo WebSocket (`/connection/websocket`, and one
//! `/region/{region}/connection/websocket` per region), the Pusher protocol 7 WebSocket
//! (`/app/{key}`), and the control API (`/control/*`) that tests use to make streamers go live,
//! inject faults and hostile frames, and read back what was published.
//!
//! By default it is as awkward as the real Kick (`Options::default()` = `Options::realistic()`):
//! regions, subscription limits, slugs that differ from usernames, the deprecated v1 livestreams
//! endpoint gone, a dead Pusher key offered first, missing channels, rate limits, Cloudflare on
//! the website API, webhook subscription limits. `Options::ideal()` switches all of them off, for
//! tests of one behaviour; each behaviour is also its own option.
//!
//! # Layout
//!
//! - `api`: OAuth, the public API, realtime negotiation.
//! - `web`: the website API (`/api/v2/channels/{slug}`).
//! - `ws`: the Centrifugo and Pusher WebSocket servers.
//! - `sockets`: the socket registry, publication routing (per region) and subscription stats.
//! - `faults`: REST faults per endpoint family (429, 403 challenge, 423, huge bodies, …).
//! - `hostile`: raw and generated hostile WebSocket frames.
//! - `limits`: request-rate counters and token buckets.
//! - `settings`: the behaviours that can change at runtime.
//! - `control`: the control API.
//! - `webhooks`: signed `livestream.status.updated` deliveries.
//! - `world`: the streamers.

pub mod api;
pub mod control;
pub mod faults;
pub mod hostile;
pub mod limits;
pub mod settings;
pub mod sockets;
pub mod web;
pub mod webhooks;
pub mod world;
pub mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::faults::{Family, Fault};
use crate::limits::{RequestRate, TokenBucket};
use crate::settings::Settings;
use crate::sockets::Sockets;
use crate::world::{Published, World};

/// Start-up options (the `kick-sim` command line).
///
/// The fields after `noise_rate` are the realistic behaviours: all on by default (as Kick
/// behaves: `Options::default()` = `Options::realistic()`), all off in `Options::ideal()`, which
/// tests of one specific behaviour start from.
#[derive(Debug, Clone)]
pub struct Options {
    pub streamers: usize,
    pub client_id: String,
    pub client_secret: String,
    pub pusher_key: String,
    /// Providers offered by the negotiation, in order ("centrifugo", "pusher").
    pub providers: Vec<String>,
    /// App token lifetime.
    pub token_ttl: Duration,
    /// Centrifugo guest token lifetime (Kick: about 45 minutes).
    pub guest_token_ttl: Duration,
    /// Centrifugo server ping interval (Kick: 25 s).
    pub ping_interval: Duration,
    /// Pusher activity timeout announced in connection_established (Kick: 120 s).
    pub activity_timeout: Duration,
    /// Background noise events per second (followers, subscriptions…) spread over live channels.
    pub noise_rate: f64,
    /// Centrifugo regions. Empty: one Centrifugo endpoint (`/connection/websocket`) that carries
    /// every channel. Otherwise streamer `i` lives in region `i % n`, each region is its own
    /// endpoint (`/region/{region}/connection/websocket`; `/connection/websocket` is the first
    /// region), and a channel's publications reach only sockets of its region. Realistic:
    /// `us-east-1`, `us-west-2` (both seen in Kick's negotiation answers).
    pub regions: Vec<String>,
    /// Subscriptions per Centrifugo connection; the next subscribe is answered with error 106
    /// "limit exceeded". Realistic: 128 (Kick's real limit is unknown; Centrifugo's own default
    /// is 128 channels per client).
    pub centrifugo_subscription_limit: Option<usize>,
    /// Every n-th streamer (index ≡ n−1 mod n) has a username with underscores and a slug with
    /// hyphens (`The_Streamer_9` → `the-streamer-9`), as Kick derives slugs. Realistic: 10.
    pub underscore_usernames_every: Option<usize>,
    /// `GET /public/v1/livestreams` answers 404, as a removed endpoint would (deprecated since
    /// 2026-06-23; `/public/v2/livestreams` replaces it). Realistic: on.
    pub v1_livestreams_removed: bool,
    /// The negotiation offers `pusher` first with `dead_pusher_key` (answered with
    /// `pusher:error` 4001 and close 4001), then `centrifugo`. Realistic: on.
    pub pusher_dead_key_first: bool,
    /// The Pusher key offered when `pusher_dead_key_first` is on: Kick's 2023 key by default.
    pub dead_pusher_key: String,
    /// Every n-th streamer (index ≡ n/2 mod n) is missing from `/public/v1/channels` answers,
    /// as banned channels are. Realistic: 50.
    pub missing_channels_every: Option<usize>,
    /// A token bucket per app token on the official API (`/public/*`); an empty bucket answers
    /// 429 with Retry-After. Realistic: 10 requests/s, burst 20 (Kick publishes no limits).
    pub api_rate_limit: Option<limits::RateLimit>,
    /// Every n-th request to the website API (`/api/v2/channels/{slug}`) is answered with a
    /// Cloudflare challenge (403). Realistic: 4 (Kick: "some API requests might fail randomly
    /// and solving a JS challenge is required"). 1 blocks every request.
    pub web_challenge_every: Option<u64>,
    /// Webhook subscriptions per event type for the app; beyond it the POST answers a per-item
    /// error "subscription limit reached". Realistic: 10,000 (Kick's documented limit).
    pub events_subscription_limit: Option<usize>,
    /// `DELETE /public/v1/events/subscriptions` with more ids than this fails with 400.
    /// Realistic: 50 (Kick: ~330 failed every time, 50 works).
    pub events_delete_limit: Option<usize>,
    /// After this many consecutive failed deliveries of an event type, the app's subscriptions
    /// to it are deleted (Kick: after failing for over a day). Realistic: 20.
    pub webhook_unsubscribe_after: Option<u32>,
}

impl Default for Options {
    /// Kick as it is: every realistic behaviour on.
    fn default() -> Self {
        Self::realistic()
    }
}

impl Options {
    /// A Kick without quirks: every realistic behaviour off.
    pub fn ideal() -> Self {
        Self {
            streamers: 100,
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            pusher_key: "32cbd69e4b950bf97679".into(),
            providers: vec!["centrifugo".into(), "pusher".into()],
            token_ttl: Duration::from_secs(3600),
            guest_token_ttl: Duration::from_secs(2700),
            ping_interval: Duration::from_secs(25),
            activity_timeout: Duration::from_secs(120),
            noise_rate: 0.0,
            regions: Vec::new(),
            centrifugo_subscription_limit: None,
            underscore_usernames_every: None,
            v1_livestreams_removed: false,
            pusher_dead_key_first: false,
            dead_pusher_key: "eb1d5f283081a78b932c".into(),
            missing_channels_every: None,
            api_rate_limit: None,
            web_challenge_every: None,
            events_subscription_limit: None,
            events_delete_limit: None,
            webhook_unsubscribe_after: None,
        }
    }

    /// Every realistic behaviour switched on (values in the field docs): the default.
    pub fn realistic() -> Self {
        Self {
            regions: vec!["us-east-1".into(), "us-west-2".into()],
            centrifugo_subscription_limit: Some(128),
            underscore_usernames_every: Some(10),
            v1_livestreams_removed: true,
            pusher_dead_key_first: true,
            missing_channels_every: Some(50),
            api_rate_limit: Some(limits::RateLimit {
                per_second: 10.0,
                burst: 20,
            }),
            web_challenge_every: Some(4),
            events_subscription_limit: Some(10_000),
            events_delete_limit: Some(50),
            webhook_unsubscribe_after: Some(20),
            ..Self::ideal()
        }
    }
}

/// What a socket task is told to do.
#[derive(Debug, Clone)]
pub enum Out {
    Text(Arc<str>),
    /// A binary frame (neither Kick transport sends any: a hostile input).
    Binary(Bytes),
    Close(u16, String),
    /// Stop answering and sending anything, keeping the TCP connection open.
    Stall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Centrifugo,
    Pusher,
}

#[derive(Debug)]
pub(crate) struct TokenInfo {
    expires: Instant,
    refresh: bool,
}

/// Request and delivery counters reported by `/control/stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) api_requests: AtomicU64,
    /// 429s answered by the official API's rate limit (not by injected faults).
    pub(crate) api_rate_limited: AtomicU64,
    /// Every request to `/api/v1/realtime/*` (general and per-channel negotiation, guest tokens).
    pub(crate) negotiation: Mutex<RequestRate>,
    /// Every request to the website API.
    pub(crate) web: Mutex<RequestRate>,
    pub(crate) webhook_sent: AtomicU64,
    pub(crate) webhook_failed: AtomicU64,
    pub(crate) webhook_unsubscribed: AtomicU64,
}

/// The simulator's shared state.
#[derive(Debug)]
pub struct Sim {
    pub opts: Options,
    pub(crate) world: Mutex<World>,
    pub(crate) sockets: Mutex<Sockets>,
    pub(crate) published: Mutex<Vec<Published>>,
    pub(crate) seq: AtomicU64,
    pub(crate) tokens: Mutex<HashMap<String, TokenInfo>>,
    /// Guest JWT → expiry.
    pub(crate) guest_tokens: Mutex<HashMap<String, Instant>>,
    /// REST faults in force, per endpoint family.
    pub(crate) faults: Mutex<HashMap<Family, Fault>>,
    /// Behaviours that the control API can change at runtime.
    pub(crate) settings: Mutex<Settings>,
    /// The official API's token buckets, per app token.
    pub(crate) buckets: Mutex<HashMap<String, TokenBucket>>,
    pub(crate) counters: Counters,
    pub(crate) subscriptions: Mutex<Vec<serde_json::Value>>,
    /// Consecutive failed webhook deliveries, per event type.
    pub(crate) webhook_failures: Mutex<HashMap<String, u32>>,
    pub(crate) flapping: Mutex<Option<CancellationToken>>,
    pub base_url: Mutex<String>,
    pub(crate) webhook_target: Mutex<webhooks::Target>,
    pub(crate) http: reqwest::Client,
}

const PUBLISHED_CAP: usize = 2_000_000;

impl Sim {
    pub fn new(opts: Options) -> Arc<Self> {
        let world = World::generate(opts.streamers, &world::Shape::of(&opts));
        let settings = Settings::from_options(&opts, &world);
        let mut faults = HashMap::new();
        if let Some(every) = opts.web_challenge_every {
            faults.insert(Family::Web, Fault::standing_challenge(every));
        }
        Arc::new(Sim {
            world: Mutex::new(world),
            sockets: Mutex::new(Sockets::new(opts.regions.len().max(1))),
            opts,
            published: Mutex::default(),
            seq: AtomicU64::new(0),
            tokens: Mutex::default(),
            guest_tokens: Mutex::default(),
            faults: Mutex::new(faults),
            settings: Mutex::new(settings),
            buckets: Mutex::default(),
            counters: Counters::default(),
            subscriptions: Mutex::default(),
            webhook_failures: Mutex::default(),
            flapping: Mutex::default(),
            base_url: Mutex::default(),
            webhook_target: Mutex::default(),
            http: {
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("http client")
            },
        })
    }

    /// Sets streamer `idx` live or offline and publishes the event on both transports.
    /// Returns false when the streamer was already in that state.
    pub fn set_live(self: &Arc<Self>, idx: usize, live: bool) -> bool {
        let (name, data, channel, slug, ls, region, snapshot) = {
            let mut w = self.world.lock().unwrap();
            let Some((name, data)) = w.set_live(idx, live) else {
                return false;
            };
            let s = &w.streamers[idx];
            (
                name,
                data,
                format!("channel.{}", s.channel_id),
                s.slug.clone(),
                s.livestream_id,
                s.region_idx,
                s.clone(),
            )
        };
        webhooks::status_updated(self, &snapshot);
        let at_us = chrono::Utc::now().timestamp_micros();
        self.publish_in(Some(region), &channel, name, &data);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut p = self.published.lock().unwrap();
        if p.len() >= PUBLISHED_CAP {
            p.drain(..PUBLISHED_CAP / 2);
        }
        p.push(Published {
            seq,
            at_us,
            channel,
            event: name.into(),
            slug,
            live,
            livestream_id: ls,
        });
        true
    }

    /// Every streamer's slug and whether it is live: the truth tests compare against.
    pub fn truth(&self) -> HashMap<String, bool> {
        self.world
            .lock()
            .unwrap()
            .streamers
            .iter()
            .map(|s| (s.slug.clone(), s.live))
            .collect()
    }

    /// A copy of streamer `idx`.
    pub fn streamer(&self, idx: usize) -> world::Streamer {
        self.world.lock().unwrap().streamers[idx].clone()
    }

    /// Whether streamer `idx` is live.
    pub fn truth_of(&self, idx: usize) -> bool {
        self.world.lock().unwrap().streamers[idx].live
    }

    /// Requests the official API has answered (of any status) since start.
    pub fn api_requests(&self) -> u64 {
        self.counters.api_requests.load(Ordering::Relaxed)
    }

    /// Number of streamers in the world.
    pub fn streamer_count(&self) -> usize {
        self.world.lock().unwrap().streamers.len()
    }

    /// The user ids the official API leaves out of its answers (banned channels,
    /// `missing_channels_every`): kick-monitor reports them `unknown`.
    pub fn missing_user_ids(&self) -> std::collections::BTreeSet<i64> {
        self.settings.lock().unwrap().missing_user_ids.clone()
    }

    /// The name of region `idx` (`None` when regions are off).
    pub fn region_name(&self, idx: usize) -> Option<&str> {
        self.opts.regions.get(idx).map(String::as_str)
    }

    /// The Centrifugo WebSocket URL of region `idx` (the only endpoint when regions are off).
    pub fn centrifugo_url(&self, idx: usize) -> String {
        let base = self.base_url.lock().unwrap().replace("http://", "ws://");
        match self.region_name(idx) {
            Some(r) => format!("{base}/region/{r}/connection/websocket"),
            None => format!("{base}/connection/websocket"),
        }
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct SimHandle {
    pub addr: SocketAddr,
    pub sim: Arc<Sim>,
    pub shutdown: CancellationToken,
}

impl SimHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// `KICK_PUSHER_URL` for this simulator.
    pub fn pusher_url(&self) -> String {
        format!(
            "ws://{}/app/{}?protocol=7&client=js&version=8.4.0&flash=false",
            self.addr, self.sim.opts.pusher_key
        )
    }
    /// POSTs `body` to a control endpoint (`/control/...`) and returns the JSON answer.
    pub async fn control(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        self.sim
            .http
            .post(format!("{}{path}", self.url()))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The `KICK_*` variables that point kick-monitor at this simulator.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KICK_API_URL".into(), self.url()),
            ("KICK_AUTH_URL".into(), self.url()),
            ("KICK_WEB_URL".into(), self.url()),
            ("KICK_PUSHER_URL".into(), self.pusher_url()),
            ("KICK_CLIENT_ID".into(), self.sim.opts.client_id.clone()),
            (
                "KICK_CLIENT_SECRET".into(),
                self.sim.opts.client_secret.clone(),
            ),
        ]
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    api::routes()
        .merge(web::routes())
        .merge(ws::routes())
        .merge(control::routes())
        .merge(hostile::routes())
        .with_state(sim)
}

/// Starts the simulator on `addr` (port 0 picks a free port).
pub async fn start(addr: SocketAddr, opts: Options) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let sim = Sim::new(opts);
    *sim.base_url.lock().unwrap() = format!("http://{addr}");
    let shutdown = CancellationToken::new();
    let app = router(sim.clone());
    let stop = shutdown.clone();
    // Like Kick's servers (Go's net package, under Centrifugo, sets TCP_NODELAY on every
    // connection), no Nagle: a small frame written while an earlier one is unacknowledged
    // would otherwise wait for the client's delayed ACK (up to 40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    if sim.opts.noise_rate > 0.0 {
        tokio::spawn(control::noise(sim.clone(), shutdown.clone()));
    }
    Ok(SimHandle {
        addr,
        sim,
        shutdown,
    })
}
