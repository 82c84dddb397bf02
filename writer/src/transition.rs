//! The status transition: a pure function from (current state, staged event) to a decision,
//! written as one exhaustive `match (status, signal)` so that adding a status or a signal cannot
//! compile until every combination has been thought about.
//!
//! Ordering rules, in order of precedence:
//! - Kick's own identities first: when the event and the state both carry a livestream id, the
//!   ids order the sessions, whatever any clock says. A live of a newer session wins (even if we
//!   never saw the previous one end); a live of the session that already ended, or anything about
//!   an older session, is `stale`.
//! - Then, for a webhook delivery, Kick's session start times: a delivery carries no livestream
//!   id but names its session by `started_at` (the end delivery too). When the state knows the
//!   start of its session, starts within [`SAME_SESSION`] are one session and otherwise order the
//!   sessions exactly like ids do. A webhook delivered an hour late is thereby still recognised as
//!   the old session it is. (The official API is the reconciling truth and keeps its clock rules
//!   below: after the lag guard it wins, whatever start it reports.)
//! - Otherwise (outages carry nothing) the database's clock orders: an event received before
//!   the state's own observation is `stale` (it was delayed, e.g. replayed from a collector's
//!   spool). Times are the database's (`raw_events.received_at`), never a collector's wall clock.
//!   A webhook's arrival says nothing (deliveries come minutes to hours late): it is ordered by
//!   Kick's own time of the event (`started_at` / `ended_at`) instead.
//! - The official API lags Kick's realtime feed by seconds, so an API poll that contradicts a
//!   realtime event observed less than [`Rules::api_lag_guard`] earlier is `stale`; the collector
//!   checks such differences again once the API has caught up.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kick_shared::model::{Source, Status};

/// Two session start times this close are the same session: Kick's realtime feed, its API and
/// its webhooks report one start, at different precisions (whole seconds or microseconds), so
/// they differ by less than a second. Two real sessions never start this close: one must end
/// and the next begin.
pub const SAME_SESSION: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// What a staged event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The streamer is live (realtime carries the livestream id; the official API does not).
    Live { livestream_id: Option<i64> },
    /// The streamer is offline.
    Offline { livestream_id: Option<i64> },
    /// The collector lost coverage (socket down and API failing): we do not know.
    Unknown,
}

impl Signal {
    pub fn livestream_id(self) -> Option<i64> {
        match self {
            Signal::Live { livestream_id } | Signal::Offline { livestream_id } => livestream_id,
            Signal::Unknown => None,
        }
    }
}

/// A staged event, as the transition sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub raw_id: i64,
    pub signal: Signal,
    pub source: Source,
    /// When the database received it (its own clock): the ordering key where ids cannot decide.
    pub observed_at: DateTime<Utc>,
    /// When it happened according to Kick (stream start for a live), else the observation.
    pub occurred_at: DateTime<Utc>,
    /// Kick's start time of the session the event is about (lives; a webhook's end delivery).
    pub session_start: Option<DateTime<Utc>>,
}

/// An offline waiting out the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingOffline {
    pub since: DateTime<Utc>,
    pub raw_id: i64,
    pub source: Source,
}

/// A streamer's state as stored in `streamers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub status: Status,
    /// The current session, or the last one that ended.
    pub livestream_id: Option<i64>,
    /// Kick's start time of that session, where known.
    pub started_at: Option<DateTime<Utc>>,
    pub observed_at: Option<DateTime<Utc>>,
    pub source: Option<Source>,
    pub pending_offline: Option<PendingOffline>,
}

impl State {
    pub const NEW: State = State {
        status: Status::Unknown,
        livestream_id: None,
        started_at: None,
        observed_at: None,
        source: None,
        pending_offline: None,
    };
}

/// The `raw_events.outcome` of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The status changed; a history row is written.
    Applied,
    /// Same status and session: nothing to do.
    Duplicate,
    /// Older than what we already know.
    Stale,
    /// Online without a known session, now enriched with the livestream id (no history).
    Enriched,
    /// An offline waiting for the grace period.
    Pending,
    /// The same session came back within the grace period: not a new session.
    Blip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Enriched => "enriched",
            Outcome::Pending => "pending",
            Outcome::Blip => "blip",
        }
    }
}

/// Writer-wide settings the transition depends on.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// `KICK_OFFLINE_GRACE`: zero means an offline applies at once.
    pub offline_grace: Duration,
    /// How long a realtime observation outranks a contradicting API poll.
    pub api_lag_guard: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            offline_grace: Duration::ZERO,
            api_lag_guard: kick_shared::model::API_LAG_GUARD,
        }
    }
}

/// The decision for one event: the new state, the outcome and, for a transition, the history row
/// `(previous, new)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub state: State,
    pub outcome: Outcome,
    pub history: Option<(Status, Status)>,
}

fn keep(state: &State, outcome: Outcome) -> Decision {
    Decision {
        state: *state,
        outcome,
        history: None,
    }
}

/// An API poll contradicting a fresh realtime observation: API lag, not news.
fn api_lags(state: &State, ev: &Event, rules: &Rules) -> bool {
    ev.source == Source::Api
        && state.source == Some(Source::Realtime)
        && state.observed_at.is_some_and(|t| {
            (ev.observed_at - t).to_std().unwrap_or_default() < rules.api_lag_guard
        })
}

fn moved(state: &State, ev: &Event, status: Status, livestream_id: Option<i64>) -> Decision {
    // Going live starts (or resumes) the event's session; otherwise the session stays the one
    // the id names (a new id without a known start has none).
    let started_at = match status {
        Status::Online => ev.session_start.or(Some(ev.occurred_at)),
        _ if livestream_id.is_some() && livestream_id != state.livestream_id => ev.session_start,
        _ => ev.session_start.or(state.started_at),
    };
    Decision {
        state: State {
            status,
            livestream_id,
            started_at,
            observed_at: Some(ev.observed_at),
            source: Some(ev.source),
            pending_offline: None,
        },
        outcome: Outcome::Applied,
        history: Some((state.status, status)),
    }
}

/// An offline that applies (or waits out the grace period) for session `livestream_id`.
fn goes_offline(state: &State, ev: &Event, livestream_id: Option<i64>, rules: &Rules) -> Decision {
    if state.pending_offline.is_some() {
        return keep(state, Outcome::Duplicate);
    }
    if state.status == Status::Online && !rules.offline_grace.is_zero() {
        return Decision {
            state: State {
                pending_offline: Some(PendingOffline {
                    since: ev.occurred_at,
                    raw_id: ev.raw_id,
                    source: ev.source,
                }),
                ..*state
            },
            outcome: Outcome::Pending,
            history: None,
        };
    }
    moved(state, ev, Status::Offline, livestream_id)
}

/// Both sides carry a livestream id: the sessions decide.
fn by_session(state: &State, ev: &Event, new: i64, cur: i64, rules: &Rules) -> Decision {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let observed = State {
        observed_at: Some(
            ev.observed_at
                .max(state.observed_at.unwrap_or(ev.observed_at)),
        ),
        ..*state
    };
    match (ev.signal, new.cmp(&cur)) {
        (_, Less) => keep(state, Outcome::Stale),
        // A newer session: live now, whatever we saw (or missed) of the previous one.
        (Signal::Live { .. }, Greater) => moved(state, ev, Status::Online, Some(new)),
        (Signal::Live { .. }, Equal) => match state.status {
            Status::Online if state.pending_offline.is_some() => Decision {
                state: State {
                    pending_offline: None,
                    ..observed
                },
                outcome: Outcome::Blip,
                history: None,
            },
            Status::Online => keep(state, Outcome::Duplicate),
            // A live of the session that ended: replayed or delayed.
            Status::Offline => keep(state, Outcome::Stale),
            Status::Unknown => moved(state, ev, Status::Online, Some(new)),
        },
        // The end of a session newer than the one we know: we missed its start.
        (Signal::Offline { .. }, Greater) => match state.status {
            Status::Offline => Decision {
                state: State {
                    livestream_id: Some(new),
                    started_at: ev.session_start,
                    ..observed
                },
                outcome: Outcome::Enriched,
                history: None,
            },
            Status::Online | Status::Unknown => goes_offline(state, ev, Some(new), rules),
        },
        (Signal::Offline { .. }, Equal) => match state.status {
            Status::Online | Status::Unknown => goes_offline(state, ev, Some(cur), rules),
            Status::Offline => keep(state, Outcome::Duplicate),
        },
        // Outages carry no livestream id.
        (Signal::Unknown, _) => keep(state, Outcome::Duplicate),
    }
}

/// A webhook delivery, and the state knows its session's start: the starts decide.
fn by_start(
    state: &State,
    ev: &Event,
    new: DateTime<Utc>,
    cur: DateTime<Utc>,
    rules: &Rules,
) -> Decision {
    let observed = State {
        observed_at: Some(
            ev.observed_at
                .max(state.observed_at.unwrap_or(ev.observed_at)),
        ),
        ..*state
    };
    let same = (new - cur).abs() <= SAME_SESSION;
    if !same && new < cur {
        return keep(state, Outcome::Stale);
    }
    match (ev.signal, same) {
        (Signal::Unknown, _) => keep(state, Outcome::Duplicate),
        (Signal::Live { livestream_id }, false) => moved(state, ev, Status::Online, livestream_id),
        (Signal::Offline { livestream_id }, false) => match state.status {
            // The end of a session whose start we never saw.
            Status::Offline => Decision {
                state: State {
                    livestream_id,
                    started_at: Some(new),
                    ..observed
                },
                outcome: Outcome::Enriched,
                history: None,
            },
            Status::Online | Status::Unknown => {
                let mut d = goes_offline(state, ev, livestream_id, rules);
                d.state.started_at = Some(new);
                d
            }
        },
        (Signal::Live { livestream_id }, true) => match state.status {
            Status::Online if state.pending_offline.is_some() => Decision {
                state: State {
                    pending_offline: None,
                    livestream_id: state.livestream_id.or(livestream_id),
                    ..observed
                },
                outcome: Outcome::Blip,
                history: None,
            },
            // Online without a known session id, now learning it.
            Status::Online if state.livestream_id.is_none() && livestream_id.is_some() => {
                Decision {
                    state: State {
                        livestream_id,
                        ..observed
                    },
                    outcome: Outcome::Enriched,
                    history: None,
                }
            }
            Status::Online => keep(state, Outcome::Duplicate),
            // A live of the session that ended: delayed, replayed, or the API lagging.
            Status::Offline => keep(state, Outcome::Stale),
            Status::Unknown => moved(
                state,
                ev,
                Status::Online,
                livestream_id.or(state.livestream_id),
            ),
        },
        (Signal::Offline { livestream_id }, true) => match state.status {
            Status::Online | Status::Unknown => {
                goes_offline(state, ev, livestream_id.or(state.livestream_id), rules)
            }
            Status::Offline => keep(state, Outcome::Duplicate),
        },
    }
}

/// Decides what `ev` does to `state`.
pub fn decide(state: &State, ev: &Event, rules: &Rules) -> Decision {
    if let (Some(new), Some(cur)) = (ev.signal.livestream_id(), state.livestream_id) {
        return by_session(state, ev, new, cur, rules);
    }
    if ev.source == Source::Webhook
        && let (Some(new), Some(cur)) = (ev.session_start, state.started_at)
    {
        return by_start(state, ev, new, cur, rules);
    }
    // A webhook's arrival time says nothing: Kick's time of the event orders it.
    let when = match ev.source {
        Source::Webhook => ev.occurred_at + SAME_SESSION,
        _ => ev.observed_at,
    };
    if state.observed_at.is_some_and(|t| when < t) {
        return keep(state, Outcome::Stale);
    }
    let observed = |s: &State| State {
        observed_at: Some(ev.observed_at),
        ..*s
    };
    // Here at most one side has a livestream id.
    match (state.status, ev.signal) {
        (Status::Online, Signal::Live { livestream_id }) => match livestream_id {
            // Online without a known session (set by the API), now learning its id.
            Some(new) => Decision {
                state: State {
                    livestream_id: Some(new),
                    pending_offline: None,
                    ..observed(state)
                },
                outcome: if state.pending_offline.is_some() {
                    Outcome::Blip
                } else {
                    Outcome::Enriched
                },
                history: None,
            },
            // The API (which has no id) confirms we are online.
            None if state.pending_offline.is_some() => Decision {
                state: State {
                    pending_offline: None,
                    ..observed(state)
                },
                outcome: Outcome::Blip,
                history: None,
            },
            None => keep(state, Outcome::Duplicate),
        },
        (Status::Online, Signal::Offline { livestream_id }) => {
            if api_lags(state, ev, rules) {
                return keep(state, Outcome::Stale);
            }
            goes_offline(state, ev, livestream_id.or(state.livestream_id), rules)
        }
        (Status::Offline, Signal::Live { livestream_id }) => {
            if api_lags(state, ev, rules) {
                return keep(state, Outcome::Stale);
            }
            moved(state, ev, Status::Online, livestream_id)
        }
        (Status::Offline, Signal::Offline { .. }) => keep(state, Outcome::Duplicate),
        (Status::Unknown, Signal::Live { livestream_id }) => {
            moved(state, ev, Status::Online, livestream_id)
        }
        (Status::Unknown, Signal::Offline { livestream_id }) => moved(
            state,
            ev,
            Status::Offline,
            livestream_id.or(state.livestream_id),
        ),
        (Status::Unknown, Signal::Unknown) => keep(state, Outcome::Duplicate),
        (Status::Online | Status::Offline, Signal::Unknown) => {
            moved(state, ev, Status::Unknown, state.livestream_id)
        }
    }
}

/// Confirms a pending offline whose grace has run out: the transition it stood for.
pub fn confirm_offline(state: &State) -> Option<Decision> {
    let p = state.pending_offline?;
    let new = State {
        status: Status::Offline,
        livestream_id: state.livestream_id,
        started_at: state.started_at,
        observed_at: state.observed_at,
        source: Some(p.source),
        pending_offline: None,
    };
    Some(Decision {
        state: new,
        outcome: Outcome::Applied,
        history: Some((state.status, Status::Offline)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;
    use Status::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn st(status: Status, ls: Option<i64>, at: i64, src: Source) -> State {
        State {
            status,
            livestream_id: ls,
            started_at: None,
            observed_at: Some(t(at)),
            source: Some(src),
            pending_offline: None,
        }
    }

    fn ev(signal: Signal, at: i64, src: Source) -> Event {
        Event {
            raw_id: 99,
            signal,
            source: src,
            observed_at: t(at),
            occurred_at: t(at),
            session_start: None,
        }
    }

    const RT: Source = Source::Realtime;
    const API: Source = Source::Api;

    fn live(ls: i64) -> Signal {
        Signal::Live {
            livestream_id: Some(ls),
        }
    }
    fn off(ls: i64) -> Signal {
        Signal::Offline {
            livestream_id: Some(ls),
        }
    }
    const API_LIVE: Signal = Signal::Live {
        livestream_id: None,
    };
    const API_OFF: Signal = Signal::Offline {
        livestream_id: None,
    };

    /// (name, state, event, expected outcome, expected status, expected livestream, history?)
    #[test]
    fn transition_table() {
        let rules = Rules::default();
        #[rustfmt::skip]
        let table: Vec<(&str, State, Event, Outcome, Status, Option<i64>, bool)> = vec![
            ("new streamer goes live", State::NEW, ev(live(10), 0, RT), Applied, Online, Some(10), true),
            ("new streamer is offline", State::NEW, ev(API_OFF, 0, API), Applied, Offline, None, true),
            ("unknown stays unknown", State::NEW, ev(Signal::Unknown, 0, RT), Duplicate, Unknown, None, false),
            ("offline goes live", st(Offline, Some(9), 0, RT), ev(live(10), 1, RT), Applied, Online, Some(10), true),
            ("online goes offline", st(Online, Some(10), 0, RT), ev(off(10), 1, RT), Applied, Offline, Some(10), true),
            ("duplicate live", st(Online, Some(10), 0, RT), ev(live(10), 1, RT), Duplicate, Online, Some(10), false),
            ("duplicate offline", st(Offline, Some(10), 0, RT), ev(off(10), 1, RT), Duplicate, Offline, Some(10), false),
            ("a newer session wins even when received earlier", st(Offline, Some(10), 5, RT), ev(live(11), 4, RT), Applied, Online, Some(11), true),
            ("an api answer received earlier is stale", st(Offline, Some(10), 5, RT), ev(API_LIVE, 4, API), Stale, Offline, Some(10), false),
            ("stop stamped 5 min ahead, then a newer live", st(Offline, Some(10), 300, RT), ev(live(11), 0, RT), Applied, Online, Some(11), true),
            ("stop of a newer session while offline", st(Offline, Some(10), 0, RT), ev(off(12), 1, RT), Enriched, Offline, Some(12), false),
            ("stop of a newer session while online", st(Online, Some(10), 0, RT), ev(off(12), 1, RT), Applied, Offline, Some(12), true),
            ("live of the same session after an outage", st(Unknown, Some(10), 0, RT), ev(live(10), 1, RT), Applied, Online, Some(10), true),
            ("replayed live of ended session", st(Offline, Some(10), 0, RT), ev(live(10), 1, RT), Stale, Offline, Some(10), false),
            ("offline for older session", st(Online, Some(11), 0, RT), ev(off(10), 1, RT), Stale, Online, Some(11), false),
            ("new session while online (missed offline)", st(Online, Some(10), 0, RT), ev(live(11), 1, RT), Applied, Online, Some(11), true),
            ("older session's live while online", st(Online, Some(11), 0, RT), ev(live(10), 1, RT), Stale, Online, Some(11), false),
            ("api live enriched by realtime id", st(Online, None, 0, API), ev(live(10), 1, RT), Enriched, Online, Some(10), false),
            ("api confirms online", st(Online, Some(10), 0, RT), ev(API_LIVE, 100, API), Duplicate, Online, Some(10), false),
            ("api offline after the lag guard", st(Online, Some(10), 0, RT), ev(API_OFF, 100, API), Applied, Offline, Some(10), true),
            ("api offline inside the lag guard", st(Online, Some(10), 0, RT), ev(API_OFF, 5, API), Stale, Online, Some(10), false),
            ("api live inside the lag guard", st(Offline, Some(10), 0, RT), ev(API_LIVE, 5, API), Stale, Offline, Some(10), false),
            ("api live after an api offline", st(Offline, Some(10), 0, API), ev(API_LIVE, 5, API), Applied, Online, None, true),
            ("outage from online", st(Online, Some(10), 0, RT), ev(Signal::Unknown, 1, RT), Applied, Unknown, Some(10), true),
            ("outage from offline", st(Offline, Some(10), 0, RT), ev(Signal::Unknown, 1, RT), Applied, Unknown, Some(10), true),
            ("unknown resolved live", st(Unknown, Some(10), 0, RT), ev(live(11), 1, RT), Applied, Online, Some(11), true),
            ("unknown resolved offline", st(Unknown, Some(10), 0, RT), ev(API_OFF, 1, API), Applied, Offline, Some(10), true),
            ("same instant is not stale", st(Online, Some(10), 1, RT), ev(off(10), 1, RT), Applied, Offline, Some(10), true),
        ];
        for (name, state, event, outcome, status, ls, history) in table {
            let d = decide(&state, &event, &rules);
            assert_eq!(d.outcome, outcome, "{name}: outcome");
            assert_eq!(d.state.status, status, "{name}: status");
            assert_eq!(d.state.livestream_id, ls, "{name}: livestream");
            assert_eq!(d.history.is_some(), history, "{name}: history");
            if let Some((prev, new)) = d.history {
                assert_eq!((prev, new), (state.status, status), "{name}: history row");
            }
            if outcome == Stale || outcome == Duplicate {
                assert_eq!(d.state, state, "{name}: a no-op leaves the state untouched");
            }
        }
    }

    /// A webhook delivery: no livestream id; Kick's start (and end) time; received at `at`.
    fn wh(live: bool, start: i64, end: Option<i64>, at: i64) -> Event {
        Event {
            raw_id: 99,
            signal: if live { API_LIVE } else { API_OFF },
            source: Source::Webhook,
            observed_at: t(at),
            occurred_at: t(if live { start } else { end.unwrap_or(at) }),
            session_start: Some(t(start)),
        }
    }

    fn started(mut s: State, start: i64) -> State {
        s.started_at = Some(t(start));
        s
    }

    /// Sessions named by their start time (webhooks, the API): (name, state, event, outcome,
    /// status, session start afterwards, history?).
    #[test]
    fn session_starts_order_what_ids_cannot() {
        let rules = Rules::default();
        const WH: Source = Source::Webhook;
        #[rustfmt::skip]
        let table: Vec<(&str, State, Event, Outcome, Status, Option<i64>, bool)> = vec![
            ("webhook live of a new session", started(st(Offline, Some(10), 0, RT), 0), wh(true, 1000, None, 1001), Applied, Online, Some(1000), true),
            ("webhook end of the current session", started(st(Online, Some(10), 1000, RT), 1000), wh(false, 1000, Some(2000), 2001), Applied, Offline, Some(1000), true),
            ("the same start at another precision is one session", started(st(Online, Some(10), 1000, RT), 1000), wh(true, 1001, None, 1004), Duplicate, Online, Some(1000), false),
            ("a session starting two seconds after the last one is a new one", started(st(Offline, Some(10), 1001, RT), 1000), wh(true, 1002, None, 1003), Applied, Online, Some(1002), true),
            ("an end delivered an hour late, after a newer session went live", started(st(Online, Some(11), 5000, RT), 5000), wh(false, 1000, Some(2000), 5600), Stale, Online, Some(5000), false),
            ("a live delivered late, after its session ended", started(st(Offline, Some(10), 2000, RT), 1000), wh(true, 1000, None, 2600), Stale, Offline, Some(1000), false),
            ("a live of an older session", started(st(Online, Some(11), 5000, RT), 5000), wh(true, 1000, None, 5600), Stale, Online, Some(5000), false),
            ("the end of a newer session we never saw start", started(st(Offline, Some(10), 2000, RT), 1000), wh(false, 3000, Some(4000), 4001), Enriched, Offline, Some(3000), false),
            ("the end of a newer session while online", started(st(Online, Some(10), 1000, RT), 1000), wh(false, 3000, Some(4000), 4001), Applied, Offline, Some(3000), true),
            ("a duplicate end", started(st(Offline, Some(10), 2001, WH), 1000), wh(false, 1000, Some(2000), 2500), Duplicate, Offline, Some(1000), false),
            ("realtime learns the id of a webhook's session", started(st(Online, None, 1001, WH), 1000), Event { session_start: Some(t(1000)), ..ev(live(12), 1100, RT) }, Enriched, Online, Some(1000), false),
            ("the api inside the lag guard is stale", started(st(Offline, Some(10), 2000, RT), 1000), Event { session_start: Some(t(1000)), ..ev(API_LIVE, 2005, API) }, Stale, Offline, Some(1000), false),
            ("the api after the lag guard wins, whatever start it reports", started(st(Offline, Some(10), 2000, RT), 1000), Event { session_start: Some(t(1000)), ..ev(API_LIVE, 2100, API) }, Applied, Online, Some(1000), true),
            ("a realtime live right after an end is a new session, close starts or not", started(st(Offline, None, 2000, API), 1998), Event { session_start: Some(t(2001)), ..ev(live(12), 2001, RT) }, Applied, Online, Some(2001), true),
            ("unknown resolved by a webhook live of the same session", started(st(Unknown, Some(10), 1500, RT), 1000), wh(true, 1000, None, 1600), Applied, Online, Some(1000), true),
            ("no start known: a late live is ordered by Kick's time", st(Offline, None, 2000, API), wh(true, 1000, None, 2600), Stale, Offline, None, false),
            ("no start known: a fresh live applies", st(Offline, None, 2000, API), wh(true, 2500, None, 2501), Applied, Online, Some(2500), true),
        ];
        for (name, state, event, outcome, status, start, history) in table {
            let d = decide(&state, &event, &rules);
            assert_eq!(d.outcome, outcome, "{name}: outcome");
            assert_eq!(d.state.status, status, "{name}: status");
            assert_eq!(d.state.started_at, start.map(t), "{name}: session start");
            assert_eq!(d.history.is_some(), history, "{name}: history");
            if outcome == Stale || outcome == Duplicate {
                assert_eq!(d.state, state, "{name}: a no-op leaves the state untouched");
            }
        }
        // Realtime learns the id of a session a webhook reported.
        let d = decide(
            &started(st(Online, None, 1001, WH), 1000),
            &Event {
                session_start: Some(t(1000)),
                ..ev(live(12), 1100, RT)
            },
            &rules,
        );
        assert_eq!(d.state.livestream_id, Some(12));
    }

    #[test]
    fn offline_grace_pending_blip_and_confirm() {
        let rules = Rules {
            offline_grace: Duration::from_secs(60),
            ..Rules::default()
        };
        let online = st(Online, Some(10), 0, RT);
        let d = decide(&online, &ev(off(10), 1, RT), &rules);
        assert_eq!(
            (d.outcome, d.state.status, d.history),
            (Pending, Online, None)
        );
        let pending = d.state;
        assert_eq!(pending.pending_offline.unwrap().raw_id, 99);
        // A second offline while pending is a duplicate.
        assert_eq!(
            decide(&pending, &ev(off(10), 2, RT), &rules).outcome,
            Duplicate
        );
        // The same session comes back: a blip, no history, pending cleared.
        let d = decide(&pending, &ev(live(10), 3, RT), &rules);
        assert_eq!((d.outcome, d.state.status, d.history), (Blip, Online, None));
        assert!(d.state.pending_offline.is_none());
        // A new session after a pending offline is a real transition (new session).
        let d = decide(&pending, &ev(live(11), 3, RT), &rules);
        assert_eq!((d.outcome, d.state.livestream_id), (Applied, Some(11)));
        // The grace runs out: confirmed offline with its history row.
        let c = confirm_offline(&pending).unwrap();
        assert_eq!(
            (c.state.status, c.history),
            (Offline, Some((Online, Offline)))
        );
        assert!(confirm_offline(&online).is_none());
    }
}
