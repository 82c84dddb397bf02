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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::socket::{self, SocketEvent, SocketShared};
use crate::ctx::Ctx;
use crate::gaps;
use crate::reconcile::Request;

/// No socket up for this long (with channels to watch) is a problem.
pub const BLIND_AFTER: Duration = Duration::from_secs(60);

/// How long a channel refused for another reason than a limit waits before it is tried again.
pub const PARKED_FOR: Duration = Duration::from_secs(300);

struct Socket {
    shared: Arc<SocketShared>,
    /// Channels this socket may carry (lowered when the server refuses for a limit).
    capacity: usize,
    ever_up: bool,
    /// The open coverage gap (row id) while the socket is down after having been up.
    gap: Option<i64>,
}

/// The placement state, driven by [`run`].
struct Placement {
    ctx: Arc<Ctx>,
    sockets: Vec<Socket>,
    owner: HashMap<i64, usize>,
    /// Channels refused (not for a limit): parked until then.
    parked: HashMap<i64, Instant>,
    /// Channels each socket refused (they are not offered to it again).
    refused_by: HashMap<i64, BTreeSet<usize>>,
    events_tx: mpsc::UnboundedSender<SocketEvent>,
    /// The last desired set.
    desired: BTreeSet<i64>,
    /// Since when no socket has been up while there are channels to watch.
    blind_since: Option<(Instant, chrono::DateTime<chrono::Utc>)>,
}

/// Runs the placement until shutdown: `desired` is the set of channels to subscribe (updated by
/// the listener when the watched streamers change).
pub async fn run(
    ctx: Arc<Ctx>,
    mut desired: watch::Receiver<Arc<BTreeSet<i64>>>,
) -> anyhow::Result<()> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut p = Placement {
        ctx: ctx.clone(),
        sockets: Vec::new(),
        owner: HashMap::new(),
        parked: HashMap::new(),
        refused_by: HashMap::new(),
        events_tx,
        desired: BTreeSet::new(),
        blind_since: None,
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
            _ = tick.tick() => p.tick(),
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
        self.refused_by.retain(|ch, _| desired.contains(ch));
        let current: Vec<i64> = self.owner.keys().copied().collect();
        let mut touched: BTreeSet<usize> = BTreeSet::new();
        for ch in current {
            if !desired.contains(&ch) {
                let s = self.owner.remove(&ch).unwrap();
                self.sockets[s].shared.desired.lock().unwrap().remove(&ch);
                touched.insert(s);
            }
        }
        let new: Vec<i64> = desired
            .iter()
            .copied()
            .filter(|c| !self.owner.contains_key(c) && !self.parked.contains_key(c))
            .collect();
        let added = new.len();
        for ch in new {
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

    /// Puts `ch` on a socket with room that has not refused it, or on a new socket. Returns
    /// the socket index if an existing socket changed.
    fn place(&mut self, ch: i64) -> Option<usize> {
        let refused = self.refused_by.get(&ch);
        let room = self.sockets.iter().position(|s| {
            s.shared.desired.lock().unwrap().len() < s.capacity
                && !refused.is_some_and(|r| r.contains(&s.shared.id))
        });
        match room {
            Some(i) => {
                self.sockets[i].shared.desired.lock().unwrap().insert(ch);
                self.owner.insert(ch, i);
                Some(i)
            }
            None => {
                let i = self.open_socket(BTreeSet::from([ch]));
                self.owner.insert(ch, i);
                None
            }
        }
    }

    fn open_socket(&mut self, channels: BTreeSet<i64>) -> usize {
        let id = self.sockets.len();
        let shared = Arc::new(SocketShared::new(id, channels));
        let (ctx, sh, tx) = (self.ctx.clone(), shared.clone(), self.events_tx.clone());
        self.ctx.supervisor.spawn(format!("socket-{id}"), move || {
            socket::run(ctx.clone(), sh.clone(), tx.clone())
        });
        self.sockets.push(Socket {
            shared,
            capacity: self.per_socket(),
            ever_up: false,
            gap: None,
        });
        id
    }

    async fn on_event(&mut self, ev: SocketEvent) {
        match ev {
            SocketEvent::Up { socket } => {
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
            }
            SocketEvent::Down {
                socket,
                end,
                was_up,
            } => {
                if !was_up {
                    return;
                }
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
                if code == 106 {
                    // "Limit exceeded": this socket is full at what it holds now.
                    let held = self.sockets[socket].shared.desired.lock().unwrap().len();
                    let s = &mut self.sockets[socket];
                    if held < s.capacity {
                        tracing::warn!(
                            socket,
                            capacity = held,
                            "the realtime server limits subscriptions per connection: lowered"
                        );
                        s.capacity = held.max(1);
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
        let due: Vec<i64> = self
            .parked
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(c, _)| *c)
            .collect();
        for ch in due {
            self.parked.remove(&ch);
            if self.desired.contains(&ch)
                && !self.owner.contains_key(&ch)
                && let Some(s) = self.place(ch)
            {
                self.sockets[s].shared.changed.notify_one();
            }
        }
        self.publish_metrics();
        self.check_blind();
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
