//! `kick-webhooks`: Kick's official `livestream.status.updated` webhooks as a second witness.
//!
//! Kick POSTs a signed delivery when a subscribed broadcaster goes live or offline. The receiver
//! verifies it (see [`server`]), stages it into `raw_events` with `source = 'webhook'` and the
//! message id as its dedupe key, and answers only once the row is durable; the writer applies it
//! by the session's start time, so a delivery that arrives hours late never overrides newer
//! state. Webhooks are unreliable (late, duplicated, dropped, and the app silently unsubscribed
//! after a day of failures): realtime stays the fast path, the API the reconciling truth, and a
//! webhook only fills gaps, notably for streamers on `poll` coverage.
//!
//! It shares the collector's staging ([`crate::stager`], [`crate::spool`], [`crate::rows`]): the
//! same group commit, poison-row isolation and local spool during a database outage. With
//! `WEBHOOKS=on` it also keeps Kick's subscriptions equal to the enabled streamers
//! ([`sync`]). Every task runs under a supervisor; `/healthz` and the `kick_webhooks_*` metrics
//! say what is wrong.

pub mod cli;
pub mod keys;
pub mod metrics;
pub mod server;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use kick_shared::backoff::Backoff;
use kick_shared::config::{Config, ConfigError};
use kick_shared::health::Health;
use kick_shared::kick::api::ApiClient;
use kick_shared::kick::webhook::VerifyError;
use kick_shared::metrics::{Render, Site};
use kick_shared::supervise::Supervisor;
use kick_shared::systemd::{self, Liveness};
use tokio_util::sync::CancellationToken;

use crate::spool::{Spool, StateDir};
use crate::stager::{self, StagerHandle, StagerStatus};
use keys::{KeySource, Keys};
pub use metrics::WebhookMetrics;

/// Deliveries waiting in memory for the database (beyond it they are spooled).
const BUFFER: usize = 10_000;
/// The key fetched from Kick is fetched again this often (a rotation without a failed
/// signature is noticed too).
const KEY_REFRESH: Duration = Duration::from_secs(6 * 3600);

/// Refusals logged per [`LOG_WINDOW`] at most; the rest are only counted (and their number
/// logged once the window is over), so an Internet client cannot fill the disk through our log.
const LOGGED_REFUSALS: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// What the request handlers share.
#[derive(Debug)]
pub struct Receiver {
    pub metrics: Arc<WebhookMetrics>,
    pub path: String,
    pub stager: StagerHandle,
    pub keys: Keys,
    log_budget: kick_shared::logbudget::LogBudget,
}

impl Receiver {
    /// Logs a refusal at WARN with its message id (cut to 64 characters), within the budget.
    pub fn log_refusal(&self, id: &str, reason: &str, error: &str) {
        if !self.log_budget.admit_logging() {
            return;
        }
        let id: String = id.chars().take(64).collect();
        let error: String = error.chars().take(200).collect();
        tracing::warn!(message_id = %id.escape_debug(), reason, error = %error.escape_debug(), "webhook refused");
    }

    /// A refused delivery: counted by reason, logged at WARN with its message id.
    pub fn refuse(&self, e: &VerifyError, id: &str) -> (StatusCode, String) {
        self.metrics.verification_failures.add(e.label(), 1);
        self.log_refusal(id, e.label(), &e.to_string());
        let status = match e {
            VerifyError::Missing(_) | VerifyError::BadSignature | VerifyError::Stale(_) => {
                StatusCode::UNAUTHORIZED
            }
            VerifyError::SignatureEncoding | VerifyError::TimestampFormat => {
                StatusCode::BAD_REQUEST
            }
            VerifyError::NoKey(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        // The client learns the class, never our internals (the log has the detail).
        let text = match e {
            VerifyError::NoKey(_) => "cannot verify deliveries now; try again".to_owned(),
            other => other.to_string(),
        };
        (status, text)
    }

    pub async fn verify(
        &self,
        id: &str,
        ts: &str,
        body: &[u8],
        sig: &str,
    ) -> Result<(), VerifyError> {
        self.keys.verify(id, ts, body, sig).await
    }
}

/// What `/metrics` and `/healthz` serve.
struct WebhookSite {
    metrics: Arc<WebhookMetrics>,
    health: Arc<Health>,
    status: Arc<StagerStatus>,
    supervisor: Supervisor,
    id: String,
    listen: std::net::SocketAddr,
}

impl WebhookSite {
    fn refresh(&self) {
        self.metrics
            .tasks_down
            .set(self.supervisor.tasks_down() as f64);
        self.metrics
            .healthy
            .set(if self.health.is_healthy() { 1.0 } else { 0.0 });
    }
}

impl Render for WebhookSite {
    fn render(&self) -> String {
        self.refresh();
        self.metrics.render()
    }
}

impl Site for WebhookSite {
    fn healthz(&self) -> (bool, serde_json::Value) {
        use std::sync::atomic::Ordering;
        self.refresh();
        let m = &self.metrics;
        let extra = serde_json::json!({
            "receiver_id": self.id,
            "version": kick_shared::VERSION,
            "listen": self.listen.to_string(),
            "public_key_loaded": m.public_key_loaded.get() == 1.0,
            "sync_enabled": m.sync_enabled.get() == 1.0,
            "subscriptions": m.subscriptions.get() as u64,
            "buffered": self.status.buffered.load(Ordering::Relaxed),
            "spooled": self.status.spooled.load(Ordering::Relaxed),
        });
        (
            self.health.is_healthy(),
            self.health.report("kick-webhooks", extra),
        )
    }
}

/// Runs the receiver until `shutdown`.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_metrics(cfg, shutdown, Arc::new(WebhookMetrics::default())).await
}

/// [`run`] with a caller-supplied metrics registry.
pub async fn run_with_metrics(
    cfg: Config,
    shutdown: CancellationToken,
    metrics: Arc<WebhookMetrics>,
) -> anyhow::Result<()> {
    // Its own state subdirectory: the receiver's spool is never replayed by a collector.
    let dir = cfg
        .state_dir
        .join(format!("webhooks-{}", crate::state_subdir(&cfg.database)));
    let state = StateDir::acquire(&dir).map_err(|e| {
        ConfigError::new(
            "STATE_DIRECTORY",
            format!("cannot use {}: {e}", dir.display()),
        )
    })?;
    let host = crate::heartbeat::hostname();
    let id = if state.slot == 0 {
        format!("webhooks@{host}")
    } else {
        format!("webhooks@{host}:{}", state.slot)
    };
    let spool = Spool::open(state.spool_path(), cfg.spool_max_bytes)
        .map_err(|e| ConfigError::new("STATE_DIRECTORY", e.to_string()))?;
    let health = Arc::new(Health::default());
    let restarts = metrics.stager.task_restarts.clone();
    let stager_stop = CancellationToken::new();
    let stager_sup = Supervisor::new(stager_stop.clone(), health.clone(), restarts.clone());
    let (stager_handle, stager) = stager::new(
        stager::Settings {
            db: cfg.database.clone(),
            program: "kick-webhooks",
            id: id.clone(),
            batch_size: cfg.batch_size,
            capacity: BUFFER,
            leases: None,
            apply: None,
        },
        spool,
        metrics.stager.clone(),
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
    let sup = Supervisor::new(shutdown.clone(), health.clone(), restarts);
    let api = Arc::new(ApiClient::new(cfg.kick.clone())?);
    let keys = match &cfg.webhook_public_key_file {
        Some(path) => {
            let keys = Keys::new(KeySource::File(path.clone()), metrics.clone());
            // A key file that does not load is a configuration error: fail now.
            if let Err(e) = keys.load().await {
                let why = match e {
                    keys::KeyError::File { path, reason } => format!("{path}: {reason}"),
                    other => other.to_string(),
                };
                return Err(ConfigError::new("KICK_WEBHOOK_PUBLIC_KEY_FILE", why).into());
            }
            keys
        }
        None => Keys::new(KeySource::Api(api.clone()), metrics.clone()),
    };
    let from_api = cfg.webhook_public_key_file.is_none();
    let listener = tokio::net::TcpListener::bind(cfg.webhook_listen)
        .await
        .map_err(|e| {
            ConfigError::new(
                "WEBHOOK_LISTEN",
                format!("cannot listen on {}: {e}", cfg.webhook_listen),
            )
        })?;
    let listen = listener.local_addr().unwrap_or(cfg.webhook_listen);
    let listener = Arc::new(listener);
    if let Some(addr) = cfg.metrics_addr {
        let site = Arc::new(WebhookSite {
            metrics: metrics.clone(),
            health: health.clone(),
            status: stager_status.clone(),
            supervisor: sup.clone(),
            id: id.clone(),
            listen,
        });
        let bound = kick_shared::metrics::serve(addr, site, shutdown.clone())
            .await
            .map_err(|e| {
                ConfigError::new("METRICS_ADDR", format!("cannot listen on {addr}: {e}"))
            })?;
        tracing::info!(addr = %bound, "metrics endpoint listening (/metrics, /healthz)");
    }
    let receiver = Arc::new(Receiver {
        metrics: metrics.clone(),
        path: cfg.webhook_path.clone(),
        stager: stager_handle,
        keys,
        log_budget: kick_shared::logbudget::LogBudget::new(
            LOGGED_REFUSALS,
            LOG_WINDOW,
            "webhook refusals not logged in the last window (all are counted in kick_webhooks_verification_failures_total)",
        ),
    });
    {
        let (rx, listener, stop) = (receiver.clone(), listener.clone(), shutdown.clone());
        sup.spawn("server", move || {
            server::serve(rx.clone(), listener.clone(), stop.clone())
        });
    }
    if from_api {
        // Unhealthy until the key is loaded: nothing can be verified before.
        health.set("public key", "not loaded yet");
        let (rx, health, stop) = (receiver.clone(), health.clone(), shutdown.clone());
        sup.spawn("public-key", move || {
            keep_key(rx.clone(), health.clone(), stop.clone())
        });
    }
    // Ready: listening, and deliveries are durable (database or spool) from now on.
    systemd::notify("READY=1\nSTATUS=listening; waiting for the database");
    let liveness = Arc::new(Liveness::default());
    systemd::spawn_watchdog(liveness.clone(), shutdown.clone());
    tracing::info!(receiver = %id, listen = %listen, path = %cfg.webhook_path, state = %dir.display(), "webhook receiver starting");

    let result = async {
        let Some(cfg) = kick_shared::startup::wait_for_database(
            &cfg,
            "kick-webhooks",
            &health,
            &shutdown,
            &liveness,
        )
        .await?
        else {
            return Ok(());
        };
        api.set_config(cfg.kick.clone()).await;
        if cfg.webhooks {
            // Managing subscriptions needs the app's credentials: no retry can fix their absence.
            cfg.kick.credentials()?;
        }
        let keeper = Arc::new(sync::Keeper {
            env: cfg.clone(),
            api: api.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            shutdown: shutdown.clone(),
        });
        sup.spawn("subscriptions", move || {
            let k = keeper.clone();
            async move { k.run().await }
        });
        systemd::notify("STATUS=running");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    liveness.beat("main");
                    // A flood of refusals followed by silence is summed up too.
                    receiver.log_budget.report_overdue();
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    liveness.forget("main");
    systemd::notify("STOPPING=1");
    shutdown.cancel();
    // The server finishes the requests in flight (they wait for the stager) before it ends.
    if !sup.join(Duration::from_secs(20)).await {
        tracing::error!("some tasks did not stop within 20 s");
    }
    stager_stop.cancel();
    if !stager_sup.join(Duration::from_secs(15)).await {
        tracing::error!("the stager did not finish within 15 s at shutdown");
    }
    tracing::info!("webhook receiver stopped");
    drop(state);
    result
}

/// Keeps the key from Kick loaded: fetched at start (retried with backoff while Kick is
/// unreachable; deliveries meanwhile get 503) and again every [`KEY_REFRESH`].
async fn keep_key(
    rx: Arc<Receiver>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(300));
    loop {
        let wait = match rx.keys.load().await {
            Ok(_) => {
                health.clear("public key");
                backoff.reset();
                KEY_REFRESH
            }
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "webhooks: cannot obtain Kick's public key");
                if rx.metrics.public_key_loaded.get() == 0.0 {
                    health.set("public key", format!("cannot verify deliveries: {e}"));
                }
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
