//! `kick-admin status`: one health view, usable as a monitoring check. Exit 0 when healthy; 69
//! when anything is not doing its job, with one line per problem naming what and since when:
//! the database unreachable, hung or not migrated; no collector running; a collector whose
//! heartbeat is stale, or that reports problems of its own (staging stalled or failing, a task
//! restarting, its clock skewed, no socket up…); the queue stuck (the writer's oldest pending row
//! too old); shards no live collector holds. It answers within [`DEADLINE`] even when the
//! database hangs.
//!
//! It also shows the shard leases (the collector's `leases`): who holds which shards, shards
//! without a live owner or with fewer owners than replicas, and the moves of the last hour.
//!
//! A collector that stopped beating is *stale* (a problem) for [`GONE_AFTER`], then *gone*:
//! listed, no longer a problem (a restarted collector takes over its own row: its identity is
//! stable), and reaped after a day by the running collectors.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kick_shared::config::Config;
use kick_shared::db;
use kick_shared::exit::Exit;
use kick_shared::health::Problem;
use serde::Serialize;
use serde_json::json;

/// The whole command answers within this.
pub const DEADLINE: Duration = Duration::from_secs(8);
/// Each query of `status` gives up after this (a lock held elsewhere): short enough that the
/// report, naming the lock's holder, comes within `DEADLINE` and a low `KICK_ADMIN_TIMEOUT`.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);
/// A heartbeat older than this means the collector is gone or hung (it beats every 10 s).
const STALE_HEARTBEAT_S: f64 = 30.0;
/// A collector silent for this long is gone: listed, no longer failing the check.
pub const GONE_AFTER: Duration = Duration::from_secs(90);
/// A pending event older than this means no writer is draining.
const STUCK_QUEUE_S: f64 = 30.0;

/// A collector's heartbeat row, as status shows it.
#[derive(Debug, Serialize)]
struct Collector {
    id: String,
    host: String,
    pid: i32,
    state: &'static str,
    heartbeat_at: DateTime<Utc>,
    heartbeat_age_seconds: f64,
    stale: bool,
    started_at: DateTime<Utc>,
    sockets: i32,
    sockets_up: i32,
    subscriptions: i32,
    watched_channels: i32,
    transport: String,
    version: String,
    healthy: bool,
    problems: Vec<Problem>,
    buffered: i32,
    spooled: i32,
    oldest_buffered_at: Option<DateTime<Utc>>,
    clock_skew_ms: Option<i32>,
}

#[derive(Debug, Serialize)]
struct Transition {
    username: String,
    from: String,
    to: String,
    occurred_at: DateTime<Utc>,
    source: String,
}

/// One line about a problem: `<what> (since <when>)`.
fn line(what: &str, since: Option<DateTime<Utc>>) -> String {
    match since {
        Some(t) => format!("{what} (since {})", t.format("%Y-%m-%d %H:%M:%S UTC")),
        None => what.to_owned(),
    }
}

pub async fn run(json_out: bool, config: &Config) -> anyhow::Result<Exit> {
    match tokio::time::timeout(DEADLINE, collect(config)).await {
        Ok(Ok(report)) => Ok(report.print(json_out, config)),
        Ok(Err(e)) => {
            let what = format!("database: {}", format!("{e:#}").replace('\n', " "));
            Ok(Report::unreachable(what).print(json_out, config))
        }
        Err(_) => Ok(Report::unreachable(format!(
            "database: no answer within {}s (hung or unreachable: {})",
            DEADLINE.as_secs(),
            config.database.describe()
        ))
        .print(json_out, config)),
    }
}

/// `kick-admin collectors`: the collectors, the shards each holds, and the shard leases
/// (owners per shard, unowned and under-replicated shards, recent moves). Exit 0 when the
/// database answered, 69 when not.
pub async fn collectors(json_out: bool, config: &Config) -> anyhow::Result<Exit> {
    let report = match tokio::time::timeout(DEADLINE, collect(config)).await {
        Ok(Ok(r)) if r.migrated => r,
        Ok(Ok(r)) => return Ok(r.print(json_out, config)),
        Ok(Err(e)) => {
            let what = format!("database: {}", format!("{e:#}").replace('\n', " "));
            return Ok(Report::unreachable(what).print(json_out, config));
        }
        Err(_) => {
            return Ok(Report::unreachable(format!(
                "database: no answer within {}s (hung or unreachable: {})",
                DEADLINE.as_secs(),
                config.database.describe()
            ))
            .print(json_out, config));
        }
    };
    if json_out {
        let out = json!({"collectors": report.collectors, "shards": report.shards});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        report.print_collectors();
    }
    Ok(Exit::Ok)
}

/// Everything status found.
#[derive(Debug, Default)]
struct Report {
    reachable: bool,
    migrated: bool,
    problems: Vec<String>,
    collectors: Vec<Collector>,
    pending: i64,
    oldest_pending: f64,
    streamers: Vec<(String, i64)>,
    coverage: Vec<(String, i64)>,
    last: Vec<Transition>,
    shards: Shards,
}

/// Who holds which shard (see the collector's `leases`).
#[derive(Debug, Default, Serialize)]
struct Shards {
    count: i64,
    /// Collectors that ever took part in the leases (rows in `shard_members`).
    members: i64,
    replicas: i64,
    /// Live owner → the shards it holds.
    owners: std::collections::BTreeMap<String, Vec<i32>>,
    /// Shards no live collector holds.
    unowned: Vec<i32>,
    /// Shards with fewer live owners than replicas.
    under_replicated: Vec<i32>,
    moves_last_hour: i64,
    takeovers_last_hour: i64,
    last_move_at: Option<DateTime<Utc>>,
}

/// `0-20,22,40-41`: shard numbers as ranges.
fn ranges(v: &[i32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(",")
}

impl Report {
    fn unreachable(problem: String) -> Report {
        Report {
            problems: vec![problem],
            ..Report::default()
        }
    }

    fn print(&self, json_out: bool, config: &Config) -> Exit {
        let healthy = self.problems.is_empty();
        if json_out {
            let counts: serde_json::Map<String, serde_json::Value> = self
                .streamers
                .iter()
                .map(|(s, n)| (s.clone(), json!(n)))
                .collect();
            let coverage: serde_json::Map<String, serde_json::Value> = self
                .coverage
                .iter()
                .map(|(s, n)| (s.clone(), json!(n)))
                .collect();
            let out = json!({
                "healthy": healthy,
                "problems": self.problems,
                "database": {"reachable": self.reachable, "migrated": self.migrated,
                             "target": config.database.describe()},
                "collectors": self.collectors,
                "queue": {"pending": self.pending, "oldest_pending_age_seconds": self.oldest_pending},
                "streamers": counts,
                "coverage": coverage,
                "shards": self.shards,
                "last_transitions": self.last,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        } else {
            self.print_text(config);
        }
        if healthy { Exit::Ok } else { Exit::Unavailable }
    }

    /// The collectors table and the shard leases (status, and `kick-admin collectors`).
    fn print_collectors(&self) {
        let rows: Vec<Vec<String>> = self
            .collectors
            .iter()
            .map(|c| {
                vec![
                    c.id.clone(),
                    c.state.to_owned(),
                    format!("{:.0}s", c.heartbeat_age_seconds),
                    format!("{}/{}", c.sockets_up, c.sockets),
                    format!("{}/{}", c.subscriptions, c.watched_channels),
                    format!("{}/{}", c.buffered, c.spooled),
                    self.shards
                        .owners
                        .get(&c.id)
                        .map_or(0, Vec::len)
                        .to_string(),
                    c.clock_skew_ms
                        .map_or("-".into(), |s| format!("{:.1}s", f64::from(s) / 1e3)),
                    c.transport.clone(),
                    c.version.clone(),
                ]
            })
            .collect();
        println!("collectors:");
        print!(
            "{}",
            crate::table::render(
                &[
                    "ID",
                    "STATE",
                    "HEARTBEAT",
                    "SOCKETS UP",
                    "SUBSCRIBED",
                    "BUFFERED/SPOOLED",
                    "SHARDS",
                    "SKEW",
                    "TRANSPORT",
                    "VERSION"
                ],
                &rows
            )
        );
        let sh = &self.shards;
        if sh.count > 0 {
            let owners: Vec<String> = sh
                .owners
                .iter()
                .map(|(o, v)| format!("{o} {}", ranges(v)))
                .collect();
            println!(
                "shards:    {} x {} replica(s); {}",
                sh.count,
                sh.replicas,
                if owners.is_empty() {
                    "no live owner".into()
                } else {
                    owners.join("; ")
                }
            );
            if !sh.unowned.is_empty() {
                println!("  unowned: {}", ranges(&sh.unowned));
            }
            if !sh.under_replicated.is_empty() {
                println!("  under-replicated: {}", ranges(&sh.under_replicated));
            }
            println!(
                "  moves in the last hour: {} ({} takeovers){}",
                sh.moves_last_hour,
                sh.takeovers_last_hour,
                sh.last_move_at.map_or(String::new(), |t| format!(
                    ", last at {}",
                    t.format("%Y-%m-%d %H:%M:%S")
                ))
            );
        }
    }

    fn print_text(&self, config: &Config) {
        let healthy = self.problems.is_empty();
        println!(
            "health:    {}",
            if healthy {
                "ok".to_owned()
            } else {
                format!("PROBLEMS ({})", self.problems.len())
            }
        );
        for p in &self.problems {
            println!("  - {p}");
        }
        if !self.reachable {
            println!("database:  {} (unreachable)", config.database.describe());
            return;
        }
        if !self.migrated {
            println!(
                "database:  {} (NOT migrated: run `kick-admin db migrate`)",
                config.database.describe()
            );
            return;
        }
        println!("database:  {} (migrated)", config.database.describe());
        self.print_collectors();
        println!(
            "queue:     {} pending, oldest {:.1}s",
            self.pending, self.oldest_pending
        );
        let counts: Vec<String> = self
            .streamers
            .iter()
            .map(|(s, n)| format!("{} {n}", crate::paint_status(s)))
            .collect();
        println!(
            "streamers: {}",
            if counts.is_empty() {
                "none".into()
            } else {
                counts.join(", ")
            }
        );
        if !self.coverage.is_empty() {
            let c: Vec<String> = self
                .coverage
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            println!("coverage:  {}", c.join(", "));
        }
        if !self.last.is_empty() {
            println!("last transitions:");
            let rows: Vec<Vec<String>> = self
                .last
                .iter()
                .map(|t| {
                    vec![
                        t.occurred_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        t.username.clone(),
                        format!("{} -> {}", t.from, t.to),
                        t.source.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::table::render(&["WHEN (UTC)", "STREAMER", "CHANGE", "SOURCE"], &rows)
            );
        }
    }
}

async fn collect(config: &Config) -> anyhow::Result<Report> {
    let client = db::bounded_connect(Duration::from_secs(5), db::connect(&config.database)).await?;
    client
        .batch_execute(&format!(
            "SET statement_timeout = '{}s'",
            STATEMENT_TIMEOUT.as_secs()
        ))
        .await
        .map_err(db::DbError::from)?;
    let mut r = Report {
        reachable: true,
        ..Report::default()
    };
    match fill(&client, &mut r).await {
        Ok(()) => Ok(r),
        // A lock held elsewhere (`LOCK TABLE`, a migration) made a query wait out the statement
        // timeout: the database answers, so say what is known and who holds the lock (the
        // writer and the collectors may be waiting for it too), not "unreachable".
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<tokio_postgres::Error>()
                    .is_some_and(db::is_lock_wait)
            }) =>
        {
            let who = match db::lock_holders(&client).await {
                Ok(h) => db::holders_line(&h),
                Err(e) => format!("unknown ({e})"),
            };
            r.problems.push(format!(
                "database: a status query waited {}s for a lock held elsewhere (kick-writer and the collectors may be waiting too): {who}",
                STATEMENT_TIMEOUT.as_secs()
            ));
            Ok(r)
        }
        Err(e) => Err(e),
    }
}

/// Fills `r` from the database; stops at the first query that fails.
async fn fill(client: &tokio_postgres::Client, r: &mut Report) -> anyhow::Result<()> {
    let migrations = db::migration_status(client).await?;
    r.migrated = migrations.iter().all(|m| m.applied_on.is_some());
    if !r.migrated {
        r.problems
            .push("database not migrated: run `kick-admin db migrate`".into());
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT id, host, pid, heartbeat_at, extract(epoch FROM now() - heartbeat_at)::float8 AS age,
                    started_at, sockets, sockets_up, subscriptions, watched_channels, transport, version,
                    healthy, problems, buffered, spooled, oldest_buffered_at, clock_skew_ms
             FROM collectors ORDER BY id",
            &[],
        )
        .await?;
    let mut live = 0;
    for row in &rows {
        let age: f64 = row.get("age");
        let problems: Vec<Problem> =
            serde_json::from_value(row.get::<_, serde_json::Value>("problems")).unwrap_or_default();
        let heartbeat_at: DateTime<Utc> = row.get("heartbeat_at");
        let state = if age <= STALE_HEARTBEAT_S {
            "running"
        } else if age <= GONE_AFTER.as_secs_f64() {
            "stale"
        } else {
            "gone"
        };
        let c = Collector {
            id: row.get("id"),
            host: row.get("host"),
            pid: row.get("pid"),
            state,
            heartbeat_at,
            heartbeat_age_seconds: age,
            stale: state != "running",
            started_at: row.get("started_at"),
            sockets: row.get("sockets"),
            sockets_up: row.get("sockets_up"),
            subscriptions: row.get("subscriptions"),
            watched_channels: row.get("watched_channels"),
            transport: row.get("transport"),
            version: row.get("version"),
            healthy: row.get("healthy"),
            problems,
            buffered: row.get("buffered"),
            spooled: row.get("spooled"),
            oldest_buffered_at: row.get("oldest_buffered_at"),
            clock_skew_ms: row.get("clock_skew_ms"),
        };
        match state {
            "running" => {
                live += 1;
                for p in &c.problems {
                    r.problems.push(line(
                        &format!("collector {}: {}", c.id, p.what),
                        Some(p.since),
                    ));
                }
            }
            "stale" => r.problems.push(line(
                &format!(
                    "collector {}: heartbeat stale ({age:.0}s old; gone after {}s)",
                    c.id,
                    GONE_AFTER.as_secs()
                ),
                Some(heartbeat_at),
            )),
            _ => {}
        }
        r.collectors.push(c);
    }
    if live == 0 && !r.collectors.iter().any(|c| c.state == "stale") {
        let since = r.collectors.iter().map(|c| c.heartbeat_at).max();
        r.problems
            .push(line("no collector is running (no fresh heartbeat)", since));
    }
    r.shards = shards(client).await?;
    // Unowned shards are a problem once collectors take part in the leases (every collector
    // stopped or hung leaves them all unowned: that must fail at once, not only when the
    // heartbeats go stale).
    if r.shards.members > 0 && !r.shards.unowned.is_empty() {
        r.problems.push(line(
            &format!(
                "{} shards have no live owner ({}): their channels are not watched",
                r.shards.unowned.len(),
                ranges(&r.shards.unowned)
            ),
            None,
        ));
    }
    let (pending, oldest) = db::pending_events(client).await?;
    r.pending = pending;
    r.oldest_pending = oldest;
    if oldest > STUCK_QUEUE_S {
        let since = Utc::now() - chrono::Duration::milliseconds((oldest * 1e3) as i64);
        // A lock held elsewhere (an open psql transaction) stalls a running writer: name it.
        let holders = db::lock_holders(client).await?;
        let why = if holders.is_empty() {
            "is kick-writer running?".to_string()
        } else {
            format!(
                "kick-writer may be waiting for a lock held by {}",
                db::holders_line(&holders)
            )
        };
        r.problems.push(line(
            &format!("queue stuck: {pending} events pending, the oldest {oldest:.0}s old ({why})"),
            Some(since),
        ));
    }
    r.streamers = client
        .query(
            "SELECT status, count(*) AS n FROM streamers WHERE enabled GROUP BY status ORDER BY status",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get("status"), row.get("n")))
        .collect();
    r.coverage = client
        .query(
            "SELECT coverage, count(*) AS n FROM v_streamer_status WHERE enabled
             GROUP BY coverage ORDER BY coverage",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get("coverage"), row.get("n")))
        .collect();
    r.last = client
        .query(
            "SELECT s.username, e.previous_status, e.new_status, e.occurred_at, e.source
             FROM status_events e JOIN streamers s ON s.id = e.streamer_id ORDER BY e.id DESC LIMIT 10",
            &[],
        )
        .await?
        .iter()
        .map(|row| Transition {
            username: row.get("username"),
            from: row.get("previous_status"),
            to: row.get("new_status"),
            occurred_at: row.get("occurred_at"),
            source: row.get("source"),
        })
        .collect();
    Ok(())
}

async fn shards(client: &tokio_postgres::Client) -> Result<Shards, db::DbError> {
    let mut sh = Shards::default();
    // A lease counts while it is unexpired and its owner's membership is alive.
    let rows = client
        .query(
            "SELECT l.shard, l.replica,
                    CASE WHEN l.expires_at > now() AND m.alive_until > now() THEN l.owner END AS owner
             FROM shard_leases l LEFT JOIN shard_members m ON m.collector_id = l.owner
             ORDER BY l.shard, l.replica",
            &[],
        )
        .await?;
    let mut live_owners: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    for row in &rows {
        let shard: i32 = row.get("shard");
        let replica: i32 = row.get("replica");
        sh.replicas = sh.replicas.max(i64::from(replica) + 1);
        let n = live_owners.entry(shard).or_default();
        if let Some(o) = row.get::<_, Option<String>>("owner") {
            *n += 1;
            sh.owners.entry(o).or_default().push(shard);
        }
    }
    sh.count = live_owners.len() as i64;
    sh.members = client
        .query_one("SELECT count(*) AS n FROM shard_members", &[])
        .await?
        .get("n");
    for (shard, n) in &live_owners {
        if *n == 0 {
            sh.unowned.push(*shard);
        } else if *n < sh.replicas {
            sh.under_replicated.push(*shard);
        }
    }
    let m = client
        .query_one(
            "SELECT count(*) AS moves,
                    count(*) FILTER (WHERE reason = 'owner gone') AS takeovers,
                    (SELECT max(at) FROM shard_moves) AS last_at
             FROM shard_moves WHERE at > now() - interval '1 hour'",
            &[],
        )
        .await?;
    sh.moves_last_hour = m.get("moves");
    sh.takeovers_last_hour = m.get("takeovers");
    sh.last_move_at = m.get("last_at");
    Ok(sh)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shard_numbers_print_as_ranges() {
        assert_eq!(super::ranges(&[]), "");
        assert_eq!(super::ranges(&[3]), "3");
        assert_eq!(super::ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }
}
