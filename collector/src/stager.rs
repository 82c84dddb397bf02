//! Staging: events from every socket and from reconciliation become rows of `raw_events`,
//! inserted in batches (up to `BATCH_SIZE` rows or a few milliseconds, whichever comes first)
//! with `ON CONFLICT (dedupe_key) DO NOTHING` and one `NOTIFY raw_events` per batch in the same
//! transaction, committed durably: the staged rows are the only copy of what Kick pushed.
//!
//! If PostgreSQL is unavailable, events wait in a bounded buffer and the insert is retried until
//! the database is back. When the buffer is full, new events are refused: counted, and logged
//! at ERROR (an operator must act); the next reconciliation restores the truth.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kick_shared::config::DbConfig;
use kick_shared::db;
use kick_shared::model::Source;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::CollectorMetrics;

/// One row for `raw_events`.
#[derive(Debug, Clone)]
pub struct Staged {
    pub source: Source,
    pub topic: Option<String>,
    pub event_name: &'static str,
    pub channel_id: Option<i64>,
    pub user_id: Option<i64>,
    pub livestream_id: Option<i64>,
    pub event_time: Option<DateTime<Utc>>,
    /// The event's JSON, serialized (compact: thousands may wait in the buffer).
    pub payload: String,
    pub dedupe_key: String,
    pub received_at: DateTime<Utc>,
    /// When the frame arrived, for the frame → staged latency.
    pub arrived: Instant,
}

/// The sending side, cloned into every socket task and the reconciler.
#[derive(Debug, Clone)]
pub struct StagerHandle {
    tx: mpsc::Sender<Staged>,
    metrics: Arc<CollectorMetrics>,
}

impl StagerHandle {
    /// Queues an event for reconciliation, which can wait: it waits while the buffer is more
    /// than half full, so that a large reconcile never crowds out realtime events.
    pub async fn stage_wait(&self, ev: Staged) {
        while self.tx.capacity() < self.tx.max_capacity() / 2 {
            if self.tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.tx.send(ev).await.is_err() {
            self.metrics.dropped.inc();
        }
    }

    /// Queues an event; refuses it (metric + ERROR log) when the buffer is full.
    pub fn stage(&self, ev: Staged) {
        if let Err(e) = self.tx.try_send(ev) {
            let n = self.metrics.dropped.get();
            self.metrics.dropped.inc();
            if n.is_power_of_two() || n.is_multiple_of(10_000) {
                let key = match &e {
                    mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => {
                        ev.dedupe_key.clone()
                    }
                };
                tracing::error!(dropped_total = n + 1, dedupe_key = %key, "staging buffer full: event refused; reconciliation will repair the status");
            }
        }
    }
}

const INSERT: &str = "INSERT INTO raw_events
    (source, topic, event_name, kick_channel_id, kick_user_id, livestream_id, event_time, payload,
     dedupe_key, collector_id, received_at)
    SELECT s, t, n, c, u, l, e, p::jsonb, k, i, r
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
                $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::timestamptz[])
         AS x(s, t, n, c, u, l, e, p, k, i, r)
    ON CONFLICT (dedupe_key) DO NOTHING";

/// Starts the stager task. `capacity` bounds the events waiting for the database.
pub fn start(
    db: DbConfig,
    collector_id: String,
    batch_size: usize,
    capacity: usize,
    metrics: Arc<CollectorMetrics>,
    shutdown: CancellationToken,
) -> (StagerHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity);
    let handle = StagerHandle {
        tx,
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(run(db, collector_id, batch_size, rx, metrics, shutdown));
    (handle, task)
}

async fn run(
    db: DbConfig,
    collector_id: String,
    batch_size: usize,
    mut rx: mpsc::Receiver<Staged>,
    metrics: Arc<CollectorMetrics>,
    shutdown: CancellationToken,
) {
    let mut client: Option<(tokio_postgres::Client, tokio_postgres::Statement)> = None;
    let mut pending: VecDeque<Staged> = VecDeque::new();
    let mut backoff = Duration::from_millis(100);
    let linger = Duration::from_millis(2);
    loop {
        // Gather a batch: wait for the first event, then up to `linger` for more.
        if pending.is_empty() {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => pending.push_back(ev),
                    None => return,
                },
                _ = shutdown.cancelled() => {
                    // Flush whatever is still queued, then stop.
                    rx.close();
                    while let Ok(ev) = rx.try_recv() { pending.push_back(ev); }
                    if pending.is_empty() { return; }
                }
            }
            let deadline = tokio::time::Instant::now() + linger;
            while pending.len() < batch_size {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(ev)) => pending.push_back(ev),
                    _ => break,
                }
            }
        }
        while pending.len() < batch_size {
            match rx.try_recv() {
                Ok(ev) => pending.push_back(ev),
                Err(_) => break,
            }
        }
        metrics.buffered.set(pending.len() as f64);
        if client.is_none() {
            match connect(&db).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    metrics.db_errors.inc();
                    tracing::warn!(error = %e, buffered = pending.len(), retry_in_ms = backoff.as_millis() as u64, "staging: database unavailable");
                    if shutdown.is_cancelled() && backoff >= Duration::from_secs(2) {
                        tracing::error!(
                            lost = pending.len(),
                            "shutting down with events the database never accepted"
                        );
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let n = pending.len().min(batch_size);
        let batch: Vec<&Staged> = pending.iter().take(n).collect();
        let (c, stmt) = client.as_mut().unwrap();
        match insert(c, stmt, &batch, &collector_id).await {
            Ok(inserted) => {
                backoff = Duration::from_millis(100);
                let now = Instant::now();
                for ev in &batch {
                    metrics
                        .stage_latency
                        .observe(now.duration_since(ev.arrived).as_secs_f64());
                }
                metrics.staged.add(inserted);
                metrics.duplicates.add(n as u64 - inserted);
                pending.drain(..n);
            }
            Err(e) => {
                metrics.db_errors.inc();
                if db::is_transient(&e) {
                    tracing::warn!(error = %db::cause_line(&e), buffered = pending.len(), "staging insert failed, will retry");
                } else {
                    // Not a passing fault (e.g. permission denied): an operator must act. The
                    // batch is kept and retried; nothing is dropped.
                    tracing::error!(error = %db::cause_line(&e), buffered = pending.len(), retry_in_ms = backoff.as_millis() as u64, "staging insert refused by the database");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                client = None;
            }
        }
    }
}

async fn connect(
    db: &DbConfig,
) -> Result<(tokio_postgres::Client, tokio_postgres::Statement), db::DbError> {
    let c = db::connect(db).await?;
    c.batch_execute("SET application_name = 'kick-collector'; SET synchronous_commit = on; SET plan_cache_mode = force_generic_plan")
        .await?;
    let stmt = c.prepare(INSERT).await?;
    Ok((c, stmt))
}

async fn insert(
    c: &mut tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    batch: &[&Staged],
    collector_id: &str,
) -> Result<u64, tokio_postgres::Error> {
    let source: Vec<&str> = batch.iter().map(|e| e.source.as_str()).collect();
    let topic: Vec<Option<&str>> = batch.iter().map(|e| e.topic.as_deref()).collect();
    let name: Vec<&str> = batch.iter().map(|e| e.event_name).collect();
    let chan: Vec<Option<i64>> = batch.iter().map(|e| e.channel_id).collect();
    let user: Vec<Option<i64>> = batch.iter().map(|e| e.user_id).collect();
    let ls: Vec<Option<i64>> = batch.iter().map(|e| e.livestream_id).collect();
    let at: Vec<Option<DateTime<Utc>>> = batch.iter().map(|e| e.event_time).collect();
    let payload: Vec<&str> = batch.iter().map(|e| e.payload.as_str()).collect();
    let key: Vec<&str> = batch.iter().map(|e| e.dedupe_key.as_str()).collect();
    let cid: Vec<&str> = batch.iter().map(|_| collector_id).collect();
    let recv: Vec<DateTime<Utc>> = batch.iter().map(|e| e.received_at).collect();
    let tx = c.transaction().await?;
    let n = tx
        .execute(
            stmt,
            &[
                &source, &topic, &name, &chan, &user, &ls, &at, &payload, &key, &cid, &recv,
            ],
        )
        .await?;
    if n > 0 {
        tx.batch_execute("NOTIFY raw_events").await?;
    }
    tx.commit().await?;
    Ok(n)
}
