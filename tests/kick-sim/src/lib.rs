//! kick-sim: a local Kick that behaves like the real one on the wire, so the collector, the admin
//! CLI, the demo, the end-to-end tests and the benchmarks run against a real network server.
//!
//! One HTTP port serves everything: OAuth (`/oauth/*`, id.kick.com shapes), the public API
//! (`/public/v1/*`, api.kick.com shapes), realtime negotiation (`/api/v1/realtime/*`,
//! web.kick.com shapes), the Centrifugo WebSocket (`/connection/websocket`), the Pusher protocol 7
//! WebSocket (`/app/{key}`), and the control API (`/control/*`) that tests use to make streamers
//! go live, inject faults and read back what was published.

pub mod api;
pub mod control;
pub mod webhooks;
pub mod world;
pub mod ws;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::world::{Published, World};

/// Start-up options (the `kick-sim` command line).
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
}

impl Default for Options {
    fn default() -> Self {
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
        }
    }
}

/// What a socket task is told to do.
#[derive(Debug, Clone)]
pub enum Out {
    Text(Arc<str>),
    Close(u16, String),
    /// Stop answering and sending anything, keeping the TCP connection open.
    Stall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Centrifugo,
    Pusher,
}

#[derive(Debug)]
struct SocketEntry {
    transport: Transport,
    tx: mpsc::Sender<Out>,
    subs: HashSet<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Sockets {
    next: u64,
    map: HashMap<u64, SocketEntry>,
    by_channel: HashMap<String, HashSet<u64>>,
}

/// A REST fault in force until a deadline.
#[derive(Debug, Clone)]
pub enum RestFault {
    RateLimited { retry_after: u64 },
    ServerError,
    Html,
}

#[derive(Debug)]
pub(crate) struct TokenInfo {
    expires: Instant,
    refresh: bool,
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
    pub(crate) rest_fault: Mutex<Option<(RestFault, Instant)>>,
    pub(crate) subscriptions: Mutex<Vec<serde_json::Value>>,
    pub(crate) api_requests: AtomicU64,
    pub(crate) flapping: Mutex<Option<CancellationToken>>,
    pub base_url: Mutex<String>,
    pub(crate) webhook_target: Mutex<webhooks::Target>,
    pub(crate) http: reqwest::Client,
}

const PUBLISHED_CAP: usize = 2_000_000;

impl Sim {
    pub fn new(opts: Options) -> Arc<Self> {
        Arc::new(Sim {
            world: Mutex::new(World::generate(opts.streamers)),
            opts,
            sockets: Mutex::default(),
            published: Mutex::default(),
            seq: AtomicU64::new(0),
            tokens: Mutex::default(),
            guest_tokens: Mutex::default(),
            rest_fault: Mutex::default(),
            subscriptions: Mutex::default(),
            api_requests: AtomicU64::new(0),
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
        let (name, data, channel, slug, ls, snapshot) = {
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
                s.clone(),
            )
        };
        webhooks::status_updated(self, &snapshot);
        let at_us = chrono::Utc::now().timestamp_micros();
        self.publish(&channel, name, &data);
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

    /// Publishes one Kick event on a feed to every subscribed socket, in each socket's protocol.
    pub fn publish(&self, channel: &str, event: &str, data: &str) {
        let pusher: Arc<str> =
            serde_json::json!({"event": event, "data": data, "channel": channel})
                .to_string()
                .into();
        let centrifugo: Arc<str> =
            serde_json::json!({"push": {"channel": channel, "pub": {"data": {"event": event, "data": data}}}})
                .to_string()
                .into();
        let sockets = self.sockets.lock().unwrap();
        let Some(ids) = sockets.by_channel.get(channel) else {
            return;
        };
        for id in ids {
            if let Some(s) = sockets.map.get(id) {
                let text = match s.transport {
                    Transport::Pusher => pusher.clone(),
                    Transport::Centrifugo => centrifugo.clone(),
                };
                // A client too slow to keep a queue of 4096 frames is disconnected, as servers do.
                if s.tx.try_send(Out::Text(text)).is_err() {
                    let _ = s.tx.try_send(Out::Close(3008, "slow".into()));
                }
            }
        }
    }

    pub(crate) fn register_socket(&self, transport: Transport) -> (u64, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(4096);
        let mut s = self.sockets.lock().unwrap();
        s.next += 1;
        let id = s.next;
        s.map.insert(
            id,
            SocketEntry {
                transport,
                tx,
                subs: HashSet::new(),
            },
        );
        (id, rx)
    }

    pub(crate) fn unregister_socket(&self, id: u64) {
        let mut s = self.sockets.lock().unwrap();
        if let Some(e) = s.map.remove(&id) {
            for ch in e.subs {
                if let Some(set) = s.by_channel.get_mut(&ch) {
                    set.remove(&id);
                    if set.is_empty() {
                        s.by_channel.remove(&ch);
                    }
                }
            }
        }
    }

    pub(crate) fn subscribe(&self, id: u64, channel: &str) -> bool {
        let mut s = self.sockets.lock().unwrap();
        let Some(e) = s.map.get_mut(&id) else {
            return false;
        };
        let new = e.subs.insert(channel.to_owned());
        s.by_channel
            .entry(channel.to_owned())
            .or_default()
            .insert(id);
        new
    }

    pub(crate) fn unsubscribe(&self, id: u64, channel: &str) {
        let mut s = self.sockets.lock().unwrap();
        if let Some(e) = s.map.get_mut(&id) {
            e.subs.remove(channel);
        }
        if let Some(set) = s.by_channel.get_mut(channel) {
            set.remove(&id);
        }
    }

    /// Sends `out` to every socket (optionally only of one transport, or only a fraction).
    pub fn to_sockets(&self, transport: Option<Transport>, fraction: f64, out: &Out) -> usize {
        let s = self.sockets.lock().unwrap();
        let mut n = 0;
        for (i, e) in s.map.values().enumerate() {
            if transport.is_some_and(|t| t != e.transport) {
                continue;
            }
            // Deterministic spread: every k-th socket for a fraction.
            if fraction < 1.0
                && (i as f64 * fraction).floor() == ((i + 1) as f64 * fraction).floor()
            {
                continue;
            }
            if e.tx.try_send(out.clone()).is_ok() {
                n += 1;
            }
        }
        n
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

    /// Number of streamers in the world.
    pub fn streamer_count(&self) -> usize {
        self.world.lock().unwrap().streamers.len()
    }

    pub fn socket_count(&self) -> (usize, usize) {
        let s = self.sockets.lock().unwrap();
        (s.map.len(), s.map.values().map(|e| e.subs.len()).sum())
    }

    pub(crate) fn rest_fault(&self) -> Option<RestFault> {
        let mut f = self.rest_fault.lock().unwrap();
        match &*f {
            Some((fault, until)) if Instant::now() < *until => Some(fault.clone()),
            Some(_) => {
                *f = None;
                None
            }
            None => None,
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
        .merge(ws::routes())
        .merge(control::routes())
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
