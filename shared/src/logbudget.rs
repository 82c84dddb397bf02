//! A budget for log lines that outside input can cause at will (a webhook refused, a realtime
//! frame rejected): at most so many lines per window, the rest only counted and their number
//! logged once the window is over. An Internet client or a hostile server must not be able to
//! fill the disk through our log (a frame flood wrote 40,000 WARN lines, 10.6 MB, in 5 s);
//! the metrics count every one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogBudget {
    per_window: u32,
    window: Duration,
    /// The WARN line that says how many lines a window did not log.
    summary: &'static str,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    since: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    /// At most `per_window` lines per `window`; `summary` is the WARN line (with a `suppressed`
    /// count) written for the lines a window did not log.
    pub fn new(per_window: u32, window: Duration, summary: &'static str) -> Self {
        LogBudget {
            per_window,
            window,
            summary,
            state: Mutex::new(Window {
                since: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether one more line may be logged now. `Some(n)`: yes, and `n` lines of the last
    /// window were not (the caller says so first when `n > 0`); `None`: counted, not logged.
    pub fn admit(&self) -> Option<u64> {
        let mut w = self.state.lock().unwrap();
        let mut before = 0;
        if w.since.elapsed() >= self.window {
            before = w.suppressed;
            *w = Window {
                since: Instant::now(),
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged >= self.per_window {
            w.suppressed += 1;
            return None;
        }
        w.logged += 1;
        Some(before)
    }

    /// [`Self::admit`] for a caller about to log one line: `true` if it may, after the summary
    /// of the last window's unlogged lines was written (when there were any).
    pub fn admit_logging(&self) -> bool {
        match self.admit() {
            Some(suppressed) => {
                self.summarize(suppressed);
                true
            }
            None => false,
        }
    }

    /// Writes the summary of a window that is over and left lines unlogged, when no line
    /// followed to do it (a flood followed by silence): for a periodic check.
    pub fn report_overdue(&self) {
        if let Some(suppressed) = self.overdue() {
            self.summarize(suppressed);
        }
    }

    fn summarize(&self, suppressed: u64) {
        if suppressed > 0 {
            tracing::warn!(suppressed, "{}", self.summary);
        }
    }

    /// The lines not logged in a window that is over, when there were any (the window starts
    /// afresh): for a periodic check, so that a flood followed by silence is still summed up.
    pub fn overdue(&self) -> Option<u64> {
        let mut w = self.state.lock().unwrap();
        if w.suppressed == 0 || w.since.elapsed() < self.window {
            return None;
        }
        let n = w.suppressed;
        *w = Window {
            since: Instant::now(),
            logged: 0,
            suppressed: 0,
        };
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_the_budget_then_says_how_many_it_did_not() {
        let b = LogBudget::new(3, Duration::from_millis(50), "test");
        let first: Vec<Option<u64>> = (0..10).map(|_| b.admit()).collect();
        assert_eq!(
            first,
            [
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            b.admit(),
            Some(7),
            "the next window's first line reports the 7 not logged"
        );
        assert_eq!(b.admit(), Some(0));
    }

    #[test]
    fn a_flood_followed_by_silence_is_summed_up_by_the_periodic_check() {
        let b = LogBudget::new(2, Duration::from_millis(50), "test");
        for _ in 0..5 {
            b.admit();
        }
        assert_eq!(b.overdue(), None, "the window is not over");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.overdue(), Some(3));
        assert_eq!(b.overdue(), None, "reported once");
        assert_eq!(b.admit(), Some(0), "and not again by the next line");
    }
}
