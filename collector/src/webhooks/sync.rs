//! The receiver's subscription keeper: with `WEBHOOKS=on`, Kick's `livestream.status.updated`
//! subscriptions are made equal to the enabled streamers at start, after every
//! `streamers_changed`, and every [`RESYNC_EVERY`] (Kick unsubscribes an app silently after a day
//! of failed deliveries; the periodic sync subscribes it again). `config_changed` re-reads the
//! settings, so `kick-admin config set WEBHOOKS on|off` takes effect without a restart. With
//! `WEBHOOKS=off` nothing is sent to Kick.
//!
//! The LISTEN connection also runs the sync's queries; losing it ends the task (the supervisor
//! restarts it, and the restart syncs again since notifications may have been missed).

use std::sync::Arc;
use std::time::Duration;

use kick_shared::backoff::Backoff;
use kick_shared::config::Config;
use kick_shared::db;
use kick_shared::health::Health;
use kick_shared::kick::api::ApiClient;
use kick_shared::kick::subscriptions::{self, SyncError};
use kick_shared::model::channel;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::WebhookMetrics;

/// The periodic re-sync.
pub const RESYNC_EVERY: Duration = Duration::from_secs(600);
/// Notifications in a burst (a bulk import) make one sync.
const DEBOUNCE: Duration = Duration::from_secs(2);
/// A failed sync is tried again after this, doubling up to [`RESYNC_EVERY`].
const RETRY_FIRST: Duration = Duration::from_secs(15);
/// A silent LISTEN connection is probed this often.
const PROBE_EVERY: Duration = Duration::from_secs(30);

/// What the task needs.
#[derive(Debug)]
pub struct Keeper {
    /// The configuration from the environment: the `config` table is merged under it again
    /// on every change.
    pub env: Config,
    pub api: Arc<ApiClient>,
    pub metrics: Arc<WebhookMetrics>,
    pub health: Arc<Health>,
    pub shutdown: CancellationToken,
}

const PROBLEM_SYNC: &str = "webhook sync";
const PROBLEM_REFUSED: &str = "webhook subscriptions";
const PROBLEM_CONFIG: &str = "settings";

impl Keeper {
    /// Runs until shutdown or until the connection is lost.
    pub async fn run(&self) -> anyhow::Result<()> {
        let (mut client, mut notes) = db::bounded_connect(
            Duration::from_secs(10),
            db::listen(
                &self.env.database,
                &[channel::STREAMERS_CHANGED, channel::CONFIG_CHANGED],
            ),
        )
        .await?;
        let mut cfg = self.reload(&client, &self.env).await?;
        let mut next = Instant::now();
        let mut retry = Backoff::new(RETRY_FIRST, RESYNC_EVERY);
        loop {
            let on = cfg.webhooks;
            self.metrics.sync_enabled.set(if on { 1.0 } else { 0.0 });
            if !on {
                self.health.clear(PROBLEM_SYNC);
                self.health.clear(PROBLEM_REFUSED);
            }
            if on && Instant::now() >= next {
                match self.sync_once(&mut client).await {
                    Ok(()) => {
                        retry.reset();
                        next = Instant::now() + RESYNC_EVERY;
                    }
                    Err(SyncError::Db(e)) => {
                        self.metrics.sync_failures.inc();
                        return Err(anyhow::Error::from(SyncError::Db(e))
                            .context("webhook subscription sync"));
                    }
                    Err(e) => {
                        self.metrics.sync_failures.inc();
                        let wait = retry.next_delay();
                        tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "webhook subscription sync failed");
                        self.health
                            .set(PROBLEM_SYNC, format!("subscription sync failed: {e}"));
                        next = Instant::now() + wait;
                    }
                }
            }
            let wake = if on {
                next
            } else {
                Instant::now() + PROBE_EVERY
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                n = notes.recv() => {
                    let Some(n) = n else { anyhow::bail!("listen connection lost") };
                    let mut channels = vec![n.channel().to_owned()];
                    let until = Instant::now() + DEBOUNCE;
                    while let Ok(Some(n)) = tokio::time::timeout_at(until, notes.recv()).await {
                        channels.push(n.channel().to_owned());
                    }
                    if channels.iter().any(|c| c == channel::CONFIG_CHANGED) {
                        cfg = self.reload(&client, &cfg).await?;
                    }
                    if channels.iter().any(|c| c == channel::STREAMERS_CHANGED) {
                        next = Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if !on {
                        db::bounded(5, client.simple_query("SELECT 1")).await?;
                    }
                }
            }
        }
    }

    /// The environment with the `config` table merged under it; the API client follows. A
    /// setting stored with a bad value keeps `current` (and is reported): a typo in the table
    /// must not stop the receiver. Only a database failure is an error.
    async fn reload(
        &self,
        client: &tokio_postgres::Client,
        current: &Config,
    ) -> anyhow::Result<Config> {
        let merged = tokio::time::timeout(
            Duration::from_secs(10),
            kick_shared::config::with_db_settings(&self.env, client),
        )
        .await
        .map_err(|_| db::DbError::Timeout(10))?;
        let cfg = match merged {
            Ok(cfg) => {
                self.health.clear(PROBLEM_CONFIG);
                cfg
            }
            Err(e)
                if e.downcast_ref::<kick_shared::config::ConfigError>()
                    .is_some() =>
            {
                tracing::warn!(error = %format!("{e:#}"), "a stored setting is invalid: keeping the settings in use");
                self.health
                    .set(PROBLEM_CONFIG, format!("invalid stored setting: {e:#}"));
                current.clone()
            }
            Err(e) => return Err(e),
        };
        self.api.set_config(cfg.kick.clone()).await;
        Ok(cfg)
    }

    async fn sync_once(&self, client: &mut tokio_postgres::Client) -> Result<(), SyncError> {
        let started = std::time::Instant::now();
        let (plan, outcome) = subscriptions::sync(&self.api, client, false).await?;
        let outcome = outcome.unwrap_or_default();
        self.metrics.sync_runs.inc();
        self.metrics.subscriptions.set(outcome.active.len() as f64);
        self.metrics
            .subscription_errors
            .set(outcome.errors.len() as f64);
        self.metrics
            .last_sync
            .set(chrono::Utc::now().timestamp() as f64);
        self.health.clear(PROBLEM_SYNC);
        if let Some((user, why)) = outcome.errors.iter().next() {
            let n = outcome.errors.len();
            tracing::warn!(refused = n, example_user_id = user, error = %why, "Kick refused webhook subscriptions");
            self.health.set(
                PROBLEM_REFUSED,
                format!("Kick refused {n} subscription(s), e.g. user {user}: {why}"),
            );
        } else {
            self.health.clear(PROBLEM_REFUSED);
        }
        if outcome.created + outcome.deleted > 0 || plan.create.len() != outcome.created {
            tracing::info!(
                created = outcome.created,
                deleted = outcome.deleted,
                kept = outcome.kept,
                refused = outcome.errors.len(),
                ms = started.elapsed().as_millis() as u64,
                "webhook subscriptions synced"
            );
        }
        Ok(())
    }
}
