//! kick-admin against a throwaway PostgreSQL: migrations, `db` commands and the exit-code
//! contract, driving the real binary where the process boundary matters.

use std::process::Command;

use kick_testkit::Cluster;

fn admin(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    admin_with_stdin(env, args, None)
}

/// Runs the real binary; `stdin` is piped in and closed (without it, stdin is empty).
fn admin_with_stdin(
    env: &[(String, String)],
    args: &[&str],
    stdin: Option<&[u8]>,
) -> (i32, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kick-admin"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        // Never the packaged settings of this machine, if kick-monitor is installed.
        .env("KICK_MONITOR_ENV_FILE", "/dev/null")
        .current_dir(std::env::temp_dir())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.args(args).spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // The binary may refuse before reading (exit 64): a closed pipe is fine then.
        let _ = pipe.write_all(input);
    }
    let out = child.wait_with_output().unwrap();
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

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};

    use super::*;

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
                ..kick_sim::Options::ideal()
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

    async fn run_stdin(
        env: &[(String, String)],
        args: &[&str],
        stdin: &[u8],
    ) -> (i32, String, String) {
        let env = env.to_vec();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stdin = stdin.to_vec();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            admin_with_stdin(&env, &a, Some(&stdin))
        })
        .await
        .unwrap()
    }

    async fn count(db: &kick_testkit::TestDb, sql: &str) -> i64 {
        db.client().await.query_one(sql, &[]).await.unwrap().get(0)
    }

    async fn go_live(e: &Env, slug: &str) {
        reqwest::Client::new()
            .post(format!("{}/control/streamers/{slug}/live", e.sim.url()))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// Kick as kick-sim plays it, behind a proxy that adds what the simulator cannot do (yet):
    /// public API endpoints that fail (Kick deprecated `/public/v1/livestreams` in June 2026),
    /// and slugs other than `streamerN`. An alias shows the simulator's `streamer1` to kick-admin
    /// as, say, `some-user`, and the old slug is then gone, as after a rename on Kick. Only
    /// `KICK_API_URL` points here; OAuth stays on the simulator.
    struct KickProxy {
        url: String,
        state: Arc<Mutex<ProxyState>>,
        task: tokio::task::JoinHandle<()>,
    }

    #[derive(Debug, Clone, Default)]
    struct ProxyState {
        /// (slug on Kick, slug in the simulator).
        aliases: Vec<(String, String)>,
        /// Path → the HTTP status it fails with.
        failing: HashMap<String, u16>,
    }

    impl ProxyState {
        fn sim_slug(&self, kick_slug: &str) -> String {
            if let Some((_, sim)) = self.aliases.iter().find(|(k, _)| k == kick_slug) {
                return sim.clone();
            }
            if self.aliases.iter().any(|(_, sim)| sim == kick_slug) {
                // Renamed: the simulator's own slug no longer exists on "Kick".
                return format!("gone-{kick_slug}");
            }
            kick_slug.to_owned()
        }
    }

    impl KickProxy {
        async fn start(sim: &kick_sim::SimHandle) -> KickProxy {
            use axum::extract::State;
            use axum::http::{HeaderMap, StatusCode, Uri, header};
            use axum::response::{IntoResponse, Response};

            type Shared = (String, Arc<Mutex<ProxyState>>);
            async fn forward(
                State((sim_url, state)): State<Shared>,
                uri: Uri,
                headers: HeaderMap,
            ) -> Response {
                let st = state.lock().unwrap().clone();
                let path = uri.path();
                if let Some(&status) = st.failing.get(path) {
                    let status = StatusCode::from_u16(status).unwrap();
                    let body = json!({"message": status.canonical_reason()}).to_string();
                    return (status, [(header::CONTENT_TYPE, "application/json")], body)
                        .into_response();
                }
                let query: Vec<String> = uri
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|pair| match pair.split_once('=') {
                        Some(("slug", v)) => format!("slug={}", st.sim_slug(v)),
                        _ => pair.to_owned(),
                    })
                    .collect();
                let mut req =
                    reqwest::Client::new().get(format!("{sim_url}{path}?{}", query.join("&")));
                if let Some(auth) = headers.get(header::AUTHORIZATION) {
                    req = req.header("authorization", auth.to_str().unwrap());
                }
                let resp = req.send().await.unwrap();
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                let mut body = resp.text().await.unwrap();
                for (kick, sim) in &st.aliases {
                    body = body.replace(
                        &format!("\"slug\":\"{sim}\""),
                        &format!("\"slug\":\"{kick}\""),
                    );
                }
                (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            }

            let state = Arc::new(Mutex::new(ProxyState::default()));
            let app = axum::Router::new()
                .fallback(forward)
                .with_state((sim.url(), state.clone()));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let task = tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            });
            KickProxy { url, state, task }
        }

        /// `env` with the public API behind this proxy.
        fn env(&self, env: &[(String, String)]) -> Vec<(String, String)> {
            let mut env = env.to_vec();
            env.push(("KICK_API_URL".into(), self.url.clone()));
            env
        }

        /// From now on, the simulator's `sim_slug` is `kick_slug` on Kick (replacing an earlier
        /// alias of it).
        fn alias(&self, kick_slug: &str, sim_slug: &str) {
            let mut st = self.state.lock().unwrap();
            st.aliases.retain(|(_, s)| s != sim_slug);
            st.aliases.push((kick_slug.into(), sim_slug.into()));
        }

        fn fail(&self, path: &str, status: u16) {
            self.state
                .lock()
                .unwrap()
                .failing
                .insert(path.into(), status);
        }

        fn heal(&self) {
            self.state.lock().unwrap().failing.clear();
        }
    }

    impl Drop for KickProxy {
        fn drop(&mut self) {
            self.task.abort();
        }
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
    async fn channel_id_conflicts_name_the_owner_and_write_nothing() {
        let e = setup(6).await;
        // streamer3 is live: Kick gives its channel id, 2000039.
        go_live(&e, "streamer3").await;
        // The operator gave streamer2 that channel id by mistake.
        let (code, out, err) = run(
            &e.env,
            &["streamers", "add", "streamer2", "--channel-id", "2000039"],
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        // The same id for another streamer: 65, one line naming the owner; nothing written.
        let (code, out, err) = run(
            &e.env,
            &["streamers", "add", "streamer1", "--channel-id", "2000039"],
        )
        .await;
        assert_eq!(code, 65, "{out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("streamer1: channel id 2000039 already belongs to streamer streamer2"),
            "{err}"
        );
        assert_eq!(count(&e.db, "SELECT count(*) FROM streamers").await, 1);
        assert_eq!(run(&e.env, &["streamers", "show", "streamer1"]).await.0, 66);
        // A channel id learned from Kick conflicts the same way, and `add` is all or nothing.
        let (code, _, err) = run(&e.env, &["streamers", "add", "streamer0", "streamer3"]).await;
        assert_eq!(code, 65, "{err}");
        assert!(
            err.contains("streamer3: channel id 2000039 already belongs to streamer streamer2")
                && err.contains("nothing was added"),
            "{err}"
        );
        assert_eq!(count(&e.db, "SELECT count(*) FROM streamers").await, 1);
        // `import` reports conflicts per line and adds the rest.
        let dir = std::env::temp_dir().join(format!("kick-conflict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("names.txt");
        std::fs::write(
            &file,
            "streamer4\nstreamer5 2000039\nstreamer3\nghost\nstreamer0 7\nSTREAMER1 7\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let (code, out, err) = run(&e.env, &["streamers", "import", path]).await;
        assert_eq!(code, 65, "conflicts win over unknown names: {out}{err}");
        for want in [
            "2 added, 0 already present, 0 renamed, 3 in conflict, 1 not found on kick",
            "line 2: streamer5: channel id 2000039 already belongs to streamer streamer2",
            "line 3: streamer3: channel id 2000039 already belongs to streamer streamer2",
            "line 6: streamer1: channel id 7 already belongs to streamer streamer0",
            "not found: ghost",
        ] {
            assert!(out.contains(want), "{want}: {out}");
        }
        assert_eq!(
            count(
                &e.db,
                "SELECT count(*) FROM streamers WHERE username IN ('streamer0', 'streamer4')"
            )
            .await,
            2
        );
        assert_eq!(count(&e.db, "SELECT count(*) FROM streamers").await, 3);
        let (code, out, _) = run(&e.env, &["streamers", "import", path, "--json"]).await;
        assert_eq!(code, 65);
        let v: Value = serde_json::from_str(&out).unwrap();
        let lines: Vec<i64> = v["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["line"].as_i64().unwrap())
            .collect();
        assert_eq!(lines, [2, 3, 6], "{v}");
        assert_eq!(
            (v["added"].as_i64(), v["existing"].as_i64()),
            (Some(0), Some(2))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_streamer_renamed_on_kick_keeps_its_row_and_history() {
        let e = setup(3).await;
        assert_eq!(run(&e.env, &["streamers", "add", "streamer1"]).await.0, 0);
        let c = e.db.client().await;
        c.batch_execute(
            "INSERT INTO status_events (streamer_id, previous_status, new_status, occurred_at, source, raw_event_id)
             SELECT id, 'unknown', 'online', now(), 'realtime', 1 FROM streamers WHERE username = 'streamer1';
             -- As if streamer1 had been stored under the name it had on Kick before a rename.
             UPDATE streamers SET username = 'old-name' WHERE username = 'streamer1';",
        )
        .await
        .unwrap();
        let id = count(&e.db, "SELECT id FROM streamers").await;
        let (code, out, err) = run(&e.env, &["streamers", "add", "streamer1", "--json"]).await;
        assert_eq!(code, 0, "{out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let s = &v["streamers"][0];
        assert_eq!(
            (&s["outcome"], &s["renamed_from"], &s["added"]),
            (&json!("renamed"), &json!("old-name"), &json!(false)),
            "{v}"
        );
        assert_eq!(
            count(
                &e.db,
                "SELECT id FROM streamers WHERE username = 'streamer1'"
            )
            .await,
            id
        );
        assert_eq!(count(&e.db, "SELECT count(*) FROM status_events").await, 1);
        let (code, out, _) = run(&e.env, &["streamers", "history", "streamer1", "--json"]).await;
        assert_eq!(code, 0);
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap()["history"][0]["new_status"],
            "online"
        );
        assert_eq!(run(&e.env, &["streamers", "show", "old-name"]).await.0, 66);
        c.batch_execute("UPDATE streamers SET username = 'older' WHERE username = 'streamer1'")
            .await
            .unwrap();
        let (code, out, _) = run(&e.env, &["streamers", "add", "streamer1"]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("renamed older -> streamer1 (user 1000007, channel id not known yet)"),
            "{out}"
        );
        // Same slug and user id: already added.
        let (code, out, _) = run(&e.env, &["streamers", "add", "streamer1"]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("streamer1 is already added (user 1000007"),
            "{out}"
        );
        // A stored slug that Kick now gives to another user is a conflict, not a rename.
        c.batch_execute("UPDATE streamers SET username = 'streamer2' WHERE username = 'streamer1'")
            .await
            .unwrap();
        let (code, _, err) = run(&e.env, &["streamers", "add", "streamer2"]).await;
        assert_eq!(code, 65, "{err}");
        assert!(
            err.contains(
                "streamer2 is stored for kick user 1000007, but on kick it is now user 1000014"
            ),
            "{err}"
        );
        assert_eq!(count(&e.db, "SELECT count(*) FROM streamers").await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn usernames_become_kicks_slugs_and_renames_follow_kick() {
        let e = setup(3).await;
        let proxy = KickProxy::start(&e.sim).await;
        let env = proxy.env(&e.env);
        // On Kick, the user `Some_User` has the slug `some-user`.
        proxy.alias("some-user", "streamer1");
        let (code, out, err) = run(&env, &["streamers", "add", "Some_User"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("added some-user (user 1000007, channel id not known yet)"),
            "{out}"
        );
        assert_eq!(
            count(
                &e.db,
                "SELECT count(*) FROM streamers WHERE username = 'some-user'"
            )
            .await,
            1
        );
        for form in ["Some_User", "some-user", " SOME-USER ", "some_user"] {
            let (code, out, err) = run(&env, &["streamers", "show", form]).await;
            assert_eq!(code, 0, "{form:?}: {err}");
            assert!(out.contains("username         some-user"), "{out}");
        }
        assert_eq!(run(&env, &["streamers", "history", "Some_User"]).await.0, 0);
        let (code, out, _) = run(&env, &["streamers", "disable", "some_user"]).await;
        assert_eq!((code, out.as_str()), (0, "disabled some-user\n"));
        assert_eq!(run(&env, &["streamers", "enable", "Some_User"]).await.0, 0);
        // Longer than Kick allows: bad input before any lookup.
        let (code, _, err) = run(&env, &["streamers", "add", &"a".repeat(26)]).await;
        assert_eq!(code, 65, "{err}");
        // Renamed on Kick: same user, new slug; the old slug no longer resolves.
        proxy.alias("new-name", "streamer1");
        let (code, out, err) = run(&env, &["streamers", "add", "New_Name"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("renamed some-user -> new-name"), "{out}");
        assert_eq!(run(&env, &["streamers", "add", "some-user"]).await.0, 66);
        // `import` renames too.
        proxy.alias("third-name", "streamer1");
        let dir = std::env::temp_dir().join(format!("kick-rename-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("names.txt");
        std::fs::write(&file, "Third_Name\nstreamer2\n").unwrap();
        let (code, out, err) = run(&env, &["streamers", "import", file.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("1 added, 0 already present, 1 renamed")
                && out.contains("renamed new-name -> third-name"),
            "{out}"
        );
        assert_eq!(run(&env, &["streamers", "remove", "THIRD_NAME"]).await.0, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_channel_id_and_display_name_lookups_never_fail_add() {
        let e = setup(5).await;
        let proxy = KickProxy::start(&e.sim).await;
        let env = proxy.env(&e.env);
        go_live(&e, "streamer3").await;
        // Kick removed the livestreams endpoint; the users endpoint fails too.
        proxy.fail("/public/v1/livestreams", 404);
        proxy.fail("/public/v1/users", 500);
        let (code, out, err) = run(
            &env,
            &["streamers", "add", "streamer3", "streamer1", "--json"],
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let live = &v["streamers"][0];
        assert_eq!(
            (
                &live["username"],
                &live["kick_channel_id"],
                &live["display_name"]
            ),
            (&json!("streamer3"), &Value::Null, &Value::Null),
            "{v}"
        );
        let notes = live["notes"].to_string();
        assert!(
            notes.contains(
                "channel id not learned: livestreams lookup failed (kick answered http 404"
            ) && notes.contains("display name not learned: users lookup failed"),
            "{notes}"
        );
        // Not live: no channel id was looked up, so only the display name is missing.
        assert_eq!(
            v["streamers"][1]["notes"].as_array().unwrap().len(),
            1,
            "{v}"
        );
        assert_eq!(
            count(&e.db, "SELECT count(*) FROM streamers WHERE kick_channel_id IS NULL AND display_name IS NULL").await,
            2
        );
        // Human output says so too, and so does `import`.
        assert_eq!(run(&env, &["streamers", "remove", "streamer3"]).await.0, 0);
        let (code, out, _) = run(&env, &["streamers", "add", "streamer3"]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("added streamer3 (user 1000021, channel id not known yet)")
                && out.contains("  note: channel id not learned: livestreams lookup failed"),
            "{out}"
        );
        assert_eq!(run(&env, &["streamers", "remove", "streamer3"]).await.0, 0);
        let dir = std::env::temp_dir().join(format!("kick-nolive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("names.txt");
        std::fs::write(&file, "streamer3\nstreamer4\n").unwrap();
        let (code, out, err) = run(&env, &["streamers", "import", file.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("note (1 streamer): channel id not learned")
                && out.contains("note (2 streamers): display name not learned"),
            "{out}"
        );
        std::fs::remove_dir_all(dir).unwrap();
        // The channels lookup (slug to user id) stays required.
        proxy.fail("/public/v1/channels", 500);
        let (code, _, err) = run(&env, &["streamers", "add", "streamer0"]).await;
        assert_eq!(code, 69, "{err}");
        assert_eq!(
            count(
                &e.db,
                "SELECT count(*) FROM streamers WHERE username = 'streamer0'"
            )
            .await,
            0
        );
        // Once Kick answers again, adding the streamer again learns its channel id.
        proxy.heal();
        let (code, out, _) = run(&env, &["streamers", "add", "streamer3"]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("streamer3 is already added (user 1000021, channel 2000039)"),
            "{out}"
        );
        assert_eq!(
            count(
                &e.db,
                "SELECT kick_channel_id FROM streamers WHERE username = 'streamer3'"
            )
            .await,
            2000039
        );
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
    async fn config_secrets_come_from_stdin_are_encrypted_and_need_the_key() {
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
        // A secret comes from standard input (here a pipe, with echo's newline), never from the
        // arguments, which hold only the key's name.
        let args = ["config", "set", "KICK_CLIENT_SECRET", "--secret"];
        assert!(!args.iter().any(|a| a.contains("sim-secret")));
        let (code, out, err) = run_stdin(&env, &args, b"sim-secret\n").await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("set KICK_CLIENT_SECRET (encrypted)"), "{out}");
        assert!(!out.contains("sim-secret") && !err.contains("sim-secret"));
        assert_eq!(
            run(&env, &["config", "set", "KICK_RECONCILE_INTERVAL", "60s"])
                .await
                .0,
            0
        );
        // Control characters (an escape sequence, a newline) are refused, for any key (65).
        for bad in ["60s\u{1b}[2J", "a\nb", "x\u{202e}\u{2066}"] {
            let (code, _, err) = run(&env, &["config", "set", "SOME_NOTE", bad]).await;
            assert_eq!(code, 65, "{bad:?}: {err}");
            assert!(err.contains("control character"), "{err}");
        }
        let stored = |key: &'static str| {
            let db = &e.db;
            async move {
                db.client()
                    .await
                    .query_opt(
                        "SELECT value, encrypted FROM config WHERE key = $1",
                        &[&key],
                    )
                    .await
                    .unwrap()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
            }
        };
        let (ciphertext, encrypted) = stored("KICK_CLIENT_SECRET").await.unwrap();
        assert!(
            encrypted && !ciphertext.contains("sim-secret") && ciphertext.starts_with("v1:"),
            "{ciphertext}"
        );
        let (code, out, _) = run(&env, &["config", "get", "KICK_CLIENT_SECRET"]).await;
        assert_eq!((code, out.as_str()), (0, "sim-secret\n"));
        // A value on the command line for a secret is refused with a hint (64); nothing changes.
        for args in [
            &[
                "config",
                "set",
                "KICK_CLIENT_SECRET",
                "leaked-value",
                "--secret",
            ][..],
            &["config", "set", "KICK_CLIENT_SECRET", "leaked-value"],
            &[
                "config",
                "set",
                "DATABASE_PASSWORD",
                "leaked-value",
                "--secret",
            ],
            &[
                "config",
                "set",
                "KICK_RECONCILE_INTERVAL",
                "leaked-value",
                "--secret",
            ],
        ] {
            let (code, out, err) = run(&env, args).await;
            assert_eq!(code, 64, "{args:?}: {out}{err}");
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(
                err.contains("secrets are read from standard input: echo -n"),
                "{err}"
            );
            assert!(!err.contains("leaked-value") && !out.contains("leaked-value"));
        }
        assert_eq!(
            stored("KICK_CLIENT_SECRET").await.unwrap().0,
            ciphertext,
            "unchanged"
        );
        assert_eq!(stored("DATABASE_PASSWORD").await, None);
        assert_eq!(
            stored("KICK_RECONCILE_INTERVAL").await,
            Some(("60s".into(), false))
        );
        // A key that is secret by nature is encrypted without --secret; exactly one trailing
        // newline is removed.
        let (code, out, err) = run_stdin(
            &env,
            &["config", "set", "WEBHOOK_SECRET"],
            b"two words \n\n",
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(stored("WEBHOOK_SECRET").await.unwrap().1);
        let (_, out, _) = run(&env, &["config", "get", "WEBHOOK_SECRET"]).await;
        assert_eq!(out, "two words \n\n");
        // Any key is a secret with --secret.
        let (code, out, err) =
            run_stdin(&env, &["config", "set", "API_TOKEN", "--secret"], b"t0ken").await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(stored("API_TOKEN").await.unwrap().1);
        let (_, out, _) = run(&env, &["config", "get", "API_TOKEN"]).await;
        assert_eq!(out, "t0ken\n");
        assert_eq!(run(&env, &["config", "unset", "API_TOKEN"]).await.0, 0);
        // An empty secret is refused (65); so is a plain setting without a value (64).
        for input in [&b""[..], b"\n"] {
            let (code, _, err) =
                run_stdin(&env, &["config", "set", "OTHER_SECRET", "--secret"], input).await;
            assert_eq!(code, 65, "{input:?}: {err}");
            assert!(err.contains("empty secret"), "{err}");
        }
        assert_eq!(stored("OTHER_SECRET").await, None);
        assert_eq!(
            run(&env, &["config", "set", "KICK_RECONCILE_INTERVAL"])
                .await
                .0,
            64
        );
        // Without the config key, it fails before reading the secret (77).
        let (code, _, err) = run_stdin(
            &e.env,
            &["config", "set", "OTHER_SECRET", "--secret"],
            b"never-read",
        )
        .await;
        assert_eq!(code, 77, "{err}");
        assert!(!err.contains("never-read"));
        assert_eq!(run(&env, &["config", "unset", "WEBHOOK_SECRET"]).await.0, 0);
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
    async fn probe_checks_each_assumption_against_a_realistic_kick() {
        let sim = kick_sim::start("127.0.0.1:0".parse().unwrap(), {
            let mut o = kick_sim::Options::realistic();
            o.streamers = 30;
            o
        })
        .await
        .unwrap();
        let db = kick_testkit::fresh_db().await;
        let mut env = db.env();
        env.extend(sim.env());
        // A streamer whose username has an underscore, served in the second region.
        let s = sim.sim.streamer(9);
        let (code, out, err) = run(
            &env,
            &[
                "probe",
                "--slug",
                "The_Streamer_9",
                "--channel-id",
                &s.channel_id.to_string(),
            ],
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        for check in [
            "ok   oauth",
            "ok   channels by slug: slug the-streamer-9",
            "the_streamer_9 is unknown: slugs use `-`",
            "note v1 livestreams",
            "ok   negotiation: centrifugo at",
            "ok   channel negotiation",
            "(another region)",
            "ok   guest token",
            "ok   websocket subscribe: connected and subscribed",
        ] {
            assert!(out.contains(check), "{check}:\n{out}");
        }
        // Kick refusing the negotiation: that line fails, and so does the probe.
        reqwest::Client::new()
            .post(format!("{}/control/rest", sim.url()))
            .json(&json!({"mode": "403", "endpoints": ["negotiation"], "seconds": 60}))
            .send()
            .await
            .unwrap();
        let (code, out, _) = run(&env, &["probe", "--slug", "streamer1", "--json"]).await;
        assert_eq!(code, 69, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["passed"], false);
        let neg = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "negotiation")
            .unwrap();
        assert_eq!(neg["ok"], false);
        assert!(neg["evidence"].as_str().unwrap().contains("403"), "{neg}");
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
        c.batch_execute("DELETE FROM raw_events").await.unwrap();
        // A collector reporting a problem of its own: one line naming it and since when.
        c.batch_execute(
            r#"UPDATE collectors SET healthy = false,
                 problems = '[{"what": "staging inserts failing: permission denied", "since": "2026-11-29T20:00:00Z"}]'"#,
        )
        .await
        .unwrap();
        let (code, out, _) = run(&e.env, &["status"]).await;
        assert_eq!(code, 69, "{out}");
        assert!(
            out.contains("collector h:1: staging inserts failing: permission denied (since 2026-11-29 20:00:00 UTC)"),
            "{out}"
        );
        // A collector that stopped beating: stale (a problem) for 90 s, then gone (listed only),
        // as long as another collector is running.
        c.batch_execute(
            "UPDATE collectors SET healthy = true, problems = '[]', heartbeat_at = now() - interval '45 seconds'",
        )
        .await
        .unwrap();
        let (code, out, _) = run(&e.env, &["status"]).await;
        assert_eq!(code, 69, "{out}");
        assert!(out.contains("heartbeat stale"), "{out}");
        c.batch_execute(
            "UPDATE collectors SET heartbeat_at = now() - interval '100 seconds';
             INSERT INTO collectors (id, host, pid, started_at, heartbeat_at, sockets, sockets_up, subscriptions, transport, version)
             VALUES ('h2', 'h2', 2, now(), now(), 1, 1, 1, 'centrifugo', '0.1.0')",
        )
        .await
        .unwrap();
        let (code, out, _) = run(&e.env, &["status", "--json"]).await;
        assert_eq!(code, 0, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let gone = v["collectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "h:1")
            .unwrap();
        assert_eq!(gone["state"], "gone");
        c.batch_execute("DELETE FROM collectors WHERE id = 'h2'")
            .await
            .unwrap();
        let (code, out, _) = run(&e.env, &["status"]).await;
        assert_eq!(code, 69, "{out}");
        assert!(out.contains("no collector is running"), "{out}");
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
        .execute("INSERT INTO raw_events (source, event_name, kick_user_id, dedupe_key) VALUES ('webhook', 'StreamerIsLive', 11, 'w') ON CONFLICT (dedupe_key) DO NOTHING", &[])
        .await
        .unwrap();
    // Rows of any other source are refused (row-level security): it cannot pose as the
    // collector.
    denied(webhooks.execute("INSERT INTO raw_events (source, event_name, kick_channel_id, dedupe_key) VALUES ('realtime', 'StreamerIsLive', 11, 'w2')", &[]).await);
    denied(
        webhooks
            .execute("SELECT 1 FROM v_pending_events", &[])
            .await,
    );
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
