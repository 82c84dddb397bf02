//! The lease plan: given the collectors alive and the leases as stored, which leases change
//! owner. Pure (no clock, no database), so every rule is a named table test below; the lease
//! round (`super::round`) reads the tables, calls [`plan`] and writes what it returns.
//!
//! Rules, in order:
//! 1. A lease whose owner is not alive is free (`OwnerGone`: no handoff grace, its token is dead
//!    at once); a lease without an owner is free (`Unowned`); a second replica of a shard held by
//!    the same collector is free (`Duplicate`).
//! 2. Shares: `total / alive` leases each, and the remainder to the collectors that hold the
//!    most already (ties: the smaller id), so that as few leases move as possible.
//! 3. Free leases go, in shard order, to a collector under its share that holds no replica of
//!    that shard, preferring one on another host than the shard's other replicas, then the one
//!    holding fewest, then the smaller id. If every collector is at its share, a collector that
//!    holds no replica of the shard takes it anyway (better over share than unowned). A lease no
//!    collector may hold stays unowned.
//! 4. A collector holding more than its share hands its highest-numbered leases, one by one, to
//!    a collector under its share that may hold that shard (`Rebalance`: a planned handoff, the
//!    old token stays good for a few seconds). With replicas the highest shards of two
//!    collectors can be the same ones; a lease nobody may take is passed over for the next.
//!
//! A move to the collector it came from is no move. With the leases in steady state the plan is
//! empty: rounds write nothing but renewals.

use std::collections::{BTreeMap, BTreeSet};

/// A collector taking part (its member row is alive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub host: String,
}

/// One lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: i32,
    pub replica: i32,
    pub owner: Option<String>,
}

/// Why a lease changes owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Nobody held it (a new replica, or released earlier).
    Unowned,
    /// Its owner is no longer alive.
    OwnerGone,
    /// Its owner held more than its share.
    Rebalance,
    /// Its owner held another replica of the same shard.
    Duplicate,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unowned => "unowned",
            Reason::OwnerGone => "owner gone",
            Reason::Rebalance => "rebalance",
            Reason::Duplicate => "duplicate replica",
        }
    }

    /// Whether the previous owner is alive and may finish what it staged (a handoff grace).
    pub fn handoff(self) -> bool {
        matches!(self, Reason::Rebalance | Reason::Duplicate)
    }
}

/// One change of owner (`to: None`: the lease becomes unowned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub shard: i32,
    pub replica: i32,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: Reason,
}

/// The moves that make `leases` follow the rules for the `alive` collectors.
pub fn plan(alive: &[Member], leases: &[Lease]) -> Vec<Move> {
    if alive.is_empty() {
        return Vec::new();
    }
    let host: BTreeMap<&str, &str> = alive
        .iter()
        .map(|m| (m.id.as_str(), m.host.as_str()))
        .collect();
    let mut order: Vec<usize> = (0..leases.len()).collect();
    order.sort_by_key(|&i| (leases[i].shard, leases[i].replica));

    // Rule 1: what live collectors hold, and what is free.
    let mut held: BTreeMap<&str, Vec<usize>> = host.keys().map(|id| (*id, Vec::new())).collect();
    let mut holders: BTreeMap<i32, BTreeSet<&str>> = BTreeMap::new();
    let mut free: Vec<(usize, Reason)> = Vec::new();
    for &i in &order {
        let l = &leases[i];
        match l.owner.as_deref() {
            None => free.push((i, Reason::Unowned)),
            Some(o) if !host.contains_key(o) => free.push((i, Reason::OwnerGone)),
            Some(o) => {
                if holders.entry(l.shard).or_default().insert(o) {
                    held.get_mut(o).expect("alive").push(i);
                } else {
                    free.push((i, Reason::Duplicate));
                }
            }
        }
    }

    // Rule 2: shares.
    let (base, extra) = (leases.len() / alive.len(), leases.len() % alive.len());
    let mut by_load: Vec<&str> = held.keys().copied().collect();
    by_load.sort_by_key(|id| (std::cmp::Reverse(held[id].len()), *id));
    let share: BTreeMap<&str, usize> = by_load
        .iter()
        .enumerate()
        .map(|(rank, id)| (*id, base + usize::from(rank < extra)))
        .collect();

    // Rule 3: place the free leases.
    free.sort_by_key(|&(i, _)| (leases[i].shard, leases[i].replica));
    let mut moves = Vec::new();
    for (i, reason) in free {
        let l = &leases[i];
        let pick = best_taker(&held, &holders, &host, &share, l.shard, true)
            .or_else(|| best_taker(&held, &holders, &host, &share, l.shard, false));
        if let Some(id) = pick {
            held.get_mut(id).expect("alive").push(i);
            holders.entry(l.shard).or_default().insert(id);
        }
        let to = pick.map(str::to_owned);
        if to != l.owner && !(to.is_none() && l.owner.is_none()) {
            moves.push(Move {
                shard: l.shard,
                replica: l.replica,
                from: l.owner.clone(),
                to,
                reason,
            });
        }
    }

    // Rule 4: a collector over its share hands its highest leases, one by one, to a collector
    // under its share that may hold that shard (with replicas, the highest shards of two
    // collectors may be the same ones: a lease nobody under the share may take stays).
    let mut over: Vec<&str> = held
        .iter()
        .filter(|(id, list)| list.len() > share[*id])
        .map(|(id, _)| *id)
        .collect();
    over.sort_by_key(|id| (std::cmp::Reverse(held[id].len() - share[id]), *id));
    for m in over {
        let mut mine = held[m].clone();
        mine.sort_by_key(|&i| std::cmp::Reverse((leases[i].shard, leases[i].replica)));
        for i in mine {
            if held[m].len() <= share[m] {
                break;
            }
            let l = &leases[i];
            let Some(u) = best_taker(&held, &holders, &host, &share, l.shard, true) else {
                continue;
            };
            held.get_mut(m).expect("alive").retain(|&x| x != i);
            holders.get_mut(&l.shard).map(|h| h.remove(m));
            held.get_mut(u).expect("alive").push(i);
            holders.entry(l.shard).or_default().insert(u);
            moves.push(Move {
                shard: l.shard,
                replica: l.replica,
                from: Some(m.to_owned()),
                to: Some(u.to_owned()),
                reason: Reason::Rebalance,
            });
        }
    }
    moves
}

/// The collector that should take a lease of `shard`: one holding no replica of it (and, when
/// `under_share`, below its share), preferring another host than the shard's other holders,
/// then the fewest leases, then the smaller id.
fn best_taker<'a>(
    held: &BTreeMap<&'a str, Vec<usize>>,
    holders: &BTreeMap<i32, BTreeSet<&'a str>>,
    host: &BTreeMap<&'a str, &'a str>,
    share: &BTreeMap<&'a str, usize>,
    shard: i32,
    under_share: bool,
) -> Option<&'a str> {
    let taken: BTreeSet<&str> = holders.get(&shard).cloned().unwrap_or_default();
    let other_hosts: BTreeSet<&str> = taken.iter().map(|o| host[o]).collect();
    held.iter()
        .filter(|(id, list)| !taken.contains(*id) && (!under_share || list.len() < share[*id]))
        .min_by_key(|(id, list)| (other_hosts.contains(host[*id]), list.len(), **id))
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, &str)]) -> Vec<Member> {
        spec.iter()
            .map(|(id, host)| Member {
                id: (*id).into(),
                host: (*host).into(),
            })
            .collect()
    }

    /// `shards` leases per replica, owners given per (shard, replica) by `owner`.
    fn leases(
        shards: i32,
        replicas: i32,
        owner: impl Fn(i32, i32) -> Option<&'static str>,
    ) -> Vec<Lease> {
        let mut v = Vec::new();
        for s in 0..shards {
            for r in 0..replicas {
                v.push(Lease {
                    shard: s,
                    replica: r,
                    owner: owner(s, r).map(str::to_owned),
                });
            }
        }
        v
    }

    fn apply(leases: &mut [Lease], moves: &[Move]) {
        for m in moves {
            let l = leases
                .iter_mut()
                .find(|l| l.shard == m.shard && l.replica == m.replica)
                .unwrap();
            assert_eq!(l.owner, m.from, "a move starts from the stored owner");
            l.owner = m.to.clone();
        }
    }

    fn counts(leases: &[Lease]) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for l in leases {
            if let Some(o) = &l.owner {
                *c.entry(o.clone()).or_default() += 1;
            }
        }
        c
    }

    #[test]
    fn a_lone_collector_takes_every_unowned_lease() {
        let m = members(&[("a", "h1")]);
        let mut l = leases(64, 1, |_, _| None);
        let moves = plan(&m, &l);
        assert_eq!(moves.len(), 64);
        assert!(moves.iter().all(|m| m.reason == Reason::Unowned));
        apply(&mut l, &moves);
        assert_eq!(counts(&l)["a"], 64);
        assert!(plan(&m, &l).is_empty(), "steady state writes nothing");
    }

    #[test]
    fn nobody_alive_moves_nothing() {
        let l = leases(4, 1, |_, _| Some("a"));
        assert!(plan(&[], &l).is_empty());
    }

    #[test]
    fn three_collectors_share_evenly_and_a_joiner_takes_only_its_share() {
        let m = members(&[("a", "h1"), ("b", "h2")]);
        let mut l = leases(64, 1, |_, _| None);
        let moves = plan(&m, &l);
        apply(&mut l, &moves);
        assert_eq!(
            counts(&l).values().copied().collect::<Vec<_>>(),
            vec![32, 32]
        );
        let m = members(&[("a", "h1"), ("b", "h2"), ("c", "h3")]);
        let moves = plan(&m, &l);
        assert_eq!(moves.len(), 21, "only the joiner's share moves");
        assert!(
            moves
                .iter()
                .all(|m| m.reason == Reason::Rebalance && m.to.as_deref() == Some("c"))
        );
        apply(&mut l, &moves);
        let c = counts(&l);
        assert_eq!((c["a"], c["b"], c["c"]), (22, 21, 21));
        assert!(plan(&m, &l).is_empty());
    }

    #[test]
    fn a_dead_collectors_leases_go_to_the_living_without_grace() {
        let mut l = leases(64, 1, |s, _| Some(["a", "b", "c"][(s % 3) as usize]));
        let m = members(&[("a", "h1"), ("c", "h3")]);
        let moves = plan(&m, &l);
        assert_eq!(moves.len(), 21, "exactly b's leases move");
        assert!(
            moves
                .iter()
                .all(|m| m.from.as_deref() == Some("b") && m.reason == Reason::OwnerGone)
        );
        assert!(!Reason::OwnerGone.handoff());
        apply(&mut l, &moves);
        let c = counts(&l);
        assert_eq!(c["a"] + c["c"], 64);
        assert!(c["a"].abs_diff(c["c"]) <= 1);
    }

    #[test]
    fn a_collector_alone_takes_a_gone_collectors_leases() {
        let l = leases(2, 1, |_, _| Some("a"));
        let m = members(&[("b", "h2")]);
        let moves = plan(&m, &l);
        assert!(moves.iter().all(|m| m.to.as_deref() == Some("b")));
        assert_eq!(moves.len(), 2);
    }

    #[test]
    fn replicas_of_a_shard_go_to_different_collectors_on_different_hosts_when_possible() {
        let m = members(&[("a", "h1"), ("a2", "h1"), ("b", "h2")]);
        let mut l = leases(6, 2, |_, _| None);
        let moves = plan(&m, &l);
        apply(&mut l, &moves);
        for s in 0..6 {
            let owners: Vec<&str> = l
                .iter()
                .filter(|x| x.shard == s)
                .map(|x| x.owner.as_deref().unwrap())
                .collect();
            assert_ne!(
                owners[0], owners[1],
                "shard {s}: one collector holds both replicas"
            );
        }
        let c = counts(&l);
        assert_eq!((c["a"], c["a2"], c["b"]), (4, 4, 4));
        // h2's one collector can hold 4 of the 6 shards: only the other 2 have both on h1.
        let both_on_h1 = (0..6)
            .filter(|s| {
                l.iter()
                    .filter(|x| x.shard == *s)
                    .all(|x| x.owner.as_deref() != Some("b"))
            })
            .count();
        assert_eq!(both_on_h1, 2);
    }

    #[test]
    fn more_replicas_than_collectors_leaves_the_extra_replicas_unowned_without_churn() {
        let m = members(&[("a", "h1")]);
        let mut l = leases(4, 2, |_, _| None);
        let moves = plan(&m, &l);
        assert_eq!(moves.len(), 4, "one replica of each shard");
        apply(&mut l, &moves);
        for s in 0..4 {
            let owners: Vec<_> = l
                .iter()
                .filter(|x| x.shard == s)
                .map(|x| x.owner.clone())
                .collect();
            assert!(owners.contains(&Some("a".into())) && owners.contains(&None));
        }
        assert!(plan(&m, &l).is_empty(), "no flapping");
    }

    #[test]
    fn with_two_replicas_a_joiner_gets_a_full_share() {
        // a and b hold one replica of every shard; c joins: 128 leases over 3 is 43/43/42, and
        // the highest shards of a and b are the same ones, so c must be handed others too.
        let mut l = leases(64, 2, |_, r| Some(if r == 0 { "a" } else { "b" }));
        let m = members(&[("a", "h1"), ("b", "h2"), ("c", "h3")]);
        let moves = plan(&m, &l);
        assert!(moves.iter().all(|m| m.reason == Reason::Rebalance));
        apply(&mut l, &moves);
        let c = counts(&l);
        assert_eq!(
            c.values().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([42, 43]),
            "{c:?}"
        );
        assert_eq!(moves.len(), 42, "only c's share moves");
        for s in 0..64 {
            let owners: BTreeSet<_> = l
                .iter()
                .filter(|x| x.shard == s)
                .map(|x| x.owner.clone())
                .collect();
            assert_eq!(owners.len(), 2, "shard {s}: two different owners");
        }
        assert!(plan(&m, &l).is_empty(), "steady");
    }

    #[test]
    fn a_collector_holding_two_replicas_of_a_shard_gives_one_up() {
        let m = members(&[("a", "h1"), ("b", "h2")]);
        let l = leases(1, 2, |_, _| Some("a"));
        let moves = plan(&m, &l);
        assert_eq!(
            moves,
            vec![Move {
                shard: 0,
                replica: 1,
                from: Some("a".into()),
                to: Some("b".into()),
                reason: Reason::Duplicate
            }]
        );
    }

    #[test]
    fn a_collector_that_comes_back_gets_its_share_again_and_nothing_else_moves() {
        let m3 = members(&[("a", "h1"), ("b", "h2"), ("c", "h3")]);
        let mut l = leases(64, 1, |_, _| None);
        let moves = plan(&m3, &l);
        apply(&mut l, &moves);
        let m2 = members(&[("a", "h1"), ("c", "h3")]);
        let moves = plan(&m2, &l);
        apply(&mut l, &moves);
        let moves = plan(&m3, &l);
        apply(&mut l, &moves);
        assert_eq!(moves.len(), 21);
        let c = counts(&l);
        assert_eq!(
            c.values().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([21, 22])
        );
    }
}
