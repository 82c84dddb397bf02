//! The socket registry: every open WebSocket with its transport, its Centrifugo region and its
//! subscriptions; publication routing (a channel's publications reach Centrifugo sockets of the
//! channel's region only; Pusher is one cluster); and the subscription statistics tests use to
//! check that every channel is subscribed exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{Out, Sim, Transport};

#[derive(Debug)]
struct SocketEntry {
    transport: Transport,
    /// Centrifugo region index (0 for Pusher and when regions are off).
    region: usize,
    tx: mpsc::Sender<Out>,
    subs: HashSet<String>,
}

#[derive(Debug)]
pub struct Sockets {
    next: u64,
    map: HashMap<u64, SocketEntry>,
    by_channel: HashMap<String, HashSet<u64>>,
    n_regions: usize,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    AlreadySubscribed,
    LimitExceeded,
    /// The socket is gone.
    Closed,
}

impl Sockets {
    pub fn new(n_regions: usize) -> Self {
        Self {
            next: 0,
            map: HashMap::new(),
            by_channel: HashMap::new(),
            n_regions,
        }
    }
}

impl Sim {
    pub(crate) fn register_socket(
        &self,
        transport: Transport,
        region: usize,
    ) -> (u64, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(4096);
        let mut s = self.sockets.lock().unwrap();
        s.next += 1;
        let id = s.next;
        s.map.insert(
            id,
            SocketEntry {
                transport,
                region,
                tx,
                subs: HashSet::new(),
            },
        );
        (id, rx)
    }

    pub(crate) fn unregister_socket(&self, id: u64) {
        let mut s = self.sockets.lock().unwrap();
        if let Some(e) = s.map.remove(&id) {
            for ch in e.subs {
                remove_from_channel(&mut s.by_channel, &ch, id);
            }
        }
    }

    /// Subscribes socket `id` to `channel`, refusing beyond `limit` subscriptions.
    pub(crate) fn subscribe(
        &self,
        id: u64,
        channel: &str,
        limit: Option<usize>,
    ) -> Result<(), SubscribeError> {
        let mut s = self.sockets.lock().unwrap();
        let Some(e) = s.map.get_mut(&id) else {
            return Err(SubscribeError::Closed);
        };
        if e.subs.contains(channel) {
            return Err(SubscribeError::AlreadySubscribed);
        }
        if limit.is_some_and(|l| e.subs.len() >= l) {
            return Err(SubscribeError::LimitExceeded);
        }
        e.subs.insert(channel.to_owned());
        s.by_channel
            .entry(channel.to_owned())
            .or_default()
            .insert(id);
        Ok(())
    }

    pub(crate) fn unsubscribe(&self, id: u64, channel: &str) {
        let mut s = self.sockets.lock().unwrap();
        if let Some(e) = s.map.get_mut(&id) {
            e.subs.remove(channel);
        }
        remove_from_channel(&mut s.by_channel, channel, id);
    }

    /// Publishes one Kick event on a feed to every subscribed socket, in each socket's protocol.
    /// A feed of a known channel (`channel.{id}`, `chatrooms.{id}.v2`, …) reaches Centrifugo
    /// sockets of that channel's region only.
    pub fn publish(&self, channel: &str, event: &str, data: &str) {
        let region = {
            let w = self.world.lock().unwrap();
            w.feed_owner(channel).map(|i| w.streamers[i].region_idx)
        };
        self.publish_in(region, channel, event, data);
    }

    /// `publish` for a feed whose region is known (`None`: every region).
    pub(crate) fn publish_in(&self, region: Option<usize>, channel: &str, event: &str, data: &str) {
        let pusher: Arc<str> = json!({"event": event, "data": data, "channel": channel})
            .to_string()
            .into();
        let centrifugo: Arc<str> =
            json!({"push": {"channel": channel, "pub": {"data": {"event": event, "data": data}}}})
                .to_string()
                .into();
        let sockets = self.sockets.lock().unwrap();
        let Some(ids) = sockets.by_channel.get(channel) else {
            return;
        };
        for id in ids {
            let Some(s) = sockets.map.get(id) else {
                continue;
            };
            let text = match s.transport {
                Transport::Pusher => pusher.clone(),
                // Kick: a channel lives on one region; other regions accept the subscription
                // and never deliver anything.
                Transport::Centrifugo if region.is_some_and(|r| r != s.region) => continue,
                Transport::Centrifugo => centrifugo.clone(),
            };
            // A client too slow to keep a queue of 4096 frames is disconnected, as servers do.
            if s.tx.try_send(Out::Text(text)).is_err() {
                let _ = s.tx.try_send(Out::Close(3008, "slow".into()));
            }
        }
    }

    /// Sends `out` to every socket (optionally only of one transport, or only a fraction).
    pub fn to_sockets(&self, transport: Option<Transport>, fraction: f64, out: &Out) -> usize {
        let s = self.sockets.lock().unwrap();
        let mut n = 0;
        for (i, e) in s.map.values().enumerate() {
            if transport.is_some_and(|t| t != e.transport) {
                continue;
            }
            // Deterministic spread: every k-th socket for a fraction.
            if fraction < 1.0
                && (i as f64 * fraction).floor() == ((i + 1) as f64 * fraction).floor()
            {
                continue;
            }
            if e.tx.try_send(out.clone()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// The queues of every socket of `transport` (all when `None`), or only of the sockets
    /// subscribed to `channel`.
    pub(crate) fn targets(
        &self,
        transport: Option<Transport>,
        channel: Option<&str>,
    ) -> Vec<(Transport, mpsc::Sender<Out>)> {
        let s = self.sockets.lock().unwrap();
        let pick = |e: &SocketEntry| {
            transport.is_none_or(|t| t == e.transport) && channel.is_none_or(|c| e.subs.contains(c))
        };
        s.map
            .values()
            .filter(|e| pick(e))
            .map(|e| (e.transport, e.tx.clone()))
            .collect()
    }

    /// (sockets, subscriptions) over both transports.
    pub fn socket_count(&self) -> (usize, usize) {
        let s = self.sockets.lock().unwrap();
        (s.map.len(), s.map.values().map(|e| e.subs.len()).sum())
    }

    /// Subscriptions to streamers' `channel.{id}` feeds that deliver: on a Pusher socket, or on a
    /// Centrifugo socket of the channel's own region (a subscription elsewhere is accepted and
    /// never delivers). Two collectors covering every channel count each channel twice.
    pub fn subscriptions_delivering(&self) -> usize {
        let feeds: Vec<(String, usize)> = {
            let w = self.world.lock().unwrap();
            w.streamers
                .iter()
                .map(|st| (format!("channel.{}", st.channel_id), st.region_idx))
                .collect()
        };
        let s = self.sockets.lock().unwrap();
        let regions = s.n_regions > 1;
        feeds
            .iter()
            .map(|(feed, region)| {
                s.by_channel.get(feed).map_or(0, |ids| {
                    ids.iter()
                        .filter(|id| {
                            s.map.get(id).is_some_and(|e| match e.transport {
                                Transport::Pusher => true,
                                Transport::Centrifugo => !regions || e.region == *region,
                            })
                        })
                        .count()
                })
            })
            .sum()
    }

    /// The feeds not delivered anywhere, each with where it is subscribed (socket id, transport,
    /// region) and its own region: what a test prints when coverage does not converge.
    pub fn undelivered(&self) -> Vec<String> {
        let feeds: Vec<(String, usize)> = {
            let w = self.world.lock().unwrap();
            w.streamers
                .iter()
                .map(|st| (format!("channel.{}", st.channel_id), st.region_idx))
                .collect()
        };
        let s = self.sockets.lock().unwrap();
        let regions = s.n_regions > 1;
        let mut out = Vec::new();
        for (feed, region) in feeds {
            let subs: Vec<(u64, Transport, usize)> = s
                .by_channel
                .get(&feed)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| s.map.get(id).map(|e| (*id, e.transport, e.region)))
                        .collect()
                })
                .unwrap_or_default();
            let delivered = subs.iter().any(|(_, t, r)| match t {
                Transport::Pusher => true,
                Transport::Centrifugo => !regions || *r == region,
            });
            if !delivered {
                out.push(format!("{feed} (region {region}) subscribed on {subs:?}"));
            }
        }
        out
    }

    /// Channel → number of sockets subscribed to it.
    pub fn channel_subscriptions(&self) -> BTreeMap<String, usize> {
        let s = self.sockets.lock().unwrap();
        s.by_channel
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(ch, ids)| (ch.clone(), ids.len()))
            .collect()
    }

    /// The socket part of `/control/stats`.
    /// WebSocket connections open now (both transports).
    pub fn connected_sockets(&self) -> usize {
        self.sockets.lock().unwrap().map.len()
    }

    pub(crate) fn socket_stats(&self) -> Value {
        let s = self.sockets.lock().unwrap();
        let mut per_region = vec![(0usize, 0usize); s.n_regions];
        let mut per_transport: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for e in s.map.values() {
            let name = match e.transport {
                Transport::Centrifugo => {
                    let r = &mut per_region[e.region.min(s.n_regions - 1)];
                    r.0 += 1;
                    r.1 += e.subs.len();
                    "centrifugo"
                }
                Transport::Pusher => "pusher",
            };
            let t = per_transport.entry(name).or_default();
            t.0 += 1;
            t.1 += e.subs.len();
        }
        let regions: serde_json::Map<String, Value> = per_region
            .iter()
            .enumerate()
            .map(|(i, (n, subs))| {
                let name = self.region_name(i).unwrap_or("default").to_owned();
                (name, json!({"sockets": n, "subscriptions": subs}))
            })
            .collect();
        let transports: serde_json::Map<String, Value> = ["centrifugo", "pusher"]
            .iter()
            .map(|t| {
                let (n, subs) = per_transport.get(t).copied().unwrap_or_default();
                (
                    (*t).to_owned(),
                    json!({"sockets": n, "subscriptions": subs}),
                )
            })
            .collect();
        let live_channels = s.by_channel.values().filter(|ids| !ids.is_empty());
        let (mut channels, mut duplicated) = (0, 0);
        for ids in live_channels {
            channels += 1;
            if ids.len() > 1 {
                duplicated += 1;
            }
        }
        json!({
            "sockets": s.map.len(),
            "subscriptions": s.map.values().map(|e| e.subs.len()).sum::<usize>(),
            "channels_subscribed": channels,
            "subscriptions_duplicated": duplicated,
            "regions": regions,
            "transports": transports,
        })
    }
}

fn remove_from_channel(by_channel: &mut HashMap<String, HashSet<u64>>, channel: &str, id: u64) {
    if let Some(set) = by_channel.get_mut(channel) {
        set.remove(&id);
        if set.is_empty() {
            by_channel.remove(channel);
        }
    }
}
