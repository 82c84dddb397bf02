//! The collector's Prometheus metrics: sockets by state, subscriptions, frames by event, rows
//! staged, rejected and spooled, reconcile differences, reconnects by close code, supervised
//! task restarts, health, clock skew, and frame → staged latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kick_shared::metrics::{
    Counter, Gauge, Histogram, LATENCY_BUCKETS, LabeledCounter, Render, Text,
};

#[derive(Debug)]
pub struct CollectorMetrics {
    pub sockets_total: AtomicUsize,
    pub sockets_up: AtomicUsize,
    pub subscriptions: AtomicUsize,
    /// Watched channels subscribed where their events are delivered (on a socket to their own
    /// region's server, or any Pusher socket): the realtime coverage. A subscription on another
    /// region's server is confirmed and delivers nothing, so `subscriptions` alone overstates it.
    pub channels_covered: AtomicUsize,
    pub frames: LabeledCounter,
    pub malformed: LabeledCounter,
    pub reconnects: LabeledCounter,
    pub staged: Counter,
    /// Staged rows the collector applied itself (see `apply`).
    pub applied: Counter,
    pub rejected: Counter,
    pub spooled: Gauge,
    pub oldest_buffered_seconds: Gauge,
    pub watched_channels: AtomicUsize,
    pub subscriptions_refused: Counter,
    pub reconciles_skipped: Counter,
    pub task_restarts: Arc<LabeledCounter>,
    pub tasks_down: AtomicUsize,
    pub healthy: Gauge,
    pub db_up: Gauge,
    pub clock_skew_seconds: Gauge,
    pub last_heartbeat: Gauge,
    pub duplicates: Counter,
    pub dropped: Counter,
    pub db_errors: Counter,
    pub buffered: Gauge,
    pub reconcile_runs: Counter,
    pub reconcile_failures: Counter,
    pub reconcile_differences: Counter,
    pub rate_limited: Counter,
    pub stage_latency: Histogram,
    /// Shard leases this collector holds.
    pub shards_held: AtomicUsize,
    /// Leases this collector took from a collector that was gone.
    pub shard_takeovers: Counter,
    /// Leases this collector gained or gave up (any reason).
    pub shard_moves: Counter,
    /// Status rows not staged because this collector did not (or no longer) hold their shard.
    pub fenced: Counter,
    /// Lease rounds that failed.
    pub lease_failures: Counter,
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self {
            sockets_total: AtomicUsize::new(0),
            sockets_up: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            channels_covered: AtomicUsize::new(0),
            frames: LabeledCounter::default(),
            malformed: LabeledCounter::default(),
            reconnects: LabeledCounter::default(),
            staged: Counter::default(),
            applied: Counter::default(),
            rejected: Counter::default(),
            spooled: Gauge::default(),
            oldest_buffered_seconds: Gauge::default(),
            watched_channels: AtomicUsize::new(0),
            subscriptions_refused: Counter::default(),
            reconciles_skipped: Counter::default(),
            task_restarts: Arc::new(LabeledCounter::default()),
            tasks_down: AtomicUsize::new(0),
            healthy: Gauge::default(),
            db_up: Gauge::default(),
            clock_skew_seconds: Gauge::default(),
            last_heartbeat: Gauge::default(),
            duplicates: Counter::default(),
            dropped: Counter::default(),
            db_errors: Counter::default(),
            buffered: Gauge::default(),
            reconcile_runs: Counter::default(),
            reconcile_failures: Counter::default(),
            reconcile_differences: Counter::default(),
            rate_limited: Counter::default(),
            stage_latency: Histogram::new(LATENCY_BUCKETS),
            shards_held: AtomicUsize::new(0),
            shard_takeovers: Counter::default(),
            shard_moves: Counter::default(),
            fenced: Counter::default(),
            lease_failures: Counter::default(),
        }
    }
}

impl Render for CollectorMetrics {
    fn render(&self) -> String {
        let total = self.sockets_total.load(Ordering::Relaxed);
        let up = self.sockets_up.load(Ordering::Relaxed);
        Text::default()
            .gauge(
                "kick_collector_sockets",
                "Realtime sockets (shards).",
                total as f64,
            )
            .gauge(
                "kick_collector_sockets_up",
                "Sockets connected and subscribed.",
                up as f64,
            )
            .gauge(
                "kick_collector_sockets_down",
                "Sockets connecting or waiting to reconnect.",
                (total - up.min(total)) as f64,
            )
            .gauge(
                "kick_collector_subscriptions",
                "Channel subscriptions confirmed.",
                self.subscriptions.load(Ordering::Relaxed) as f64,
            )
            .gauge(
                "kick_collector_channels_covered",
                "Watched channels subscribed where their events are delivered (their region's server); the rest are polled.",
                self.channels_covered.load(Ordering::Relaxed) as f64,
            )
            .labeled(
                "kick_collector_frames_total",
                "Realtime events received, by event name.",
                "counter",
                "event",
                &self.frames.snapshot(),
            )
            .labeled(
                "kick_collector_malformed_frames_total",
                "Frames that could not be decoded, by kind.",
                "counter",
                "kind",
                &self.malformed.snapshot(),
            )
            .labeled(
                "kick_collector_reconnects_total",
                "Socket reconnects, by close code or cause.",
                "counter",
                "code",
                &self.reconnects.snapshot(),
            )
            .counter(
                "kick_collector_rows_staged_total",
                "Rows inserted into raw_events.",
                self.staged.get(),
            )
            .counter(
                "kick_collector_rows_applied_total",
                "Staged rows whose status the collector applied in the staging statement (the plain cases; the rest are the writer's).",
                self.applied.get(),
            )
            .counter(
                "kick_collector_rows_deduplicated_total",
                "Rows already staged (same dedupe key).",
                self.duplicates.get(),
            )
            .counter(
                "kick_collector_events_refused_total",
                "Events refused because the staging buffer was full.",
                self.dropped.get(),
            )
            .counter(
                "kick_collector_db_errors_total",
                "Staging failures (the events are kept: retried or spooled).",
                self.db_errors.get(),
            )
            .gauge(
                "kick_collector_buffered_events",
                "Events waiting for the database.",
                self.buffered.get(),
            )
            .counter(
                "kick_collector_reconcile_runs_total",
                "REST reconciliations run.",
                self.reconcile_runs.get(),
            )
            .counter(
                "kick_collector_reconcile_failures_total",
                "REST reconciliations that failed.",
                self.reconcile_failures.get(),
            )
            .counter(
                "kick_collector_reconcile_differences_total",
                "Statuses the REST API contradicted (staged as source=api).",
                self.reconcile_differences.get(),
            )
            .counter(
                "kick_collector_rate_limited_total",
                "Kick API 429 answers.",
                self.rate_limited.get(),
            )
            .counter(
                "kick_collector_rows_rejected_total",
                "Rows the database refused for their content, kept as rejected (processed).",
                self.rejected.get(),
            )
            .gauge(
                "kick_collector_spooled_events",
                "Events in the local spool, waiting for the database.",
                self.spooled.get(),
            )
            .gauge(
                "kick_collector_oldest_buffered_seconds",
                "Age of the oldest event not yet in the database (buffer or spool).",
                self.oldest_buffered_seconds.get(),
            )
            .gauge(
                "kick_collector_watched_channels",
                "Realtime channels this collector should be subscribed to.",
                self.watched_channels.load(Ordering::Relaxed) as f64,
            )
            .counter(
                "kick_collector_subscriptions_refused_total",
                "Subscriptions the realtime server refused.",
                self.subscriptions_refused.get(),
            )
            .counter(
                "kick_collector_reconciles_skipped_total",
                "Periodic reconciliations skipped because one was still running.",
                self.reconciles_skipped.get(),
            )
            .labeled(
                "kick_collector_task_restarts_total",
                "Supervised tasks restarted after they ended or panicked, by task.",
                "counter",
                "task",
                &self.task_restarts.snapshot(),
            )
            .gauge(
                "kick_collector_tasks_down",
                "Supervised tasks waiting to be restarted.",
                self.tasks_down.load(Ordering::Relaxed) as f64,
            )
            .gauge(
                "kick_collector_healthy",
                "1 when the collector has no problem (see /healthz), else 0.",
                self.healthy.get(),
            )
            .gauge(
                "kick_collector_db_up",
                "1 when the database answered the last heartbeat, else 0.",
                self.db_up.get(),
            )
            .gauge(
                "kick_collector_clock_skew_seconds",
                "This host's clock minus the database's, measured with each heartbeat.",
                self.clock_skew_seconds.get(),
            )
            .gauge(
                "kick_collector_last_heartbeat_timestamp_seconds",
                "Unix time of the last heartbeat the database accepted.",
                self.last_heartbeat.get(),
            )
            .gauge(
                "kick_collector_shard_leases",
                "Shard leases this collector holds.",
                self.shards_held.load(Ordering::Relaxed) as f64,
            )
            .counter(
                "kick_collector_shard_takeovers_total",
                "Shard leases taken over from a collector that was gone.",
                self.shard_takeovers.get(),
            )
            .counter(
                "kick_collector_shard_moves_total",
                "Shard leases this collector gained or gave up.",
                self.shard_moves.get(),
            )
            .counter(
                "kick_collector_rows_fenced_total",
                "Status rows not staged: their shard's lease was not (or no longer) this collector's.",
                self.fenced.get(),
            )
            .counter(
                "kick_collector_lease_failures_total",
                "Lease rounds that failed (the database did not answer).",
                self.lease_failures.get(),
            )
            .histogram(
                "kick_collector_stage_latency_seconds",
                "Frame received to staged row committed.",
                &self.stage_latency,
            )
            .finish()
    }
}
