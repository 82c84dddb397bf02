//! Test harness: a throwaway PostgreSQL cluster (initdb + postgres, fsync on, Unix socket only in
//! a private directory, so it can never collide with a server on port 5432), started once per test
//! binary, and a fresh migrated database per test (`CREATE DATABASE … TEMPLATE`).
//!
//! For the tests of connection settings, [`Cluster::start_tcp`] also listens on 127.0.0.1 at a
//! free port: in plain text, or TLS only, with a server certificate from a test CA made for the
//! occasion (see [`TestCerts`]).
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
  $runas "$bindir/postgres" -D "$data" -k "$sock" -p "$port" -c "listen_addresses=$listen" $extra \
    -c fsync=on -c synchronous_commit=on -c max_connections=400 -c shared_buffers=64MB \
    -c unix_socket_permissions=0777 -c log_min_messages=warning >>"$root/postgres.log" 2>&1 &
  pid=$!
}
stop() {
  if [ -n "$pid" ]; then
    pkill -CONT -P "$pid" 2>/dev/null; kill -CONT "$pid" 2>/dev/null
    kill -"$1" "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=
  fi
}
# A hung server: every process of the cluster stopped (SIGSTOP), connections stay open.
pause() {
  if [ -n "$pid" ]; then kill -STOP "$pid" 2>/dev/null; pkill -STOP -P "$pid" 2>/dev/null; fi
}
resume() {
  if [ -n "$pid" ]; then pkill -CONT -P "$pid" 2>/dev/null; kill -CONT "$pid" 2>/dev/null; fi
}
start
while read -r cmd; do
  case "$cmd" in
    stop) stop INT ;;
    crash) stop QUIT ;;
    start) start ;;
    restart) stop INT; start ;;
    pause) pause ;;
    resume) resume ;;
  esac
done
stop INT
rm -rf "$root"
"#;

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    bindir: PathBuf,
    port: u16,
    /// Set for a TLS cluster: the CA that signed its certificate, and one that did not.
    certs: Option<TestCerts>,
    control: Mutex<ChildStdin>,
    _supervisor: Mutex<Child>,
}

/// How a cluster from [`Cluster::start_tcp`] accepts TCP connections on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tcp {
    /// `ssl = off`: plain text only.
    Plain,
    /// `ssl = on` and only `hostssl` rules, so a plain TCP connection is refused. The server's
    /// certificate is for `localhost` only (not for `127.0.0.1`), signed by [`TestCerts::ca`].
    TlsOnly,
}

/// Certificates made for a TLS cluster (removed with it).
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// PEM of the CA that signed the server's certificate.
    pub ca: PathBuf,
    /// PEM of another CA, which signed nothing this server presents.
    pub other_ca: PathBuf,
    /// The names in the server certificate's subjectAltName.
    pub server_names: Vec<String>,
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

/// Options of [`Cluster::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Also listen on 127.0.0.1 at [`Cluster::port`], where clients must authenticate with
    /// scram-sha-256 (the Unix socket stays trust for the superuser).
    pub tcp: bool,
    /// Extra server settings, e.g. `("log_statement", "all")`; values must not contain spaces.
    pub settings: Vec<(String, String)>,
}

impl Cluster {
    /// Starts a new private cluster (for tests that stop or restart the server).
    pub fn start() -> Cluster {
        Self::start_inner(None, &[], &[])
    }

    /// Starts a new private cluster that also listens on 127.0.0.1 at a free port, as `tcp`
    /// says. `hba_rules` go first in `pg_hba.conf`, before the rules that let `kick_test` in
    /// without a password (e.g. a rule asking one role for a password).
    pub fn start_tcp(tcp: Tcp, hba_rules: &[&str]) -> Cluster {
        Self::start_inner(Some(tcp), hba_rules, &[])
    }

    /// Starts a new private cluster with `options`.
    pub fn start_with(options: &ClusterOptions) -> Cluster {
        if options.tcp {
            Self::start_inner(
                Some(Tcp::Plain),
                &["host all all 127.0.0.1/32 scram-sha-256"],
                &options.settings,
            )
        } else {
            Self::start_inner(None, &[], &options.settings)
        }
    }

    fn start_inner(tcp: Option<Tcp>, hba_rules: &[&str], settings: &[(String, String)]) -> Cluster {
        // Experiments (benchmarks): more server settings from `KICK_TESTKIT_PG_SETTINGS`
        // (`name=value,name=value`).
        let mut settings = settings.to_vec();
        if let Ok(extra) = std::env::var("KICK_TESTKIT_PG_SETTINGS") {
            settings.extend(extra.split(',').filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            }));
        }
        let settings = settings.as_slice();
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
                "--auth=trust",
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
        let port = match tcp {
            // The port is in the socket file's name only: any will do.
            None => 20000 + (rand::random::<u16>() % 40000),
            Some(_) => free_tcp_port(),
        };
        let mut certs = None;
        if let Some(tcp) = tcp {
            let mut hba: Vec<String> = vec![
                "local all all trust".into(),
                // A standby of this cluster (`start_standby`) streams over the Unix socket.
                "local replication all trust".into(),
            ];
            hba.extend(hba_rules.iter().map(|r| r.to_string()));
            let kind = match tcp {
                Tcp::Plain => "host",
                Tcp::TlsOnly => "hostssl",
            };
            hba.push(format!("{kind} all all 127.0.0.1/32 trust"));
            hba.push(format!("{kind} all all ::1/128 trust"));
            std::fs::write(data.join("pg_hba.conf"), hba.join("\n") + "\n").unwrap();
            if tcp == Tcp::TlsOnly {
                let made = make_certs(&root.join("tls"), user);
                let mut conf = std::fs::OpenOptions::new()
                    .append(true)
                    .open(data.join("postgresql.conf"))
                    .unwrap();
                writeln!(
                    conf,
                    "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'",
                    root.join("tls/server.crt").display(),
                    root.join("tls/server.key").display()
                )
                .unwrap();
                certs = Some(made);
            }
        }
        let listen = if tcp.is_some() { "127.0.0.1" } else { "" };
        Self::supervise(bindir, root, &data, port, listen, settings, certs)
    }

    /// Runs the server of `data` under the supervisor script; returns when it accepts
    /// connections.
    fn supervise(
        bindir: PathBuf,
        root: PathBuf,
        data: &Path,
        port: u16,
        listen: &str,
        settings: &[(String, String)],
        certs: Option<TestCerts>,
    ) -> Cluster {
        let user = run_as();
        let runas = match user {
            Some((uid, gid)) => format!("setpriv --reuid={uid} --regid={gid} --clear-groups"),
            None => String::new(),
        };
        // Benchmarks pin the server (with the services) to some cores, away from the load
        // generator (`kick-bench --pin`).
        let runas = match std::env::var("KICK_BENCH_SERVICE_CPUS") {
            Ok(cpus) if !cpus.is_empty() => format!("taskset -c {cpus} {runas}"),
            _ => runas,
        };
        let mut supervisor = Command::new("sh");
        // Benchmarks on an emulated slow disk (`BENCH_SLOW_DISK=1 ./scripts/bench`): a library
        // preloaded into the server that makes every flush slower.
        if let Ok(lib) = std::env::var("KICK_TESTKIT_PG_PRELOAD")
            && !lib.is_empty()
        {
            supervisor.env("LD_PRELOAD", lib);
        }
        let mut child = supervisor
            .args(["-c", SUPERVISOR, "supervisor"])
            .arg(&bindir)
            .arg(data)
            .arg(&root)
            .arg(port.to_string())
            .arg(&root)
            .arg(runas)
            .arg(listen)
            .arg(
                settings
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
            certs,
            control: Mutex::new(control),
            _supervisor: Mutex::new(child),
        };
        c.wait_ready(true);
        c
    }

    /// Starts a streaming standby of this cluster (`pg_basebackup -R`), listening on 127.0.0.1
    /// at its own port like its primary (same `pg_hba.conf`, settings and databases). With
    /// `synchronous`, the primary waits for it at every durable commit
    /// (`synchronous_standby_names = '*'`), so a promotion loses nothing acknowledged.
    pub fn start_standby(&self, synchronous: bool) -> Cluster {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "kick-pg-standby-{}-{}-{:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&root).unwrap();
        let user = run_as();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = root.join("data");
        let mut backup = Command::new(self.bindir.join("pg_basebackup"));
        backup
            .arg("-h")
            .arg(&self.root)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-D"])
            .arg(&data)
            .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            std::os::unix::process::CommandExt::uid(&mut backup, uid);
            std::os::unix::process::CommandExt::gid(&mut backup, gid);
        }
        let out = backup.output().expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let standby = Self::supervise(
            self.bindir.clone(),
            root,
            &data,
            free_tcp_port(),
            "127.0.0.1",
            &[],
            None,
        );
        if synchronous {
            self.psql(
                "postgres",
                "ALTER SYSTEM SET synchronous_standby_names = '*'",
            );
            self.psql("postgres", "SELECT pg_reload_conf()");
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            ) != "1"
            {
                assert!(
                    Instant::now() < deadline,
                    "the standby never became synchronous"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        standby
    }

    /// Promotes a standby to a primary (`pg_promote`, waiting for it).
    pub fn promote(&self) {
        assert_eq!(self.psql("postgres", "SELECT pg_promote(true, 30)"), "t");
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

    /// A clean restart; returns when the new server accepts connections. (Stop and start as two
    /// steps: waiting for "ready" right after a one-step restart could see the old server.)
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Hangs the server: SIGSTOP on the postmaster and every backend (connections stay open and
    /// silent, as with a hung machine). [`Cluster::resume`] lets it go on.
    pub fn pause(&self) {
        self.command("pause");
        std::thread::sleep(Duration::from_millis(300));
    }

    pub fn resume(&self) {
        self.command("resume");
        std::thread::sleep(Duration::from_millis(300));
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
    }

    /// Connection settings for `user` with `password` over TCP (127.0.0.1), for clusters started
    /// with [`ClusterOptions::tcp`].
    pub fn tcp_config(&self, dbname: &str, user: &str, password: &str) -> DbConfig {
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

    /// The socket directory (the host for clients) and port.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn db_config(&self, dbname: &str) -> DbConfig {
        DbConfig::from_source(&Source::from_pairs(self.env(dbname))).unwrap()
    }

    /// The certificates of a [`Tcp::TlsOnly`] cluster.
    pub fn certs(&self) -> Option<&TestCerts> {
        self.certs.as_ref()
    }

    /// The `DATABASE_*` variables that reach `dbname` over TCP at `host` (`localhost` or
    /// `127.0.0.1`), as the superuser, with no `DATABASE_SSLMODE`: the default, or the test's.
    pub fn tcp_env(&self, host: &str, dbname: &str) -> Vec<(String, String)> {
        vec![
            ("DATABASE_HOST".into(), host.into()),
            ("DATABASE_PORT".into(), self.port.to_string()),
            ("DATABASE_NAME".into(), dbname.into()),
            ("DATABASE_USER".into(), SUPERUSER.into()),
        ]
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

/// A TCP port on 127.0.0.1 that nothing listens on right now.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Makes a test CA, a server certificate for `localhost` signed by it, and a second CA, with the
/// `openssl` command. The server's key belongs to `owner` (the server's user), mode 0600, as
/// PostgreSQL demands.
fn make_certs(dir: &Path, owner: Option<(u32, u32)>) -> TestCerts {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [
        ("ca", "kick-monitor test CA"),
        ("other-ca", "another test CA"),
    ] {
        write(
            &format!("{name}.cnf"),
            &format!(
                "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
                 [dn]\nCN = {cn}\n\
                 [v3_ca]\nbasicConstraints = critical, CA:TRUE\n\
                 keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n"
            ),
        );
        let (cnf, key, crt) = (
            format!("{name}.cnf"),
            format!("{name}.key"),
            format!("{name}.crt"),
        );
        let mut args = vec!["req", "-x509", "-config", &cnf, "-days", "2"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt]);
        openssl(&args);
    }
    let server_names = vec!["localhost".to_owned()];
    write(
        "server.cnf",
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = localhost\n\
         [v3_server]\nbasicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost\nauthorityKeyIdentifier = keyid\n",
    );
    let mut args = vec!["req", "-new", "-config", "server.cnf"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&args);
    let serial = format!("{}", rand::random::<u32>() | 1);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        &serial,
        "-days",
        "2",
        "-extfile",
        "server.cnf",
        "-extensions",
        "v3_server",
        "-out",
        "server.crt",
    ]);
    let key = dir.join("server.key");
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    TestCerts {
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        server_names,
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
    /// A connection, retried for a few seconds (a server just restarted may still refuse).
    pub async fn client(&self) -> tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match kick_shared::db::connect(&self.config).await {
                Ok(c) => return c,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot connect to the test database: {e}"),
            }
        }
    }

    /// The environment a process would need to use this database.
    pub fn env(&self) -> Vec<(String, String)> {
        self.cluster.env(&self.name)
    }

    /// A full [`Config`] for this database plus `extra` settings.
    pub fn app_config(&self, extra: &[(&str, &str)]) -> Config {
        let mut src = Source::from_pairs(self.env());
        src.set("LOG_FORMAT", "text");
        // The collector's spool and slot lock: one directory per test database.
        src.set(
            "STATE_DIRECTORY",
            std::env::temp_dir()
                .join(format!("kick-state-{}", self.name))
                .display()
                .to_string(),
        );
        for (k, v) in extra {
            src.set(*k, *v);
        }
        Config::from_source(&src).unwrap()
    }
}
