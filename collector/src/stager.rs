//! Staging: events from every socket and from reconciliation become rows of `raw_events`,
//! with `ON CONFLICT (dedupe_key) DO NOTHING` and one `raw_events` doorbell per batch that
//! inserted a row, in the same single-statement transaction (see [`Doorbell`]). A batch counts
//! as staged only once it is on disk (the staged rows are the only copy of what Kick pushed):
//! by default the insert becomes visible to the writer at once and a durable barrier on a
//! connection of its own confirms the flush while the next batch is inserted (see
//! [`StagingCommit`] and [`BarrierAt`]).
//!
//! **Group commit.** A batch is whatever is waiting when the previous commit ends (up to
//! `BATCH_SIZE`): an idle collector commits each event at once, a busy one commits what arrived
//! during the previous commit. No timer waits for more.
//!
//! **Poison isolation.** A batch the database refuses for its data (SQLSTATE classes 22, 23 and
//! 54) is split in halves until the offending rows are found; the good rows commit, and each bad
//! row is kept, already processed, with the outcome `rejected: <reason>` and its original bytes
//! (base64) in the payload. One bad row affects only itself.
//!
//! **Outages.** Any other failure (the connection, a hung server, a permission problem) is an
//! outage: buffered events go to the [`Spool`] (fsync'd), and so does every event that arrives
//! until the database answers again; then the spool is replayed in order, and normal staging
//! resumes. An insert that takes longer than [`SUSPECT`] already sends new events to the spool
//! while it is waited for (up to [`STALL`]): slow or hung, nothing waits in memory only. A
//! flush that takes longer than [`SUSPECT`] (the barrier's, on a slow or hung disk) sends copies
//! of the unconfirmed batches to the spool, and of every batch inserted after them, while the
//! inserts go on and stay visible: the status path does not wait for the disk, and a barrier
//! that returns drops the copies (after [`STALL`] everything is spooled and replayed, as in an
//! outage). At shutdown, what cannot be committed within a few
//! seconds is spooled too. A process killed at any moment therefore loses at most the events of
//! the last second that had not yet reached the spool or the database.
//!
//! **Clock.** Rows are stamped by the database (`received_at = clock_timestamp()`). An event that
//! waited in a buffer or the spool is stamped instead with its observation time corrected by the
//! measured clock skew, so that a replay does not make old news look new.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use kick_shared::backoff::Backoff;
use kick_shared::config::DbConfig;
use kick_shared::db;
use kick_shared::health::Health;
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::apply::{APPLY_MAX_ROWS, Applier, ApplySettings, INSERT_APPLYING, PRIVILEGES};
use crate::leases::Leases;
use crate::metrics::CollectorMetrics;
use crate::rows::{self, Durability, Staged};
use crate::spool::{Spool, SpoolError};

/// An insert without an answer for this long is given up: the database is hung (the server's
/// own `statement_timeout` for the stager is the same). Until then the insert may still
/// complete (a lock held by a migration, a slow disk) while new events go to the spool.
pub const STALL: Duration = Duration::from_secs(15);
/// An insert without an answer for this long is suspect: its batch and what arrives meanwhile
/// are written to the spool at once (a normal commit takes milliseconds).
pub const SUSPECT: Duration = Duration::from_millis(500);
/// An insert without an answer for this long makes the collector unhealthy ("staging slow")
/// until it answers or is given up ([`STALL`], then an outage).
const SLOW: Duration = Duration::from_secs(5);
/// A fresh connection after a lost one, tried once before declaring an outage.
const QUICK_RECONNECT: Duration = Duration::from_secs(2);
/// Connecting and `SELECT 1` must answer within this for the database to count as back.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// An event that waited longer than this is stamped with its (skew-corrected) observation time.
const WAITED: Duration = Duration::from_secs(1);
/// A buffered event older than this makes the collector unhealthy ("staging stalled").
pub const STALLED_AFTER: Duration = Duration::from_secs(30);
/// At shutdown, events not committed within this long are spooled.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// The sending side, cloned into every socket task and the reconciler.
#[derive(Debug, Clone)]
pub struct StagerHandle {
    tx: mpsc::Sender<Staged>,
    metrics: Arc<CollectorMetrics>,
    /// The collector's leases: status rows are stamped with their token (`None`: the webhook
    /// receiver, which holds no leases).
    leases: Option<Arc<Leases>>,
}

impl StagerHandle {
    /// Stamps `ev` with its lease; `false` (and counted) when this collector does not hold its
    /// shard: a collector stages status only for its own shards.
    fn fence(&self, ev: &mut Staged) -> bool {
        if self.leases.as_ref().is_none_or(|l| l.stamp(ev)) {
            return true;
        }
        self.metrics.fenced.inc();
        tracing::debug!(dedupe_key = %ev.dedupe_key, "not staged: its shard is not this collector's");
        false
    }

    /// Queues an event for reconciliation, which can wait: it waits while the buffer is more
    /// than half full, so that a large reconcile never crowds out realtime events.
    pub async fn stage_wait(&self, mut ev: Staged) {
        if !self.fence(&mut ev) {
            return;
        }
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
    pub fn stage(&self, mut ev: Staged) {
        if !self.fence(&mut ev) {
            return;
        }
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

/// What the heartbeat reports about staging.
#[derive(Debug, Default)]
pub struct StagerStatus {
    pub buffered: AtomicU64,
    pub spooled: AtomicU64,
    /// Unix milliseconds of the oldest event not yet in the database (0: none).
    pub oldest_ms: AtomicI64,
    /// The collector's clock minus the database's, in milliseconds (set by the heartbeat).
    pub skew_ms: AtomicI64,
}

impl StagerStatus {
    pub fn oldest_buffered_at(&self) -> Option<DateTime<Utc>> {
        match self.oldest_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }
}

/// Everything the stager task needs; it survives the task (a restart continues with the same
/// queue, buffer and spool).
#[derive(Debug)]
pub struct Stager {
    db: DbConfig,
    /// The program staging (`application_name` of its sessions).
    program: &'static str,
    collector_id: String,
    batch_size: usize,
    /// See [`Settings::apply`].
    apply: Option<ApplySettings>,
    metrics: Arc<CollectorMetrics>,
    health: Arc<Health>,
    pub status: Arc<StagerStatus>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rx: mpsc::Receiver<Staged>,
    pending: VecDeque<Staged>,
    spool: Spool,
    /// Observation time of the oldest event in the spool.
    spool_oldest: Option<DateTime<Utc>>,
    /// Since when the database has been unavailable, and why.
    outage: Option<(Instant, DateTime<Utc>, String)>,
    /// Batches inserted (visible, asynchronously committed) whose barrier has not returned yet
    /// ([`BarrierAt::Separate`]), oldest first. Their events count as staged (and webhook
    /// deliveries are answered) only when a barrier sent after their insert returns.
    unconfirmed: VecDeque<Unconfirmed>,
    /// Sequence number of the next inserted batch.
    next_seq: u64,
    /// The spool holds nothing but copies of inserted batches up to this one (their flush was
    /// late, see [`Stager::spool_unconfirmed`]): a barrier that confirms it empties the spool,
    /// and there is nothing to replay meanwhile. `None`: the spool, if not empty, is replayed.
    covered: Option<u64>,
    /// Since when the oldest unconfirmed batch's flush has been late (past [`SUSPECT`]; health
    /// says so after [`SLOW`]).
    flush_late_since: Option<Instant>,
    /// The spool could not take copies of late batches (a full or failing disk): until then
    /// they stay inserted without a copy (see [`LateCopy::Impossible`]), and the copy is tried again.
    copy_again_at: Option<Instant>,
    /// Spool writes of buffered events that failed in a row (other than "full"): logged when
    /// the count doubles.
    spool_failures: u64,
}

impl State {
    /// A batch inserted beside the barriers (visible, not yet on disk) joins the unconfirmed
    /// ones under the next sequence number, which it returns.
    fn inserted(&mut self, events: Vec<Staged>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unconfirmed.push_back(Unconfirmed {
            seq,
            since: Instant::now(),
            events,
        });
        seq
    }
}

/// A batch waiting for its durable barrier.
#[derive(Debug)]
struct Unconfirmed {
    seq: u64,
    /// When its insert answered.
    since: Instant,
    events: Vec<Staged>,
}

/// Whether a copy of batch `u` is in the spool (its flush was late): [`Stager::spool_unconfirmed`]
/// copies every unconfirmed batch not yet copied and moves `covered` to the last, and everything
/// that empties or replays the spool clears `covered`, so `covered` is the only record.
fn copied(st: &State, u: &Unconfirmed) -> bool {
    st.covered.is_some_and(|c| u.seq <= c)
}

/// What became of the late batches (see [`Stager::spool_unconfirmed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LateCopy {
    /// Their copies are in the spool: a kill loses nothing.
    Done,
    /// The spool cannot take them (full, or the disk fails): they stay inserted without a copy,
    /// newer batches are still inserted, and the copy is tried again after [`SUSPECT`]. Taking
    /// them back instead would hold every status in memory until the flush returns, and a kill
    /// would lose what is held; inserted, a killed collector loses nothing (the database keeps
    /// the rows and flushes them when its disk answers).
    Impossible,
    /// The spool holds other events (an outage's, replayed before anything newer): the caller
    /// takes everything back, spools it and replays.
    Replay,
}

/// Who stages where, and how much.
#[derive(Debug, Clone)]
pub struct Settings {
    pub db: DbConfig,
    /// The program (`application_name` of its database sessions).
    pub program: &'static str,
    /// `raw_events.collector_id` of its rows.
    pub id: String,
    pub batch_size: usize,
    /// Events waiting in memory at most; the spool takes the rest.
    pub capacity: usize,
    /// The collector's shard leases (fencing); `None` for the webhook receiver.
    pub leases: Option<Arc<Leases>>,
    /// Apply the plain cases in the staging statement (see [`crate::apply`]); `None` for the
    /// webhook receiver (its rows are never plain cases, and its role may not write statuses).
    pub apply: Option<ApplySettings>,
}

/// Creates the stager.
pub fn new(
    settings: Settings,
    spool: Spool,
    metrics: Arc<CollectorMetrics>,
    health: Arc<Health>,
) -> (StagerHandle, Arc<Stager>) {
    let Settings {
        db,
        program,
        id: collector_id,
        batch_size,
        capacity,
        leases,
        apply,
    } = settings;
    let (tx, rx) = mpsc::channel(capacity);
    let handle = StagerHandle {
        tx,
        metrics: metrics.clone(),
        leases,
    };
    let spool_oldest = (!spool.is_empty()).then(Utc::now);
    let stager = Arc::new(Stager {
        db,
        program,
        collector_id,
        batch_size: batch_size.max(1),
        apply,
        metrics,
        health,
        status: Arc::new(StagerStatus::default()),
        state: Mutex::new(State {
            rx,
            pending: VecDeque::new(),
            spool,
            spool_oldest,
            outage: None,
            unconfirmed: VecDeque::new(),
            next_seq: 0,
            covered: None,
            flush_late_since: None,
            copy_again_at: None,
            spool_failures: 0,
        }),
    });
    (handle, stager)
}

/// One statement, in autocommit: the insert and its durable commit in one round trip. `$14`
/// rings the doorbell in the same transaction (see [`Doorbell`]); the count of inserted rows
/// comes back either way. A status row stamped with a lease (`$15` shard, `$16` token) is kept
/// only while that token is still its shard's (see `leases`): the rest come back as `fenced`.
const INSERT: &str = "WITH v AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::bigint[], $7::timestamptz[], $8::text[], $9::text[],
                         $11::timestamptz[], $12::timestamptz[], $13::text[], $15::int[],
                         $16::bigint[])
         AS v(s, t, n, c, u, l, e, p, k, o, r, x, g, f)),
  ok AS (
    SELECT * FROM v
    WHERE g IS NULL OR EXISTS (
        SELECT 1 FROM shard_leases sl
        WHERE sl.shard = v.g
          AND (sl.token = v.f OR (sl.prev_token = v.f AND sl.handoff_until > clock_timestamp())))),
  ins AS (
    INSERT INTO raw_events
    (source, topic, event_name, kick_channel_id, kick_user_id, livestream_id, event_time, payload,
     dedupe_key, collector_id, observed_at, received_at, processed_at, outcome, lease_shard,
     lease_token)
    SELECT s, t, n, c, u, l, e, p::jsonb, k, $10, o,
           least(coalesce(r, clock_timestamp()), clock_timestamp()),
           CASE WHEN x IS NULL THEN NULL ELSE clock_timestamp() END, x, g, f
    FROM ok
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING 1),
  n AS (SELECT count(*) AS inserted FROM ins)
  SELECT inserted, (SELECT count(*) FROM v) - (SELECT count(*) FROM ok) AS fenced,
         0::bigint AS applied,
         CASE WHEN inserted > 0 AND $14 THEN pg_notify('raw_events', '') END AS rung
  FROM n";

/// Where the `raw_events` doorbell (NOTIFY) rings. `commit` (the default): `pg_notify` inside
/// the durable insert statement, delivered when its commit is flushed: one statement, one round
/// trip, one commit per batch. `after`: in a tiny asynchronous transaction right after the
/// insert commits (PostgreSQL holds a cluster-wide lock from a notifying commit until its
/// commit record is flushed, so the in-commit doorbell can make the writer's own notifying
/// commits wait for this fsync). Measured side by side with CPUs pinned (BENCHMARKS.md,
/// "Latency against a single process"), `commit` had the lower tail at 20 and 100 events/s
/// (staged → writer start p99 1.6–2.5 ms against 2.5–9.9 ms) and neither won at 1,000: the
/// extra round trip costs more than the lock. `KICK_STAGING_DOORBELL` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doorbell {
    InCommit,
    After,
}

impl Doorbell {
    fn from_env() -> Doorbell {
        env_choice(
            "KICK_STAGING_DOORBELL",
            &[("commit", Doorbell::InCommit), ("after", Doorbell::After)],
        )
    }
}

/// A setting read from the environment as one of `choices`, the first being the default.
fn env_choice<T: Copy>(var: &str, choices: &[(&str, T)]) -> T {
    choice(var, std::env::var(var).ok().as_deref(), choices)
}

/// `value` of setting `var` as one of `choices`; absent or empty: the first; unknown: the
/// first, with a warning (the value cut to 40 characters, quoted).
fn choice<T: Copy>(var: &str, value: Option<&str>, choices: &[(&str, T)]) -> T {
    let (default_name, default) = choices[0];
    // Empty is unset, as for every other setting.
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return default;
    };
    match choices.iter().find(|(name, _)| *name == value) {
        Some((_, choice)) => *choice,
        None => {
            // Quoted and escaped: a newline in the value must not forge a log line.
            tracing::warn!(
                value = ?value.chars().take(40).collect::<String>(),
                "{var} is none of the known values: using '{default_name}'"
            );
            default
        }
    }
}

/// When staged rows become visible to the writer. `early` (the default): the insert commits
/// asynchronously (the row is visible and the doorbell rings at once) and, in the same round
/// trip, a durable barrier follows ([`BARRIER`], committed with `synchronous_commit = on`: its
/// commit flushes the log up to and past the insert). The batch
/// counts as staged only when the barrier returns; if it fails, the batch is staged again (the
/// dedupe key makes that harmless) or spooled, exactly as a failed durable insert. The
/// writer's changes follow the staged rows in the log, so a crash before the flush loses both
/// or neither, and the collector, still holding the batch, stages it again. Nothing is flushed
/// later than with `durable`, so what a crash can lose is the same; what `early` changes is
/// that a status may be seen for the moment of the flush before it is crash-safe (as the
/// writer's own asynchronous commits already allow). `durable`: the insert commits with
/// `synchronous_commit = on`, so the writer sees a row only once it is on disk and the status
/// waits for that flush (one fsync on the path: staged → writer start p50 0.7–1.5 ms against
/// 0.2–0.5 ms, kick-bench's end-to-end p50 up to 1 ms higher; BENCHMARKS.md, "Latency against a
/// single process"); a batch that found some of its rows there already runs the barrier too
/// (see [`BARRIER`]). `KICK_STAGING_COMMIT` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagingCommit {
    Durable,
    Early,
}

impl Applier {
    fn from_env() -> Applier {
        env_choice(
            "KICK_STAGING_APPLY",
            &[
                ("collector", Applier::Collector),
                ("writer", Applier::Writer),
            ],
        )
    }
}

impl StagingCommit {
    fn from_env() -> StagingCommit {
        env_choice(
            "KICK_STAGING_COMMIT",
            &[
                ("early", StagingCommit::Early),
                ("durable", StagingCommit::Durable),
            ],
        )
    }
}

/// The durable barrier: the stager's own row of `staging_barriers` (V9), updated in a
/// transaction committed with `synchronous_commit = on`. Its commit always writes to the log, so
/// it always flushes, and the flush covers every commit before it on this server: the staged
/// batch's asynchronous one, or (after a retry whose rows all conflicted, which writes nothing)
/// the earlier attempt's.
const BARRIER: &str = "INSERT INTO staging_barriers (stager) VALUES ($1)
     ON CONFLICT (stager) DO UPDATE SET at = clock_timestamp()";

/// Runs [`BARRIER`] in its own durable transaction on the staging connection: three requests
/// sent together, one round trip. A failure aborts the transaction and `COMMIT` ends it.
async fn barrier(conn: &Conn, stager: &str) -> Result<(), tokio_postgres::Error> {
    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&stager];
    futures_util::try_join!(
        conn.client
            .batch_execute("BEGIN; SET LOCAL synchronous_commit = on"),
        conn.client.execute(&conn.barrier, &args),
        conn.client.batch_execute("COMMIT"),
    )?;
    Ok(())
}

/// Where the durable barrier of a batch runs (with `KICK_STAGING_COMMIT=early`). `separate`
/// (the default): on a connection of its own, sent once the batch's insert has answered, while
/// the next batch's insert already runs on the staging connection; a barrier covers every
/// batch whose insert answered before it was sent, and one is in flight at a time (what is
/// inserted meanwhile waits for the next). `inline`: in the same round trip as the insert, so
/// the next batch waits for this one's flush. `KICK_STAGING_BARRIER` chooses; measured in
/// BENCHMARKS.md ("Latency against a single process").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierAt {
    Inline,
    Separate,
}

impl BarrierAt {
    fn from_env() -> BarrierAt {
        env_choice(
            "KICK_STAGING_BARRIER",
            &[
                ("separate", BarrierAt::Separate),
                ("inline", BarrierAt::Inline),
            ],
        )
    }
}

/// How long a separate barrier waits before it is sent, by default. The barrier is not on the
/// status path (the insert is visible and the doorbell rung before it goes), but on one busy
/// core its round trip, commit and flush ran in the very window in which the writer applied
/// the batch it covers, and took CPU from it: sent 3 ms later it runs after the writer has
/// committed. Measured on Centrifugo, 10,000 streamers, pinned (BENCHMARKS.md, "Latency against
/// a single process"): end to end at 100 events/s p50 1.8–2.1 → 1.5–1.6 ms, at 1,000/s p50
/// 2.2 → 1.2–1.6 ms, p99 7.1 → 4.5–5.4 ms. What it costs: a batch is confirmed (counted staged, its
/// webhook deliveries answered) 3 ms later, and the window in which a crash of the database
/// *and* the collector together loses a batch that was not yet flushed widens by as much;
/// kept in memory meanwhile, a batch is staged again if the database alone fails.
const BARRIER_DELAY: Duration = Duration::from_millis(3);

/// The longest barrier delay `KICK_STAGING_BARRIER_DELAY_MS` may ask for: beyond it unconfirmed
/// batches would pile up towards the 500 ms after which they are spooled.
const BARRIER_DELAY_MAX_MS: u64 = 100;

/// The barrier delay from `KICK_STAGING_BARRIER_DELAY_MS` (whole milliseconds, 0 to
/// [`BARRIER_DELAY_MAX_MS`], spaces around allowed); absent or empty: [`BARRIER_DELAY`];
/// anything else: the default, with a warning.
fn barrier_delay(value: Option<&str>) -> Duration {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return BARRIER_DELAY;
    };
    match value.trim().parse::<u64>() {
        Ok(ms) if ms <= BARRIER_DELAY_MAX_MS => Duration::from_millis(ms),
        _ => {
            tracing::warn!(
                value = ?value.chars().take(40).collect::<String>(),
                "KICK_STAGING_BARRIER_DELAY_MS is not a whole number of milliseconds from 0 to \
                 {BARRIER_DELAY_MAX_MS}: using {} ms",
                BARRIER_DELAY.as_millis()
            );
            BARRIER_DELAY
        }
    }
}

/// The barrier connection of [`BarrierAt::Separate`]: autocommit with `synchronous_commit = on`,
/// so [`BARRIER`] alone is its durable transaction (one statement, one round trip).
#[derive(Clone)]
struct Side {
    client: Arc<tokio_postgres::Client>,
    barrier: tokio_postgres::Statement,
    /// Waited before each barrier is sent (see [`BARRIER_DELAY`]).
    delay: Duration,
}

/// A barrier in flight on the [`Side`] connection: it covers the unconfirmed batches up to
/// `seq`.
type InFlight = (
    u64,
    std::pin::Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>,
);

impl Side {
    fn barrier(&self, stager: &str, seq: u64) -> InFlight {
        let side = self.clone();
        let stager = stager.to_owned();
        (
            seq,
            Box::pin(async move {
                // Still covers exactly the batches whose inserts answered before `seq` was
                // taken: the statement goes later, never earlier.
                if !side.delay.is_zero() {
                    tokio::time::sleep(side.delay).await;
                }
                side.client.execute(&side.barrier, &[&stager]).await?;
                Ok(())
            }),
        )
    }
}

/// A database connection ready to stage.
struct Conn {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    /// [`INSERT_APPLYING`], when this stager applies and its role may.
    applying: Option<tokio_postgres::Statement>,
    /// When to ask again whether the role may apply (it may not yet; see [`APPLY_RECHECK`]).
    recheck_applying: Option<Instant>,
    barrier: tokio_postgres::Statement,
    doorbell: Doorbell,
    commit: StagingCommit,
    /// The barrier connection when barriers run beside the inserts.
    side: Option<Side>,
}

/// One session of the stager, its commits durable (`sync` "on") or not ("off").
async fn session(
    db: &DbConfig,
    program: &'static str,
    sync: &'static str,
) -> Result<tokio_postgres::Client, db::DbError> {
    let client = db::connect(db).await?;
    // The statement timeout ends a query the server accepted but cannot finish (a lock held
    // elsewhere); a hung server is caught on our side by STALL. `program` and `sync` are our
    // constants.
    client
        .batch_execute(&format!(
            "SET application_name = '{program}'; SET synchronous_commit = {sync};
             SET plan_cache_mode = force_generic_plan; SET statement_timeout = '15s'"
        ))
        .await?;
    Ok(client)
}

async fn connect(db: &DbConfig, program: &'static str, apply: bool) -> Result<Conn, db::DbError> {
    let commit = StagingCommit::from_env();
    let sync = match commit {
        StagingCommit::Durable => "on",
        StagingCommit::Early => "off",
    };
    let client = session(db, program, sync).await?;
    let insert = client.prepare(INSERT).await?;
    let (applying, recheck_applying) = if apply && Applier::from_env() == Applier::Collector {
        match applying_statement(&client).await? {
            Some(s) => (Some(s), None),
            None => (None, Some(Instant::now() + APPLY_RECHECK)),
        }
    } else {
        (None, None)
    };
    let barrier = client.prepare(BARRIER).await?;
    let side = match (commit, BarrierAt::from_env()) {
        (StagingCommit::Early, BarrierAt::Separate) => {
            let side = session(db, program, "on").await?;
            let barrier = side.prepare(BARRIER).await?;
            Some(Side {
                client: Arc::new(side),
                barrier,
                delay: barrier_delay(
                    std::env::var("KICK_STAGING_BARRIER_DELAY_MS")
                        .ok()
                        .as_deref(),
                ),
            })
        }
        _ => None,
    };
    Ok(Conn {
        client,
        insert,
        applying,
        recheck_applying,
        barrier,
        // Early visibility rings in the insert: the point is that the writer starts at once.
        doorbell: match commit {
            StagingCommit::Durable => Doorbell::from_env(),
            StagingCommit::Early => Doorbell::InCommit,
        },
        commit,
        side,
    })
}

/// A collector whose role may not execute `stage_applying` asks again this often: a database
/// migrated, or roles granted, while it runs (an upgrade) must not leave it staging everything
/// for the writer until its next restart.
const APPLY_RECHECK: Duration = Duration::from_secs(30);

/// [`INSERT_APPLYING`] prepared, if this session's role may execute it (see [`crate::apply`]).
async fn applying_statement(
    client: &tokio_postgres::Client,
) -> Result<Option<tokio_postgres::Statement>, tokio_postgres::Error> {
    if client
        .query_one(PRIVILEGES, &[])
        .await?
        .get::<_, bool>("ok")
    {
        return Ok(Some(client.prepare(INSERT_APPLYING).await?));
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        tracing::warn!(
            "the collector's database role may not execute stage_applying (the database not migrated to V10 yet, or the roles not granted: `kick-admin db migrate`, `kick-admin db roles`): every event is left to the writer; asked again every {} s",
            APPLY_RECHECK.as_secs()
        );
    });
    Ok(None)
}

/// Whether the database refused the rows for their content (so retrying them unchanged can
/// never succeed, and another row of the batch is not to blame).
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let class = &c.code()[..2];
        matches!(class, "22" | "23" | "54") && c != &SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// One insert transaction; returns how many rows were inserted (not deduplicated) and fenced.
/// With `early` commits and `inline`, the barrier runs in the same round trip; without, the
/// caller has it run later (see [`BarrierAt`]).
async fn insert(
    conn: &mut Conn,
    rows: &[&Staged],
    collector_id: &str,
    skew_ms: i64,
    inline: bool,
    apply: Apply,
) -> Result<Counts, tokio_postgres::Error> {
    let source: Vec<&str> = rows.iter().map(|e| e.source.as_str()).collect();
    let topic: Vec<Option<&str>> = rows.iter().map(|e| e.topic.as_deref()).collect();
    let name: Vec<&str> = rows.iter().map(|e| e.event_name.as_str()).collect();
    let chan: Vec<Option<i64>> = rows.iter().map(|e| e.channel_id).collect();
    let user: Vec<Option<i64>> = rows.iter().map(|e| e.user_id).collect();
    let ls: Vec<Option<i64>> = rows.iter().map(|e| e.livestream_id).collect();
    let at: Vec<Option<DateTime<Utc>>> = rows.iter().map(|e| e.event_time).collect();
    let payload: Vec<&str> = rows.iter().map(|e| e.payload.as_str()).collect();
    let key: Vec<&str> = rows.iter().map(|e| e.dedupe_key.as_str()).collect();
    let obs: Vec<DateTime<Utc>> = rows.iter().map(|e| e.observed_at).collect();
    let recv: Vec<Option<DateTime<Utc>>> = rows
        .iter()
        .map(|e| {
            e.received_at
                .or_else(|| (e.arrived.elapsed() > WAITED).then(|| db_time(e.observed_at, skew_ms)))
        })
        .collect();
    let outcome: Vec<Option<&str>> = rows.iter().map(|e| e.outcome.as_deref()).collect();
    let shard: Vec<Option<i32>> = rows.iter().map(|e| e.lease.map(|l| l.0)).collect();
    let token: Vec<Option<i64>> = rows.iter().map(|e| e.lease.map(|l| l.1)).collect();
    let in_commit = conn.doorbell == Doorbell::InCommit;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 17] = [
        &source,
        &topic,
        &name,
        &chan,
        &user,
        &ls,
        &at,
        &payload,
        &key,
        &collector_id,
        &obs,
        &recv,
        &outcome,
        &in_commit,
        &shard,
        &token,
        &apply.offlines,
    ];
    let insert = match (&conn.applying, apply.plain) {
        (Some(applying), true) if rows.len() <= APPLY_MAX_ROWS => {
            conn.client.query_one(applying, &params)
        }
        _ => conn.client.query_one(&conn.insert, &params[..16]),
    };
    let row = match conn.commit {
        StagingCommit::Early if !inline => insert.await?,
        StagingCommit::Durable => insert.await?,
        // Sent together: the barrier's flush covers the insert's asynchronous commit.
        StagingCommit::Early => futures_util::try_join!(insert, barrier(conn, collector_id))?.0,
    };
    let n: i64 = row.get("inserted");
    let fenced: i64 = row.get("fenced");
    let applied: i64 = row.get("applied");
    if conn.commit == StagingCommit::Durable && (n + fenced) < rows.len() as i64 {
        // Some rows were there already: maybe from an attempt whose answer was lost, committed
        // but not yet flushed. This insert wrote nothing for them, so its commit flushed
        // nothing; the barrier does.
        barrier(conn, collector_id).await?;
    }
    if n > 0 && !in_commit {
        // The rows are durable: ring without waiting for another fsync.
        conn.client
            .batch_execute("BEGIN; SET LOCAL synchronous_commit = off; NOTIFY raw_events; COMMIT")
            .await?;
    }
    Ok(Counts {
        inserted: n as u64,
        fenced: fenced as u64,
        applied: applied as u64,
    })
}

/// Whether a batch's plain cases are applied while staging (see [`crate::apply`]).
#[derive(Debug, Clone, Copy)]
struct Apply {
    /// Apply the plain cases (when the connection can).
    plain: bool,
    /// Offlines too (the offline grace is zero).
    offlines: bool,
}

impl Apply {
    const NOTHING: Apply = Apply {
        plain: false,
        offlines: false,
    };
}

/// What one insert statement did.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Rows inserted (the rest of the kept rows were duplicates).
    inserted: u64,
    /// Rows refused because their lease token was no longer their shard's.
    fenced: u64,
    /// Rows applied while staging (see [`crate::apply`]).
    applied: u64,
}

/// Whether a running count of refusals going from `before` to `after` (> 0) deserves a log line:
/// the first time, then at each doubling. A fault that lasts refuses every event; a line each
/// would flood the journal, and a line only the first time would hide how much it cost.
fn doubled(before: u64, after: u64) -> bool {
    before == 0 || after.ilog2() > before.ilog2()
}

/// The database's clock at a local instant, estimated from the measured skew.
fn db_time(local: DateTime<Utc>, skew_ms: i64) -> DateTime<Utc> {
    local - chrono::Duration::milliseconds(skew_ms)
}

/// The last resort for a row the database refused: the same event as a processed
/// `rejected: <reason>` row carrying only what cannot be refused (its bytes in base64).
fn rejected(row: &Staged, reason: &str) -> Staged {
    let original = serde_json::to_vec(row).unwrap_or_default();
    let mut r = rows::rejected_frame("staging", reason, &original, row.observed_at);
    r.source = row.source;
    r.channel_id = row.channel_id.filter(|c| *c > 0);
    r.user_id = row.user_id.filter(|u| *u > 0);
    r
}

/// What became of a batch.
#[derive(Debug, Default)]
struct Inserted {
    inserted: u64,
    rejected: u64,
    fenced: u64,
    applied: u64,
}

/// Inserts `rows`, isolating rows the database refuses for their data. A connection-level
/// failure is returned (nothing is known about which parts committed: the caller spools all).
async fn insert_isolating(
    conn: &mut Conn,
    rows: &[Staged],
    collector_id: &str,
    skew_ms: i64,
    inline: bool,
    apply: Apply,
) -> Result<Inserted, tokio_postgres::Error> {
    let mut out = Inserted::default();
    // Ranges still to insert; a refused range is split in two.
    let mut todo: Vec<&[Staged]> = vec![rows];
    // Refused once for its data, a batch is staged without applying: the writes of the
    // applied rows must not cost the staging of any row (the writer then decides them, and
    // isolates what it cannot apply).
    let mut apply = apply;
    while let Some(part) = todo.pop() {
        let refs: Vec<&Staged> = part.iter().collect();
        match insert(conn, &refs, collector_id, skew_ms, inline, apply).await {
            Ok(n) => {
                out.inserted += n.inserted;
                out.fenced += n.fenced;
                out.applied += n.applied;
            }
            Err(e) if is_data_error(&e) && apply.plain => {
                tracing::warn!(error = %db::cause_line(&e), "a batch could not be applied while staging: staged for the writer");
                apply = Apply::NOTHING;
                todo.push(part);
            }
            Err(e) if is_data_error(&e) && part.len() > 1 => {
                let (a, b) = part.split_at(part.len() / 2);
                // Keep the original order: the first half is inserted first.
                todo.push(b);
                todo.push(a);
            }
            Err(e) if is_data_error(&e) => {
                let reason = format!(
                    "{} {}",
                    e.code().map(|c| c.code()).unwrap_or("?"),
                    db::cause_line(&e)
                );
                tracing::error!(dedupe_key = %part[0].dedupe_key, reason = %reason, "staged row refused by the database: kept as rejected");
                let r = rejected(&part[0], &reason);
                match insert(conn, &[&r], collector_id, skew_ms, inline, Apply::NOTHING).await {
                    Ok(_) => out.rejected += 1,
                    Err(e2) if is_data_error(&e2) => {
                        // Even the base64 form was refused: nothing more can be done with it.
                        tracing::error!(dedupe_key = %part[0].dedupe_key, error = %db::cause_line(&e2), "rejected row refused too: dropped");
                    }
                    Err(e2) => return Err(e2),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// When the stager next probes a database it could not stage into, and how long it waits
/// after the next failure: doubling from 100 ms to 5 s, and back to 100 ms only after a commit
/// (a server that answers a probe but refuses the insert or the barrier is not retried in a
/// loop).
struct Retry {
    next_probe: Instant,
    delay: Backoff,
}

impl Retry {
    fn new() -> Self {
        Retry {
            next_probe: Instant::now(),
            delay: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// Probe again after the current delay.
    fn probe_later(&mut self) {
        self.next_probe = Instant::now() + self.delay.current();
    }

    /// A failure: probe again after the current delay, and wait twice as long after the next.
    fn failed(&mut self) {
        self.next_probe = Instant::now() + self.delay.next_delay();
    }

    /// A commit: the next outage starts from the first delay.
    fn committed(&mut self) {
        self.delay.reset();
    }
}

impl Stager {
    /// Runs until `shutdown`, then commits or spools what is left. Restartable: everything it
    /// needs lives in `self`.
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        let mut conn: Option<Conn> = None;
        // The barrier in flight beside the inserts, if any.
        let mut inflight: Option<InFlight> = None;
        // A restarted task: what the last one inserted unconfirmed is staged again.
        self.take_back(st, None);
        let mut retry = Retry::new();
        // One immediate reconnect per run of successful commits (see below).
        let mut quick_retry = true;
        loop {
            self.publish_status(st);
            if shutdown.is_cancelled() {
                // Unconfirmed batches are committed again with their barrier (or spooled).
                self.take_back(st, None);
                self.finish(st, &mut conn).await;
                return Ok(());
            }
            // Outage: spool what is buffered, keep spooling what arrives, probe now and then.
            if st.outage.is_some() {
                self.spool_pending(st);
                if Instant::now() >= retry.next_probe {
                    match self.probe_while_spooling(st, &shutdown).await {
                        Ok(c) => {
                            let (since, _, _) = st.outage.take().unwrap();
                            tracing::info!(
                                down_for_s = since.elapsed().as_secs(),
                                spooled = st.spool.events(),
                                "staging: database is back"
                            );
                            conn = Some(c);
                            // With something to stage, the problem stays until it is staged: a
                            // server that answers `SELECT 1` while a lock holds every insert is
                            // not back. With nothing, the answer is all there is to prove.
                            if st.spool.is_empty() && st.pending.is_empty() {
                                self.health.clear("staging");
                            }
                            self.metrics.db_up.set(1.0);
                            // The back-off is reset by a commit, not by a probe: a server that
                            // answers `SELECT 1` but refuses the insert or the barrier (a
                            // revoked grant) is probed at the growing interval, not in a loop.
                            quick_retry = true;
                            continue;
                        }
                        Err(e) => {
                            self.note_outage(st, &e);
                            retry.failed();
                        }
                    }
                }
                tokio::select! {
                    ev = st.rx.recv() => if let Some(ev) = ev { st.pending.push_back(ev) },
                    _ = tokio::time::sleep_until(retry.next_probe.into()) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            let Some(c) = conn.as_mut() else {
                match self.probe_while_spooling(st, &shutdown).await {
                    Ok(c) => {
                        conn = Some(c);
                        self.metrics.db_up.set(1.0);
                    }
                    Err(e) => {
                        self.metrics.db_up.set(0.0);
                        self.note_outage(st, &e);
                        retry.probe_later();
                    }
                }
                continue;
            };
            // Replay what an outage (or an earlier process) left in the spool, before newer events
            // (not copies of inserted batches waiting for their flush: a barrier confirms those).
            if !st.spool.is_empty() && st.covered.is_none() {
                // An inline replay's barriers cover what is unconfirmed too; after a replay
                // beside the barriers, the next barrier is sent after its last batch.
                inflight = None;
                match self.replay(st, c).await {
                    Ok(true) => self.staged_again(st, &mut retry),
                    // Inserted beside the barriers: the barrier that confirms them goes now.
                    Ok(false) => self.next_barrier(c, st, &mut inflight),
                    Err(e) => {
                        conn = None;
                        self.take_back(st, None);
                        self.note_outage(st, &e);
                        retry.failed();
                    }
                }
                continue;
            }
            // A barrier beside the inserts that has returned: what it covers is staged.
            let mut done = None;
            if let Some((seq, fut)) = inflight.as_mut()
                && let Some(r) = fut.as_mut().now_or_never()
            {
                done = Some((*seq, r));
            }
            // Normal: wait for events, then commit everything waiting (group commit).
            if done.is_none() && st.pending.is_empty() {
                // The oldest batch's flush becomes late at `SUSPECT`; once it is, every batch
                // inserted after it is copied to the spool at once, and the barrier in flight is
                // given up at `STALL`.
                let suspect_at = match (st.unconfirmed.front(), st.flush_late_since) {
                    (Some(u), None) => u.since + SUSPECT,
                    (Some(u), Some(_)) if st.unconfirmed.iter().any(|b| !copied(st, b)) => {
                        st.copy_again_at.map_or(u.since, |at| at.max(u.since))
                    }
                    (Some(_), Some(late)) if late.elapsed() < SLOW => late + SLOW,
                    (Some(u), Some(_)) => u.since + STALL,
                    (None, _) => Instant::now(),
                };
                tokio::select! {
                    r = async { inflight.as_mut().expect("guarded").1.as_mut().await }, if inflight.is_some() => {
                        done = Some((inflight.as_ref().expect("guarded").0, r));
                    }
                    _ = tokio::time::sleep_until(suspect_at.into()), if !st.unconfirmed.is_empty() => {}
                    ev = st.rx.recv() => match ev {
                        Some(ev) => st.pending.push_back(ev),
                        // Every sender is gone (the process is stopping): nothing more comes;
                        // the stop itself ends this task (returning now would look like a
                        // failure to the supervisor).
                        None => {
                            shutdown.cancelled().await;
                            continue;
                        }
                    },
                    _ = shutdown.cancelled() => continue,
                }
            }
            let mut failed = None;
            if let Some((seq, r)) = done {
                inflight = None;
                match r {
                    Ok(()) => {
                        self.confirm(st, seq);
                        quick_retry = true;
                        self.staged_again(st, &mut retry);
                    }
                    Err(e) => {
                        self.metrics.db_errors.inc();
                        self.take_back(st, None);
                        failed = Some(db::cause_line(&e));
                    }
                }
            }
            if failed.is_none() {
                // The oldest batch has waited too long for its flush (a slow or hung disk): copies
                // of the unconfirmed batches go to the spool (a kill now loses nothing) while
                // their rows stay visible and newer batches are still inserted, and copied too,
                // until a barrier returns. Past `STALL` (the database hung), or when the spool
                // cannot take them, everything is taken back and spooled, and the replay's
                // barrier confirms it or finds the database hung.
                let age = st.unconfirmed.front().map(|u| u.since.elapsed());
                if age.is_some_and(|a| a >= SUSPECT)
                    && (age.is_some_and(|a| a >= STALL)
                        || self.spool_unconfirmed(st) == LateCopy::Replay)
                {
                    inflight = None;
                    self.take_back(st, None);
                    self.spool_pending(st);
                    continue;
                }
                self.next_barrier(c, st, &mut inflight);
                if st.pending.is_empty() {
                    continue;
                }
                while st.pending.len() < self.batch_size {
                    match st.rx.try_recv() {
                        Ok(ev) => st.pending.push_back(ev),
                        Err(_) => break,
                    }
                }
                let n = st.pending.len().min(self.batch_size);
                let batch: Vec<Staged> = st.pending.drain(..n).collect();
                let later = c.side.is_some();
                match self.commit(st, c, &batch, false, later).await {
                    Ok(()) => {
                        if later {
                            st.inserted(batch);
                            self.next_barrier(c, st, &mut inflight);
                        } else {
                            // Only a durable commit proves the database works: a server that
                            // takes inserts but refuses every barrier is not retried in a loop.
                            quick_retry = true;
                            self.staged_again(st, &mut retry);
                        }
                        self.metrics.db_up.set(1.0);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                conn = None;
                inflight = None;
                // A connection the server dropped (a restart, an idle timeout) is not an
                // outage yet: one fresh connection is tried at once before events go to
                // the spool. The batch is back in `pending` (a replay dedupes).
                if std::mem::take(&mut quick_retry)
                    && let Ok(Ok(c)) = tokio::time::timeout(
                        QUICK_RECONNECT,
                        connect(&self.db, self.program, self.apply.is_some()),
                    )
                    .await
                {
                    tracing::info!(error = %e, "staging: connection lost; reconnected at once");
                    conn = Some(c);
                    continue;
                }
                self.metrics.db_up.set(0.0);
                self.note_outage(st, &e);
                retry.failed();
            }
        }
    }

    /// Sends the next barrier when none is in flight and a batch waits for one: it covers every
    /// batch inserted so far.
    fn next_barrier(&self, c: &Conn, st: &State, inflight: &mut Option<InFlight>) {
        if inflight.is_none()
            && let (Some(side), Some(last)) = (&c.side, st.unconfirmed.back())
        {
            *inflight = Some(side.barrier(&self.collector_id, last.seq));
        }
    }

    /// A batch is on disk: an outage (if any) is over and the next one starts from the first
    /// probe delay. A spool that could not be written (full, failing) no longer matters once it
    /// is empty and no late batch waits for a copy: its problem is reported again when the
    /// spool is next needed, not kept while nothing uses it.
    fn staged_again(&self, st: &State, retry: &mut Retry) {
        retry.committed();
        self.health.clear("staging");
        self.health.clear("staging flush");
        if st.spool.is_empty() && st.copy_again_at.is_none() {
            self.health.clear("spool");
        }
    }

    /// The barrier sent after batch `seq`'s insert has returned: that batch and every earlier
    /// one are on disk. Their events count as staged; webhook deliveries are answered.
    fn confirm(&self, st: &mut State, seq: u64) {
        let now = Instant::now();
        while st.unconfirmed.front().is_some_and(|u| u.seq <= seq) {
            let u = st.unconfirmed.pop_front().expect("checked");
            self.acknowledge(&u.events, now);
        }
        st.flush_late_since = None;
        if st.copy_again_at.take().is_some() && st.spool.is_empty() {
            // The copies were not needed after all; what the spool lacks now is reported when
            // it is next needed.
            self.health.clear("spool");
        }
        // The spool holds only copies of batches now on disk.
        if st.covered.is_some_and(|last| last <= seq) {
            st.covered = None;
            match st.spool.clear() {
                Ok(()) => {
                    st.spool_oldest = None;
                    self.health.clear("spool");
                }
                // Left to a replay, which dedupes.
                Err(e) => tracing::warn!(error = %e, "cannot empty the spool; it will be replayed"),
            }
        }
    }

    /// Copies of the unconfirmed batches not yet in the spool go there: their flush is late (a
    /// slow or hung disk, the barrier's row locked). They stay inserted and visible (the status
    /// path does not wait for the disk), the barrier in flight stays in flight, and the copies
    /// are dropped when a barrier confirms them. Health says "staging flush" once the flush has
    /// been late for [`SLOW`], until a batch is on disk again (a key of its own: every insert that
    /// answers clears "staging slow").
    fn spool_unconfirmed(&self, st: &mut State) -> LateCopy {
        if !st.spool.is_empty() && st.covered.is_none() {
            return LateCopy::Replay;
        }
        let since = *st.flush_late_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= SLOW {
            self.health.set(
                "staging flush",
                format!(
                    "the database has not answered a staging insert's flush for {}s (a slow or hung disk, a lock?): events are visible, and copied to the spool while it can take them, until it does",
                    SLOW.as_secs()
                ),
            );
        }
        let skew = self.status.skew_ms.load(Ordering::Relaxed);
        let mut rows = Vec::new();
        let mut last = None;
        for u in st.unconfirmed.iter().filter(|u| !copied(st, u)) {
            rows.extend(u.events.iter().cloned());
            last = Some(u.seq);
        }
        let Some(last) = last else {
            return LateCopy::Done;
        };
        if st.copy_again_at.is_some_and(|at| Instant::now() < at) {
            return LateCopy::Impossible;
        }
        for r in &mut rows {
            r.received_at
                .get_or_insert_with(|| db_time(r.observed_at, skew));
        }
        if let Err(e) = st.spool.append(&rows) {
            if st.copy_again_at.is_none() {
                tracing::error!(error = %e, "cannot copy batches whose flush is late to the spool: they stay inserted without a copy");
            }
            self.health.set("spool", e.to_string());
            st.copy_again_at = Some(Instant::now() + SUSPECT);
            return LateCopy::Impossible;
        }
        st.copy_again_at = None;
        st.covered = Some(st.covered.map_or(last, |c| c.max(last)));
        if st.spool_oldest.is_none() {
            st.spool_oldest = rows.iter().map(|r| r.observed_at).min();
        }
        for r in &rows {
            if let Some(a) = &r.ack {
                a.answer(Durability::Spooled);
            }
        }
        self.publish_status(st);
        LateCopy::Done
    }

    /// Every unconfirmed batch is covered: a barrier (an inline one, of a replay or a commit at
    /// shutdown) was sent after their inserts returned and has returned.
    fn confirm_all(&self, st: &mut State) {
        if let Some(last) = st.unconfirmed.back() {
            let seq = last.seq;
            self.confirm(st, seq);
        }
    }

    fn acknowledge(&self, events: &[Staged], now: Instant) {
        for ev in events {
            self.metrics
                .stage_latency
                .observe(now.duration_since(ev.arrived).as_secs_f64());
            if let Some(a) = &ev.ack {
                a.answer(Durability::Committed);
            }
        }
    }

    /// Puts what is not known to be on disk back at the front of `pending`, in order: the
    /// unconfirmed batches, then `batch` (when given), then what was waiting. Staging them again
    /// is harmless (the dedupe key).
    fn take_back(&self, st: &mut State, batch: Option<&[Staged]>) {
        // Copies of unconfirmed batches in the spool are replayed now, with everything else.
        st.covered = None;
        st.flush_late_since = None;
        st.copy_again_at = None;
        let waiting: Vec<Staged> = st.pending.drain(..).collect();
        for u in st.unconfirmed.drain(..) {
            st.pending.extend(u.events);
        }
        if let Some(batch) = batch {
            st.pending.extend(batch.iter().cloned());
        }
        st.pending.extend(waiting);
    }

    /// Commits one batch while still receiving events. When the database is slow to answer
    /// ([`SUSPECT`]), the batch and everything arriving meanwhile go to the spool at once (so a
    /// kill now loses nothing; a later replay dedupes what did commit); after [`STALL`] without
    /// an answer, it gives up (an outage).
    ///
    /// `later`: the batch's barrier is left to the caller ([`BarrierAt::Separate`]): `Ok` means
    /// inserted and visible, not yet on disk. Otherwise `Ok` means on disk, for this batch and
    /// for every unconfirmed one (the barrier was sent after their inserts returned).
    async fn commit(
        &self,
        st: &mut State,
        c: &mut Conn,
        batch: &[Staged],
        batch_in_spool: bool,
        later: bool,
    ) -> Result<(), String> {
        let skew = self.status.skew_ms.load(Ordering::Relaxed);
        if c.recheck_applying.is_some_and(|t| t <= Instant::now()) {
            c.recheck_applying = None;
            match applying_statement(&c.client).await {
                Ok(Some(s)) => {
                    tracing::info!(
                        "the collector's role may execute stage_applying now: it applies the plain cases again"
                    );
                    c.applying = Some(s);
                }
                // (A failure here is met again by the insert that follows, which handles it.)
                Ok(None) | Err(_) => c.recheck_applying = Some(Instant::now() + APPLY_RECHECK),
            }
        }
        let apply = self.apply.as_ref().map_or(Apply::NOTHING, |a| Apply {
            plain: true,
            offlines: a.offlines(),
        });
        let fut = insert_isolating(c, batch, &self.collector_id, skew, !later, apply);
        tokio::pin!(fut);
        let stall = tokio::time::sleep(STALL);
        tokio::pin!(stall);
        let suspect = tokio::time::sleep(SUSPECT);
        tokio::pin!(suspect);
        let slow = tokio::time::sleep(SLOW);
        tokio::pin!(slow);
        let mut said_slow = false;
        // A batch read from the spool is there already: it is never written again.
        let mut spooling = false;
        let result = loop {
            tokio::select! {
                r = &mut fut => {
                    self.health.clear("staging slow");
                    break r;
                }
                ev = st.rx.recv() => if let Some(ev) = ev {
                    st.pending.push_back(ev);
                    if spooling {
                        self.spool_pending(st);
                        // The spool's size and age stay current while the database makes us wait.
                        self.publish_status(st);
                    }
                },
                _ = &mut suspect, if !spooling => {
                    spooling = true;
                    self.take_back(st, (!batch_in_spool).then_some(batch));
                    self.spool_pending(st);
                    self.publish_status(st);
                }
                _ = &mut slow, if !said_slow => {
                    said_slow = true;
                    self.health.set(
                        "staging slow",
                        format!(
                            "the database has not answered a staging insert for {}s (a lock, a slow disk?): events go to the spool",
                            SLOW.as_secs()
                        ),
                    );
                }
                _ = &mut stall => {
                    self.health.clear("staging slow");
                    if !spooling {
                        self.take_back(st, (!batch_in_spool).then_some(batch));
                    }
                    return Err(format!("no answer within {}s", STALL.as_secs()));
                }
            }
        };
        match result {
            Ok(done) => {
                if !later {
                    self.acknowledge(batch, Instant::now());
                    self.confirm_all(st);
                }
                self.metrics.staged.add(done.inserted);
                self.metrics.applied.add(done.applied);
                self.metrics.rejected.add(done.rejected);
                if done.fenced > 0 {
                    let before = self.metrics.fenced.get();
                    self.metrics.fenced.add(done.fenced);
                    if doubled(before, before + done.fenced) {
                        tracing::warn!(
                            fenced = done.fenced,
                            fenced_total = before + done.fenced,
                            "staged rows refused: their shard's lease has passed to another collector"
                        );
                    }
                }
                self.metrics.duplicates.add(
                    (batch.len() as u64)
                        .saturating_sub(done.inserted + done.rejected + done.fenced),
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.db_errors.inc();
                if !spooling {
                    // Unknown whether it committed: keep it (a replay dedupes).
                    self.take_back(st, (!batch_in_spool).then_some(batch));
                }
                Err(db::cause_line(&e))
            }
        }
    }

    /// Replays the spool from its start, a batch at a time. Returns whether what it staged is on
    /// disk.
    ///
    /// With barriers beside the inserts ([`BarrierAt::Separate`]) the replayed batches are
    /// inserted like any other (visible at once, unconfirmed) and the spool becomes the copy of
    /// them (`covered`): it is emptied when a barrier confirms them, and newer events are staged
    /// behind them without waiting for the disk. (A replay with inline barriers held every new
    /// status behind the flush: a collector restarted while the disk hung or a barrier row was
    /// locked showed nothing new until the flush came.) Without a side connection each batch is
    /// durable before the next, and the spool is emptied at the end.
    async fn replay(&self, st: &mut State, c: &mut Conn) -> Result<bool, String> {
        let total = st.spool.events();
        tracing::info!(events = total, "replaying the spool");
        // (Batches inserted before, not copied to the spool, would be taken for copies once
        // `covered` moves past them: such a replay keeps its barriers inline.)
        let later = c.side.is_some() && st.unconfirmed.iter().all(|u| u.events.is_empty());
        let mut offset = 0;
        let mut last = None;
        loop {
            let (rows, next) = st
                .spool
                .read(offset, self.batch_size)
                .map_err(|e| e.to_string())?;
            if rows.is_empty() {
                break;
            }
            self.commit(st, c, &rows, true, later).await?;
            if later {
                // The events are in the spool: a take-back replays them from there (their
                // acknowledgements were answered when they were spooled).
                last = Some(st.inserted(Vec::new()));
            }
            offset = next;
            // Events arriving meanwhile wait in memory; past half the buffer they join the spool
            // (whose end this loop reads too), so memory stays bounded during a long replay.
            if st.pending.len() > 10_000 {
                self.spool_pending(st);
            }
        }
        if later {
            // Everything the spool holds is inserted now, up to `last`.
            st.covered = last;
            if last.is_none() {
                st.spool.clear().map_err(|e| e.to_string())?;
                st.spool_oldest = None;
            }
            tracing::info!(events = total, "spool replayed; emptied once on disk");
            return Ok(false);
        }
        st.spool.clear().map_err(|e| e.to_string())?;
        st.spool_oldest = None;
        // Room again: a "spool full" problem is over.
        self.health.clear("spool");
        tracing::info!(events = total, "spool replayed");
        Ok(true)
    }

    /// Opens a connection and proves the server answers (within [`PROBE_TIMEOUT`]: connecting to
    /// a hung server must not hang us), spooling whatever arrives meanwhile.
    async fn probe_while_spooling(
        &self,
        st: &mut State,
        shutdown: &CancellationToken,
    ) -> Result<Conn, String> {
        let (db, program, apply) = (self.db.clone(), self.program, self.apply.is_some());
        let probe = tokio::time::timeout(PROBE_TIMEOUT, async move {
            let c = connect(&db, program, apply)
                .await
                .map_err(|e| e.to_string())?;
            c.client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| db::cause_line(&e))?;
            Ok::<_, String>(c)
        });
        tokio::pin!(probe);
        let in_outage = st.outage.is_some();
        loop {
            tokio::select! {
                r = &mut probe => return match r {
                    Ok(r) => r,
                    Err(_) => Err(format!("database did not answer within {}s", PROBE_TIMEOUT.as_secs())),
                },
                ev = st.rx.recv() => if let Some(ev) = ev {
                    st.pending.push_back(ev);
                    if in_outage { self.spool_pending(st); }
                },
                _ = shutdown.cancelled() => return Err("shutting down".into()),
            }
        }
    }

    fn note_outage(&self, st: &mut State, why: &str) {
        self.metrics.db_errors.inc();
        match &mut st.outage {
            Some((_, _, reason)) => *reason = why.to_owned(),
            None => {
                st.outage = Some((Instant::now(), Utc::now(), why.to_owned()));
                tracing::warn!(error = %why, buffered = st.pending.len(), "staging: database unavailable; events go to the spool");
            }
        }
        let (_, since, _) = st.outage.as_ref().unwrap();
        self.health
            .set_since("staging", format!("staging inserts failing: {why}"), *since);
    }

    /// Moves everything buffered into the spool (fsync'd). Events that do not fit are refused.
    fn spool_pending(&self, st: &mut State) {
        while let Ok(ev) = st.rx.try_recv() {
            st.pending.push_back(ev);
        }
        if st.pending.is_empty() {
            return;
        }
        let skew = self.status.skew_ms.load(Ordering::Relaxed);
        let mut rows: Vec<Staged> = st.pending.drain(..).collect();
        for r in &mut rows {
            r.received_at
                .get_or_insert_with(|| db_time(r.observed_at, skew));
        }
        let oldest = rows.iter().map(|r| r.observed_at).min();
        // Not inserted: whatever the spool held before is replayed with them.
        st.covered = None;
        match st.spool.append(&rows) {
            Ok(()) => {
                for r in &rows {
                    if let Some(a) = &r.ack {
                        a.answer(Durability::Spooled);
                    }
                }
                if st.spool_oldest.is_none() {
                    st.spool_oldest = oldest;
                }
                self.health.clear("spool");
            }
            Err(e @ SpoolError::Full { .. }) => {
                let before = self.metrics.dropped.get();
                self.metrics.dropped.add(rows.len() as u64);
                // While the spool stays full every event is refused: not a line each.
                let after = before + rows.len() as u64;
                if doubled(before, after) {
                    tracing::error!(error = %e, refused = rows.len(), refused_total = after, "events refused: the spool is full");
                }
                self.health.set("spool", e.to_string());
            }
            Err(e) => {
                // The disk failed us: keep the events in memory (bounded by the queue) and say so
                // (while the database is down this is tried at every probe: not a line each).
                st.spool_failures += 1;
                if doubled(st.spool_failures - 1, st.spool_failures) {
                    tracing::error!(error = %e, failures = st.spool_failures, "cannot write the spool; events stay in memory");
                }
                self.health.set("spool", e.to_string());
                st.pending.extend(rows);
                return;
            }
        }
        st.spool_failures = 0;
    }

    /// At shutdown: commit what can be committed quickly, spool the rest.
    async fn finish(&self, st: &mut State, conn: &mut Option<Conn>) {
        st.rx.close();
        while let Ok(ev) = st.rx.try_recv() {
            st.pending.push_back(ev);
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        if st.outage.is_none() && st.spool.is_empty() {
            while !st.pending.is_empty() && Instant::now() < deadline {
                let Some(c) = conn.as_mut() else {
                    let never = CancellationToken::new();
                    match self.probe_while_spooling(st, &never).await {
                        Ok(c) => *conn = Some(c),
                        Err(_) => break,
                    }
                    continue;
                };
                let n = st.pending.len().min(self.batch_size);
                let batch: Vec<Staged> = st.pending.drain(..n).collect();
                let left = deadline.saturating_duration_since(Instant::now());
                let done =
                    tokio::time::timeout(left, self.commit(st, c, &batch, false, false)).await;
                if !matches!(done, Ok(Ok(()))) {
                    // Unknown whether it committed: spooled below (a replay dedupes).
                    for ev in batch.into_iter().rev() {
                        st.pending.push_front(ev);
                    }
                    break;
                }
            }
        }
        if !st.pending.is_empty() {
            let n = st.pending.len();
            self.spool_pending(st);
            tracing::warn!(
                events = n,
                "shutting down with events the database has not accepted: spooled for the next start"
            );
        }
        self.publish_status(st);
    }

    /// Buffer depth, spool size and the age of the oldest waiting event: metrics, heartbeat,
    /// health.
    fn publish_status(&self, st: &State) {
        let buffered = st.pending.len() + st.rx.len();
        self.metrics.buffered.set(buffered as f64);
        self.status
            .buffered
            .store(buffered as u64, Ordering::Relaxed);
        self.status
            .spooled
            .store(st.spool.events() as u64, Ordering::Relaxed);
        self.metrics.spooled.set(st.spool.events() as f64);
        let oldest_pending = st.pending.front().map(|e| {
            Utc::now() - chrono::Duration::from_std(e.arrived.elapsed()).unwrap_or_default()
        });
        let oldest = match (oldest_pending, st.spool_oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.status.oldest_ms.store(
            oldest.map_or(0, |t| t.timestamp_millis()),
            Ordering::Relaxed,
        );
        let age = oldest.map_or(0.0, |t| {
            (Utc::now() - t).num_milliseconds().max(0) as f64 / 1e3
        });
        self.metrics.oldest_buffered_seconds.set(age);
        if age > STALLED_AFTER.as_secs_f64() {
            self.health.set_since(
                "buffer",
                format!(
                    "staging stalled: {buffered} events buffered, {} spooled, oldest {age:.0}s old",
                    st.spool.events()
                ),
                oldest.unwrap_or_else(Utc::now),
            );
        } else {
            self.health.clear("buffer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environment_choice_is_one_of_its_values_or_the_first() {
        let choices = [
            ("separate", BarrierAt::Separate),
            ("inline", BarrierAt::Inline),
        ];
        let v = "KICK_STAGING_BARRIER";
        assert_eq!(choice(v, None, &choices), BarrierAt::Separate);
        assert_eq!(choice(v, Some("inline"), &choices), BarrierAt::Inline);
        assert_eq!(choice(v, Some("separate"), &choices), BarrierAt::Separate);
        assert_eq!(choice(v, Some("Inline"), &choices), BarrierAt::Separate);
        assert_eq!(choice(v, Some(""), &choices), BarrierAt::Separate);
        assert_eq!(
            choice(v, Some(&"x".repeat(100_000)), &choices),
            BarrierAt::Separate
        );
    }

    #[test]
    fn a_barrier_delay_is_whole_milliseconds_within_bounds_or_the_default() {
        let ms = Duration::from_millis;
        for (value, want) in [
            (None, BARRIER_DELAY),
            (Some("0"), ms(0)),
            (Some("7"), ms(7)),
            (Some(" 12 "), ms(12)),
            (Some("100"), ms(100)),
            (Some("101"), BARRIER_DELAY),
            (Some("-1"), BARRIER_DELAY),
            (Some("2.5"), BARRIER_DELAY),
            (Some("18446744073709551616"), BARRIER_DELAY),
            (Some(""), BARRIER_DELAY),
            (Some("3\0"), BARRIER_DELAY),
        ] {
            assert_eq!(barrier_delay(value), want, "{value:?}");
        }
        assert_eq!(barrier_delay(Some(&"9".repeat(100_000))), BARRIER_DELAY);
    }

    #[test]
    fn a_refusal_count_is_logged_the_first_time_and_at_each_doubling() {
        let logged: Vec<u64> = (1..=20).filter(|n| doubled(n - 1, *n)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16]);
        // A batch that jumps past a power of two is logged once.
        assert!(doubled(5, 9) && !doubled(9, 15));
    }

    #[test]
    fn database_time_is_the_local_time_corrected_by_the_skew() {
        let t = Utc::now();
        // A collector 5 minutes fast: skew +300,000 ms; the database's time is 5 minutes earlier.
        assert_eq!(db_time(t, 300_000), t - chrono::Duration::minutes(5));
        assert_eq!(db_time(t, 0), t);
    }
}
