//! kick-admin against a throwaway PostgreSQL: migrations, `db` commands and the exit-code
//! contract, driving the real binary where the process boundary matters.

use std::process::Command;

use kick_testkit::Cluster;

fn admin(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kick-admin"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .current_dir(std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn empty_db(c: &Cluster, name: &str) -> Vec<(String, String)> {
    c.psql("postgres", &format!("CREATE DATABASE {name}"));
    c.env(name)
}

#[test]
fn migrate_creates_schema_is_idempotent_and_concurrent_safe() {
    let c = Cluster::shared();
    let env = empty_db(c, "mig_a");
    let (code, out, err) = admin(&env, &["db", "migrate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied V1__initial"), "{out}");
    // The contract's tables, columns and views exist.
    let cols = c.psql(
        "mig_a",
        "SELECT string_agg(table_name || '.' || column_name, ',' ORDER BY table_name, column_name)
         FROM information_schema.columns WHERE table_schema = 'public'",
    );
    for col in [
        "streamers.id",
        "streamers.username",
        "streamers.kick_user_id",
        "streamers.kick_channel_id",
        "streamers.display_name",
        "streamers.status",
        "streamers.status_changed_at",
        "streamers.livestream_id",
        "streamers.last_event_at",
        "streamers.enabled",
        "streamers.created_at",
        "streamers.updated_at",
        "raw_events.id",
        "raw_events.received_at",
        "raw_events.source",
        "raw_events.topic",
        "raw_events.event_name",
        "raw_events.kick_channel_id",
        "raw_events.kick_user_id",
        "raw_events.livestream_id",
        "raw_events.event_time",
        "raw_events.payload",
        "raw_events.dedupe_key",
        "raw_events.collector_id",
        "raw_events.processed_at",
        "raw_events.outcome",
        "status_events.id",
        "status_events.streamer_id",
        "status_events.previous_status",
        "status_events.new_status",
        "status_events.occurred_at",
        "status_events.recorded_at",
        "status_events.livestream_id",
        "status_events.source",
        "status_events.raw_event_id",
        "config.key",
        "config.value",
        "config.encrypted",
        "config.updated_at",
        "collectors.id",
        "collectors.host",
        "collectors.pid",
        "collectors.started_at",
        "collectors.heartbeat_at",
        "collectors.sockets",
        "collectors.subscriptions",
        "collectors.transport",
        "collectors.version",
        "v_streamer_status.since",
        "v_pending_events.pending",
        "v_pending_events.oldest_age_seconds",
    ] {
        assert!(cols.split(',').any(|c| c == col), "missing column {col}");
    }
    // Second run: a no-op.
    let (code, out, _) = admin(&env, &["db", "migrate"]);
    assert_eq!(code, 0);
    assert!(out.contains("up to date"), "{out}");
    // Two concurrent runs on a fresh database both succeed, and the schema is applied once.
    let env_b = empty_db(c, "mig_b");
    let (e1, e2) = (env_b.clone(), env_b);
    let t1 = std::thread::spawn(move || admin(&e1, &["db", "migrate"]));
    let t2 = std::thread::spawn(move || admin(&e2, &["db", "migrate"]));
    let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
    assert_eq!((r1.0, r2.0), (0, 0), "{r1:?} {r2:?}");
    assert_eq!(
        c.psql("mig_b", "SELECT count(*) FROM refinery_schema_history"),
        "1"
    );
    let applied = [r1.1, r2.1]
        .iter()
        .filter(|o| o.contains("applied V1"))
        .count();
    assert_eq!(applied, 1, "exactly one run applied the migration");
}

#[test]
fn db_status_reports_migrations_and_queue() {
    let c = Cluster::shared();
    let env = empty_db(c, "status_a");
    // Not migrated yet: exit 69 (component not ready) with the advice.
    let (code, out, _) = admin(&env, &["db", "status"]);
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("kick-admin db migrate"));
    assert_eq!(admin(&env, &["db", "migrate"]).0, 0);
    c.psql(
        "status_a",
        "INSERT INTO raw_events (source, event_name, dedupe_key, received_at)
         VALUES ('admin', 'StreamerIsLive', 'k1', now() - interval '30 seconds')",
    );
    let (code, out, err) = admin(&env, &["db", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["migrated"], true);
    assert_eq!(v["pending_events"], 1);
    assert!(
        v["oldest_pending_age_seconds"].as_f64().unwrap() >= 29.0,
        "{v}"
    );
    let (code, out, _) = admin(&env, &["db", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("pending events: 1"), "{out}");
}

#[test]
fn config_errors_exit_78_naming_the_variable() {
    let env = vec![
        ("DATABASE_HOST".to_owned(), "/tmp".to_owned()),
        ("DATABASE_NAME".to_owned(), "x".to_owned()),
        ("DATABASE_PORT".to_owned(), "abc".to_owned()),
    ];
    let (code, out, err) = admin(&env, &["db", "status"]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains("DATABASE_PORT"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let (code, _, err) = admin(&[], &["db", "status"]);
    assert_eq!(code, 78);
    assert!(err.contains("DATABASE_URL"), "{err}");
}

#[test]
fn unreachable_database_exits_69_with_one_line() {
    let dir = std::env::temp_dir().join("kick-no-server-here");
    std::fs::create_dir_all(&dir).unwrap();
    let env = vec![
        ("DATABASE_HOST".to_owned(), dir.display().to_string()),
        ("DATABASE_PORT".to_owned(), "1".to_owned()),
        ("DATABASE_NAME".to_owned(), "x".to_owned()),
        (
            "DATABASE_PASSWORD".to_owned(),
            "pw-never-printed".to_owned(),
        ),
    ];
    let (code, out, err) = admin(&env, &["db", "status"]);
    assert_eq!(code, 69, "{out}{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("pw-never-printed"));
    // Also over TCP, to a closed loopback port.
    let env = vec![(
        "DATABASE_URL".to_owned(),
        "postgres://u:pw-never-printed@127.0.0.1:9/x".to_owned(),
    )];
    let (code, _, err) = admin(&env, &["db", "migrate"]);
    assert_eq!(code, 69, "{err}");
    assert!(!err.contains("pw-never-printed"));
}

#[test]
fn usage_errors_exit_64_and_help_documents_exit_codes() {
    let (code, _, _) = admin(&[], &["db", "frobnicate"]);
    assert_eq!(code, 64);
    let (code, out, _) = admin(&[], &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("78") && out.contains("configuration"), "{out}");
}

#[tokio::test]
async fn prune_deletes_only_old_processed_rows() {
    let db = kick_testkit::fresh_db().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO raw_events (source, event_name, dedupe_key, processed_at) VALUES
               ('admin', 'x', 'old', now() - interval '8 days'),
               ('admin', 'x', 'new', now() - interval '1 day');
             INSERT INTO raw_events (source, event_name, dedupe_key, received_at) VALUES
               ('admin', 'x', 'pending', now() - interval '30 days');",
        )
        .await
        .unwrap();
    let n = kick_shared::db::prune_processed(&client, std::time::Duration::from_secs(7 * 86400))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let left: Vec<String> = client
        .query("SELECT dedupe_key FROM raw_events ORDER BY dedupe_key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["new", "pending"]);
}
