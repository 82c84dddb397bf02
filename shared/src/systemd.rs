//! systemd integration without a dependency: `sd_notify` datagrams (READY, WATCHDOG, STATUS,
//! STOPPING) to `$NOTIFY_SOCKET`, and the watchdog interval from `$WATCHDOG_USEC`.

use std::time::Duration;

/// Sends one notification; a no-op when not started by systemd with `Type=notify`.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// How often to send `WATCHDOG=1`: half the configured watchdog interval, if any.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// The loops whose progress the watchdog vouches for. Each beats at least once a second while it
/// runs (its waits are bounded); the watchdog is fed only while every registered loop has beaten
/// within the watchdog interval. A loop waiting on a hung database keeps beating (its waits have
/// timeouts), so a hung database makes the service degraded, not killed; a loop that is stuck
/// (a deadlock, a blocked runtime) stops the feeding, and systemd restarts the process.
#[derive(Debug, Default)]
pub struct Liveness {
    loops: std::sync::Mutex<std::collections::HashMap<&'static str, std::time::Instant>>,
}

impl Liveness {
    /// Loop `name` made progress.
    pub fn beat(&self, name: &'static str) {
        self.loops
            .lock()
            .unwrap()
            .insert(name, std::time::Instant::now());
    }

    /// Loop `name` ended (at shutdown): no longer watched.
    pub fn forget(&self, name: &'static str) {
        self.loops.lock().unwrap().remove(name);
    }

    /// Loops that have not beaten within `limit`.
    pub fn stale(&self, limit: Duration) -> Vec<&'static str> {
        self.loops
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.elapsed() > limit)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Feeds systemd's watchdog (when `WATCHDOG_USEC` is set) while every loop in `liveness` is
/// alive; stops at `shutdown`.
pub fn spawn_watchdog(
    liveness: std::sync::Arc<Liveness>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    // The full interval (twice the feeding period) is what systemd allows.
    let limit = every * 2;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stale = liveness.stale(limit);
            if stale.is_empty() {
                notify("WATCHDOG=1");
            } else {
                tracing::error!(loops = ?stale, "loops stuck: not feeding the watchdog");
            }
        }
    });
}

impl Liveness {
    /// Awaits `fut`, beating `name` every second meanwhile: a loop waiting on a bounded call
    /// (a query with a timeout) is alive, not stuck.
    pub async fn while_beating<F: Future>(&self, name: &'static str, fut: F) -> F::Output {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                out = &mut fut => return out,
                _ = tick.tick() => self.beat(name),
            }
        }
    }
}
