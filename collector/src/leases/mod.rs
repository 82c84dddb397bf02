//! Shard leases: how several collectors (on one host or many) share the channels through the
//! database they already use, without a consensus service of their own.
//!
//! A channel belongs to shard `channel id mod 64` (`kick_shared::model::shard`); a streamer
//! without a channel id to `user id mod 64`. Each shard has `KICK_SHARD_REPLICAS` leases in
//! `shard_leases` (migration V8). Every [`ROUND`] (and at once when another collector rang
//! `shards_changed`) each collector runs one lease round, a short transaction: it renews its
//! member row and its leases for [`TTL`] and, if it gets the advisory lock that serializes
//! planning (a round that cannot get it only renews: a collector cut off mid-round must not stop
//! the others' renewals), applies the pure [`plan::plan`] to the live members and the leases (a dead member's leases are taken over, an
//! over-full member hands leases to a joiner). All times are the database's: a host's clock
//! never decides who owns what.
//!
//! **Fencing.** Every owner change issues a new token from one sequence. The collector stamps
//! each status row with the token of its lease when it sees the event ([`Leases::stamp`]; a row
//! of a shard it does not hold is dropped and counted), and the staging insert keeps a row only
//! while its token is still its lease's (or, for [`HANDOFF`] after a planned handoff, the
//! previous one, so a rebalance leaves no gap). A collector cut off from the database keeps
//! subscribing and spooling; once its leases went to others, what it spooled is refused when it
//! replays it; if nobody took them (it is alone), nothing is lost.
//!
//! **Takeover.** A collector that dies stops renewing: its member row and leases run out after
//! [`TTL`], and the next round of any other collector (within [`ROUND`]) moves them; the new
//! owner subscribes their channels and reconciles their streamers through the API at once.
//!
//! What a round decides reaches the rest of the collector through [`Leases`]: the placement
//! subscribes only channels of held shards ([`filter`]), the reconciler covers only their
//! streamers, and the stager fences with their tokens.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kick_shared::db::{self, DbError};
use kick_shared::model::{channel, shard};
use tokio::sync::{Notify, watch};
use tokio_postgres::Client;

use crate::ctx::Ctx;
use crate::reconcile::Request;
use crate::rows::Staged;
use plan::{Lease, Member, Move, Reason};

/// A lease (and a member row) lasts this long unless renewed.
pub const TTL: Duration = Duration::from_secs(8);
/// How often each collector runs a lease round. A dead collector's shards are taken over within
/// `TTL + ROUND` (10 s), then subscribed and reconciled.
pub const ROUND: Duration = Duration::from_secs(2);
/// After a planned handoff, the previous owner's token stays good this long.
pub const HANDOFF: Duration = Duration::from_secs(10);
/// Shards just gained are reconciled at once and again after each of these: an event between
/// the first reconcile's API answer and the moment the new subscriptions are up would be missed
/// (a loaded machine was seen taking 9 s to bring new sockets up).
const FOLLOW_UPS: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(15)];
/// One round must finish within this (a hung database must not hang the loop).
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock that serializes lease rounds (any constant other code does not use).
const LOCK: i64 = 0x6b69_636b_5f73_6864; // "kick_shd"

/// The leases this collector holds (shard → token), as the last round found them, and the
/// shards it handed to another collector in a planned handoff, still served until the grace
/// ends so that the new owner can subscribe first (no gap).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    pub held: BTreeMap<i32, i64>,
    /// shard → (the old token, until when it is served).
    pub draining: BTreeMap<i32, (i64, Instant)>,
    /// Shards served from the boot cache before the first lease round (the database did not
    /// answer at start, see `bootcache`): their rows are staged without a token.
    pub unfenced: BTreeSet<i32>,
}

impl View {
    /// The token to stage a row of `shard` with, if this collector serves it.
    fn token(&self, shard: i32) -> Option<i64> {
        self.held
            .get(&shard)
            .copied()
            .or_else(|| self.draining.get(&shard).map(|d| d.0))
    }

    /// Whether this collector subscribes the channels of `shard`.
    pub fn serves(&self, shard: i32) -> bool {
        self.held.contains_key(&shard)
            || self.draining.contains_key(&shard)
            || self.unfenced.contains(&shard)
    }
}

/// The collector's leases, shared by its tasks.
#[derive(Debug)]
pub struct Leases {
    view: watch::Sender<Arc<View>>,
    /// Rings when another collector changed the leases (`shards_changed`).
    pub wake: Notify,
    /// Whether the last round took part (false before the first one, and while another live
    /// process uses this collector's id).
    member: std::sync::atomic::AtomicBool,
    /// Whether the last round found another live process using this collector's id.
    id_in_use: std::sync::atomic::AtomicBool,
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            view: watch::Sender::new(Arc::new(View::default())),
            wake: Notify::new(),
            member: std::sync::atomic::AtomicBool::new(false),
            id_in_use: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Leases {
    /// Whether this process takes part in the leases under its id (it writes coverage then).
    pub fn is_member(&self) -> bool {
        self.member.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether another live process uses this collector's id (its heartbeat row is the other's).
    pub fn id_in_use(&self) -> bool {
        self.id_in_use.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_membership(&self, member: bool, in_use: bool) {
        use std::sync::atomic::Ordering;
        self.member.store(member, Ordering::Relaxed);
        self.id_in_use.store(in_use, Ordering::Relaxed);
    }

    /// A receiver that sees every change.
    pub fn watch(&self) -> watch::Receiver<Arc<View>> {
        self.view.subscribe()
    }

    /// The shards held now (not those draining).
    pub fn shards(&self) -> Vec<i32> {
        self.view.borrow().held.keys().copied().collect()
    }

    /// Stamps a status row with its shard's token. `false`: this collector does not serve the
    /// shard (the row must not be staged). Rows that are no status (channel ids, slugs,
    /// rejected frames) are not fenced, nor are those of shards served from the boot cache.
    pub fn stamp(&self, row: &mut Staged) -> bool {
        let Some(key) = row.shard_key else {
            return true;
        };
        let s = shard::of(key);
        let view = self.view.borrow();
        match view.token(s) {
            Some(token) => {
                row.lease = Some((s, token));
                true
            }
            None => view.unfenced.contains(&s),
        }
    }

    /// Serves `shards` from the boot cache until the first lease round (see `bootcache`).
    pub fn serve_unfenced(&self, shards: BTreeSet<i32>) {
        self.update(|v| v.unfenced = shards);
    }

    fn update(&self, f: impl FnOnce(&mut View)) {
        self.view.send_if_modified(|cur| {
            let mut next = (**cur).clone();
            f(&mut next);
            if **cur == next {
                false
            } else {
                *cur = Arc::new(next);
                true
            }
        });
    }
}

/// What one round found and did.
#[derive(Debug, Default)]
struct Round {
    /// shard → token of every lease this collector holds after the round.
    held: BTreeMap<i32, i64>,
    /// The moves the round made (by any collector's leases).
    moves: Vec<Move>,
    /// Shards nobody holds after the round (a replica beyond the number of collectors is not
    /// counted: that shard is still watched).
    unowned: usize,
    /// shard → (the token this collector held, how long the handoff grace still runs) for the
    /// leases just handed from this collector to another in a planned handoff (by any
    /// collector's round).
    handed: BTreeMap<i32, (i64, Duration)>,
    /// Shards this collector holds whose lease it got from a collector that was gone.
    taken_over: BTreeSet<i32>,
    /// The smallest and largest `KICK_SHARD_REPLICAS` among the living, when they differ (the
    /// largest is used).
    replicas_disagree: Option<(i32, i32)>,
}

/// What a round came to.
#[derive(Debug)]
enum Outcome {
    Done(Round),
    /// Another live process uses this collector's id (on `host`): this one takes no part.
    IdInUse {
        other: String,
    },
}

/// Who this process is in the lease tables.
#[derive(Debug)]
struct Me<'a> {
    id: &'a str,
    host: &'a str,
    /// `host:pid:random`: tells two processes with the same id apart.
    instance: &'a str,
    replicas: i32,
}

/// For this long after it starts and after its lease rounds failed, a collector counts members
/// silent for up to [`CAUTION_WINDOW`] as alive: they may be coming back from the same
/// outage (a database restart), and taking their shards would fence what they spooled.
const CAUTIOUS_FOR: Duration = Duration::from_secs(10);
const CAUTION_WINDOW: Duration = Duration::from_secs(60);

/// Runs lease rounds until shutdown (supervised); at shutdown, gives up this collector's leases
/// so that the others take them over at once instead of after [`TTL`].
pub async fn run(ctx: Arc<Ctx>, leases: Arc<Leases>) -> anyhow::Result<()> {
    let host = crate::heartbeat::hostname();
    let instance = format!(
        "{host}:{}:{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    let mut client: Option<Client> = None;
    let mut last_ok = Instant::now();
    let mut failing = false;
    let mut cautious_until = Instant::now() + CAUTIOUS_FOR;
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Shards gained, to be reconciled once more when their subscriptions are up.
    let mut follow_ups: Vec<(Instant, Vec<i32>)> = Vec::new();
    loop {
        // The earliest end of a handoff grace: the placement lets go of that shard then.
        let drained = leases.view.borrow().draining.values().map(|d| d.1).min();
        let follow_up = follow_ups.first().map(|f| f.0);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = leases.wake.notified() => {}
            _ = tokio::time::sleep_until(follow_up.unwrap_or_else(Instant::now).into()), if follow_up.is_some() => {
                let (_, shards) = follow_ups.remove(0);
                ctx.reconcile.send(Request::Shards(shards));
                continue;
            }
            _ = tokio::time::sleep_until(drained.unwrap_or_else(Instant::now).into()), if drained.is_some() => {
                let now = Instant::now();
                leases.update(|v| v.draining.retain(|_, (_, until)| *until > now));
                continue;
            }
        }
        let me = Me {
            id: &ctx.collector_id,
            host: &host,
            instance: &instance,
            replicas: i32::try_from(ctx.cfg().shard_replicas).unwrap_or(1),
        };
        let cautious = Instant::now() < cautious_until;
        let result = tokio::time::timeout(ROUND_TIMEOUT, async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = Some(connect(&ctx).await?);
            }
            let mine: Vec<i64> = leases.view.borrow().held.values().copied().collect();
            round(client.as_mut().expect("connected"), &me, &mine, cautious).await
        })
        .await
        .unwrap_or(Err(DbError::Timeout(ROUND_TIMEOUT.as_secs())));
        match result {
            Ok(Outcome::Done(r)) => {
                last_ok = Instant::now();
                if failing {
                    failing = false;
                    tracing::info!("lease rounds succeed again");
                }
                ctx.health.clear("leases");
                leases.set_membership(true, false);
                let gained = publish(&ctx, &leases, r);
                if !gained.is_empty() {
                    for after in FOLLOW_UPS {
                        follow_ups.push((Instant::now() + after, gained.clone()));
                    }
                    follow_ups.sort_by_key(|f| f.0);
                }
            }
            Ok(Outcome::IdInUse { other }) => {
                last_ok = Instant::now();
                let what = format!(
                    "another running collector uses the id {:?} ({other}): this one holds no shard; give each collector its own COLLECTOR_ID",
                    ctx.collector_id
                );
                if !ctx.health.problems().iter().any(|p| p.what == what) {
                    tracing::error!(collector = %ctx.collector_id, other = %other, "{what}");
                }
                ctx.health.set("leases", what);
                leases.set_membership(false, true);
                publish(&ctx, &leases, Round::default());
            }
            Err(e) => {
                client = None;
                ctx.metrics.lease_failures.inc();
                // The first rounds after the failures end are cautious: the others may be
                // coming back from the same outage.
                cautious_until = Instant::now() + CAUTIOUS_FOR;
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "lease round failed; retrying every {}s", ROUND.as_secs());
                }
                if last_ok.elapsed() > TTL {
                    ctx.health.set(
                        "leases",
                        format!(
                            "shard leases not renewed for {}s ({e}): other collectors may have taken them over",
                            last_ok.elapsed().as_secs()
                        ),
                    );
                }
            }
        }
    }
    if let Some(c) = client.as_ref() {
        match db::bounded(3, release(c, &ctx.collector_id, &instance)).await {
            Ok(n) => tracing::info!(leases = n, "shard leases given up at shutdown"),
            Err(e) => {
                tracing::warn!(error = %e, "could not give up the shard leases; they expire in {}s", TTL.as_secs());
            }
        }
    }
    Ok(())
}

/// Whether the process `instance` (`host:pid:random`) is gone: on this host, its pid no longer
/// runs (a collector restarted after `kill -9` takes its id back at once). A zombie (killed, not
/// yet reaped by its parent: a shell script's `&`) is gone too. On another host it cannot be
/// told: its membership must run out.
fn instance_gone(instance: &str, host: &str) -> bool {
    let mut parts = instance.rsplitn(3, ':');
    let (_rand, pid, other_host) = (parts.next(), parts.next(), parts.next());
    match (other_host, pid.and_then(|p| p.parse::<u32>().ok())) {
        (Some(h), Some(pid)) if h == host => {
            pid != std::process::id()
                && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map_or(true, |stat| dead_state(&stat))
        }
        _ => false,
    }
}

/// A `/proc/<pid>/stat` line of a process that has exited (zombie `Z`, dead `X`). The state
/// follows the command name, which is in parentheses and may itself hold `)`.
fn dead_state(stat: &str) -> bool {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

async fn connect(ctx: &Ctx) -> Result<Client, DbError> {
    let c = db::connect(&ctx.cfg().database).await?;
    // A round is a few quick statements. A collector cut off in the middle of one must not
    // hold row locks for long: the server ends its session after 3 s idle in the transaction,
    // and a renewal waits at most 1 s for a row another round holds.
    c.batch_execute(
        "SET application_name = 'kick-collector'; SET statement_timeout = '5s';
         SET lock_timeout = '1s'; SET idle_in_transaction_session_timeout = '3s'",
    )
    .await?;
    Ok(c)
}

/// Tells the rest of the collector what the round decided; returns the shards gained.
fn publish(ctx: &Ctx, leases: &Leases, r: Round) -> Vec<i32> {
    use std::sync::atomic::Ordering;
    let before: BTreeSet<i32> = leases.shards().into_iter().collect();
    let after: BTreeSet<i32> = r.held.keys().copied().collect();
    let gained: Vec<i32> = after.difference(&before).copied().collect();
    let lost: Vec<i32> = before.difference(&after).copied().collect();
    // Counted here, whichever collector's round moved them.
    ctx.metrics
        .shard_moves
        .add((gained.len() + lost.len()) as u64);
    ctx.metrics
        .shard_takeovers
        .add(gained.iter().filter(|s| r.taken_over.contains(s)).count() as u64);
    if !r.moves.is_empty() {
        let taken_over = r
            .moves
            .iter()
            .filter(|m| m.reason == Reason::OwnerGone)
            .count();
        tracing::info!(
            moves = r.moves.len(),
            taken_over,
            unowned = r.unowned,
            "shard leases moved"
        );
    }
    if r.unowned > 0 {
        ctx.health.set(
            "shards",
            format!(
                "{} shards have no owner: their channels are not watched",
                r.unowned
            ),
        );
    } else {
        ctx.health.clear("shards");
    }
    match r.replicas_disagree {
        Some((lo, hi)) => ctx.health.set(
            "replicas",
            format!(
                "collectors disagree on KICK_SHARD_REPLICAS ({lo} to {hi}; {hi} is used): set it in the config table, not per host"
            ),
        ),
        None => ctx.health.clear("replicas"),
    }
    ctx.metrics
        .shards_held
        .store(after.len(), Ordering::Relaxed);
    // Handed to another collector in a planned handoff: still served until the grace ends
    // (less a margin), so that the new owner subscribes before this one lets go.
    let now = Instant::now();
    leases.update(|v| {
        // A round decided: what the boot cache served is now held (with a token) or not.
        v.unfenced.clear();
        v.held = r.held;
        for (s, (t, left)) in r.handed {
            if !v.held.contains_key(&s) && !v.draining.contains_key(&s) {
                let until = now + left.saturating_sub(Duration::from_millis(500));
                v.draining.insert(s, (t, until));
            }
        }
        let held = v.held.clone();
        v.draining.retain(|s, _| !held.contains_key(s));
    });
    if !gained.is_empty() {
        tracing::info!(shards = ?gained, held = after.len(), "shards gained: subscribing and reconciling them");
        ctx.reconcile.send(Request::Shards(gained.clone()));
    }
    if !lost.is_empty() {
        tracing::info!(shards = ?lost, held = after.len(), "shards given up");
    }
    gained
}

/// One lease round: renew, plan, apply, in one transaction.
async fn round(
    client: &mut Client,
    me: &Me<'_>,
    mine: &[i64],
    cautious: bool,
) -> Result<Outcome, DbError> {
    let ttl = TTL.as_secs_f64();
    let tx = client.transaction().await?;
    if let Some(row) = tx
        .query_opt(
            "SELECT instance, host FROM shard_members
             WHERE collector_id = $1 AND alive_until > now() AND instance <> $2",
            &[&me.id, &me.instance],
        )
        .await?
    {
        let other: String = row.get("instance");
        if !instance_gone(&other, me.host) {
            tx.commit().await?;
            return Ok(Outcome::IdInUse {
                other: format!("host {}", row.get::<_, String>("host")),
            });
        }
    }
    tx.execute(
        "INSERT INTO shard_members (collector_id, host, instance, replicas, alive_until)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
         ON CONFLICT (collector_id) DO UPDATE
         SET host = EXCLUDED.host, instance = EXCLUDED.instance, replicas = EXCLUDED.replicas,
             alive_until = EXCLUDED.alive_until",
        &[&me.id, &me.host, &me.instance, &me.replicas, &ttl],
    )
    .await?;
    let window = if cautious {
        CAUTION_WINDOW.as_secs_f64()
    } else {
        0.0
    };
    let rows = tx
        .query(
            "SELECT collector_id, host, replicas FROM shard_members
             WHERE alive_until > now() - make_interval(secs => $1)
             ORDER BY collector_id",
            &[&window],
        )
        .await?;
    let members: Vec<Member> = rows
        .iter()
        .map(|r| Member {
            id: r.get("collector_id"),
            host: r.get("host"),
        })
        .collect();
    // Collectors that disagree on the replica count must not fight: the largest wins.
    let wanted: Vec<i32> = rows.iter().map(|r| r.get("replicas")).collect();
    let (lo, hi) = (
        wanted.iter().copied().min().unwrap_or(me.replicas),
        wanted.iter().copied().max().unwrap_or(me.replicas),
    );
    let replicas = hi;
    // Planning is serialized by an advisory lock, renewing is not: if another collector holds
    // the lock (or hangs with it, cut off mid-round), this round only renews.
    let planner: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1) AS got", &[&LOCK])
        .await?
        .get("got");
    let mut leases = if planner {
        read_leases(&tx).await?
    } else {
        Vec::new()
    };
    let want = usize::try_from(shard::COUNT * replicas).unwrap_or(0);
    if planner && (leases.len() != want || leases.iter().any(|l| l.replica >= replicas)) {
        // The replica count changed: add or remove replica rows.
        tx.execute(
            "INSERT INTO shard_leases (shard, replica)
             SELECT s, r FROM generate_series(0, $1 - 1) AS s, generate_series(0, $2 - 1) AS r
             ON CONFLICT DO NOTHING",
            &[&shard::COUNT, &replicas],
        )
        .await?;
        tx.execute(
            "DELETE FROM shard_leases WHERE replica >= $2 OR shard >= $1",
            &[&shard::COUNT, &replicas],
        )
        .await?;
        leases = read_leases(&tx).await?;
    }
    let moves = if planner {
        plan::plan(&members, &leases)
    } else {
        Vec::new()
    };
    if !moves.is_empty() {
        let shards: Vec<i32> = moves.iter().map(|m| m.shard).collect();
        let reps: Vec<i32> = moves.iter().map(|m| m.replica).collect();
        let from: Vec<Option<&str>> = moves.iter().map(|m| m.from.as_deref()).collect();
        let to: Vec<Option<&str>> = moves.iter().map(|m| m.to.as_deref()).collect();
        let handoff: Vec<bool> = moves.iter().map(|m| m.reason.handoff()).collect();
        let reason: Vec<&str> = moves.iter().map(|m| m.reason.as_str()).collect();
        tx.execute(
            "WITH m AS (
                 SELECT * FROM unnest($1::int[], $2::int[], $3::text[], $4::text[], $5::bool[],
                                      $6::text[])
                     AS m(shard, replica, from_owner, to_owner, handoff, reason)),
             up AS (
                 UPDATE shard_leases l
                 SET owner = m.to_owner,
                     token = CASE WHEN m.to_owner IS NULL THEN l.token
                                  ELSE nextval('shard_lease_token') END,
                     prev_token = CASE WHEN m.handoff THEN l.token END,
                     handoff_until = CASE WHEN m.handoff
                                          THEN now() + make_interval(secs => $7) END,
                     expires_at = CASE WHEN m.to_owner IS NULL THEN NULL
                                       ELSE now() + make_interval(secs => $8) END,
                     acquired_at = now(),
                     reason = m.reason
                 FROM m
                 WHERE l.shard = m.shard AND l.replica = m.replica
                   AND l.owner IS NOT DISTINCT FROM m.from_owner
                 RETURNING l.shard, l.replica, m.from_owner, l.owner, l.token, m.reason)
             INSERT INTO shard_moves (shard, replica, from_owner, to_owner, token, reason)
             SELECT shard, replica, from_owner, owner, token, reason FROM up",
            &[
                &shards,
                &reps,
                &from,
                &to,
                &handoff,
                &reason,
                &HANDOFF.as_secs_f64(),
                &ttl,
            ],
        )
        .await?;
        tx.execute("SELECT pg_notify($1, '')", &[&channel::SHARDS_CHANGED])
            .await?;
    }
    let renewed = tx
        .query(
            "UPDATE shard_leases SET expires_at = now() + make_interval(secs => $2)
             WHERE owner = $1 RETURNING shard, token, reason",
            &[&me.id, &ttl],
        )
        .await?;
    let held = renewed
        .iter()
        .map(|r| (r.get::<_, i32>("shard"), r.get::<_, i64>("token")))
        .collect();
    let taken_over = renewed
        .iter()
        .filter(|r| {
            r.get::<_, Option<String>>("reason").as_deref() == Some(Reason::OwnerGone.as_str())
        })
        .map(|r| r.get::<_, i32>("shard"))
        .collect();
    let unowned: i64 = tx
        .query_one(
            "SELECT count(*) AS n FROM (SELECT shard FROM shard_leases GROUP BY shard
                                        HAVING count(owner) = 0) AS s",
            &[],
        )
        .await?
        .get("n");
    let handed = tx
        .query(
            "SELECT shard, prev_token,
                    extract(epoch FROM handoff_until - now())::float8 AS left_s
             FROM shard_leases
             WHERE prev_token = ANY($1) AND handoff_until > now() AND owner IS DISTINCT FROM $2",
            &[&mine, &me.id],
        )
        .await?
        .iter()
        .map(|r| {
            let left = Duration::from_secs_f64(r.get::<_, f64>("left_s").clamp(0.0, 60.0));
            (
                r.get::<_, i32>("shard"),
                (r.get::<_, i64>("prev_token"), left),
            )
        })
        .collect();
    if moves.is_empty() {
        // Only renewals (and this member's row): committed without waiting for the flush, so a
        // disk whose flushes hang does not let the leases run out while the collector still
        // watches their channels (`kick-admin status` said "no live owner", the collector
        // "leases not renewed"). A renewal lost in a crash of the server is a late renewal: the
        // lease may pass to another collector, and fencing refuses our rows as after any
        // takeover. A round that moves leases issues tokens and stays durable.
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await?;
    }
    tx.commit().await?;
    Ok(Outcome::Done(Round {
        held,
        moves,
        unowned: usize::try_from(unowned).unwrap_or(0),
        handed,
        taken_over,
        replicas_disagree: (lo != hi).then_some((lo, hi)),
    }))
}

async fn read_leases(tx: &tokio_postgres::Transaction<'_>) -> Result<Vec<Lease>, DbError> {
    Ok(tx
        .query(
            "SELECT shard, replica, owner FROM shard_leases ORDER BY shard, replica",
            &[],
        )
        .await?
        .iter()
        .map(|r| Lease {
            shard: r.get("shard"),
            replica: r.get("replica"),
            owner: r.get("owner"),
        })
        .collect())
}

/// Gives up this collector's leases and membership (a clean shutdown): the others take the
/// shards at their next round. The tokens stay as they are until then, so what the stager
/// still flushes is kept.
async fn release(client: &Client, me: &str, instance: &str) -> Result<u64, tokio_postgres::Error> {
    // Only this process's membership (another process wrongly using the same id keeps its own).
    let n = client
        .execute(
            "WITH gone AS (DELETE FROM shard_members WHERE collector_id = $1 AND instance = $2
                           RETURNING 1),
                  up AS (UPDATE shard_leases SET owner = NULL, expires_at = NULL,
                                reason = 'released at shutdown'
                         WHERE owner = $1 AND EXISTS (SELECT 1 FROM gone)
                         RETURNING shard, replica, token)
             INSERT INTO shard_moves (shard, replica, from_owner, to_owner, token, reason)
             SELECT shard, replica, $1, NULL, token, 'released at shutdown' FROM up",
            &[&me, &instance],
        )
        .await?;
    client
        .execute("SELECT pg_notify($1, '')", &[&channel::SHARDS_CHANGED])
        .await?;
    Ok(n)
}

/// Keeps the placement's channel set to the watched channels of the held shards (supervised).
pub async fn filter(
    ctx: Arc<Ctx>,
    mut watched: watch::Receiver<Arc<BTreeSet<i64>>>,
    desired: Arc<watch::Sender<Arc<BTreeSet<i64>>>>,
) -> anyhow::Result<()> {
    let mut held = ctx.leases.watch();
    loop {
        let set: BTreeSet<i64> = {
            let view = held.borrow_and_update();
            watched
                .borrow_and_update()
                .iter()
                .copied()
                .filter(|c| view.serves(shard::of(*c)))
                .collect()
        };
        desired.send_if_modified(|cur| {
            if **cur == set {
                false
            } else {
                *cur = Arc::new(set);
                true
            }
        });
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            r = watched.changed() => if r.is_err() { return Ok(()) },
            r = held.changed() => if r.is_err() { return Ok(()) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::instance_gone;

    #[test]
    fn an_instance_is_gone_only_when_its_pid_no_longer_runs_on_this_host() {
        let me = format!("h:{}:ab", std::process::id());
        assert!(!instance_gone(&me, "h"), "this process");
        assert!(instance_gone("h:999999999:ab", "h"), "no such pid here");
        assert!(
            !instance_gone("other:999999999:ab", "h"),
            "another host cannot be told"
        );
        assert!(!instance_gone("garbage", "h"));
        // Host names with colons (IPv6-like) keep working: the pid is the second field from the end.
        assert!(instance_gone("fe80::1:999999999:ab", "fe80::1"));
    }

    #[test]
    fn a_killed_process_not_yet_reaped_is_gone() {
        let mut running = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live = format!("h:{}:ab", running.id());
        assert!(!instance_gone(&live, "h"), "a running process");
        running.kill().unwrap();
        // Not waited for: a zombie until reaped.
        let t0 = std::time::Instant::now();
        while !instance_gone(&live, "h") {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "still there"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", running.id())).unwrap();
        assert!(stat.contains(") Z "), "a zombie: {stat}");
        running.wait().unwrap();
        assert!(super::dead_state("12 (a) b) Z 1 2"));
        assert!(!super::dead_state("12 (a) Z) S 1 2"));
        assert!(!super::dead_state("garbage"));
    }
}
