//! The placement: which realtime channel goes on which socket. It owns the sockets (spawned
//! under the supervisor), their coverage gaps, and the reconciles a socket's loss triggers; the
//! sockets only report what they see.
//!
//! Rules:
//! - A socket carries at most `KICK_CHANNELS_PER_CONNECTION` channels (at most 128, Centrifugo's
//!   default limit). New channels fill sockets with room before a new socket is opened; removed
//!   channels are unsubscribed where they are.
//! - A subscription the server refuses for a limit (Centrifugo 106) lowers that socket's
//!   capacity to what it holds and moves the channel to another socket (or a new one). Other
//!   refusals park the channel for [`PARKED_FOR`]: it is covered by polling meanwhile.
//! - A socket that was up and goes down opens a `coverage_gaps` row and asks for a reconcile of
//!   its channels (if the API fails too, they become `unknown`); when it is up again, its channels
//!   are reconciled once more and the gap is closed with what that found.
//! - Each channel goes on a socket to the server that serves it (its region, learned by
//!   `regions`); a channel whose region is not known yet goes on a socket to the general
//!   endpoint. A new channel waits for its region's cache read first (milliseconds;
//!   [`CACHE_WAIT`] at most), so that a restarted collector's channels go straight to their
//!   regions' sockets. A channel that moved to another region moves to a socket there; one
//!   whose region is learned while its general socket negotiates moves once that socket is up
//!   and does not reach it (a socket left without channels does not connect).
//! - Coverage is reported in `channel_coverage` and counted in `kick_collector_channels_covered`
//!   (`/healthz`: `covered_channels`): a channel on an up socket to its own region's server (or
//!   any up socket with Pusher, which has no regions) is covered by realtime; the rest is polled
//!   (see `reconcile`). A subscription on another region's server is confirmed and delivers
//!   nothing: counting subscriptions overstates coverage.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kick_shared::config::Transport;
use tokio::sync::{mpsc, watch};

use super::regions::RegionUpdate;
use super::socket::{self, SocketEvent, SocketShared};
use crate::ctx::Ctx;
use crate::gaps;
use crate::reconcile::Request;

/// No socket up for this long (with channels to watch) is a problem.
pub const BLIND_AFTER: Duration = Duration::from_secs(60);

/// How long a channel refused for another reason than a limit waits before it is tried again.
pub const PARKED_FOR: Duration = Duration::from_secs(300);
/// How long a channel waits for a place when the socket cap is reached.
pub const CAPPED_FOR: Duration = Duration::from_secs(10);
/// How long a new channel (Centrifugo) waits for its region's cache read before it goes on a
/// general socket anyway (the database slow or down: it must not stay unsubscribed).
pub const CACHE_WAIT: Duration = Duration::from_secs(2);

struct Socket {
    shared: Arc<SocketShared>,
    /// The server it connects to (`None`: the general endpoint).
    server: Option<String>,
    /// Channels this socket may carry (lowered when the server refuses for a limit).
    capacity: usize,
    ever_up: bool,
    /// The open coverage gap (row id) while the socket is down after having been up.
    gap: Option<i64>,
    /// Its last channels went away (removed from the watched set, or moved to their region's
    /// socket), not refused: see [`Placement::counted_sockets`].
    moved_out: bool,
}

/// The placement state, driven by [`run`].
struct Placement {
    ctx: Arc<Ctx>,
    sockets: Vec<Socket>,
    owner: HashMap<i64, usize>,
    /// Channels refused (not for a limit): parked until then.
    parked: HashMap<i64, Instant>,
    /// New channels waiting for their region's cache read (until then, at most).
    awaiting: HashMap<i64, Instant>,
    /// Channels each socket refused (they are not offered to it again).
    refused_by: HashMap<i64, BTreeSet<usize>>,
    events_tx: mpsc::UnboundedSender<SocketEvent>,
    /// The last desired set.
    desired: BTreeSet<i64>,
    /// Since when no socket has been up while there are channels to watch.
    blind_since: Option<(Instant, chrono::DateTime<chrono::Utc>)>,
    /// Where each channel is served (from `regions`).
    regions: HashMap<i64, String>,
    /// The covered channels as last written to `channel_coverage`.
    reported: BTreeSet<i64>,
    /// Coverage could not be written: try again.
    report_due: bool,
    /// The socket cap was reached (logged once until it is not).
    capped: bool,
    /// This run's coverage rows replaced those of an earlier run (done at the first report).
    cleared: bool,
    /// Counts changes of the sockets' channel sets and of `regions` (see [`CoverageInputs`]).
    changes: u64,
    /// What `reported` was computed from.
    reported_from: Option<CoverageInputs>,
    /// What the last `re_place` looked at.
    placed_from: Option<CoverageInputs>,
}

/// Everything coverage (and `re_place`) depends on, cheap to read: the per-second check walks
/// every channel only when one of these changed. At 10,000 channels the walk (a region lookup,
/// a URL comparison and a set insertion per channel, then the comparison of two sets) held
/// the collector's only thread for milliseconds every second, and the events that arrived
/// meanwhile waited (BENCHMARKS.md, "Latency against a single process").
#[derive(Debug, PartialEq, Eq)]
struct CoverageInputs {
    /// [`Placement::changes`] when read.
    changes: u64,
    pusher: bool,
    /// Per socket: whether it is up, and where it connected.
    sockets: Vec<(bool, Option<String>)>,
}

/// Runs the placement until shutdown: `desired` is the set of channels to subscribe (updated by
/// the listener when the watched streamers change).
pub async fn run(
    ctx: Arc<Ctx>,
    mut desired: watch::Receiver<Arc<BTreeSet<i64>>>,
    regions: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<RegionUpdate>>>,
) -> anyhow::Result<()> {
    let mut regions = regions.lock().await;
    // Sockets of an earlier incarnation of this task (it panicked and was restarted) are
    // retired: this one opens its own.
    for old in ctx.sockets.lock().unwrap().drain(..) {
        old.stop.cancel();
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut p = Placement {
        ctx: ctx.clone(),
        sockets: Vec::new(),
        owner: HashMap::new(),
        parked: HashMap::new(),
        awaiting: HashMap::new(),
        refused_by: HashMap::new(),
        events_tx,
        desired: BTreeSet::new(),
        blind_since: None,
        regions: HashMap::new(),
        reported: BTreeSet::new(),
        report_due: true,
        capped: false,
        cleared: false,
        changes: 0,
        reported_from: None,
        placed_from: None,
    };
    let first = desired.borrow_and_update().clone();
    p.apply(&first);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            changed = desired.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let set = desired.borrow_and_update().clone();
                p.apply(&set);
            }
            ev = events.recv() => {
                if let Some(ev) = ev {
                    p.on_event(ev).await;
                }
            }
            r = regions.recv() => match r {
                Some(RegionUpdate::Located(ch, url)) => {
                    p.on_region(ch, url);
                    p.place_awaited(&[ch]);
                }
                Some(RegionUpdate::CacheRead(chs)) => p.place_awaited(&chs),
                None => {}
            },
            _ = tick.tick() => {
                // Cheap when nothing changed (it compares what it last looked at).
                p.re_place();
                p.tick();
                p.report_coverage().await;
            }
        }
    }
}

/// The channels of a wait (channel → until when) whose time is up.
fn expired(waits: &HashMap<i64, Instant>, now: Instant) -> Vec<i64> {
    waits
        .iter()
        .filter(|(_, until)| **until <= now)
        .map(|(ch, _)| *ch)
        .collect()
}

/// Whether a socket meant for `socket_server` (`None`: a general socket), connected to
/// `connected`, reaches `server` (`None`: the general servers): a socket meant for that server,
/// or a general one whose negotiation led there.
fn reaches(socket_server: Option<&str>, connected: Option<&str>, server: Option<&str>) -> bool {
    match server {
        None => socket_server.is_none(),
        Some(url) => {
            socket_server == Some(url) || (socket_server.is_none() && connected == Some(url))
        }
    }
}

impl Placement {
    fn per_socket(&self) -> usize {
        self.ctx.cfg().channels_per_connection
    }

    /// Makes the placement match `desired`.
    pub fn apply(&mut self, desired: &BTreeSet<i64>) {
        self.desired = desired.clone();
        self.parked.retain(|ch, _| desired.contains(ch));
        self.awaiting.retain(|ch, _| desired.contains(ch));
        self.refused_by.retain(|ch, _| desired.contains(ch));
        let current: Vec<i64> = self.owner.keys().copied().collect();
        let mut touched: BTreeSet<usize> = BTreeSet::new();
        for ch in current {
            if !desired.contains(&ch) {
                let s = self.owner.remove(&ch).unwrap();
                self.drop_from(s, ch);
                touched.insert(s);
            }
        }
        let new: Vec<i64> = desired
            .iter()
            .copied()
            .filter(|c| {
                !self.owner.contains_key(c)
                    && !self.parked.contains_key(c)
                    && !self.awaiting.contains_key(c)
            })
            .collect();
        let added = new.len();
        // With regions (Centrifugo), a channel whose region is not known yet waits for the
        // cache read (milliseconds; `CACHE_WAIT` at most): placed on a general socket first, a
        // restarted collector's channels of the general socket's region stayed there, half a
        // socket each, beside the region's own sockets (15 sockets where 11 were needed).
        let wait = self.ctx.cfg().kick.transport != Transport::Pusher;
        let until = Instant::now() + CACHE_WAIT;
        for ch in new {
            if wait && !self.regions.contains_key(&ch) {
                self.awaiting.insert(ch, until);
                continue;
            }
            if let Some(s) = self.place(ch) {
                touched.insert(s);
            }
        }
        for s in touched {
            self.sockets[s].shared.changed.notify_one();
        }
        if added > 0 {
            tracing::info!(
                channels = self.owner.len(),
                added,
                sockets = self.sockets.len(),
                "realtime placement updated"
            );
        }
        self.publish_metrics();
    }

    /// Places those of `chs` that wait for their region's cache read (it came, or they waited
    /// long enough).
    fn place_awaited(&mut self, chs: &[i64]) {
        let released: Vec<i64> = chs
            .iter()
            .copied()
            .filter(|ch| self.awaiting.remove(ch).is_some())
            .collect();
        self.place_released(&released);
    }

    /// Places channels just released from a wait (for their region, or parked after a refusal)
    /// that are still wanted and on no socket.
    fn place_released(&mut self, chs: &[i64]) {
        let mut touched = BTreeSet::new();
        for &ch in chs {
            if self.desired.contains(&ch)
                && !self.owner.contains_key(&ch)
                && let Some(s) = self.place(ch)
            {
                touched.insert(s);
            }
        }
        for s in touched {
            self.sockets[s].shared.changed.notify_one();
        }
    }

    /// Puts `ch` on a socket with room that has not refused it, or on a new socket. Returns
    /// the socket index if an existing socket changed.
    fn place(&mut self, ch: i64) -> Option<usize> {
        let server = self.server_for(ch).map(str::to_owned);
        let refused = self.refused_by.get(&ch);
        let room = |s: &Socket| {
            s.shared.desired.lock().unwrap().len() < s.capacity
                && !refused.is_some_and(|r| r.contains(&s.shared.id))
        };
        // A socket already connected where the channel is served; else one meant for that server.
        let room = self
            .sockets
            .iter()
            .position(|s| self.serves(s, ch) && room(s))
            .or_else(|| {
                self.sockets
                    .iter()
                    .position(|s| s.server == server && room(s))
            });
        match room {
            Some(i) => {
                self.add_to(i, ch);
                self.sockets[i].moved_out = false;
                self.owner.insert(ch, i);
                Some(i)
            }
            None if self.counted_sockets() >= self.max_sockets() => {
                // A server that refuses everything (or a limit of almost nothing) must not
                // make us open a socket per channel: past the cap the channel is polled.
                if !self.capped {
                    self.capped = true;
                    tracing::warn!(
                        sockets = self.sockets.len(),
                        channels = self.desired.len(),
                        "realtime socket cap reached (the server refuses subscriptions): further channels are polled"
                    );
                }
                // Soon again: the cap moves with the channels, regions and limits learned.
                self.parked.insert(ch, Instant::now() + CAPPED_FOR);
                None
            }
            None => {
                let i = self.open_socket(server, BTreeSet::from([ch]));
                self.owner.insert(ch, i);
                None
            }
        }
    }

    /// The sockets the cap counts: all but those emptied because their channels went away
    /// (their shards moved to another collector, or they moved to their region's socket). Those
    /// do not count: after a takeover the new channels need sockets to their own regions (found in CI: 38 sockets, 185 channels
    /// polled after a takeover). Sockets emptied by refusals still count.
    fn counted_sockets(&self) -> usize {
        self.sockets
            .iter()
            .filter(|s| !(s.moved_out && s.shared.desired.lock().unwrap().is_empty()))
            .count()
    }

    /// At most this many sockets (emptied ones included: a socket whose channels were all
    /// refused must count, or refusals would open sockets without end): twice what the
    /// channels need at the configured size, plus two per known region and four spare. Normal
    /// operation stays far below it.
    fn max_sockets(&self) -> usize {
        let regions: BTreeSet<&String> = self.regions.values().collect();
        self.desired.len().div_ceil(self.per_socket().max(1)) * 2 + 2 * regions.len() + 4
    }

    /// The server `ch` belongs on: its region when known (Centrifugo), else the general
    /// endpoint.
    fn server_for(&self, ch: i64) -> Option<&str> {
        if self.ctx.cfg().kick.transport == Transport::Pusher {
            return None;
        }
        self.regions
            .get(&ch)
            .map(String::as_str)
            .filter(|u| !u.is_empty())
    }

    /// Whether socket `s` reaches the server that serves `ch`: a socket meant for that server,
    /// or a general one whose negotiation led there. (With Pusher, any socket.)
    fn serves(&self, s: &Socket, ch: i64) -> bool {
        let connected = s.shared.connected_url.lock().unwrap();
        reaches(
            s.server.as_deref(),
            connected.as_deref(),
            self.server_for(ch),
        )
    }

    /// `regions` learned where `ch` is served: move it there if its socket does not reach it
    /// (it was blind there: nothing is lost by the move).
    fn on_region(&mut self, ch: i64, url: String) {
        self.regions.insert(ch, url);
        self.changes += 1;
        let Some(&s) = self.owner.get(&ch) else {
            return;
        };
        let sock = &self.sockets[s];
        // A general socket that has not negotiated yet may well land where the channel is
        // served: decided when it is up (`re_place` then), never a move for nothing. (A restarted
        // collector's channels do not come here: they wait for their cached regions before they
        // are placed.)
        let undecided =
            sock.server.is_none() && sock.shared.connected_url.lock().unwrap().is_none();
        if undecided || self.serves(sock, ch) {
            return;
        }
        self.owner.remove(&ch);
        self.drop_from(s, ch);
        self.sockets[s].shared.changed.notify_one();
        if let Some(n) = self.place(ch) {
            self.sockets[n].shared.changed.notify_one();
        }
    }

    /// Adds `ch` to socket `s`'s channels. Every change of a socket's channels goes through
    /// this or [`Self::drop_from`], so that coverage knows to look again.
    fn add_to(&mut self, s: usize, ch: i64) {
        self.sockets[s].shared.desired.lock().unwrap().insert(ch);
        self.changes += 1;
    }

    /// Removes `ch` from socket `s`'s channels because it went away (no longer watched, or
    /// moved to its region's socket; refusals do not come here). A socket so emptied is
    /// `moved_out`: the cap does not count it.
    fn drop_from(&mut self, s: usize, ch: i64) {
        let emptied = {
            let mut d = self.sockets[s].shared.desired.lock().unwrap();
            d.remove(&ch);
            d.is_empty()
        };
        self.changes += 1;
        if emptied {
            self.sockets[s].moved_out = true;
        }
    }

    /// What coverage depends on, as it is now.
    fn coverage_inputs(&self) -> CoverageInputs {
        CoverageInputs {
            changes: self.changes,
            pusher: self.ctx.cfg().kick.transport == Transport::Pusher,
            sockets: self
                .sockets
                .iter()
                .map(|s| {
                    (
                        s.shared.up.load(Ordering::Relaxed),
                        s.shared.connected_url.lock().unwrap().clone(),
                    )
                })
                .collect(),
        }
    }

    /// Realtime coverage as it is now: channels on up sockets that reach their own server
    /// (whose region is known; with Pusher, any up socket).
    fn covered(&self) -> BTreeSet<i64> {
        // Runs every second over every channel on the collector's only thread: what each
        // socket reaches is read once per socket, not once per channel (at 10,000 channels a
        // per-channel configuration read and URL copy held the thread ~7 ms, and the events
        // arriving meanwhile waited: measured in BENCHMARKS.md "Latency against a single
        // process").
        let pusher = self.ctx.cfg().kick.transport == Transport::Pusher;
        let mut out = BTreeSet::new();
        for s in &self.sockets {
            if !s.shared.up.load(Ordering::Relaxed) {
                continue;
            }
            let connected = s.shared.connected_url.lock().unwrap().clone();
            let desired = s.shared.desired.lock().unwrap();
            out.extend(desired.iter().copied().filter(|ch| {
                pusher
                    || self.regions.get(ch).is_some_and(|url| {
                        // As `server_for`: an empty URL is the general servers'.
                        let server = Some(url.as_str()).filter(|u| !u.is_empty());
                        reaches(s.server.as_deref(), connected.as_deref(), server)
                    })
            }));
        }
        out
    }

    /// Sets `kick_collector_channels_covered` from the sockets as they are now (when one comes
    /// up or goes down; otherwise the per-second check does).
    fn count_covered(&self) {
        self.ctx
            .metrics
            .channels_covered
            .store(self.covered().len(), Ordering::Relaxed);
    }

    /// Channels whose socket no longer reaches their server (a general socket reconnected and
    /// was sent elsewhere): move them.
    fn re_place(&mut self) {
        let inputs = self.coverage_inputs();
        if self.placed_from.as_ref() == Some(&inputs) {
            return;
        }
        self.placed_from = Some(inputs);
        let misplaced: Vec<i64> = self
            .owner
            .iter()
            .filter(|(ch, s)| {
                self.regions.get(ch).is_some_and(|u| !u.is_empty())
                    && self.sockets[**s].shared.up.load(Ordering::Relaxed)
                    && !self.serves(&self.sockets[**s], **ch)
            })
            .map(|(ch, _)| *ch)
            .collect();
        for ch in misplaced {
            let url = self.regions[&ch].clone();
            self.on_region(ch, url);
        }
    }

    /// Writes what changed in realtime coverage to `channel_coverage`.
    async fn report_coverage(&mut self) {
        // Read before the walk: a change made after it is seen at the next check.
        let inputs = self.coverage_inputs();
        if !self.report_due && self.reported_from.as_ref() == Some(&inputs) {
            return;
        }
        let now = self.covered();
        self.ctx
            .metrics
            .channels_covered
            .store(now.len(), Ordering::Relaxed);
        if now == self.reported && !self.report_due {
            self.reported_from = Some(inputs);
            return;
        }
        // Only a lease member writes coverage under its id: a second process wrongly started
        // with a running collector's id must not touch that collector's rows.
        if !self.ctx.leases.is_member() {
            return;
        }
        let fresh = !self.cleared;
        let added: Vec<i64> = now.difference(&self.reported).copied().collect();
        let removed: Vec<i64> = self.reported.difference(&now).copied().collect();
        let id = &self.ctx.collector_id;
        let ok = async {
            if fresh {
                // Rows of an earlier run of this collector are stale.
                self.ctx
                    .query(
                        "DELETE FROM channel_coverage WHERE collector_id = $1",
                        &[id],
                    )
                    .await?;
            }
            if !removed.is_empty() {
                self.ctx
                    .query(
                        "DELETE FROM channel_coverage WHERE collector_id = $1 AND kick_channel_id = ANY($2)",
                        &[id, &removed],
                    )
                    .await?;
            }
            if !added.is_empty() {
                self.ctx
                    .query(
                        "INSERT INTO channel_coverage (kick_channel_id, collector_id)
                         SELECT unnest($2::bigint[]), $1 ON CONFLICT DO NOTHING",
                        &[id, &added],
                    )
                    .await?;
            }
            Ok::<_, kick_shared::db::DbError>(())
        }
        .await;
        match ok {
            Ok(()) => {
                self.reported = now;
                self.reported_from = Some(inputs);
                self.report_due = false;
                self.cleared = true;
            }
            Err(e) => {
                self.report_due = true;
                tracing::debug!(error = %e, "coverage not recorded; retried");
            }
        }
    }

    fn open_socket(&mut self, server: Option<String>, channels: BTreeSet<i64>) -> usize {
        let id = self.sockets.len();
        let stop = self.ctx.shutdown.child_token();
        let shared = Arc::new(SocketShared::new(
            id,
            server.clone(),
            channels,
            stop.clone(),
        ));
        let (ctx, sh, tx) = (self.ctx.clone(), shared.clone(), self.events_tx.clone());
        self.ctx
            .supervisor
            .spawn_until(format!("socket-{id}"), stop, move || {
                socket::run(ctx.clone(), sh.clone(), tx.clone())
            });
        self.ctx.sockets.lock().unwrap().push(shared.clone());
        self.sockets.push(Socket {
            shared,
            server,
            capacity: self.per_socket(),
            ever_up: false,
            gap: None,
            moved_out: false,
        });
        id
    }

    async fn on_event(&mut self, ev: SocketEvent) {
        match ev {
            SocketEvent::Up { socket } => {
                // A new connection starts with the server's limits afresh: full capacity, no
                // channel held as refused by it, and the parked channels tried again at the
                // next tick (a server that refused everything for a while must not leave us
                // polling until the collector restarts).
                let per_socket = self.per_socket();
                let s = &mut self.sockets[socket];
                s.capacity = per_socket;
                let id = s.shared.id;
                for refused in self.refused_by.values_mut() {
                    refused.remove(&id);
                }
                let now = Instant::now();
                for until in self.parked.values_mut() {
                    *until = (*until).min(now);
                }
                // Channels whose region was learned while this (general) socket negotiated
                // and that it does not reach move now, not at the next tick.
                self.re_place();
                let s = &mut self.sockets[socket];
                let again = std::mem::replace(&mut s.ever_up, true);
                let gap = s.gap.take();
                if again || gap.is_some() {
                    let chans: Vec<i64> = s.shared.desired().into_iter().collect();
                    self.ctx.reconcile.send(Request::Channels {
                        channels: chans,
                        close_gap: gap,
                        unknown_on_failure: None,
                    });
                }
                self.count_covered();
                self.publish_metrics();
            }
            SocketEvent::Down {
                socket,
                end,
                was_up,
            } => {
                if !was_up {
                    return;
                }
                // The gauges say so now, not at the next check.
                self.count_covered();
                self.publish_metrics();
                let chans: Vec<i64> = self.sockets[socket].shared.desired().into_iter().collect();
                let gap = gaps::open(&self.ctx, socket, chans.len(), end.code, &end.reason).await;
                self.sockets[socket].gap = gap;
                // While the socket is down the API covers its streamers; if it fails too, they
                // become unknown (never offline).
                let key = format!(
                    "{}:{}",
                    self.ctx.collector_id,
                    gap.unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
                );
                self.ctx.reconcile.send(Request::Channels {
                    channels: chans,
                    close_gap: None,
                    unknown_on_failure: Some(key),
                });
            }
            SocketEvent::Refused {
                socket,
                channel,
                code,
                message: _,
            } => {
                if self.owner.get(&channel) != Some(&socket) {
                    return;
                }
                self.owner.remove(&channel);
                self.sockets[socket]
                    .shared
                    .desired
                    .lock()
                    .unwrap()
                    .remove(&channel);
                self.refused_by.entry(channel).or_default().insert(socket);
                let held = self.sockets[socket].shared.desired.lock().unwrap().len();
                if code == 106 && held > 0 {
                    // "Limit exceeded": this socket is full at what it holds now. (A limit
                    // refused on an empty socket is no per-connection limit: parked below.)
                    let s = &mut self.sockets[socket];
                    if held < s.capacity {
                        tracing::warn!(
                            socket,
                            capacity = held,
                            "the realtime server limits subscriptions per connection: lowered"
                        );
                        s.capacity = held;
                    }
                    if let Some(s) = self.place(channel) {
                        self.sockets[s].shared.changed.notify_one();
                    }
                } else {
                    // Not a limit: leave the channel to polling for a while.
                    self.parked.insert(channel, Instant::now() + PARKED_FOR);
                }
                self.publish_metrics();
            }
            SocketEvent::Unsubscribed { socket, channel } => {
                // The server dropped it for good: place it again (elsewhere if possible).
                if self.owner.get(&channel) == Some(&socket) {
                    self.owner.remove(&channel);
                    self.sockets[socket]
                        .shared
                        .desired
                        .lock()
                        .unwrap()
                        .remove(&channel);
                    self.refused_by.entry(channel).or_default().insert(socket);
                    if let Some(s) = self.place(channel) {
                        self.sockets[s].shared.changed.notify_one();
                    }
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let waited = expired(&self.awaiting, now);
        self.place_awaited(&waited);
        let due = expired(&self.parked, now);
        for ch in &due {
            self.parked.remove(ch);
        }
        self.place_released(&due);
        self.publish_metrics();
        self.check_blind();
        self.check_refused();
        socket::REJECTED_LOG.report_overdue();
    }

    /// No socket up while there are channels to watch, for longer than [`BLIND_AFTER`]: a
    /// problem (realtime coverage is gone; the API still reconciles).
    fn check_blind(&mut self) {
        let m = &self.ctx.metrics;
        let up = m.sockets_up.load(Ordering::Relaxed);
        if self.desired.is_empty() || up > 0 {
            self.blind_since = None;
            self.ctx.health.clear("sockets");
            return;
        }
        let (t, since) = *self
            .blind_since
            .get_or_insert_with(|| (Instant::now(), chrono::Utc::now()));
        if t.elapsed() >= BLIND_AFTER {
            self.ctx.health.set_since(
                "sockets",
                format!(
                    "no realtime socket up (0/{} sockets, {} channels): covered by the API only",
                    m.sockets_total.load(Ordering::Relaxed),
                    self.desired.len()
                ),
                since,
            );
        }
    }

    /// Many watched channels without a subscription (refused, or past the socket cap) is a
    /// problem: they are only polled. A few refused channels are normal (Kick refuses some).
    fn check_refused(&mut self) {
        let n = self.parked.len();
        let watched = self.desired.len();
        if n > 10.max(watched / 10) {
            self.ctx.health.set(
                "subscriptions",
                format!(
                    "{n} of {watched} channels have no realtime subscription (refused by the server{}): polled only",
                    if self.capped { ", socket cap reached" } else { "" }
                ),
            );
        } else {
            self.ctx.health.clear("subscriptions");
            if n == 0 {
                self.capped = false;
            }
        }
    }

    fn publish_metrics(&self) {
        let m = &self.ctx.metrics;
        let active: Vec<&Socket> = self
            .sockets
            .iter()
            .filter(|s| {
                !s.shared.desired.lock().unwrap().is_empty() || s.shared.up.load(Ordering::Relaxed)
            })
            .collect();
        // (`sockets_up` and `subscriptions` are kept by the sockets themselves, at each
        // transition.)
        m.sockets_total.store(active.len(), Ordering::Relaxed);
        m.watched_channels
            .store(self.desired.len(), Ordering::Relaxed);
    }
}
