//! The writer's Prometheus metrics: events by outcome, queue depth, oldest pending age, and the
//! latency from a staged row's observation to the writer's commit.

use kick_shared::metrics::{
    Counter, Gauge, Histogram, LATENCY_BUCKETS, LabeledCounter, Render, Text,
};

use crate::apply::BatchReport;

#[derive(Debug)]
pub struct WriterMetrics {
    pub outcomes: LabeledCounter,
    pub batches: Counter,
    pub deferred: Counter,
    pub conflicts: Counter,
    pub lock_waits: Counter,
    pub wakeups: Counter,
    pub polls: Counter,
    pub db_reconnects: Counter,
    pub queue_depth: Gauge,
    pub oldest_pending_seconds: Gauge,
    pub latency: Histogram,
    pub healthy: Gauge,
    pub db_up: Gauge,
    pub task_restarts: LabeledCounter,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        Self {
            outcomes: LabeledCounter::default(),
            batches: Counter::default(),
            deferred: Counter::default(),
            conflicts: Counter::default(),
            lock_waits: Counter::default(),
            wakeups: Counter::default(),
            polls: Counter::default(),
            db_reconnects: Counter::default(),
            queue_depth: Gauge::default(),
            oldest_pending_seconds: Gauge::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            healthy: Gauge::default(),
            db_up: Gauge::default(),
            task_restarts: LabeledCounter::default(),
        }
    }
}

impl WriterMetrics {
    pub fn record(&self, r: &BatchReport) {
        if r.claimed > 0 {
            self.batches.inc();
        }
        self.deferred.add(r.deferred as u64);
        for (k, v) in &r.outcomes {
            self.outcomes.add(k, *v);
        }
        for l in &r.latencies {
            self.latency.observe(*l);
        }
    }
}

impl Render for WriterMetrics {
    fn render(&self) -> String {
        Text::default()
            .labeled(
                "kick_writer_events_total",
                "Staged events processed, by outcome.",
                "counter",
                "outcome",
                &self.outcomes.snapshot(),
            )
            .counter(
                "kick_writer_batches_total",
                "Non-empty batches committed.",
                self.batches.get(),
            )
            .counter(
                "kick_writer_deferred_total",
                "Events left for after another writer's older events.",
                self.deferred.get(),
            )
            .counter(
                "kick_writer_conflicts_total",
                "Batches retried after a serialization failure or deadlock.",
                self.conflicts.get(),
            )
            .counter(
                "kick_writer_lock_waits_total",
                "Batches ended by the statement timeout while waiting for a lock held elsewhere.",
                self.lock_waits.get(),
            )
            .counter(
                "kick_writer_wakeups_total",
                "Drains started by a NOTIFY.",
                self.wakeups.get(),
            )
            .counter(
                "kick_writer_polls_total",
                "Drains started by the poll interval.",
                self.polls.get(),
            )
            .counter(
                "kick_writer_db_reconnects_total",
                "Database sessions lost and reopened.",
                self.db_reconnects.get(),
            )
            .gauge(
                "kick_writer_queue_depth",
                "Pending staged events (refreshed every 5 s).",
                self.queue_depth.get(),
            )
            .gauge(
                "kick_writer_oldest_pending_seconds",
                "Age of the oldest pending staged event.",
                self.oldest_pending_seconds.get(),
            )
            .gauge(
                "kick_writer_healthy",
                "1 when the writer has no problem (see /healthz), else 0.",
                self.healthy.get(),
            )
            .gauge(
                "kick_writer_db_up",
                "1 when the writer's database session is open, else 0.",
                self.db_up.get(),
            )
            .labeled(
                "kick_writer_task_restarts_total",
                "Supervised tasks restarted after they ended or panicked, by task.",
                "counter",
                "task",
                &self.task_restarts.snapshot(),
            )
            .histogram(
                "kick_writer_latency_seconds",
                "Staged event observed to writer commit, applied events.",
                &self.latency,
            )
            .finish()
    }
}
