//! A doubling delay between attempts: every loop that retries something that failed (a task
//! restart, a lost connection, a refused accept, an unreachable service) waits `current()`,
//! grows it after the failure up to a ceiling, and resets it after a success, so a lasting
//! fault is retried at a bounded, slow pace and a passing one at once.
//!
//! Not jittered: each of these loops is one per process, so there is no herd to spread. (The
//! WebSocket reconnects, many per process, use full jitter of their own.)

use std::time::Duration;

/// A delay that doubles on each failure from `first` up to `max` and returns to `first` on
/// success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            current: first,
        }
    }

    /// The delay to wait before the next attempt.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// After a failed attempt: the next delay is twice this one, at most the ceiling.
    pub fn grow(&mut self) {
        self.current = self.current.saturating_mul(2).min(self.max);
    }

    /// The delay to wait now, and the next one grown: for loops that compute the wait once.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.grow();
        d
    }

    /// After a success: back to the first delay.
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_and_resets_to_the_first() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let seen: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(seen, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.current(), ms(100));
        b.grow();
        assert_eq!(b.current(), ms(200));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        for _ in 0..4 {
            b.grow();
        }
        assert_eq!(b.current(), Duration::MAX);
    }
}
