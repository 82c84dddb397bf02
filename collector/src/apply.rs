//! The collector applies the plain cases itself: a realtime live or offline whose outcome the
//! writer's transition could only decide one way is applied by the staging statement — the
//! staged row is inserted already processed (`outcome = 'applied'`), and `streamers`, the
//! `status_events` row and the `status_changed` notification are written in the same
//! statement and commit. Everything else is staged pending, for the writer, as before.
//!
//! Why: on a disk that flushes fast, the writer's transaction (a process hop, two round trips
//! and a second commit) was most of what kick-monitor's status path cost beyond a single process
//! writing each event straight into `streamers` (BENCHMARKS.md, "Latency against a single
//! process"). The staging insert runs anyway; the common case needs nothing it does not have.
//!
//! **What is a plain case.** All of these hold, or the row is left to the writer:
//! - a realtime row (`StreamerIsLive` / `StopStreamBroadcast`) with a channel id and a livestream
//!   id and no user id (realtime rows name only the channel), not a rejected row, its
//!   `received_at` finite;
//! - a streamer has that channel id, and its row could be locked at once (`FOR UPDATE SKIP
//!   LOCKED`: a writer holding it means the writer decides);
//! - the streamer has no offline waiting out the grace period, no pending staged row (of any
//!   source, claimed by a writer or not), and no other row in this batch: per streamer, rows
//!   apply in order, and a pending one is older;
//! - its dedupe key is new and appears once in the batch (a duplicate writes nothing, and takes
//!   no lock), and the batch holds at most [`APPLY_MAX_ROWS`] rows (a backlog is the writer's);
//! - the transition (`kick_writer::transition::decide`) would answer `applied`, in one of the
//!   four forms it takes for realtime rows:
//!   - a live of a newer session than the state's (`by_session`, `Greater`: online, whatever
//!     the status was);
//!   - a live while offline or unknown with no session known, not older than the state's
//!     observation (the clock decides; a realtime row never meets the API lag guard);
//!   - with the offline grace zero, an offline of the current session while online
//!     (`by_session`, `Equal`);
//!   - with the offline grace zero, an offline while online with no session known, not older
//!     than the state's observation.
//!
//! The writes are the ones the writer's `record` makes for such a decision (new status, the
//! event's session, `last_observed_at` = `received_at`, source `realtime`, `status_changed_at`
//! and `last_event_at` = Kick's time of the event if plausible else `received_at`, the session
//! start for a live, the reason cleared; one history row; one notification).
//! `collector/tests/applied_by_the_collector.rs` holds the two to the same result over every
//! combination of state and event, grace zero and not.
//!
//! **Where it lives.** The statement is V10's `stage_applying`, a `SECURITY DEFINER` function
//! that only `kick_collector` may execute: the collector's role still cannot update `streamers`
//! or write history itself, only stage rows through the one function that writes nothing but
//! what the transition would. The rows are decided and inserted in one statement, so a status
//! is visible exactly when its staged row is, and a crash before the flush loses both (the
//! stager still holds the batch and stages it again, and may apply it then). A duplicate (the
//! dedupe key exists) is not inserted and writes nothing. The statement never waits for a
//! streamer's lock (`SKIP LOCKED`) and the writer waits for the collector's at most one
//! statement, so the lock order the writers keep among themselves cannot deadlock. A batch the
//! database refuses for its data is staged again without applying before poison isolation
//! looks for the row to blame (see `stager`). A role without `EXECUTE` on it (`kick-admin db
//! roles` grants it; a database not yet migrated lacks it) stages everything pending with the
//! plain insert and asks again every 30 s; `KICK_STAGING_APPLY=writer` does so for good. A
//! caller that keeps the function's transaction open (it takes the streamers' row locks) is
//! ended after 5 s idle (`idle_in_transaction_session_timeout`, set for that transaction).
//!
//! **The grace.** The collector reads `KICK_OFFLINE_GRACE` like the writer (the config table or
//! the shared environment file); with a grace the collector applies no offline at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A batch with more rows than this is staged pending (a backlog: the writer claims in bulk,
/// while the checks here cost per row). `stage_applying` holds the same limit.
pub const APPLY_MAX_ROWS: usize = 1000;

/// Who applies the plain cases, from `KICK_STAGING_APPLY`: `collector` (the default) or `writer`
/// (everything staged pending, as before V10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applier {
    Collector,
    Writer,
}

/// What the collector's stager needs to apply: whether offlines apply at once (the offline
/// grace is zero), kept current by the collector as its settings change.
#[derive(Debug, Clone)]
pub struct ApplySettings {
    offlines: Arc<AtomicBool>,
}

impl ApplySettings {
    pub fn new(offline_grace_is_zero: bool) -> Self {
        ApplySettings {
            offlines: Arc::new(AtomicBool::new(offline_grace_is_zero)),
        }
    }

    /// The settings changed: with a grace, offlines are left to the writer.
    pub fn set_offline_grace_zero(&self, zero: bool) {
        self.offlines.store(zero, Ordering::Relaxed);
    }

    pub fn offlines(&self) -> bool {
        self.offlines.load(Ordering::Relaxed)
    }
}

/// Whether the session's role may apply: it may execute `stage_applying` (V10; granted by
/// `kick-admin db roles` and by the migration where the role exists).
pub const PRIVILEGES: &str = "SELECT coalesce(has_function_privilege(to_regprocedure(
    'stage_applying(text[], text[], text[], bigint[], bigint[], bigint[], timestamptz[], text[], text[], text, timestamptz[], timestamptz[], text[], boolean, integer[], bigint[], boolean)'), 'EXECUTE'), false) AS ok";

/// The staging statement that applies the plain cases: V10's `stage_applying`, a
/// `SECURITY DEFINER` function (the collector's role may not write statuses itself; the
/// function writes nothing but what the transition would). `$1`…`$16` as the stager's plain
/// insert, `$17`: whether offlines apply (the grace is zero). The doorbell (`$14`) rings only
/// when a row was left pending.
pub const INSERT_APPLYING: &str = "SELECT inserted, fenced, applied FROM stage_applying(
    $1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
    $7::timestamptz[], $8::text[], $9::text[], $10::text, $11::timestamptz[], $12::timestamptz[],
    $13::text[], $14::bool, $15::int[], $16::bigint[], $17::bool)";

#[cfg(test)]
mod tests {
    use kick_shared::model::event_name;

    use super::*;

    #[test]
    fn the_function_names_the_events_as_the_collector_stages_them() {
        let sql = include_str!("../../migrations/V10__collector_applies_plain_cases.sql");
        for name in [
            event_name::STREAMER_IS_LIVE,
            event_name::STOP_STREAM_BROADCAST,
        ] {
            assert!(sql.contains(&format!("'{name}'")), "{name}");
        }
    }

    #[test]
    fn offlines_follow_the_grace() {
        let s = ApplySettings::new(true);
        assert!(s.offlines());
        // A clone (the stager's) sees the collector's change.
        let stager = s.clone();
        s.set_offline_grace_zero(false);
        assert!(!stager.offlines());
    }
}
