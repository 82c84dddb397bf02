//! Service start-up against the database: wait until it answers (never run on defaults), check
//! that its schema is the one this build needs (exit 78 otherwise, with what to run), and merge
//! the settings stored in its `config` table under the environment's.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::db;
use crate::health::Health;
use crate::systemd::Liveness;

/// Whether [`wait_for_database`] ended because the database's schema is not this build's.
pub fn is_schema_mismatch(e: &anyhow::Error) -> bool {
    e.downcast_ref::<db::DbError>()
        .is_some_and(|d| matches!(d, db::DbError::Schema(_)))
}

/// Waits until the database answers, then returns the configuration with the settings stored
/// in it, after checking the schema (a mismatch is a configuration error: exit 78). `None` at
/// shutdown. Meanwhile the spool takes events and health says what is wrong.
pub async fn wait_for_database(
    cfg: &Config,
    program: &str,
    health: &Health,
    shutdown: &CancellationToken,
    liveness: &Liveness,
) -> anyhow::Result<Option<Config>> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        liveness.beat("main");
        let attempt = async {
            let client =
                db::bounded_connect(Duration::from_secs(10), db::connect(&cfg.database)).await?;
            let checked =
                tokio::time::timeout(Duration::from_secs(10), db::check_schema(&client, program))
                    .await
                    .map_err(|_| db::DbError::Timeout(10))?;
            checked?;
            tokio::time::timeout(
                Duration::from_secs(10),
                crate::config::with_db_settings(cfg, &client),
            )
            .await
            .map_err(|_| anyhow::Error::from(db::DbError::Timeout(10)))?
        }
        .await;
        match attempt {
            Ok(c) => {
                health.clear("database");
                return Ok(Some(c));
            }
            Err(e) if is_schema_mismatch(&e) => return Err(e),
            Err(e) if e.downcast_ref::<db::DbError>().is_some() => {
                let retryable = e
                    .downcast_ref::<db::DbError>()
                    .is_some_and(crate::exit::Classify::is_retryable);
                let retry_in_ms = backoff.current().as_millis() as u64;
                if retryable {
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms, "database unavailable at start; waiting for it");
                } else {
                    // E.g. permission denied: an operator must act; we keep trying meanwhile.
                    tracing::error!(error = %format!("{e:#}"), retry_in_ms, "database refuses us at start; waiting for an operator to fix it");
                }
                health.set("database", format!("database unavailable: {e:#}"));
            }
            Err(e) => return Err(e),
        }
        let wait = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(wait);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = &mut wait => break,
                _ = tick.tick() => liveness.beat("main"),
            }
        }
    }
}
