//! How kick-monitor reaches PostgreSQL, through the real `kick-admin db status`: every `sslmode`
//! against a TLS-only server whose certificate (for `localhost` only) comes from a test CA, and
//! against a server without TLS; the settings in `DATABASE_URL` and in the `PG*` variables; the
//! password file; the packaged environment file; and server-side session timeouts.
//!
//! The TLS server has only `hostssl` rules, so a probe that succeeds there did use TLS; the plain
//! server has `ssl = off`, so one that succeeds there did not.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kick_testkit::{Cluster, Tcp};

const DB: &str = "probe";
const PW_ROLE: &str = "kick_pw";
const PW: &str = "pw-0f6b2d";

/// The TLS-only cluster; `kick_pw` must give a password (SCRAM, so channel binding too).
fn tls() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let c = Cluster::start_tcp(
            Tcp::TlsOnly,
            &[
                &format!("hostssl all {PW_ROLE} 127.0.0.1/32 scram-sha-256"),
                &format!("hostssl all {PW_ROLE} ::1/128 scram-sha-256"),
            ],
        )
        .with_template();
        c.psql(
            "postgres",
            &format!("CREATE DATABASE {DB} TEMPLATE kick_template"),
        );
        c.psql(
            "postgres",
            &format!("CREATE ROLE {PW_ROLE} LOGIN SUPERUSER PASSWORD '{PW}'"),
        );
        c
    })
}

/// The cluster without TLS, reached over TCP.
fn plain() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let c = Cluster::start_tcp(Tcp::Plain, &[]).with_template();
        c.psql(
            "postgres",
            &format!("CREATE DATABASE {DB} TEMPLATE kick_template"),
        );
        c
    })
}

fn ca() -> String {
    tls().certs().unwrap().ca.display().to_string()
}

fn other_ca() -> String {
    tls().certs().unwrap().other_ca.display().to_string()
}

/// `kick-admin db status` with only `env` (plus `PATH`): exit code and stderr.
fn status(env: &[(String, String)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kick-admin"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        // Never the packaged settings of this machine, if kick-monitor is installed.
        .env("KICK_MONITOR_ENV_FILE", "/dev/null")
        .current_dir(std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(["db", "status"]).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The cluster's TCP variables for `host`, plus `extra`.
fn env(c: &Cluster, host: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = c.tcp_env(host, DB);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

#[track_caller]
fn assert_connects(env: &[(String, String)]) {
    let (code, err) = status(env);
    assert_eq!(code, 0, "{env:?}: {err}");
}

/// Fails with `code` and one line on stderr that contains each of `needles`.
#[track_caller]
fn assert_fails(env: &[(String, String)], code: i32, needles: &[&str]) -> String {
    let (got, err) = status(env);
    assert_eq!(got, code, "{env:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} in: {err}");
    }
    err
}

#[test]
fn prefer_is_the_default_and_works_with_and_without_tls() {
    // Debian's own server: TLS with a certificate nobody can verify. Not verified, used.
    assert_connects(&env(tls(), "127.0.0.1", &[]));
    assert_connects(&env(tls(), "127.0.0.1", &[("DATABASE_SSLMODE", "prefer")]));
    // A server without TLS: plain text.
    assert_connects(&env(plain(), "127.0.0.1", &[]));
    assert_fails(
        &env(plain(), "127.0.0.1", &[("DATABASE_SSLMODE", "require")]),
        69,
        &["does not support TLS", "sslmode=require"],
    );
}

#[test]
fn disable_is_refused_by_a_tls_only_server_and_allow_falls_back_to_tls() {
    // pg_hba.conf refuses the plain connection: an authorization failure (SQLSTATE 28000).
    assert_fails(
        &env(tls(), "127.0.0.1", &[("DATABASE_SSLMODE", "disable")]),
        77,
        &["no pg_hba.conf entry", "no encryption"],
    );
    assert_connects(&env(tls(), "127.0.0.1", &[("DATABASE_SSLMODE", "allow")]));
    assert_connects(&env(plain(), "127.0.0.1", &[("DATABASE_SSLMODE", "allow")]));
    assert_connects(&env(
        plain(),
        "127.0.0.1",
        &[("DATABASE_SSLMODE", "disable")],
    ));
}

#[test]
fn require_verifies_only_when_given_a_root_certificate() {
    assert_connects(&env(tls(), "127.0.0.1", &[("DATABASE_SSLMODE", "require")]));
    // With a root certificate, require is verify-ca: the chain, not the name.
    assert_connects(&env(
        tls(),
        "127.0.0.1",
        &[
            ("DATABASE_SSLMODE", "require"),
            ("DATABASE_SSLROOTCERT", &ca()),
        ],
    ));
    assert_fails(
        &env(
            tls(),
            "127.0.0.1",
            &[
                ("DATABASE_SSLMODE", "require"),
                ("DATABASE_SSLROOTCERT", &other_ca()),
            ],
        ),
        69,
        &[
            "invalid peer certificate",
            "not signed by a CA in sslrootcert",
        ],
    );
}

#[test]
fn verify_ca_checks_the_chain_but_not_the_host_name() {
    // The certificate is for `localhost`; 127.0.0.1 is not among its names.
    assert_connects(&env(
        tls(),
        "127.0.0.1",
        &[
            ("DATABASE_SSLMODE", "verify-ca"),
            ("DATABASE_SSLROOTCERT", &ca()),
        ],
    ));
    assert_fails(
        &env(
            tls(),
            "localhost",
            &[
                ("DATABASE_SSLMODE", "verify-ca"),
                ("DATABASE_SSLROOTCERT", &other_ca()),
            ],
        ),
        69,
        &["invalid peer certificate"],
    );
}

#[test]
fn verify_full_checks_the_host_name_too() {
    assert_connects(&env(
        tls(),
        "localhost",
        &[
            ("DATABASE_SSLMODE", "verify-full"),
            ("DATABASE_SSLROOTCERT", &ca()),
        ],
    ));
    let err = assert_fails(
        &env(
            tls(),
            "127.0.0.1",
            &[
                ("DATABASE_SSLMODE", "verify-full"),
                ("DATABASE_SSLROOTCERT", &ca()),
            ],
        ),
        69,
        &[
            "cannot connect to the database kick_test@127.0.0.1",
            "sslmode=verify-full",
            "not valid for name \"127.0.0.1\"",
        ],
    );
    assert!(
        err.contains("localhost"),
        "names what the certificate holds: {err}"
    );
    // Verification with nothing to verify against is a configuration error.
    assert_fails(
        &env(tls(), "localhost", &[("DATABASE_SSLMODE", "verify-full")]),
        78,
        &["DATABASE_SSLMODE", "needs a root certificate"],
    );
}

#[test]
fn system_roots_do_not_trust_a_private_ca() {
    // `system` alone means verify-full against the public web roots.
    assert_fails(
        &env(tls(), "localhost", &[("DATABASE_SSLROOTCERT", "system")]),
        69,
        &["sslrootcert=system", "invalid peer certificate"],
    );
    assert_fails(
        &env(
            tls(),
            "localhost",
            &[
                ("DATABASE_SSLROOTCERT", "system"),
                ("DATABASE_SSLMODE", "require"),
            ],
        ),
        78,
        &["DATABASE_SSLMODE", "use verify-full"],
    );
}

#[test]
fn the_url_and_the_pg_variables_carry_the_same_settings() {
    let port = tls().port();
    let ca = ca();
    let url = |host: &str| {
        vec![(
            "DATABASE_URL".to_owned(),
            format!("postgres://kick_test@{host}:{port}/{DB}?sslmode=verify-full&sslrootcert={ca}"),
        )]
    };
    assert_connects(&url("localhost"));
    assert_fails(&url("127.0.0.1"), 69, &["not valid for name"]);
    let key_value = format!(
        "host=localhost port={port} dbname={DB} user=kick_test sslmode='verify-ca' sslrootcert='{ca}'"
    );
    assert_connects(&[("DATABASE_URL".to_owned(), key_value)]);
    let pg = |host: &str| -> Vec<(String, String)> {
        [
            ("PGHOST", host),
            ("PGPORT", &port.to_string()),
            ("PGDATABASE", DB),
            ("PGUSER", "kick_test"),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &ca),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    assert_connects(&pg("localhost"));
    assert_fails(&pg("127.0.0.1"), 69, &["not valid for name"]);
    // DATABASE_* wins over PG*.
    let mut both = pg("127.0.0.1");
    both.push(("DATABASE_SSLMODE".into(), "verify-ca".into()));
    assert_connects(&both);
}

#[test]
fn unix_sockets_ignore_sslmode() {
    let mut env = tls().env(DB);
    env.retain(|(k, _)| k != "DATABASE_SSLMODE");
    env.push(("DATABASE_SSLMODE".into(), "require".into()));
    assert_connects(&env);
}

#[test]
fn passwords_come_from_the_password_file() {
    let dir = temp_dir("pgpass");
    let port = tls().port();
    let pgpass = dir.join("pgpass");
    let with_file = |line: &str, mode: u32| {
        std::fs::write(&pgpass, format!("# test\n{line}\n")).unwrap();
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(mode)).unwrap();
        env(
            tls(),
            "localhost",
            &[
                ("DATABASE_USER", PW_ROLE),
                ("PGPASSFILE", pgpass.to_str().unwrap()),
            ],
        )
    };
    assert_connects(&with_file(
        &format!("localhost:{port}:*:{PW_ROLE}:{PW}"),
        0o600,
    ));
    assert_connects(&with_file(&format!("*:*:*:*:{PW}"), 0o600));
    assert_fails(
        &with_file(&format!("localhost:{port}:*:{PW_ROLE}:wrong"), 0o600),
        77,
        &["password authentication failed"],
    );
    // Readable by others: ignored, with a warning naming the file.
    let (code, err) = status(&with_file(&format!("*:*:*:*:{PW}"), 0o644));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("group or world access"), "{err}");
    assert!(err.contains("password missing"), "{err}");
    assert!(!err.contains(PW), "{err}");
    // PGPASSWORD comes before the file.
    let mut env = with_file(&format!("*:*:*:*:{PW}"), 0o600);
    env.push(("PGPASSWORD".into(), "wrong".into()));
    assert_eq!(status(&env).0, 77);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn kick_admin_reads_the_packaged_environment_file_and_credentials() {
    let dir = temp_dir("etc");
    let env_file = dir.join("kick-monitor.env");
    std::fs::write(
        &env_file,
        format!(
            "DATABASE_HOST=localhost\nDATABASE_PORT={}\nDATABASE_NAME={DB}\nDATABASE_USER={PW_ROLE}\nDATABASE_SSLMODE=require\n",
            tls().port()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("database-password"), format!("{PW}\n")).unwrap();
    let packaged = vec![(
        "KICK_MONITOR_ENV_FILE".to_owned(),
        env_file.display().to_string(),
    )];
    assert_connects(&packaged);
    // The environment wins over the file.
    let mut overridden = packaged.clone();
    overridden.push(("DATABASE_SSLMODE".into(), "disable".into()));
    assert_fails(&overridden, 77, &["no encryption"]);
    // An empty credential file is no password.
    std::fs::write(dir.join("database-password"), "\n").unwrap();
    let (code, err) = status(&packaged);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("password missing"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn session_timeouts_are_set_by_the_server() {
    kick_shared::init_tls();
    let base =
        kick_shared::config::DbConfig::from_source(&kick_shared::config::Source::from_pairs(env(
            tls(),
            "localhost",
            &[
                ("DATABASE_SSLMODE", "verify-full"),
                ("DATABASE_SSLROOTCERT", &ca()),
            ],
        )))
        .unwrap();
    let cfg = base
        .with_statement_timeout(Duration::from_millis(200))
        .with_lock_timeout(Duration::from_secs(3))
        .with_idle_in_transaction_timeout(Duration::from_secs(60));
    let client = kick_shared::db::connect(&cfg).await.unwrap();
    let show = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap();
            row.get::<_, String>(0)
        }
    };
    assert_eq!(show("statement_timeout").await, "200ms");
    assert_eq!(show("lock_timeout").await, "3s");
    assert_eq!(show("idle_in_transaction_session_timeout").await, "1min");
    let e = client.execute("SELECT pg_sleep(2)", &[]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{e}"
    );
    // The connection used TLS (the server has no other way in over TCP), with the password-less
    // superuser; the base configuration is unchanged.
    let plain_client = kick_shared::db::connect(&base).await.unwrap();
    let row = plain_client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "0");
    let ssl: bool = plain_client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kick-conn-{name}-{}-{:x}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Distinct enough for directories created within one test process.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn a_hung_server_gets_an_answer_within_kick_admin_timeout() {
    // Its own cluster: hanging the shared ones would stall the other tests.
    let c = Cluster::start_tcp(Tcp::Plain, &[]).with_template();
    c.psql(
        "postgres",
        &format!("CREATE DATABASE {DB} TEMPLATE kick_template"),
    );
    let mut e = env(&c, "127.0.0.1", &[("KICK_ADMIN_TIMEOUT", "2")]);
    assert_connects(&e);
    c.pause();
    let started = std::time::Instant::now();
    let (code, err) = status(&e);
    let took = started.elapsed();
    c.resume();
    assert_eq!(code, 75, "EX_TEMPFAIL: {err}");
    assert!(err.contains("no answer within 2s"), "{err}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    // A value that is not a number of seconds is a configuration error, not a silent default.
    e.push(("KICK_ADMIN_TIMEOUT".into(), "soon".into()));
    assert_fails(&e, 78, &["KICK_ADMIN_TIMEOUT"]);
}
