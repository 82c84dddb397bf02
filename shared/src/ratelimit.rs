//! A token bucket for being polite to Kick: requests to one host wait for a token; a refusal
//! with `Retry-After` (or a block) pauses the whole bucket. Kick publishes no limits, and an IP
//! that looks abusive gets blocked, so every caller of a host shares its bucket.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A shared token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct RateLimiter {
    name: &'static str,
    rate: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    refilled: Instant,
    paused_until: Option<Instant>,
}

impl RateLimiter {
    pub fn new(name: &'static str, rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            name,
            rate: if rate.is_finite() && rate > 0.0 {
                rate
            } else {
                1.0
            },
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                refilled: Instant::now(),
                paused_until: None,
            }),
        }
    }

    /// How long to wait before a token is available, taking it if none is needed.
    fn try_take(&self, now: Instant) -> Option<Duration> {
        let mut s = self.state.lock().unwrap();
        if let Some(until) = s.paused_until {
            if now < until {
                return Some(until - now);
            }
            s.paused_until = None;
        }
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - s.tokens) / self.rate))
        }
    }

    /// Takes a token if one is available now (never waits).
    pub fn try_acquire(&self) -> bool {
        self.try_take(Instant::now()).is_none()
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        while let Some(wait) = self.try_take(Instant::now()) {
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Every request to this host waits at least `for_` (a 429's `Retry-After`, a block).
    pub fn pause(&self, for_: Duration) {
        let until = Instant::now() + for_.min(Duration::from_secs(24 * 3600));
        let mut s = self.state.lock().unwrap();
        if s.paused_until.is_none_or(|u| u < until) {
            // INFO: the caller reports the refusal itself (a CLI prints one line).
            tracing::info!(
                host = self.name,
                pause_s = for_.as_secs(),
                "requests to kick paused"
            );
            s.paused_until = Some(until);
        }
    }

    /// Seconds until the pause ends (0 when not paused).
    pub fn paused_for(&self) -> Duration {
        let s = self.state.lock().unwrap();
        s.paused_until.map_or(Duration::ZERO, |u| {
            u.saturating_duration_since(Instant::now())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let rl = RateLimiter::new("t", 10.0, 3);
        let now = Instant::now();
        assert!(rl.try_take(now).is_none());
        assert!(rl.try_take(now).is_none());
        assert!(rl.try_take(now).is_none());
        let wait = rl.try_take(now).unwrap();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(rl.try_take(now + Duration::from_millis(150)).is_none());
        rl.pause(Duration::from_secs(30));
        assert!(rl.try_take(Instant::now()).unwrap() > Duration::from_secs(29));
    }
}
