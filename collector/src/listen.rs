//! The collector's LISTEN connection: `streamers_changed` (the watched set changed: re-read it,
//! and the placement subscribes or unsubscribes without a restart), `config_changed` (settings
//! in the `config` table changed: re-read them) and `shards_changed` (another collector moved
//! shard leases: run a lease round now). Notifications sent while the connection was
//! down are lost, so both are re-read after every (re)connect. A silent connection is probed;
//! a lost one is reconnected here with backoff (a database restart or failover is expected, not
//! a task failure for the supervisor).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kick_shared::backoff::Backoff;
use kick_shared::config::Config;
use kick_shared::db;
use kick_shared::model::channel;
use tokio::sync::watch;

use crate::ctx::Ctx;

/// Notifications in a burst (a bulk import rings once per statement) are handled together.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A LISTEN connection silent for this long is probed with a query.
const PROBE_EVERY: Duration = Duration::from_secs(30);

/// The channel ids of the enabled streamers.
pub async fn watched_channels(ctx: &Ctx) -> Result<BTreeSet<i64>, db::DbError> {
    let rows = ctx
        .query(
            "SELECT kick_channel_id FROM streamers WHERE enabled AND kick_channel_id IS NOT NULL",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get("kick_channel_id")).collect())
}

/// Runs until shutdown. A lost connection (a restarted or failed-over database) is an expected
/// event, not a task failure: it is logged, reported while it lasts (`listen` in health) and
/// reconnected with backoff; the watched set and the settings are re-read on reconnect.
pub async fn run(
    ctx: Arc<Ctx>,
    desired: Arc<watch::Sender<Arc<BTreeSet<i64>>>>,
    config: Arc<watch::Sender<Arc<Config>>>,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let started = std::time::Instant::now();
        let result = listen_once(&ctx, &desired, &config).await;
        if ctx.shutdown.is_cancelled() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let why = match result {
            Ok(()) => return Ok(()),
            Err(e) => format!("{e:#}"),
        };
        let wait = backoff.next_delay();
        tracing::warn!(error = %why, retry_in_ms = wait.as_millis() as u64, "listen connection lost: reconnecting");
        ctx.health.set(
            "listen",
            format!("LISTEN connection lost ({why}): reconnecting"),
        );
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One LISTEN connection: returns `Ok` at shutdown, an error when the connection is lost.
async fn listen_once(
    ctx: &Arc<Ctx>,
    desired: &watch::Sender<Arc<BTreeSet<i64>>>,
    config: &watch::Sender<Arc<Config>>,
) -> anyhow::Result<()> {
    let cfg = ctx.cfg();
    let (client, mut notes) = db::bounded_connect(
        Duration::from_secs(10),
        db::listen(
            &cfg.database,
            &[
                channel::STREAMERS_CHANGED,
                channel::CONFIG_CHANGED,
                channel::SHARDS_CHANGED,
            ],
        ),
    )
    .await?;
    // Anything may have changed while we were not listening.
    reload_streamers(ctx, desired).await?;
    reload_config(ctx, &client, config).await;
    ctx.leases.wake.notify_one();
    ctx.health.clear("listen");
    loop {
        let first = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            n = notes.recv() => match n {
                Some(n) => n,
                None => anyhow::bail!("listen connection lost"),
            },
            _ = tokio::time::sleep(PROBE_EVERY) => {
                db::bounded(5, client.simple_query("SELECT 1")).await?;
                continue;
            }
        };
        if first.channel() == channel::SHARDS_CHANGED {
            // Another collector moved leases: run a lease round now (no debounce: a handoff
            // waits for it).
            ctx.leases.wake.notify_one();
            if notes.is_empty() {
                continue;
            }
        }
        tokio::time::sleep(DEBOUNCE).await;
        let mut streamers = first.channel() == channel::STREAMERS_CHANGED;
        let mut settings = first.channel() == channel::CONFIG_CHANGED;
        while let Ok(n) = notes.try_recv() {
            streamers |= n.channel() == channel::STREAMERS_CHANGED;
            settings |= n.channel() == channel::CONFIG_CHANGED;
            if n.channel() == channel::SHARDS_CHANGED {
                ctx.leases.wake.notify_one();
            }
        }
        if streamers {
            reload_streamers(ctx, desired).await?;
        }
        if settings {
            reload_config(ctx, &client, config).await;
        }
    }
}

async fn reload_streamers(
    ctx: &Ctx,
    desired: &watch::Sender<Arc<BTreeSet<i64>>>,
) -> Result<(), db::DbError> {
    let chans = watched_channels(ctx).await?;
    desired.send_if_modified(|cur| {
        if **cur == chans {
            false
        } else {
            *cur = Arc::new(chans);
            true
        }
    });
    Ok(())
}

/// Re-reads the settings. A stored value that is invalid is logged and ignored (the running
/// configuration stays): a typo in `config set` must not take the service down.
async fn reload_config(
    ctx: &Ctx,
    client: &tokio_postgres::Client,
    config: &watch::Sender<Arc<Config>>,
) {
    let current = ctx.cfg();
    match kick_shared::config::with_db_settings(&current, client).await {
        Ok(new) => {
            ctx.health.clear("config");
            // The API client notices changed credentials itself (they are redacted in Debug).
            ctx.api.set_config(new.kick.clone()).await;
            if format!("{new:?}") != format!("{current:?}") {
                tracing::info!("settings changed in the config table: applied");
                config.send_replace(Arc::new(new));
            }
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "settings in the config table not applied");
            ctx.health.set(
                "config",
                format!("settings in the config table not applied: {e:#}"),
            );
        }
    }
}
