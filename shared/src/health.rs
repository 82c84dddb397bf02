//! A process's own view of its health: a set of named problems, each with the time it started.
//! Components set a problem when they notice it and clear it when it is over; `/healthz`, the
//! `*_healthy` metric and the collector's heartbeat row all read the same set, so every signal
//! tells the same story. A process with no problem is healthy.
//!
//! Problems are keyed (e.g. `staging`, `task:stager`): setting a key again updates the message
//! and keeps the original `since`, so an operator sees how long the problem has lasted.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One problem: what is wrong, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The component and what is wrong, e.g. `staging inserts failing: permission denied`.
    pub what: String,
    pub since: DateTime<Utc>,
}

impl Problem {
    /// One line for humans: `<what> (since 2026-11-29 20:01:02 UTC)`.
    pub fn line(&self) -> String {
        format!(
            "{} (since {})",
            self.what,
            self.since.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// The problems a process currently has.
#[derive(Debug, Default)]
pub struct Health {
    problems: Mutex<BTreeMap<String, Problem>>,
    /// Bumped whenever a problem begins or ends (not when its text changes): lets a reporter
    /// (the collector's heartbeat) publish a change at once instead of at its next tick.
    changes: std::sync::atomic::AtomicU64,
}

impl Health {
    /// Records (or updates) problem `key`. The first time decides `since`.
    pub fn set(&self, key: &str, what: impl Into<String>) {
        let what = what.into();
        let mut p = self.problems.lock().unwrap();
        match p.get_mut(key) {
            Some(existing) => existing.what = what,
            None => {
                self.bump();
                p.insert(
                    key.to_owned(),
                    Problem {
                        what,
                        since: Utc::now(),
                    },
                );
            }
        }
    }

    /// Records problem `key` with an explicit start (e.g. the age of the oldest buffered event).
    pub fn set_since(&self, key: &str, what: impl Into<String>, since: DateTime<Utc>) {
        let new = self.problems.lock().unwrap().insert(
            key.to_owned(),
            Problem {
                what: what.into(),
                since,
            },
        );
        if new.is_none() {
            self.bump();
        }
    }

    /// The problem is over.
    pub fn clear(&self, key: &str) {
        if self.problems.lock().unwrap().remove(key).is_some() {
            self.bump();
        }
    }

    /// How many times a problem has begun or ended: changes when the set of problems does.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn bump(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether problem `key` is set.
    pub fn has(&self, key: &str) -> bool {
        self.problems.lock().unwrap().contains_key(key)
    }

    /// Every current problem, oldest first.
    pub fn problems(&self) -> Vec<Problem> {
        let mut v: Vec<Problem> = self.problems.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|p| p.since);
        v
    }

    pub fn is_healthy(&self) -> bool {
        self.problems.lock().unwrap().is_empty()
    }

    /// The `/healthz` body: `{"healthy": bool, "problems": [{"what", "since"}], …extra}`.
    pub fn report(&self, service: &str, extra: serde_json::Value) -> serde_json::Value {
        let problems = self.problems();
        let mut v = serde_json::json!({
            "service": service,
            "healthy": problems.is_empty(),
            "problems": problems,
        });
        if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
            obj.extend(more);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_keep_their_start_and_clear() {
        let h = Health::default();
        assert!(h.is_healthy());
        h.set("staging", "staging inserts failing: a");
        let since = h.problems()[0].since;
        std::thread::sleep(std::time::Duration::from_millis(5));
        h.set("staging", "staging inserts failing: b");
        assert_eq!(h.problems()[0].since, since, "since is kept");
        assert_eq!(h.problems()[0].what, "staging inserts failing: b");
        assert!(h.problems()[0].line().contains("since"));
        h.clear("staging");
        assert!(h.is_healthy());
        let r = h.report("x", serde_json::json!({"buffered": 3}));
        assert_eq!(r["healthy"], true);
        assert_eq!(r["buffered"], 3);
    }
}
