//! Test harness: a throwaway PostgreSQL cluster (initdb + postgres, fsync on, Unix socket only in
//! a private directory, so it can never collide with a server on port 5432), started once per test
//! binary, and a fresh migrated database per test (`CREATE DATABASE … TEMPLATE`).
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the cluster runs as the
//! unprivileged `postgres` system user (created by Debian's package), through `setpriv`.
//!
//! Clean-up does not rely on destructors (statics are never dropped): a small shell supervisor owns
//! the server and reads commands on its stdin; when the test process ends, however it ends, the
//! pipe closes and the supervisor stops the server and removes the directory.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kick_shared::config::{Config, DbConfig, Source};

const SUPERUSER: &str = "kick_test";
const TEMPLATE: &str = "kick_template";

const SUPERVISOR: &str = r#"
set -u
bindir=$1; data=$2; sock=$3; port=$4; root=$5; runas=$6; listen=$7; extra=$8
pid=
start() {
  # $extra is a list of "-c name=value" words (values without spaces): split on purpose.
  # shellcheck disable=SC2086
  $runas "$bindir/postgres" -D "$data" -k "$sock" -p "$port" -c listen_addresses="$listen" $extra \
    -c fsync=on -c synchronous_commit=on -c max_connections=400 -c shared_buffers=64MB \
    -c unix_socket_permissions=0777 -c log_min_messages=warning >>"$root/postgres.log" 2>&1 &
  pid=$!
}
stop() {
  if [ -n "$pid" ]; then kill -"$1" "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=; fi
}
start
while read -r cmd; do
  case "$cmd" in
    stop) stop INT ;;
    crash) stop QUIT ;;
    start) start ;;
    restart) stop INT; start ;;
  esac
done
stop INT
rm -rf "$root"
"#;

/// How a private cluster differs from the default (Unix socket only, trust authentication).
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Also listen on 127.0.0.1 at [`Cluster::port`], where clients must authenticate with
    /// scram-sha-256 (the Unix socket stays trust for the superuser).
    pub tcp: bool,
    /// Extra server settings, e.g. `("log_statement", "all")`; values must not contain spaces.
    pub settings: Vec<(String, String)>,
}

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    bindir: PathBuf,
    port: u16,
    tcp: bool,
    control: Mutex<ChildStdin>,
    _supervisor: Mutex<Child>,
}

fn bindir() -> PathBuf {
    if let Ok(d) = std::env::var("KICK_TEST_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    if let Some(v) = versions.last() {
        return PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "initdb not found: install postgresql (./scripts/test does)"
    );
    Path::new(&path).parent().unwrap().to_path_buf()
}

/// uid and gid of the `postgres` user, when we are root and must drop privileges.
fn run_as() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs the unprivileged 'postgres' user (apt-get install postgresql creates it)");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

impl Cluster {
    /// Starts a new private cluster (for tests that stop or restart the server).
    pub fn start() -> Cluster {
        Self::start_with(&ClusterOptions::default())
    }

    /// Starts a new private cluster with `options`.
    pub fn start_with(options: &ClusterOptions) -> Cluster {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let bindir = bindir();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!(
            "kick-pg-{}-{n}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&root).unwrap();
        let user = run_as();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = root.join("data");
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                if options.tcp {
                    "--auth-host=scram-sha-256"
                } else {
                    "--auth-host=trust"
                },
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            std::os::unix::process::CommandExt::uid(&mut initdb, uid);
            std::os::unix::process::CommandExt::gid(&mut initdb, gid);
        }
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = 20000 + (rand::random::<u16>() % 40000);
        let runas = match user {
            Some((uid, gid)) => format!("setpriv --reuid={uid} --regid={gid} --clear-groups"),
            None => String::new(),
        };
        let mut child = Command::new("sh")
            .args(["-c", SUPERVISOR, "supervisor"])
            .arg(&bindir)
            .arg(&data)
            .arg(&root)
            .arg(port.to_string())
            .arg(&root)
            .arg(runas)
            .arg(if options.tcp { "127.0.0.1" } else { "" })
            .arg(
                options
                    .settings
                    .iter()
                    .map(|(k, v)| format!("-c {k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn supervisor");
        let control = child.stdin.take().unwrap();
        let c = Cluster {
            root,
            bindir,
            port,
            tcp: options.tcp,
            control: Mutex::new(control),
            _supervisor: Mutex::new(child),
        };
        c.wait_ready(true);
        c
    }

    /// The cluster shared by every test in this binary, with a migrated template database.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let c = Cluster::start();
            c.create_template();
            c
        })
    }

    fn create_template(&self) {
        self.psql("postgres", &format!("CREATE DATABASE {TEMPLATE}"));
        let cfg = self.db_config(TEMPLATE);
        // A runtime of its own: the template outlives any one test's runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(kick_shared::db::migrate(&cfg))
                .expect("migrate template");
        })
        .join()
        .unwrap();
    }

    /// Runs one SQL command with psql as the superuser (for set-up, outside any runtime).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.root)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn is_ready(&self) -> bool {
        Command::new(self.bindir.join("pg_isready"))
            .arg("-q")
            .arg("-h")
            .arg(&self.root)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn wait_ready(&self, up: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.is_ready() != up {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default();
                panic!(
                    "postgres did not become {}: {log}",
                    if up { "ready" } else { "stopped" }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn command(&self, cmd: &str) {
        let mut c = self.control.lock().unwrap();
        writeln!(c, "{cmd}").unwrap();
        c.flush().unwrap();
    }

    /// Fast shutdown (SIGINT); returns when the server no longer answers.
    pub fn stop(&self) {
        self.command("stop");
        self.wait_ready(false);
    }

    /// Crash the server: an immediate shutdown (SIGQUIT), with no checkpoint, so the next start
    /// runs crash recovery and only what was flushed to the WAL survives.
    pub fn crash(&self) {
        self.command("crash");
        self.wait_ready(false);
    }

    /// Starts a stopped server; returns when it accepts connections.
    pub fn start_again(&self) {
        self.command("start");
        self.wait_ready(true);
    }

    pub fn restart(&self) {
        self.command("restart");
        self.wait_ready(true);
    }

    /// The socket directory (the host for clients) and port.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log (everything the server wrote to stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
    }

    /// Connection settings for `user` with `password` over TCP (127.0.0.1), for clusters started
    /// with [`ClusterOptions::tcp`].
    pub fn tcp_config(&self, dbname: &str, user: &str, password: &str) -> DbConfig {
        assert!(
            self.tcp,
            "the cluster was started without ClusterOptions::tcp"
        );
        let port = self.port.to_string();
        DbConfig::from_source(&Source::from_pairs([
            ("DATABASE_HOST", "127.0.0.1"),
            ("DATABASE_PORT", port.as_str()),
            ("DATABASE_NAME", dbname),
            ("DATABASE_USER", user),
            ("DATABASE_PASSWORD", password),
            ("DATABASE_SSLMODE", "disable"),
        ]))
        .unwrap()
    }

    pub fn db_config(&self, dbname: &str) -> DbConfig {
        DbConfig::from_source(&Source::from_pairs(self.env(dbname))).unwrap()
    }

    /// The `DATABASE_*` variables that point a process at `dbname` in this cluster.
    pub fn env(&self, dbname: &str) -> Vec<(String, String)> {
        vec![
            ("DATABASE_HOST".into(), self.root.display().to_string()),
            ("DATABASE_PORT".into(), self.port.to_string()),
            ("DATABASE_NAME".into(), dbname.into()),
            ("DATABASE_USER".into(), SUPERUSER.into()),
            ("DATABASE_SSLMODE".into(), "disable".into()),
        ]
    }

    /// A fresh, migrated database in this cluster (the template must exist: use
    /// [`Cluster::shared`] or call [`Cluster::with_template`]).
    pub async fn fresh_db(&'static self) -> TestDb {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let admin = kick_shared::db::connect(&self.db_config("postgres"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .await
            .unwrap();
        TestDb {
            cluster: self,
            config: self.db_config(&name),
            name,
        }
    }

    /// Creates the migrated template in a private cluster.
    pub fn with_template(self) -> Self {
        self.create_template();
        self
    }
}

/// A fresh database in the shared cluster.
pub async fn fresh_db() -> TestDb {
    Cluster::shared().fresh_db().await
}

/// One test's database.
#[derive(Debug)]
pub struct TestDb {
    pub cluster: &'static Cluster,
    pub name: String,
    pub config: DbConfig,
}

impl TestDb {
    pub async fn client(&self) -> tokio_postgres::Client {
        kick_shared::db::connect(&self.config).await.unwrap()
    }

    /// The environment a process would need to use this database.
    pub fn env(&self) -> Vec<(String, String)> {
        self.cluster.env(&self.name)
    }

    /// A full [`Config`] for this database plus `extra` settings.
    pub fn app_config(&self, extra: &[(&str, &str)]) -> Config {
        let mut src = Source::from_pairs(self.env());
        src.set("LOG_FORMAT", "text");
        for (k, v) in extra {
            src.set(*k, *v);
        }
        Config::from_source(&src).unwrap()
    }
}
