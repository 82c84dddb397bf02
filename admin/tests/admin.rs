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
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .count();
    assert_eq!(
        c.psql("mig_b", "SELECT count(*) FROM refinery_schema_history"),
        files.to_string(),
        "every migration applied exactly once"
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

mod with_kick {
    //! Commands that talk to Kick, against kick-sim.

    use super::*;
    use serde_json::{Value, json};

    struct Env {
        sim: kick_sim::SimHandle,
        env: Vec<(String, String)>,
        db: kick_testkit::TestDb,
    }

    async fn setup(streamers: usize) -> Env {
        let sim = kick_sim::start(
            "127.0.0.1:0".parse().unwrap(),
            kick_sim::Options {
                streamers,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let db = kick_testkit::fresh_db().await;
        let mut env = db.env();
        env.extend(sim.env());
        Env { sim, env, db }
    }

    async fn run(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
        let env = env.to_vec();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            admin(&env, &a)
        })
        .await
        .unwrap()
    }

    async fn count(db: &kick_testkit::TestDb, sql: &str) -> i64 {
        db.client().await.query_one(sql, &[]).await.unwrap().get(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streamers_add_list_show_history_remove() {
        let e = setup(5).await;
        // streamer3 is live: its channel id comes from the livestreams endpoint.
        reqwest::Client::new()
            .post(format!("{}/control/streamers/streamer3/live", e.sim.url()))
            .send()
            .await
            .unwrap();
        let (code, out, err) = run(&e.env, &["streamers", "add", "streamer1", "STREAMER3"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("added streamer1 (user 1000007, channel id not known yet)"),
            "{out}"
        );
        assert!(
            out.contains("added streamer3 (user 1000021, channel 2000039)"),
            "{out}"
        );
        let (code, out, _) = run(&e.env, &["streamers", "add", "streamer1"]).await;
        assert_eq!(code, 0);
        assert!(out.contains("already added"), "{out}");
        let (code, out, _) = run(
            &e.env,
            &[
                "streamers",
                "add",
                "streamer2",
                "--channel-id",
                "2000026",
                "--json",
            ],
        )
        .await;
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["streamers"][0]["kick_channel_id"], 2000026);
        assert_eq!(v["streamers"][0]["display_name"], "Streamer2");
        let (code, out, _) = run(&e.env, &["streamers", "list", "--json"]).await;
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["streamers"].as_array().unwrap().len(), 3);
        let (code, out, _) = run(&e.env, &["streamers", "list"]).await;
        assert_eq!(code, 0);
        assert!(out.starts_with("USERNAME"), "{out}");
        assert_eq!(out.lines().count(), 4);
        let (code, out, _) = run(&e.env, &["streamers", "list", "--status", "online"]).await;
        assert_eq!(
            (code, out.lines().count()),
            (0, 1),
            "nothing online yet: {out}"
        );
        let (code, _, err) = run(&e.env, &["streamers", "list", "--status", "sideways"]).await;
        assert_eq!(code, 64, "{err}");
        // History, as the writer would record it.
        let c = e.db.client().await;
        c.batch_execute(
            "INSERT INTO status_events (streamer_id, previous_status, new_status, occurred_at, source, raw_event_id)
             SELECT id, 'unknown', 'online', now(), 'realtime', 1 FROM streamers WHERE username = 'streamer3'",
        )
        .await
        .unwrap();
        let (code, out, _) = run(&e.env, &["streamers", "history", "streamer3", "--json"]).await;
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["history"][0]["new_status"], "online");
        let (code, out, _) = run(&e.env, &["streamers", "show", "streamer3"]).await;
        assert_eq!(code, 0);
        assert!(out.contains("kick_channel_id  2000039"), "{out}");
        assert_eq!(run(&e.env, &["streamers", "show", "nobody"]).await.0, 66);
        assert_eq!(
            run(&e.env, &["streamers", "disable", "streamer1"]).await.0,
            0
        );
        assert_eq!(
            count(&e.db, "SELECT count(*) FROM streamers WHERE NOT enabled").await,
            1
        );
        assert_eq!(
            run(&e.env, &["streamers", "enable", "streamer1"]).await.0,
            0
        );
        // Removing an unknown name among known ones changes nothing.
        assert_eq!(
            run(&e.env, &["streamers", "remove", "streamer1", "ghost"])
                .await
                .0,
            66
        );
        assert_eq!(count(&e.db, "SELECT count(*) FROM streamers").await, 3);
        assert_eq!(
            run(&e.env, &["streamers", "remove", "streamer1"]).await.0,
            0
        );
        assert_eq!(count(&e.db, "SELECT count(*) FROM streamers").await, 2);
        // Removing a streamer removes its history too.
        assert_eq!(count(&e.db, "SELECT count(*) FROM status_events").await, 1);
        assert_eq!(
            run(&e.env, &["streamers", "remove", "streamer3"]).await.0,
            0
        );
        assert_eq!(count(&e.db, "SELECT count(*) FROM status_events").await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_gives_one_line_and_writes_nothing() {
        let e = setup(3).await;
        let long = "a".repeat(1000);
        for (name, code) in [
            ("", 65),
            (long.as_str(), 65),
            ("o'brien", 65),
            ("x\"y", 65),
            ("a;DROP TABLE streamers", 65),
            ("ünïcödé", 65),
            ("nosuchstreamer", 66),
        ] {
            let (got, out, err) = run(&e.env, &["streamers", "add", "streamer0", name]).await;
            assert_eq!(got, code, "{name:?}: {out}{err}");
            assert_eq!(err.trim().lines().count(), 1, "{name:?}: one line: {err}");
            assert!(err.len() < 300, "{err}");
        }
        assert_eq!(
            count(&e.db, "SELECT count(*) FROM streamers").await,
            0,
            "nothing written"
        );
        // Kick misbehaving: 429 → 75, 500 → 69, an HTML challenge → 69, bad credentials → 77.
        let http = reqwest::Client::new();
        for (mode, code) in [("429", 75), ("500", 69), ("html", 69)] {
            http.post(format!("{}/control/rest", e.sim.url()))
                .json(&json!({"mode": mode, "seconds": 30}))
                .send()
                .await
                .unwrap();
            let (got, _, err) = run(&e.env, &["streamers", "add", "streamer0"]).await;
            assert_eq!(got, code, "{mode}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
        http.post(format!("{}/control/rest", e.sim.url()))
            .json(&json!({"mode": "normal"}))
            .send()
            .await
            .unwrap();
        let mut bad = e.env.clone();
        bad.push(("KICK_CLIENT_SECRET".into(), "wrong".into()));
        let (got, _, err) = run(&bad, &["streamers", "add", "streamer0"]).await;
        assert_eq!(got, 77, "{err}");
        // Kick unreachable.
        let mut gone = e.env.clone();
        gone.push(("KICK_API_URL".into(), "http://127.0.0.1:9".into()));
        gone.push(("KICK_AUTH_URL".into(), "http://127.0.0.1:9".into()));
        let (got, _, err) = run(&gone, &["streamers", "add", "streamer0"]).await;
        assert_eq!(got, 69, "{err}");
        // Database down.
        let mut nodb = e.env.clone();
        nodb.push(("DATABASE_PORT".into(), "1".into()));
        let (got, _, err) = run(&nodb, &["streamers", "list"]).await;
        assert_eq!(got, 69, "{err}");
        assert_eq!(
            count(&e.db, "SELECT count(*) FROM streamers").await,
            0,
            "still nothing written"
        );
        assert!(!err.contains("sim-secret"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn import_thousands_with_summary() {
        let e = setup(1200).await;
        let dir = std::env::temp_dir().join(format!("kick-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("names.txt");
        let mut text = String::from("# my list\n");
        for i in 0..1100 {
            text.push_str(&format!("streamer{i}\n"));
        }
        text.push_str("ghost1\nstreamer5 # duplicate\n");
        std::fs::write(&file, text).unwrap();
        let (code, out, err) = run(&e.env, &["streamers", "import", file.to_str().unwrap()]).await;
        assert_eq!(code, 66, "one name is unknown: {out}{err}");
        assert!(
            out.contains("1100 added") && out.contains("not found: ghost1"),
            "{out}"
        );
        assert_eq!(count(&e.db, "SELECT count(*) FROM streamers").await, 1100);
        let (code, out, _) = run(
            &e.env,
            &["streamers", "import", file.to_str().unwrap(), "--json"],
        )
        .await;
        assert_eq!(code, 66);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["added"].as_i64(), v["existing"].as_i64()),
            (Some(0), Some(1100))
        );
        // A file with an invalid line is refused whole.
        std::fs::write(&file, "streamer1200\nbad name\n").unwrap();
        let (code, _, err) = run(&e.env, &["streamers", "import", file.to_str().unwrap()]).await;
        assert_eq!(code, 65, "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert_eq!(
            run(&e.env, &["streamers", "import", "/nonexistent/file"])
                .await
                .0,
            66
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn config_secrets_are_encrypted_and_need_the_key() {
        let e = setup(1).await;
        let dir = std::env::temp_dir().join(format!("kick-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        let _ = std::fs::remove_file(&key);
        let mut env = e.env.clone();
        env.push(("KICK_CONFIG_KEY_FILE".into(), key.display().to_string()));
        assert_eq!(run(&env, &["config", "keygen"]).await.0, 0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            run(&env, &["config", "keygen"]).await.0,
            64,
            "no silent overwrite"
        );
        assert_eq!(
            run(
                &env,
                &[
                    "config",
                    "set",
                    "KICK_CLIENT_SECRET",
                    "sim-secret",
                    "--secret"
                ]
            )
            .await
            .0,
            0
        );
        assert_eq!(
            run(&env, &["config", "set", "KICK_RECONCILE_INTERVAL", "60s"])
                .await
                .0,
            0
        );
        let stored: String =
            e.db.client()
                .await
                .query_one(
                    "SELECT value FROM config WHERE key = 'KICK_CLIENT_SECRET'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
        assert!(
            !stored.contains("sim-secret") && stored.starts_with("v1:"),
            "{stored}"
        );
        let (code, out, _) = run(&env, &["config", "get", "KICK_CLIENT_SECRET"]).await;
        assert_eq!((code, out.trim()), (0, "sim-secret"));
        let (code, out, _) = run(&env, &["config", "list"]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("********") && !out.contains("sim-secret") && out.contains("60s"),
            "{out}"
        );
        let (_, out, _) = run(&env, &["config", "list", "--json"]).await;
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["config"].as_array().unwrap().len(), 2);
        // The stored secret is used by `streamers add` when the environment has none.
        let env_no_secret: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k != "KICK_CLIENT_SECRET")
            .cloned()
            .collect();
        let (code, out, err) = run(&env_no_secret, &["streamers", "add", "streamer0"]).await;
        assert_eq!(code, 0, "{out}{err}");
        // Wrong key → 77; no key → 77; both with a clear one-line message.
        let other = dir.join("other");
        let mut env2 = e.env.clone();
        env2.push(("KICK_CONFIG_KEY_FILE".into(), other.display().to_string()));
        assert_eq!(run(&env2, &["config", "keygen"]).await.0, 0);
        let (code, _, err) = run(&env2, &["config", "get", "KICK_CLIENT_SECRET"]).await;
        assert_eq!(code, 77, "{err}");
        assert!(err.contains("wrong config key"), "{err}");
        let (code, _, err) = run(&e.env, &["config", "get", "KICK_CLIENT_SECRET"]).await;
        assert_eq!(code, 77, "{err}");
        assert_eq!(run(&env, &["config", "set", "bad key", "x"]).await.0, 65);
        assert_eq!(
            run(&env, &["config", "unset", "KICK_RECONCILE_INTERVAL"])
                .await
                .0,
            0
        );
        assert_eq!(
            run(&env, &["config", "unset", "KICK_RECONCILE_INTERVAL"])
                .await
                .0,
            66
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_is_a_monitoring_check() {
        let e = setup(1).await;
        // No collector has ever run: unhealthy.
        let (code, out, _) = run(&e.env, &["status", "--json"]).await;
        assert_eq!(code, 69, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["healthy"], false);
        let c = e.db.client().await;
        c.batch_execute(
            "INSERT INTO collectors (id, host, pid, started_at, heartbeat_at, sockets, sockets_up, subscriptions, transport, version)
             VALUES ('h:1', 'h', 1, now(), now(), 2, 2, 150, 'centrifugo', '0.1.0')",
        )
        .await
        .unwrap();
        let (code, out, _) = run(&e.env, &["status"]).await;
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("health:    ok") && out.contains("centrifugo"),
            "{out}"
        );
        // A stuck queue is a problem.
        c.batch_execute("INSERT INTO raw_events (source, event_name, dedupe_key, received_at) VALUES ('api', 'x', 'old', now() - interval '5 minutes')")
            .await
            .unwrap();
        let (code, out, _) = run(&e.env, &["status", "--json"]).await;
        assert_eq!(code, 69);
        assert!(out.contains("queue stuck"), "{out}");
        let (code, out, _) = run(&e.env, &["completions", "bash"]).await;
        assert_eq!(code, 0);
        assert!(out.contains("kick-admin"));
    }
}

#[tokio::test]
async fn service_roles_have_least_privilege() {
    let db = kick_testkit::fresh_db().await;
    let env = db.env();
    let out = tokio::task::spawn_blocking(move || admin(&env, &["db", "roles"]))
        .await
        .unwrap();
    assert_eq!(out.0, 0, "{out:?}");
    // Idempotent.
    let env = db.env();
    assert_eq!(
        tokio::task::spawn_blocking(move || admin(&env, &["db", "roles"]))
            .await
            .unwrap()
            .0,
        0
    );
    let owner = db.client().await;
    owner
        .batch_execute(
            "INSERT INTO streamers (username, kick_user_id, kick_channel_id) VALUES ('a', 1, 11);
             INSERT INTO config (key, value, encrypted) VALUES ('KICK_CLIENT_SECRET', 'v1:ciphertext', true),
                                                           ('KICK_RECONCILE_INTERVAL', '60s', false);",
        )
        .await
        .unwrap();
    let as_role = |role: &str| {
        let mut cfg = db.config.clone();
        cfg.pg.user(role);
        cfg
    };
    let denied = |r: Result<u64, tokio_postgres::Error>| {
        let e = r.expect_err("must be denied");
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{e}"
        );
    };
    let collector = kick_shared::db::connect(&as_role("kick_collector"))
        .await
        .unwrap();
    // Allowed: read streamers, stage events, heartbeat, plaintext settings.
    collector
        .query("SELECT id, kick_channel_id, status FROM streamers", &[])
        .await
        .unwrap();
    collector
        .execute("INSERT INTO raw_events (source, event_name, kick_channel_id, dedupe_key) VALUES ('realtime', 'StreamerIsLive', 11, 'k') ON CONFLICT (dedupe_key) DO NOTHING", &[])
        .await
        .unwrap();
    collector
        .execute(
            "INSERT INTO collectors (id, host, pid, started_at, heartbeat_at, transport, version) VALUES ('c', 'h', 1, now(), now(), 'x', 'y')
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            &[],
        )
        .await
        .unwrap();
    let plain = collector
        .query("SELECT key FROM v_config_plain", &[])
        .await
        .unwrap();
    assert_eq!(plain.len(), 1, "only the plaintext setting is visible");
    // Denied: changing statuses, reading secrets, touching history.
    denied(
        collector
            .execute("UPDATE streamers SET status = 'online'", &[])
            .await,
    );
    denied(collector.execute("SELECT value FROM config", &[]).await);
    denied(collector.execute("DELETE FROM raw_events", &[]).await);
    denied(collector.execute("INSERT INTO status_events (streamer_id, previous_status, new_status, occurred_at, source) SELECT id, 'unknown', 'online', now(), 'x' FROM streamers", &[]).await);
    let writer = kick_shared::db::connect(&as_role("kick_writer"))
        .await
        .unwrap();
    writer
        .execute(
            "UPDATE streamers SET status = 'online' WHERE username = 'a'",
            &[],
        )
        .await
        .unwrap();
    writer
        .execute(
            "UPDATE raw_events SET processed_at = now(), outcome = 'applied'",
            &[],
        )
        .await
        .unwrap();
    denied(writer.execute("SELECT value FROM config", &[]).await);
    denied(writer.execute("DELETE FROM streamers", &[]).await);
    denied(writer.execute("INSERT INTO raw_events (source, event_name, dedupe_key) VALUES ('admin', 'x', 'y')", &[]).await);
    // The webhook receiver: stage events and read streamers, nothing else.
    let webhooks = kick_shared::db::connect(&as_role("kick_webhooks"))
        .await
        .unwrap();
    webhooks
        .execute("INSERT INTO raw_events (source, event_name, kick_channel_id, dedupe_key) VALUES ('realtime', 'StreamerIsLive', 11, 'w') ON CONFLICT (dedupe_key) DO NOTHING", &[])
        .await
        .unwrap();
    webhooks
        .query("SELECT id, kick_channel_id FROM streamers", &[])
        .await
        .unwrap();
    denied(webhooks.execute("SELECT 1 FROM collectors", &[]).await);
    denied(webhooks.execute("SELECT 1 FROM coverage_gaps", &[]).await);
    denied(
        webhooks
            .execute("UPDATE streamers SET status = 'online'", &[])
            .await,
    );
    denied(webhooks.execute("SELECT value FROM config", &[]).await);
}

/// `db init` as the superuser on a cluster that logs every statement and accepts TCP logins with
/// SCRAM only: everything is created once, tables belong to kick_monitor, a second run changes
/// nothing, passwords never reach the server log in plaintext and work over TCP, the peer
/// authentication lines are written once, and the permission and reachability failures map to
/// 77 and 69.
#[tokio::test]
async fn db_init_sets_up_everything_once_and_passwords_stay_out_of_the_log() {
    let cluster: &'static Cluster = Box::leak(Box::new(Cluster::start_with(
        &kick_testkit::ClusterOptions {
            tcp: true,
            settings: vec![("log_statement".into(), "all".into())],
        },
    )));
    const WRITER_PW: &str = "writer-Plaintext-7c1e";
    const COLLECTOR_PW: &str = "collector-Plaintext-93ab";
    let mut env = cluster.env("kick_init");
    env.push(("KICK_WRITER_DB_PASSWORD".into(), WRITER_PW.into()));
    let run = |env: Vec<(String, String)>, args: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || admin(&env, args))
    };

    let (code, out, err) = run(env.clone(), &["db", "init", "--json"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["changed"], true);
    let outcome = |r: &serde_json::Value, what: &str| {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["what"] == what)
            .map(|s| s["outcome"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no step {what}: {r}"))
    };
    for role in [
        "kick_monitor",
        "kick_collector",
        "kick_writer",
        "kick_webhooks",
    ] {
        assert_eq!(outcome(&report, &format!("role {role}")), "created");
    }
    assert_eq!(outcome(&report, "database kick_init"), "created");
    assert_eq!(outcome(&report, "password of kick_writer"), "set");
    assert_eq!(
        outcome(&report, "privileges of the service roles"),
        "updated"
    );
    assert_eq!(report["hba"]["present"], false);
    let hba_line = report["hba"]["lines"][1].as_str().unwrap();
    assert_eq!(
        hba_line,
        "local  kick_init  kick_monitor,kick_collector,kick_writer,kick_webhooks  peer map=kick-monitor"
    );

    let foreign = cluster.psql(
        "kick_init",
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'S')
            AND pg_get_userbyid(c.relowner) <> 'kick_monitor'",
    );
    assert_eq!(foreign, "0", "every table belongs to the owner role");
    assert_eq!(
        cluster.psql(
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'kick_init'"
        ),
        "kick_monitor"
    );

    // A second run, same password: nothing changes, and the human output says so.
    let (code, out, err) = run(env.clone(), &["db", "init"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to do: already initialised"), "{out}");
    assert!(out.contains("unchanged  password of kick_writer"), "{out}");
    assert!(out.contains(hba_line), "the line to add is printed: {out}");

    // `db roles` with a password for the collector, as the superuser.
    let mut roles_env = cluster.env("kick_init");
    roles_env.push(("KICK_COLLECTOR_DB_PASSWORD".into(), COLLECTOR_PW.into()));
    let (code, out, err) = run(roles_env, &["db", "roles"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("set        password of kick_collector"),
        "{out}"
    );

    // The server logged every statement, and the plaintext passwords are in none of them.
    let log = cluster.log();
    assert!(
        log.contains("ALTER ROLE kick_writer PASSWORD 'SCRAM-SHA-256$4096:"),
        "{log}"
    );
    assert!(
        !log.contains(WRITER_PW) && !log.contains(COLLECTOR_PW),
        "{log}"
    );

    // Both roles log in over TCP with SCRAM; a wrong password does not.
    for (role, pw) in [("kick_writer", WRITER_PW), ("kick_collector", COLLECTOR_PW)] {
        let client = kick_shared::db::connect(&cluster.tcp_config("kick_init", role, pw))
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        let me: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(me, role);
        assert!(
            kick_shared::db::connect(&cluster.tcp_config("kick_init", role, "wrong"))
                .await
                .is_err()
        );
    }

    // Not a superuser: 77 with a hint, for db init and for db roles.
    let tcp_env = |user: &str, pw: &str| {
        vec![
            ("DATABASE_HOST".to_owned(), "127.0.0.1".to_owned()),
            ("DATABASE_PORT".into(), cluster.port().to_string()),
            ("DATABASE_NAME".into(), "kick_init".into()),
            ("DATABASE_USER".into(), user.into()),
            ("DATABASE_PASSWORD".into(), pw.into()),
            ("DATABASE_SSLMODE".into(), "disable".into()),
        ]
    };
    let (code, out, err) = run(tcp_env("kick_writer", WRITER_PW), &["db", "init"])
        .await
        .unwrap();
    assert_eq!(code, 77, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("sudo -u postgres kick-admin db init"), "{err}");
    let mut as_writer = tcp_env("kick_writer", WRITER_PW);
    as_writer.push(("KICK_COLLECTOR_DB_PASSWORD".into(), "x".into()));
    let (code, _, err) = run(as_writer, &["db", "roles"]).await.unwrap();
    assert_eq!(code, 77, "{err}");
    assert!(
        err.contains("sudo -u postgres kick-admin db roles"),
        "{err}"
    );

    // Unreachable: 69.
    let mut gone = cluster.env("kick_init");
    gone.retain(|(k, _)| k != "DATABASE_HOST");
    gone.push((
        "DATABASE_HOST".into(),
        "/nonexistent-kick-socket-dir".into(),
    ));
    let (code, _, err) = run(gone, &["db", "init"]).await.unwrap();
    assert_eq!(code, 69, "{err}");

    // --write-hba: written once, reloaded, then present.
    let (code, out, err) = run(env.clone(), &["db", "init", "--write-hba", "--json"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["hba"]["written"], true, "{report}");
    assert_eq!(report["ident"]["written"], true, "{report}");
    let hba_file = report["hba"]["file"].as_str().unwrap();
    let hba = std::fs::read_to_string(hba_file).unwrap();
    let ours = hba.find(hba_line).expect("line written");
    let local_all = hba
        .lines()
        .position(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["local", "all", "all"])
        .unwrap();
    let ours_line = hba[..ours].lines().count();
    assert!(ours_line < local_all, "{hba}");
    let ident = std::fs::read_to_string(report["ident"]["file"].as_str().unwrap()).unwrap();
    assert!(
        ident.contains("kick-monitor  kick-monitor  kick_collector"),
        "{ident}"
    );
    let (code, out, _) = run(env.clone(), &["db", "init", "--write-hba"])
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
    assert!(
        out.contains("pg_hba.conf (") && out.contains("): present"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(hba_file).unwrap(), hba);

    // The map is in force: as root, peer authentication lets this process in as kick_monitor
    // (the `sudo kick-admin` path) but not as a service role.
    if Command::new("id").arg("-u").output().unwrap().stdout == b"0\n" {
        let as_role = |role: &str| {
            let mut cfg = cluster.db_config("kick_init");
            cfg.pg.user(role);
            cfg
        };
        kick_shared::db::connect(&as_role("kick_monitor"))
            .await
            .expect("root maps to kick_monitor");
        let err = kick_shared::db::connect(&as_role("kick_writer"))
            .await
            .expect_err("root does not map to kick_writer");
        assert!(
            err.to_string().contains("Peer authentication failed"),
            "{err}"
        );
    }
}
