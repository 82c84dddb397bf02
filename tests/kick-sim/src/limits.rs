//! Rate limiting and rate counting: the official API's token bucket per app token, and the
//! sliding one-second request counters that let a test check a client is polite.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size: how many requests may come at once after a quiet spell.
    pub burst: u32,
}

/// One client's bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn full(limit: RateLimit) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            last: Instant::now(),
        }
    }

    /// Takes one token, or returns how long until one is available.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let rate = limit.per_second.max(f64::MIN_POSITIVE);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(limit.burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate).min(86_400.0),
            ))
        }
    }
}

/// Requests counted in total and over a sliding one-second window.
#[derive(Debug, Default)]
pub struct RequestRate {
    total: u64,
    window: VecDeque<Instant>,
    max_1s: usize,
}

impl RequestRate {
    pub fn hit(&mut self) {
        let now = Instant::now();
        self.total += 1;
        self.window.push_back(now);
        self.trim(now);
        self.max_1s = self.max_1s.max(self.window.len());
    }

    fn trim(&mut self, now: Instant) {
        while self
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            self.window.pop_front();
        }
    }

    /// `{"total", "last_1s" (requests in the last second), "max_1s" (the most in any second)}`.
    pub fn snapshot(&mut self) -> Value {
        self.trim(Instant::now());
        json!({"total": self.total, "last_1s": self.window.len(), "max_1s": self.max_1s})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let limit = RateLimit {
            per_second: 10.0,
            burst: 3,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(limit);
        for _ in 0..3 {
            assert!(b.take(limit, t0).is_ok());
        }
        let wait = b.take(limit, t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(b.take(limit, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(limit, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn request_rate_keeps_the_busiest_second() {
        let mut r = RequestRate::default();
        for _ in 0..5 {
            r.hit();
        }
        let v = r.snapshot();
        assert_eq!(
            (v["total"].as_u64(), v["max_1s"].as_u64()),
            (Some(5), Some(5))
        );
    }
}
