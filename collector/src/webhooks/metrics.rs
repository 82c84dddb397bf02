//! The receiver's metrics (`kick_webhooks_*`). Staging itself is counted by the stager's own
//! set (shared with the collector's code) and exported here under the receiver's names.

use std::sync::Arc;

use kick_shared::metrics::{
    Counter, Gauge, Histogram, LATENCY_BUCKETS, LabeledCounter, Render, Text,
};

use crate::metrics::CollectorMetrics;

#[derive(Debug)]
pub struct WebhookMetrics {
    /// Answers by HTTP status (and `connection_refused` beyond the connection limit).
    pub requests: LabeledCounter,
    /// Refused deliveries by reason (`unsigned`, `bad_signature`, `stale`, `malformed`, …).
    pub verification_failures: LabeledCounter,
    /// Verified deliveries of event types we do not act on, by type.
    pub ignored: LabeledCounter,
    /// Deliveries durable in `raw_events` (new or a replay of one already there).
    pub staged: Counter,
    /// Deliveries written to the local spool while the database was away (answered 503).
    pub spooled: Counter,
    pub latency: Histogram,
    pub public_key_loaded: Gauge,
    pub public_key_fetches: Counter,
    pub sync_runs: Counter,
    pub sync_failures: Counter,
    pub subscriptions: Gauge,
    pub subscription_errors: Gauge,
    pub last_sync: Gauge,
    pub sync_enabled: Gauge,
    pub healthy: Gauge,
    pub tasks_down: Gauge,
    /// The stager's set.
    pub stager: Arc<CollectorMetrics>,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self {
            requests: LabeledCounter::default(),
            verification_failures: LabeledCounter::default(),
            ignored: LabeledCounter::default(),
            staged: Counter::default(),
            spooled: Counter::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            public_key_loaded: Gauge::default(),
            public_key_fetches: Counter::default(),
            sync_runs: Counter::default(),
            sync_failures: Counter::default(),
            subscriptions: Gauge::default(),
            subscription_errors: Gauge::default(),
            last_sync: Gauge::default(),
            sync_enabled: Gauge::default(),
            healthy: Gauge::default(),
            tasks_down: Gauge::default(),
            stager: Arc::new(CollectorMetrics::default()),
        }
    }
}

impl Render for WebhookMetrics {
    fn render(&self) -> String {
        let s = &self.stager;
        Text::default()
            .labeled(
                "kick_webhooks_requests_total",
                "Requests answered, by HTTP status (connection_refused: over the connection limit).",
                "counter",
                "status",
                &self.requests.snapshot(),
            )
            .labeled(
                "kick_webhooks_verification_failures_total",
                "Deliveries refused, by reason (unsigned, bad_signature, stale, malformed, bad_body, no_key).",
                "counter",
                "reason",
                &self.verification_failures.snapshot(),
            )
            .labeled(
                "kick_webhooks_ignored_total",
                "Verified deliveries of event types not acted on, by type.",
                "counter",
                "event",
                &self.ignored.snapshot(),
            )
            .counter(
                "kick_webhooks_staged_total",
                "Deliveries durable in raw_events (replays of a message id included).",
                self.staged.get(),
            )
            .counter(
                "kick_webhooks_spooled_total",
                "Deliveries spooled locally while the database was unavailable (answered 503).",
                self.spooled.get(),
            )
            .histogram(
                "kick_webhooks_request_seconds",
                "Time from a request to its answer.",
                &self.latency,
            )
            .gauge(
                "kick_webhooks_public_key_loaded",
                "1 when Kick's webhook public key is loaded.",
                self.public_key_loaded.get(),
            )
            .counter(
                "kick_webhooks_public_key_fetches_total",
                "Times the public key was fetched or read.",
                self.public_key_fetches.get(),
            )
            .gauge(
                "kick_webhooks_sync_enabled",
                "1 when WEBHOOKS=on (subscriptions kept in sync with the enabled streamers).",
                self.sync_enabled.get(),
            )
            .counter(
                "kick_webhooks_sync_runs_total",
                "Subscription syncs completed.",
                self.sync_runs.get(),
            )
            .counter(
                "kick_webhooks_sync_failures_total",
                "Subscription syncs that failed (Kick or the database unavailable).",
                self.sync_failures.get(),
            )
            .gauge(
                "kick_webhooks_subscriptions",
                "Active livestream.status.updated subscriptions after the last sync.",
                self.subscriptions.get(),
            )
            .gauge(
                "kick_webhooks_subscription_errors",
                "Broadcasters Kick refused to subscribe in the last sync (e.g. subscription limit reached).",
                self.subscription_errors.get(),
            )
            .gauge(
                "kick_webhooks_last_sync_timestamp_seconds",
                "Unix time of the last completed sync (0: none yet).",
                self.last_sync.get(),
            )
            .gauge(
                "kick_webhooks_buffered",
                "Deliveries waiting in memory for the database.",
                s.buffered.get(),
            )
            .gauge(
                "kick_webhooks_spool_events",
                "Deliveries in the local spool, replayed once the database answers.",
                s.spooled.get(),
            )
            .counter(
                "kick_webhooks_dropped_total",
                "Deliveries refused because the buffer and the spool were full (answered 503).",
                s.dropped.get(),
            )
            .gauge(
                "kick_webhooks_db_up",
                "1 when the staging connection to the database works.",
                s.db_up.get(),
            )
            .labeled(
                "kick_webhooks_task_restarts_total",
                "Supervised tasks restarted after they ended or panicked, by task.",
                "counter",
                "task",
                &s.task_restarts.snapshot(),
            )
            .gauge(
                "kick_webhooks_tasks_down",
                "Supervised tasks currently down (waiting to restart).",
                self.tasks_down.get(),
            )
            .gauge(
                "kick_webhooks_healthy",
                "1 when the receiver reports healthy in /healthz, else 0.",
                self.healthy.get(),
            )
            .finish()
    }
}
