//! `kick-admin status`: one health view, usable as a monitoring check. Exit 0 when healthy; 69
//! when the database is unreachable or not migrated, no collector has a fresh heartbeat, a
//! collector has no socket up, or the queue is stuck (oldest pending event older than 60 s).

use chrono::{DateTime, Utc};
use kick_shared::config::Config;
use kick_shared::db;
use kick_shared::exit::Exit;
use serde_json::json;

/// A heartbeat older than this means the collector is gone or hung (it beats every 10 s).
const STALE_HEARTBEAT_S: f64 = 30.0;
/// A pending event older than this means no writer is draining.
const STUCK_QUEUE_S: f64 = 60.0;

pub async fn run(json_out: bool, config: &Config) -> anyhow::Result<Exit> {
    let client = db::connect(&config.database).await?;
    let migrations = db::migration_status(&client).await?;
    let migrated = migrations.iter().all(|m| m.applied_on.is_some());
    if !migrated {
        if json_out {
            println!(
                "{}",
                json!({"healthy": false, "database": {"reachable": true, "migrated": false}, "problems": ["database not migrated"]})
            );
        } else {
            println!("database: reachable, NOT migrated (run `kick-admin db migrate`)");
        }
        return Ok(Exit::Unavailable);
    }
    let mut problems: Vec<String> = Vec::new();
    let collectors = client
        .query(
            "SELECT id, host, pid, extract(epoch FROM now() - heartbeat_at)::float8, sockets, sockets_up, subscriptions,
                    transport, version, started_at
             FROM collectors ORDER BY id",
            &[],
        )
        .await?;
    let mut fresh = 0;
    let mut cs = Vec::new();
    for r in &collectors {
        let id: String = r.get(0);
        let age: f64 = r.get(3);
        let (sockets, up): (i32, i32) = (r.get(4), r.get(5));
        let stale = age > STALE_HEARTBEAT_S;
        if stale {
            problems.push(format!("collector {id}: heartbeat {age:.0}s old"));
        } else {
            fresh += 1;
            if sockets > 0 && up == 0 {
                problems.push(format!("collector {id}: no socket up (0/{sockets})"));
            }
        }
        cs.push(json!({"id": id, "host": r.get::<_, String>(1), "pid": r.get::<_, i32>(2), "heartbeat_age_seconds": age,
            "stale": stale, "sockets": sockets, "sockets_up": up, "subscriptions": r.get::<_, i32>(6),
            "transport": r.get::<_, String>(7), "version": r.get::<_, String>(8), "started_at": r.get::<_, DateTime<Utc>>(9)}));
    }
    if fresh == 0 {
        problems.push("no collector is running (no fresh heartbeat)".into());
    }
    let (pending, oldest) = db::pending_events(&client).await?;
    if oldest > STUCK_QUEUE_S {
        problems.push(format!(
            "queue stuck: oldest pending event {oldest:.0}s old (is kick-writer running?)"
        ));
    }
    let by_status: Vec<(String, i64)> = client
        .query(
            "SELECT status, count(*) FROM streamers WHERE enabled GROUP BY status ORDER BY status",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let last = client
        .query(
            "SELECT s.username, e.previous_status, e.new_status, e.occurred_at, e.source
             FROM status_events e JOIN streamers s ON s.id = e.streamer_id ORDER BY e.id DESC LIMIT 10",
            &[],
        )
        .await?;
    let healthy = problems.is_empty();
    if json_out {
        let counts: serde_json::Map<String, serde_json::Value> = by_status
            .iter()
            .map(|(s, n)| (s.clone(), json!(n)))
            .collect();
        let transitions: Vec<_> = last
            .iter()
            .map(|r| json!({"username": r.get::<_, String>(0), "from": r.get::<_, String>(1), "to": r.get::<_, String>(2),
                            "occurred_at": r.get::<_, DateTime<Utc>>(3), "source": r.get::<_, String>(4)}))
            .collect();
        let out = json!({
            "healthy": healthy,
            "problems": problems,
            "database": {"reachable": true, "migrated": true, "target": config.database.describe()},
            "collectors": cs,
            "queue": {"pending": pending, "oldest_pending_age_seconds": oldest},
            "streamers": counts,
            "last_transitions": transitions,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "health:    {}",
            if healthy {
                "ok".to_owned()
            } else {
                format!("PROBLEMS ({})", problems.len())
            }
        );
        for p in &problems {
            println!("  - {p}");
        }
        println!("database:  {} (migrated)", config.database.describe());
        let rows: Vec<Vec<String>> = cs
            .iter()
            .map(|c| {
                vec![
                    c["id"].as_str().unwrap_or("").to_owned(),
                    format!("{:.0}s", c["heartbeat_age_seconds"].as_f64().unwrap_or(0.0)),
                    format!("{}/{}", c["sockets_up"], c["sockets"]),
                    c["subscriptions"].to_string(),
                    c["transport"].as_str().unwrap_or("").to_owned(),
                    c["version"].as_str().unwrap_or("").to_owned(),
                ]
            })
            .collect();
        println!("collectors:");
        print!(
            "{}",
            crate::table::render(
                &[
                    "ID",
                    "HEARTBEAT",
                    "SOCKETS UP",
                    "SUBSCRIPTIONS",
                    "TRANSPORT",
                    "VERSION"
                ],
                &rows
            )
        );
        println!("queue:     {pending} pending, oldest {oldest:.1}s");
        let counts: Vec<String> = by_status
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
        if !last.is_empty() {
            println!("last transitions:");
            let rows: Vec<Vec<String>> = last
                .iter()
                .map(|r| {
                    vec![
                        r.get::<_, DateTime<Utc>>(3)
                            .format("%Y-%m-%d %H:%M:%S")
                            .to_string(),
                        r.get::<_, String>(0),
                        format!("{} -> {}", r.get::<_, String>(1), r.get::<_, String>(2)),
                        r.get::<_, String>(4),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::table::render(&["WHEN (UTC)", "STREAMER", "CHANGE", "SOURCE"], &rows)
            );
        }
    }
    Ok(if healthy { Exit::Ok } else { Exit::Unavailable })
}
