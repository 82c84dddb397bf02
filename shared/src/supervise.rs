//! Supervision: every long-lived task of a service runs under a [`Supervisor`], which notices
//! when it ends or panics, records it (an ERROR log line, a restart counter, a health problem),
//! and starts it again with backoff. A panic is a bug to fix, never an outage: the process keeps
//! working, and `/healthz` and `kick-admin status` say which task is restarting.
//!
//! A task is given as a factory (a closure making a fresh future), so that a restart starts from
//! scratch. Tasks end normally only at shutdown; ending earlier, with `Ok` or `Err`, is a
//! failure. The restart problem clears once the task has run for [`HEALTHY_AFTER`] again.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::Health;
use crate::metrics::LabeledCounter;

/// How long a restarted task must run before its problem is cleared and its backoff reset.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// The first restart waits this long; each further one doubles it, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Owns a service's long-lived tasks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    health: Arc<Health>,
    restarts: Arc<LabeledCounter>,
    down: Arc<AtomicUsize>,
}

impl Supervisor {
    /// `restarts` counts restarts by task name (a metric); `shutdown` stops every task.
    pub fn new(
        shutdown: CancellationToken,
        health: Arc<Health>,
        restarts: Arc<LabeledCounter>,
    ) -> Self {
        Self {
            tracker: TaskTracker::new(),
            shutdown,
            health,
            restarts,
            down: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Tasks currently not running (waiting to be restarted).
    pub fn tasks_down(&self) -> usize {
        self.down.load(Ordering::Relaxed)
    }

    /// The token every supervised task should stop on.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `make()` as task `name` until shutdown, restarting it whenever it ends.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.spawn_until(name, self.shutdown.clone(), make);
    }

    /// [`Supervisor::spawn`] for a task that may also be retired on its own: once `stop` is
    /// cancelled (it must be a child of the shutdown token, or the shutdown token), the task
    /// ends for good and is not restarted.
    pub fn spawn_until<F, Fut>(&self, name: impl Into<String>, stop: CancellationToken, mut make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name: String = name.into();
        let mut this = self.clone();
        this.shutdown = stop;
        self.tracker.spawn(async move {
            let key = format!("task:{name}");
            let mut backoff = crate::backoff::Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
            let mut restarts: u64 = 0;
            loop {
                let started = Instant::now();
                let mut run = tokio::spawn(make());
                // Clear the problem once the task has stayed up long enough.
                let ended = loop {
                    let healthy_at = tokio::time::sleep(HEALTHY_AFTER);
                    tokio::select! {
                        r = &mut run => break r,
                        _ = healthy_at, if this.health.has(&key) => {
                            this.health.clear(&key);
                            backoff.reset();
                        }
                        _ = this.shutdown.cancelled() => {
                            // Give the task a moment to finish on its own (it watches the same
                            // token); then stop waiting for it.
                            if tokio::time::timeout(Duration::from_secs(15), &mut run).await.is_err() {
                                tracing::error!(task = %name, "task did not stop within 15 s of shutdown");
                                run.abort();
                            }
                            return;
                        }
                    }
                };
                if this.shutdown.is_cancelled() {
                    return;
                }
                let why = match ended {
                    Ok(Ok(())) => "ended unexpectedly".to_owned(),
                    Ok(Err(e)) => format!("failed: {}", format!("{e:#}").replace('\n', " ")),
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e)),
                    Err(e) => format!("was cancelled: {e}"),
                };
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
                restarts += 1;
                this.restarts.add(&name, 1);
                let wait = backoff.next_delay();
                tracing::error!(task = %name, restarts, retry_in_ms = wait.as_millis() as u64, "task {why}; restarting");
                this.health.set(
                    &key,
                    format!("task {name} {why}; restarted {restarts} times"),
                );
                this.down.fetch_add(1, Ordering::Relaxed);
                let stop = tokio::select! {
                    _ = tokio::time::sleep(wait) => false,
                    _ = this.shutdown.cancelled() => true,
                };
                this.down.fetch_sub(1, Ordering::Relaxed);
                if stop {
                    return;
                }
            }
        });
    }

    /// Waits until every task has stopped (after shutdown), at most `limit`. Returns false when
    /// some task was still running at the limit.
    pub async fn join(&self, limit: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// The message a panic carried, if it was a string.
fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_reported() {
        let health = Arc::new(Health::default());
        let restarts = Arc::new(LabeledCounter::default());
        let shutdown = CancellationToken::new();
        let sup = Supervisor::new(shutdown.clone(), health.clone(), restarts.clone());
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        sup.spawn("flaky", move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("overflow when adding durations");
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "restarted twice");
        assert_eq!(restarts.get("flaky"), 2);
        let p = health.problems();
        assert_eq!(p.len(), 1);
        assert!(p[0].what.contains("panicked: overflow"), "{p:?}");
        // After running long enough, the problem clears.
        tokio::time::sleep(HEALTHY_AFTER + Duration::from_secs(1)).await;
        assert!(health.is_healthy(), "{:?}", health.problems());
        shutdown.cancel();
        assert!(sup.join(Duration::from_secs(20)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ending_task_is_restarted_with_backoff() {
        let health = Arc::new(Health::default());
        let restarts = Arc::new(LabeledCounter::default());
        let shutdown = CancellationToken::new();
        let sup = Supervisor::new(shutdown.clone(), health.clone(), restarts.clone());
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        sup.spawn("quitter", move || {
            r.fetch_add(1, Ordering::SeqCst);
            async { Err(anyhow::anyhow!("database went away")) }
        });
        // Backoff 0.5, 1, 2, 4, 8 s: by 10 s, five or six runs, not a busy loop.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let n = runs.load(Ordering::SeqCst);
        assert!((4..=7).contains(&n), "{n} runs");
        assert!(health.problems()[0].what.contains("database went away"));
        shutdown.cancel();
        assert!(sup.join(Duration::from_secs(20)).await);
    }
}
