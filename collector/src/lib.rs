//! kick-collector: holds the WebSocket connections to Kick's realtime service, stages
//! live/offline events into `raw_events` in durable batches with one NOTIFY each, and reconciles
//! against Kick's official API at start, after every reconnect and periodically, so a missed
//! event never leaves a wrong status.
//!
//! Only the collector parses Kick frames. It never writes `streamers`: what it learns (statuses,
//! channel ids) is staged, and the writer applies it.
//!
//! Every long-lived task (each socket, the stager, the reconciler, the placement, the heartbeat,
//! the listener) runs under a supervisor that restarts it when it ends or panics and reports it
//! in `/healthz`, the metrics and the heartbeat. The process is ready as soon as its
//! configuration is valid and its spool can take events; it then waits for the database (for the
//! settings stored there and the schema check) without ever running on defaults. A collector
//! that ran before does not wait idle: once the first attempt fails (or after
//! [`bootcache::BOOT_WAIT`] without an answer) it watches the channels of its boot cache with the
//! settings cached there and spools what it sees (see `bootcache`).

pub mod apply;
pub mod bootcache;
pub mod cli;
pub mod ctx;
pub mod gaps;
pub mod heartbeat;
pub mod leases;
pub mod listen;
pub mod lookup;
pub mod memory;
pub mod metrics;
pub mod realtime;
pub mod reconcile;
pub mod rows;
pub mod spool;
pub mod stager;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use kick_shared::config::{Config, ConfigError, DbConfig};
use kick_shared::health::Health;
use kick_shared::kick::api::ApiClient;
use kick_shared::metrics::{Render, Site};
use kick_shared::supervise::Supervisor;
use kick_shared::systemd::{self, Liveness};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ctx::{Ctx, Parts};
use crate::metrics::CollectorMetrics;
use crate::spool::{Spool, StateDir};
use crate::stager::StagerStatus;
use kick_shared::kick::realtime::negotiate::Web;

/// Events waiting in memory for the database (beyond this, during an outage, they go to the
/// spool). Realtime transitions of even 50,000 streamers come at a few per second.
const BUFFER: usize = 20_000;

/// Runs the collector until `shutdown`.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_metrics(cfg, shutdown, Arc::new(CollectorMetrics::default())).await
}

/// The state subdirectory for one database (`<name>-<hash of host, port and name>`): a collector
/// never replays another database's spool.
pub(crate) fn state_subdir(db: &DbConfig) -> String {
    use std::hash::{Hash, Hasher};
    let target = db.describe();
    let without_user = target.split_once('@').map_or(target.as_str(), |(_, t)| t);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    without_user.hash(&mut h);
    let name: String = db
        .pg
        .get_dbname()
        .unwrap_or("db")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(40)
        .collect();
    format!("{name}-{:08x}", h.finish() as u32)
}

/// What `/metrics` and `/healthz` serve.
struct CollectorSite {
    metrics: Arc<CollectorMetrics>,
    health: Arc<Health>,
    status: Arc<StagerStatus>,
    supervisor: Supervisor,
    id: String,
}

impl CollectorSite {
    fn refresh(&self) {
        use std::sync::atomic::Ordering;
        self.metrics
            .tasks_down
            .store(self.supervisor.tasks_down(), Ordering::Relaxed);
        self.metrics
            .healthy
            .set(if self.health.is_healthy() { 1.0 } else { 0.0 });
    }
}

impl Render for CollectorSite {
    fn render(&self) -> String {
        self.refresh();
        self.metrics.render()
    }
}

impl Site for CollectorSite {
    fn healthz(&self) -> (bool, serde_json::Value) {
        use std::sync::atomic::Ordering;
        self.refresh();
        let m = &self.metrics;
        let extra = serde_json::json!({
            "collector_id": self.id,
            "version": kick_shared::VERSION,
            "sockets": m.sockets_total.load(Ordering::Relaxed),
            "sockets_up": m.sockets_up.load(Ordering::Relaxed),
            "subscriptions": m.subscriptions.load(Ordering::Relaxed),
            "covered_channels": m.channels_covered.load(Ordering::Relaxed),
            "watched_channels": m.watched_channels.load(Ordering::Relaxed),
            "buffered": self.status.buffered.load(Ordering::Relaxed),
            "spooled": self.status.spooled.load(Ordering::Relaxed),
            "oldest_buffered_at": self.status.oldest_buffered_at(),
            "clock_skew_ms": self.status.skew_ms.load(Ordering::Relaxed),
        });
        (
            self.health.is_healthy(),
            self.health.report("kick-collector", extra),
        )
    }
}

/// [`run`] with a caller-supplied metrics registry (tests and benchmarks read it).
pub async fn run_with_metrics(
    cfg: Config,
    shutdown: CancellationToken,
    metrics: Arc<CollectorMetrics>,
) -> anyhow::Result<()> {
    let started = chrono::Utc::now();
    // The state directory: the spool, and a slot that gives this collector a stable identity.
    let dir = cfg.state_dir.join(state_subdir(&cfg.database));
    let state = StateDir::acquire(&dir).map_err(|e| {
        ConfigError::new(
            "STATE_DIRECTORY",
            format!("cannot use {}: {e}", dir.display()),
        )
    })?;
    let collector_id = cfg.collector_id.clone().unwrap_or_else(|| {
        let host = heartbeat::hostname();
        if state.slot == 0 {
            host
        } else {
            format!("{host}:{}", state.slot)
        }
    });
    let spool = Spool::open(state.spool_path(), cfg.spool_max_bytes)
        .map_err(|e| ConfigError::new("STATE_DIRECTORY", e.to_string()))?;
    if !spool.is_empty() {
        tracing::info!(
            events = spool.events(),
            spool = %state.spool_path().display(),
            "the spool holds events an earlier run could not stage; they are replayed once the database answers"
        );
    }
    let health = Arc::new(Health::default());
    let leases = Arc::new(leases::Leases::default());
    // The stager outlives the sockets: its own token, cancelled after they stopped.
    let stager_stop = CancellationToken::new();
    let stager_sup = Supervisor::new(
        stager_stop.clone(),
        health.clone(),
        metrics.task_restarts.clone(),
    );
    // Offlines are left to the writer until the settings in force are known (the config table
    // may set a grace the environment does not).
    let apply = apply::ApplySettings::new(false);
    let (stager_handle, stager) = stager::new(
        stager::Settings {
            db: cfg.database.clone(),
            program: "kick-collector",
            id: collector_id.clone(),
            batch_size: cfg.batch_size,
            capacity: BUFFER,
            leases: Some(leases.clone()),
            apply: Some(apply.clone()),
        },
        spool,
        metrics.clone(),
        health.clone(),
    );
    let stager_status = stager.status.clone();
    {
        let stop = stager_stop.clone();
        stager_sup.spawn("stager", move || {
            let (s, stop) = (stager.clone(), stop.clone());
            async move { s.run(stop).await }
        });
    }
    let sup = Supervisor::new(
        shutdown.clone(),
        health.clone(),
        metrics.task_restarts.clone(),
    );
    if let Some(addr) = cfg.metrics_addr {
        let site = Arc::new(CollectorSite {
            metrics: metrics.clone(),
            health: health.clone(),
            status: stager_status.clone(),
            supervisor: sup.clone(),
            id: collector_id.clone(),
        });
        let bound = kick_shared::metrics::serve(addr, site, shutdown.clone())
            .await
            .map_err(|e| {
                ConfigError::new("METRICS_ADDR", format!("cannot listen on {addr}: {e}"))
            })?;
        tracing::info!(addr = %bound, "metrics endpoint listening (/metrics, /healthz)");
    }
    // Ready: the configuration is valid and the spool takes events. Realtime coverage is
    // reported by status and metrics, not by withholding READY.
    systemd::notify("READY=1\nSTATUS=started; waiting for the database");
    let liveness = Arc::new(Liveness::default());
    systemd::spawn_watchdog(liveness.clone(), shutdown.clone());
    tracing::info!(collector = %collector_id, slot = state.slot, state = %dir.display(), "collector starting");

    let boot_cache_path = state.boot_cache_path();
    let result = async {
        // The wait for the database; `after` delays a renewed wait (see below).
        let wait_for_database = {
            let (cfg, health, shutdown, liveness) = (
                cfg.clone(),
                health.clone(),
                shutdown.clone(),
                liveness.clone(),
            );
            move |after: Duration| {
                let (cfg, health, shutdown, liveness) = (
                    cfg.clone(),
                    health.clone(),
                    shutdown.clone(),
                    liveness.clone(),
                );
                async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(after) => {}
                    }
                    kick_shared::startup::wait_for_database(
                        &cfg,
                        "kick-collector",
                        &health,
                        &shutdown,
                        &liveness,
                    )
                    .await
                }
            }
        };
        let waiting = wait_for_database(Duration::ZERO);
        tokio::pin!(waiting);
        // The database's settings, or (it does not answer, and an earlier run left a boot
        // cache) the cached ones: then the wait goes on beside the tasks.
        let (cfg, cached) = match boot_cache(&boot_cache_path, &cfg) {
            None => match waiting.as_mut().await? {
                Some(c) => (c, None),
                None => return Ok(()),
            },
            Some((cached_cfg, cache)) => {
                // Not answering: the first attempt failed (it reports a `database` problem),
                // or it has not answered within BOOT_WAIT (a hung server).
                let not_answering = async {
                    let t0 = std::time::Instant::now();
                    while !health.has("database") && t0.elapsed() < bootcache::BOOT_WAIT {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                let start = tokio::select! {
                    r = waiting.as_mut() => match r {
                        Ok(Some(c)) => Start::Database(Box::new(c)),
                        Ok(None) => return Ok(()),
                        // Another schema (see the main loop below): watched from the cache.
                        Err(e) if kick_shared::startup::is_schema_mismatch(&e) => {
                            health.set("schema", format!("{e:#}"));
                            waiting.set(wait_for_database(Duration::from_secs(10)));
                            Start::Cache(format!("{e:#}"))
                        }
                        Err(e) => return Err(e),
                    },
                    _ = not_answering => Start::Cache("the database does not answer at start".into()),
                };
                match start {
                    Start::Database(c) => (*c, None),
                    Start::Cache(why) => {
                        tracing::warn!(
                            channels = cache.channels.len(),
                            cache = %boot_cache_path.display(),
                            problem = %why,
                            "watching the channels of the boot cache with its settings; what they deliver is spooled until the database answers"
                        );
                        health.set(
                            "database",
                            format!("{why}: watching the boot cache's channels, spooling"),
                        );
                        systemd::notify("STATUS=no usable database; watching the boot cache's channels, spooling");
                        (cached_cfg, Some(cache))
                    }
                }
            }
        };
        // Fail on what no retry can fix: missing credentials (environment or config table).
        cfg.kick.credentials()?;
        let api = ApiClient::new(cfg.kick.clone())?;
        // Kick's web endpoints (negotiation, guest tokens, regions): `KICK_WEB_RATE`, burst
        // twice that.
        let web = Web::new(
            api.http().clone(),
            f64::from(cfg.web_rate),
            cfg.web_rate.saturating_mul(2),
        );
        let (reconcile_handle, reconcile_queue) = reconcile::queue();
        let (recheck_handle, region_rechecks) = realtime::regions::rechecks();
        let (config_tx, config_rx) = watch::channel(Arc::new(cfg));
        let ctx = Arc::new(Ctx::new(Parts {
            config: config_rx,
            collector_id: collector_id.clone(),
            api,
            web,
            stager: stager_handle,
            stager_status: stager_status.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            supervisor: sup.clone(),
            shutdown: shutdown.clone(),
            reconcile: reconcile_handle,
            leases: leases.clone(),
            regions: recheck_handle,
            region_rechecks,
        }));
        let first = match &cached {
            // The shards of the cached channels are served, without a token, until the first
            // lease round; their regions are known at once.
            Some(cache) => {
                leases.serve_unfenced(cache.shards());
                cache.channels.iter().copied().collect()
            }
            None => listen::watched_channels(&ctx).await.unwrap_or_default(),
        };
        tracing::info!(channels = first.len(), "watching");
        // The listener keeps the watched set; the placement gets the part of it in the shards
        // this collector holds (empty until the first lease round).
        let (watched_tx, watched_rx) = watch::channel(Arc::new(first));
        let (desired_tx, desired_rx) = watch::channel(Arc::new(std::collections::BTreeSet::new()));
        let (watched_tx, desired_tx, config_tx) = (
            Arc::new(watched_tx),
            Arc::new(desired_tx),
            Arc::new(config_tx),
        );
        {
            let leases = leases.clone();
            spawn(&sup, "leases", &ctx, move |ctx| {
                leases::run(ctx, leases.clone())
            });
        }
        spawn(&sup, "shards", &ctx, move |ctx| {
            leases::filter(ctx, watched_rx.clone(), desired_tx.clone())
        });
        let (region_tx, region_rx) = tokio::sync::mpsc::unbounded_channel();
        let region_seed = Arc::new(cached.as_ref().map(|c| c.regions.clone()).unwrap_or_default());
        let region_rx = Arc::new(tokio::sync::Mutex::new(region_rx));
        let region_rechecks = ctx.region_rechecks.clone();
        let desired_for_regions = desired_rx.clone();
        let desired_for_cache = desired_rx.clone();
        spawn(&sup, "regions", &ctx, move |ctx| {
            realtime::regions::run(
                ctx,
                desired_for_regions.clone(),
                region_tx.clone(),
                region_rechecks.clone(),
                region_seed.clone(),
            )
        });
        {
            let config_tx = config_tx.clone();
            spawn(&sup, "listener", &ctx, move |ctx| {
                listen::run(ctx, watched_tx.clone(), config_tx.clone())
            });
        }
        spawn(&sup, "reconciler", &ctx, move |ctx| {
            reconcile::run(ctx, reconcile_queue.clone())
        });
        spawn(&sup, "placement", &ctx, move |ctx| {
            realtime::placement::run(ctx, desired_rx.clone(), region_rx.clone())
        });
        spawn(&sup, "heartbeat", &ctx, move |ctx| {
            heartbeat::run(ctx, started)
        });
        spawn(&sup, "apply-settings", &ctx, move |ctx| {
            follow_grace(ctx, apply.clone())
        });
        {
            let (desired, path) = (desired_for_cache, boot_cache_path.clone());
            spawn(&sup, "boot-cache", &ctx, move |ctx| {
                bootcache::keep(ctx, desired.clone(), path.clone())
            });
        }
        let mut from_cache = cached.is_some();
        if !from_cache {
            systemd::notify("STATUS=running");
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => liveness.beat("main"),
                // Started from the boot cache: the database's own settings once it answers.
                r = waiting.as_mut(), if from_cache => {
                    let cfg = match r {
                        Ok(Some(cfg)) => cfg,
                        Ok(None) => break,
                        // A database that answers with another schema (not migrated yet, or
                        // restored from elsewhere) ends a normal start; running from the boot
                        // cache, the sockets go on spooling while an operator migrates.
                        Err(e) if kick_shared::startup::is_schema_mismatch(&e) => {
                            let what = format!("{e:#}; watching the boot cache's channels, spooling until the schema matches");
                            if !health.problems().iter().any(|p| p.what == what) {
                                tracing::error!(error = %format!("{e:#}"), "the database answers with another schema: still running from the boot cache; checked again every 10 s");
                            }
                            health.set("schema", what);
                            waiting.set(wait_for_database(Duration::from_secs(10)));
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    from_cache = false;
                    health.clear("schema");
                    cfg.kick.credentials()?;
                    ctx.api.set_config(cfg.kick.clone()).await;
                    config_tx.send_replace(Arc::new(cfg));
                    tracing::info!("the database answers: running on its settings, leases and watched channels");
                    systemd::notify("STATUS=running");
                }
            }
        }
        // A clean exit removes the heartbeat row (status then shows no stale collector),
        // unless the row is another process's (this one wrongly shares its id).
        if !ctx.leases.id_in_use() {
            let _ = ctx
                .query("DELETE FROM collectors WHERE id = $1", &[&ctx.collector_id])
                .await;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    liveness.forget("main");
    systemd::notify("STOPPING=1");
    shutdown.cancel();
    if !sup.join(Duration::from_secs(20)).await {
        tracing::error!("some tasks did not stop within 20 s");
    }
    // Sockets are closed: now the stager commits (or spools) what they staged.
    stager_stop.cancel();
    if !stager_sup.join(Duration::from_secs(15)).await {
        tracing::error!("the stager did not finish within 15 s at shutdown");
    }
    tracing::info!("collector stopped");
    drop(state);
    result
}

/// How a start with a boot cache goes on.
enum Start {
    /// The database answered: its settings.
    Database(Box<Config>),
    /// From the boot cache, because of this.
    Cache(String),
}

/// The boot cache's settings and itself, if an earlier run left one that can be used; a damaged
/// one or settings that no longer validate are reported (the start then waits for the database).
fn boot_cache(path: &std::path::Path, env: &Config) -> Option<(Config, bootcache::BootCache)> {
    let cache = match bootcache::BootCache::load(path) {
        Ok(c) => c?,
        Err(e) => {
            tracing::warn!(error = %e, "boot cache not used");
            return None;
        }
    };
    match cache.config(env) {
        Ok(cfg) => Some((cfg, cache)),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), path = %path.display(), "the boot cache's settings are not valid; not used");
            None
        }
    }
}

/// Spawns a supervised task that gets the shared context.
/// Keeps the stager's [`apply::ApplySettings`] on the offline grace in force: with a grace, the
/// collector applies no offline (the writer holds it back).
async fn follow_grace(ctx: Arc<Ctx>, apply: apply::ApplySettings) -> anyhow::Result<()> {
    let mut config = ctx.config_changes();
    loop {
        apply.set_offline_grace_zero(config.borrow_and_update().offline_grace.is_zero());
        tokio::select! {
            changed = config.changed() => if changed.is_err() { return Ok(()) },
            _ = ctx.shutdown.cancelled() => return Ok(()),
        }
    }
}

fn spawn<F, Fut>(sup: &Supervisor, name: &str, ctx: &Arc<Ctx>, mut f: F)
where
    F: FnMut(Arc<Ctx>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let ctx = ctx.clone();
    sup.spawn(name, move || f(ctx.clone()));
}
