//! kick-collector: holds the WebSocket connections to Kick's realtime service (one task per
//! socket, channels sharded across sockets), stages live/offline events into `raw_events` in
//! durable batches with one NOTIFY each, and reconciles against Kick's official API at start,
//! after every reconnect and periodically, so a missed event never leaves a wrong status.
//!
//! Only the collector parses Kick frames. It never writes `streamers`: what it learns (statuses,
//! channel ids) is staged, and the writer applies it.

pub mod cli;
pub mod gaps;
pub mod metrics;
pub mod reconcile;
pub mod shard;
pub mod stager;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kick_shared::config::Config;
use kick_shared::db;
use kick_shared::kick::api::ApiClient;
use kick_shared::model::channel;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::metrics::CollectorMetrics;
use crate::shard::{ShardCmd, ShardState};
use crate::stager::StagerHandle;

/// Events waiting for the database while it is unavailable (then refused, loudly). Realtime
/// transitions of even 50,000 streamers come at a few per second, so this is minutes of outage;
/// reconciliation uses at most half of it and repairs whatever was refused.
const BUFFER: usize = 20_000;
/// Delay between opening consecutive sockets at start, so a restart is no thundering herd.
const STAGGER: Duration = Duration::from_millis(20);

/// What every task of the collector shares.
#[derive(Debug)]
pub struct Ctx {
    pub cfg: Config,
    pub collector_id: String,
    pub api: ApiClient,
    pub stager: StagerHandle,
    pub metrics: Arc<CollectorMetrics>,
    pub shutdown: CancellationToken,
    db: tokio::sync::Mutex<Option<Arc<Client>>>,
    transport: std::sync::Mutex<&'static str>,
}

impl Ctx {
    /// The control connection (reads, heartbeats, gap records), reopened when it was lost.
    pub async fn db(&self) -> Result<Arc<Client>, db::DbError> {
        let mut slot = self.db.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let c = Arc::new(db::connect(&self.cfg.database).await?);
        c.batch_execute("SET application_name = 'kick-collector'")
            .await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    pub fn set_transport(&self, t: &'static str) {
        *self.transport.lock().unwrap() = t;
    }

    pub fn transport(&self) -> &'static str {
        *self.transport.lock().unwrap()
    }
}

struct Shard {
    cmds: mpsc::UnboundedSender<ShardCmd>,
    state: Arc<ShardState>,
    channels: BTreeSet<i64>,
}

/// The sockets and which channels each holds. Channels stay on their shard; new ones fill
/// shards with room before a new socket is opened.
struct Shards {
    per_socket: usize,
    shards: Vec<Shard>,
    owner: HashMap<i64, usize>,
}

impl Shards {
    fn apply(&mut self, ctx: &Arc<Ctx>, desired: &BTreeSet<i64>) {
        let current: BTreeSet<i64> = self.owner.keys().copied().collect();
        let mut removed: HashMap<usize, Vec<i64>> = HashMap::new();
        for ch in current.difference(desired) {
            let s = self.owner.remove(ch).unwrap();
            self.shards[s].channels.remove(ch);
            removed.entry(s).or_default().push(*ch);
        }
        for (s, chs) in removed {
            let _ = self.shards[s].cmds.send(ShardCmd::Unsubscribe(chs));
        }
        let mut added: HashMap<usize, Vec<i64>> = HashMap::new();
        let mut new_shards: Vec<BTreeSet<i64>> = Vec::new();
        for ch in desired.difference(&current) {
            if let Some(s) =
                (0..self.shards.len()).find(|s| self.shards[*s].channels.len() < self.per_socket)
            {
                self.shards[s].channels.insert(*ch);
                self.owner.insert(*ch, s);
                added.entry(s).or_default().push(*ch);
                continue;
            }
            if new_shards.last().is_none_or(|n| n.len() >= self.per_socket) {
                new_shards.push(BTreeSet::new());
            }
            new_shards.last_mut().unwrap().insert(*ch);
        }
        for (s, chs) in added {
            let _ = self.shards[s].cmds.send(ShardCmd::Subscribe(chs));
        }
        for (i, chans) in new_shards.into_iter().enumerate() {
            let idx = self.shards.len();
            for ch in &chans {
                self.owner.insert(*ch, idx);
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let state = Arc::new(ShardState::default());
            tokio::spawn(shard::run(
                ctx.clone(),
                idx,
                chans.clone(),
                rx,
                state.clone(),
                STAGGER * i as u32,
            ));
            self.shards.push(Shard {
                cmds: tx,
                state,
                channels: chans,
            });
        }
    }

    fn all_up(&self) -> bool {
        self.shards
            .iter()
            .all(|s| s.state.up.load(Ordering::Relaxed) || s.channels.is_empty())
    }

    fn counts(&self) -> (i32, i32, i32) {
        let up = self
            .shards
            .iter()
            .filter(|s| s.state.up.load(Ordering::Relaxed))
            .count();
        let subs: usize = self
            .shards
            .iter()
            .map(|s| s.state.subscribed.load(Ordering::Relaxed))
            .sum();
        (self.shards.len() as i32, up as i32, subs as i32)
    }
}

async fn watched_channels(ctx: &Ctx) -> Result<BTreeSet<i64>, db::DbError> {
    let c = ctx.db().await?;
    let rows = c
        .query(
            "SELECT kick_channel_id FROM streamers WHERE enabled AND kick_channel_id IS NOT NULL",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn default_collector_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

async fn heartbeat(
    ctx: &Ctx,
    shards: &Shards,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<(), db::DbError> {
    let (sockets, up, subs) = shards.counts();
    let host = ctx.collector_id.split(':').next().unwrap_or("").to_owned();
    let c = ctx.db().await?;
    c.execute(
        "INSERT INTO collectors (id, host, pid, started_at, heartbeat_at, sockets, sockets_up, subscriptions, transport, version)
         VALUES ($1, $2, $3, $4, now(), $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), sockets = $5, sockets_up = $6, subscriptions = $7,
             transport = $8, version = $9",
        &[&ctx.collector_id, &host, &(std::process::id() as i32), &started, &sockets, &up, &subs, &ctx.transport(), &kick_shared::VERSION],
    )
    .await?;
    Ok(())
}

/// Runs the collector until `shutdown`.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_metrics(cfg, shutdown, Arc::new(CollectorMetrics::default())).await
}

/// [`run`] with a caller-supplied metrics registry (tests and benchmarks read it).
pub async fn run_with_metrics(
    cfg: Config,
    shutdown: CancellationToken,
    metrics: Arc<CollectorMetrics>,
) -> anyhow::Result<()> {
    // Fail fast on what no retry can fix: missing credentials.
    cfg.kick.credentials()?;
    let api = ApiClient::new(cfg.kick.clone())?;
    if let Some(addr) = cfg.metrics_addr {
        let bound = kick_shared::metrics::serve(addr, metrics.clone(), shutdown.clone())
            .await
            .with_context(|| format!("cannot listen on METRICS_ADDR {addr}"))?;
        tracing::info!(addr = %bound, "metrics endpoint listening");
    }
    let collector_id = cfg
        .collector_id
        .clone()
        .unwrap_or_else(default_collector_id);
    // The stager outlives the sockets: it gets its own token, cancelled after they stop.
    let stager_stop = CancellationToken::new();
    let (stager, stager_task) = stager::start(
        cfg.database.clone(),
        collector_id.clone(),
        cfg.batch_size,
        BUFFER,
        metrics.clone(),
        stager_stop.clone(),
    );
    let initial_transport = match cfg.kick.transport {
        kick_shared::config::Transport::Pusher => "pusher",
        kick_shared::config::Transport::Centrifugo => "centrifugo",
        kick_shared::config::Transport::Auto => "auto",
    };
    let ctx = Arc::new(Ctx {
        cfg,
        collector_id,
        api,
        stager,
        metrics,
        shutdown: shutdown.clone(),
        db: tokio::sync::Mutex::new(None),
        transport: std::sync::Mutex::new(initial_transport),
    });
    let started = chrono::Utc::now();
    let mut shards = Shards {
        per_socket: ctx.cfg.channels_per_connection,
        shards: Vec::new(),
        owner: HashMap::new(),
    };

    // The watched set, then the sockets and the first reconcile. Until the database answers we
    // retry: the service must come up on its own once PostgreSQL does.
    let mut backoff = Duration::from_millis(200);
    let (mut listen, mut changes) = loop {
        match async {
            Ok::<_, db::DbError>((
                db::listen(&ctx.cfg.database, &[channel::STREAMERS_CHANGED]).await?,
                watched_channels(&ctx).await?,
            ))
        }
        .await
        {
            Ok(((client, rx), chans)) => {
                shards.apply(&ctx, &chans);
                tracing::info!(channels = chans.len(), sockets = shards.shards.len(), collector = %ctx.collector_id, "collector starting");
                break (client, rx);
            }
            Err(e) => {
                tracing::warn!(error = %e, "database unavailable at start, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => { stager_stop.cancel(); let _ = stager_task.await; return Ok(()); }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = reconcile::run(&ctx, reconcile::Scope::All).await;
        });
    }

    let watchdog = kick_shared::systemd::watchdog_interval();
    let mut ready = false;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_heartbeat = Instant::now() - Duration::from_secs(60);
    let mut last_reconcile = Instant::now();
    let mut last_watchdog = Instant::now();
    let mut reload_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            n = changes.recv() => {
                if n.is_none() {
                    // LISTEN connection lost: reopen it, and re-read the set (changes may be missed).
                    match db::listen(&ctx.cfg.database, &[channel::STREAMERS_CHANGED]).await {
                        Ok((c, rx)) => { listen = c; changes = rx; reload_at = Some(Instant::now()); }
                        Err(e) => {
                            tracing::warn!(error = %e, "streamers_changed listener lost, retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let (tx, rx) = mpsc::unbounded_channel();
                            drop(tx);
                            changes = rx;
                        }
                    }
                    continue;
                }
                while changes.try_recv().is_ok() {}
                // Debounce bursts (a bulk import rings once per statement).
                reload_at.get_or_insert(Instant::now() + Duration::from_millis(50));
            }
            _ = tick.tick() => {}
        }
        if reload_at.is_some_and(|t| Instant::now() >= t) {
            reload_at = None;
            match watched_channels(&ctx).await {
                Ok(chans) => {
                    let before = shards.owner.len();
                    shards.apply(&ctx, &chans);
                    tracing::info!(
                        channels = chans.len(),
                        before,
                        sockets = shards.shards.len(),
                        "watched streamers changed"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload watched streamers, will retry");
                    reload_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
        if last_reconcile.elapsed() >= ctx.cfg.reconcile_interval {
            last_reconcile = Instant::now();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let _ = reconcile::run(&ctx, reconcile::Scope::All).await;
            });
        }
        if last_heartbeat.elapsed() >= Duration::from_secs(10) {
            last_heartbeat = Instant::now();
            if let Err(e) = heartbeat(&ctx, &shards, started).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
        if !ready && shards.all_up() {
            ready = true;
            let (sockets, _, subs) = shards.counts();
            tracing::info!(sockets, subscriptions = subs, "all sockets subscribed");
            kick_shared::systemd::notify("READY=1\nSTATUS=subscribed");
            let _ = heartbeat(&ctx, &shards, started).await;
        }
        if let Some(iv) = watchdog
            && last_watchdog.elapsed() >= iv
            && !stager_task.is_finished()
        {
            kick_shared::systemd::notify("WATCHDOG=1");
            last_watchdog = Instant::now();
        }
    }
    drop(listen);
    kick_shared::systemd::notify("STOPPING=1");
    // Sockets close on the shared token; then the stager flushes what they staged.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stager_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(10), stager_task)
        .await
        .is_err()
    {
        tracing::error!("staging buffer not flushed within 10 s at shutdown");
    }
    if let Ok(c) = ctx.db().await {
        let _ = c
            .execute("DELETE FROM collectors WHERE id = $1", &[&ctx.collector_id])
            .await;
    }
    tracing::info!("collector stopped");
    Ok(())
}
