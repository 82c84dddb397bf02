//! The whole system as users run it: the real `kick-collector` and `kick-writer` binaries as
//! child processes, kick-sim on loopback and a throwaway PostgreSQL. Used by the fault-injection
//! tests and by `kick-bench`.

pub mod netcut;
pub mod netns;
pub mod reference;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kick_sim::{Options, SimHandle};
use kick_testkit::{Cluster, TestDb};
use serde_json::Value;

/// Where the workspace's binaries are: next to the running test or bench executable.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    // Test executables live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A running service process.
#[derive(Debug)]
pub struct Service {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// SIGKILL: no clean-up of any kind.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                self.kill9();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) are space-separated; utime and
        // stime are fields 14 and 15, in clock ticks (100 per second on Linux).
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        Duration::from_millis(ticks * 10)
    }

    /// Resident set size now and at its peak, in KiB (from /proc).
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Adds `n` streamers with the simulator's numbering (`streamer{i}`, user and channel ids), as
/// `kick-admin streamers import` would add them (for an ideal kick-sim, whose slugs all follow
/// that numbering; [`add_sim_streamers`] reads the slugs from the simulator).
pub async fn add_streamers(c: &tokio_postgres::Client, n: i64) {
    c.execute(
        "INSERT INTO streamers (username, kick_user_id, kick_channel_id, display_name)
         SELECT 'streamer' || i, 1000000 + 7 * i, 2000000 + 13 * i, 'Streamer' || i
         FROM generate_series(0::bigint, $1::bigint - 1) AS i",
        &[&n],
    )
    .await
    .unwrap();
}

/// Adds every simulated streamer with its slug, ids and display name, as an operator's import
/// with channel ids would (a realistic kick-sim has slugs that differ from the numbering).
pub async fn add_sim_streamers(c: &tokio_postgres::Client, sim: &kick_sim::Sim) {
    let all: Vec<_> = (0..sim.streamer_count()).map(|i| sim.streamer(i)).collect();
    let slugs: Vec<&str> = all.iter().map(|s| s.slug.as_str()).collect();
    let users: Vec<i64> = all.iter().map(|s| s.user_id).collect();
    let channels: Vec<i64> = all.iter().map(|s| s.channel_id).collect();
    let names: Vec<&str> = all.iter().map(|s| s.display_name.as_str()).collect();
    c.execute(
        "INSERT INTO streamers (username, kick_user_id, kick_channel_id, display_name)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[])",
        &[&slugs, &users, &channels, &names],
    )
    .await
    .unwrap();
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Services are dropped (killed) by their owners; their logs go with the directory.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a collector held when a test cut it off (see [`Stack::before_cut`]).
#[derive(Debug)]
pub struct CutAudit {
    pub id: String,
    tokens: Vec<i64>,
    /// The newest `raw_events` id before the cut.
    before: i64,
}

/// The system under test.
#[derive(Debug)]
pub struct Stack {
    pub cluster: &'static Cluster,
    pub db: TestDb,
    pub sim: SimHandle,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
}

impl Stack {
    /// A private cluster (tests may restart it), a migrated database holding every simulated
    /// streamer, and kick-sim with `opts`. `extra` settings go to both services.
    pub async fn start(opts: Options, extra: &[(&str, &str)]) -> Stack {
        Stack::start_at("127.0.0.1:0".parse().unwrap(), opts, extra).await
    }

    /// [`Stack::start`] with kick-sim listening on `sim_addr` (`0.0.0.0:0`: reachable from
    /// network namespaces too).
    pub async fn start_at(
        sim_addr: std::net::SocketAddr,
        opts: Options,
        extra: &[(&str, &str)],
    ) -> Stack {
        kick_shared::init_tls();
        let cluster: &'static Cluster = Box::leak(Box::new(Cluster::start().with_template()));
        let db = cluster.fresh_db().await;
        let sim = kick_sim::start(sim_addr, opts).await.unwrap();
        add_sim_streamers(&db.client().await, &sim.sim).await;
        let mut env = db.env();
        env.extend(sim.env());
        // Region lookups for hundreds of channels at the default 10/s would take most of a
        // test: the tests' Kick tolerates more.
        env.push(("KICK_WEB_RATE".into(), "500".into()));
        // Experiments (benchmarks): settings the services read that the environment may set.
        for var in [
            "KICK_STAGING_DOORBELL",
            "KICK_STAGING_COMMIT",
            "KICK_STAGING_BARRIER",
            "KICK_STAGING_BARRIER_DELAY_MS",
            "KICK_STAGING_APPLY",
        ] {
            if let Ok(v) = std::env::var(var) {
                env.push((var.into(), v));
            }
        }
        env.push(("LOG_FORMAT".into(), "json".into()));
        env.push(("LOG_LEVEL".into(), "info".into()));
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push(((*k).into(), (*v).into()));
        }
        let dir = std::env::temp_dir().join(format!("kick-e2e-{}-{}", std::process::id(), db.name));
        std::fs::create_dir_all(&dir).unwrap();
        // The collectors' spool and slot locks live with the stack (removed with it).
        env.retain(|(k, _)| k != "STATE_DIRECTORY");
        env.push((
            "STATE_DIRECTORY".into(),
            dir.join("state").display().to_string(),
        ));
        Stack {
            cluster,
            db,
            sim,
            env,
            dir,
        }
    }

    /// Starts `kick-collector` or `kick-writer`, logging to a file in the stack's directory.
    pub fn spawn(&self, name: &'static str, extra: &[(&str, &str)]) -> Service {
        self.spawn_wrapped(name, &[], extra)
    }

    /// [`Stack::spawn`] through a wrapper command (e.g. `prlimit --nofile=64`): the service is
    /// the wrapper's last argument, which must exec it (so the pid is the service's).
    pub fn spawn_wrapped(
        &self,
        name: &'static str,
        wrapper: &[&str],
        extra: &[(&str, &str)],
    ) -> Service {
        self.spawn_with_args(name, wrapper, &[], extra)
    }

    /// [`Stack::spawn_wrapped`] with arguments for the program. Benchmarks that pin the services
    /// (`KICK_BENCH_SERVICE_CPUS`) run every service under `taskset`.
    pub fn spawn_with_args(
        &self,
        name: &'static str,
        wrapper: &[&str],
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> Service {
        let pin = std::env::var("KICK_BENCH_SERVICE_CPUS")
            .ok()
            .filter(|c| !c.is_empty());
        let pinned: Vec<&str> = match &pin {
            Some(cpus) if wrapper.is_empty() => vec!["taskset", "-c", cpus.as_str()],
            _ => wrapper.to_vec(),
        };
        let wrapper = pinned.as_slice();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.join(format!("{name}-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let bin = bin_dir().join(name);
        let mut cmd = match wrapper.split_first() {
            None => Command::new(&bin),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
        };
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(&self.dir);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {name} from {}: {e} (build the workspace binaries first)",
                    bin_dir().display()
                )
            });
        Service { name, child, log }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        self.db.client().await
    }

    pub async fn control(&self, path: &str, body: Value) -> Value {
        self.sim.control(path, body).await
    }

    /// Streamer `i`'s slug (with a realistic kick-sim, every tenth differs from `streamer{i}`).
    pub fn slug(&self, i: usize) -> String {
        self.sim.sim.streamer(i).slug
    }

    /// The simulator's truth: slug → live.
    pub fn truth(&self) -> HashMap<String, bool> {
        self.sim.sim.truth()
    }

    /// Streamers whose stored status differs from the truth. Streamers the official API leaves
    /// out (banned: `unknown` once two answers missed them) are not compared.
    pub async fn mismatches(&self) -> Vec<(String, String, bool)> {
        let truth = self.truth();
        let missing = self.sim.sim.missing_user_ids();
        let c = match kick_shared::db::connect(&self.db.config).await {
            Ok(c) => c,
            Err(_) => return vec![("<database>".into(), "unreachable".into(), false)],
        };
        let rows = match c
            .query("SELECT username, kick_user_id, status FROM streamers", &[])
            .await
        {
            Ok(r) => r,
            Err(_) => return vec![("<database>".into(), "error".into(), false)],
        };
        rows.iter()
            .filter_map(|r| {
                let (u, s): (String, String) = (r.get("username"), r.get("status"));
                if missing.contains(&r.get::<_, i64>("kick_user_id")) {
                    return None;
                }
                let live = *truth.get(&u)?;
                let want = if live { "online" } else { "offline" };
                (s != want).then_some((u, s, live))
            })
            .collect()
    }

    /// Waits until the database equals the truth; returns how long it took.
    pub async fn converge(&self, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            let m = self.mismatches().await;
            if m.is_empty() {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "{} streamers differ from kick-sim, e.g. {:?}",
                    m.len(),
                    &m[..m.len().min(5)]
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until kick-sim has forgotten a stopped collector's sockets, at most `within`;
    /// whether it has.
    pub async fn sockets_gone(&self, within: Duration) -> bool {
        let t0 = Instant::now();
        while self.sim.sim.socket_count().0 > 0 {
            if t0.elapsed() >= within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Waits until every collector socket is subscribed (from the heartbeat row).
    pub async fn wait_subscribed(
        &self,
        channels: i64,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            // Subscribed where the events are published (a channel on another region's socket
            // receives nothing).
            let subs = self.sim.sim.subscriptions_delivering();
            if subs as i64 >= channels {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                let missing = self.sim.sim.undelivered();
                return Err(format!(
                    "only {subs}/{channels} subscriptions after {timeout:?}; not delivered: {:?}",
                    &missing[..missing.len().min(5)]
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The PostgreSQL Unix socket of the stack's cluster (for links a test can cut).
    pub fn pg_socket(&self) -> PathBuf {
        self.cluster
            .socket_dir()
            .join(format!(".s.PGSQL.{}", self.cluster.port()))
    }

    /// Live collector → shard leases it holds (unexpired, its membership alive).
    pub async fn lease_owners(&self) -> std::collections::BTreeMap<String, i64> {
        self.client()
            .await
            .query(
                "SELECT l.owner, count(*) AS n FROM shard_leases l
                 JOIN shard_members m ON m.collector_id = l.owner
                 WHERE l.expires_at > now() AND m.alive_until > now()
                 GROUP BY l.owner",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("owner"), r.get("n")))
            .collect()
    }

    /// Waits until the 64 shard leases are shared by exactly `ids` (each within one of the
    /// others) and each of the `channels` is subscribed exactly once. Returns the fewest
    /// delivering subscriptions seen meanwhile (sampled every 20 ms: a gap shows).
    pub async fn wait_balanced(
        &self,
        ids: &[&str],
        channels: usize,
        timeout: Duration,
    ) -> Result<usize, String> {
        let t0 = Instant::now();
        let mut least = usize::MAX;
        loop {
            least = least.min(self.sim.sim.subscriptions_delivering());
            let o = self.lease_owners().await;
            let all = self.sim.sim.channel_subscriptions();
            let dup = all.values().filter(|n| **n > 1).count();
            let balanced = o.len() == ids.len()
                && ids.iter().all(|id| o.contains_key(*id))
                && o.values().sum::<i64>() == 64
                && o.values().max().unwrap() - o.values().min().unwrap() <= 1;
            if balanced && dup == 0 && all.len() == channels {
                return Ok(least);
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "not balanced after {timeout:?}: owners {o:?}, {dup} channels subscribed twice, {}/{channels} subscribed",
                    all.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Records what collector `id` holds before a test cuts it off, for [`Stack::fenced_out`].
    pub async fn before_cut(&self, id: &str) -> CutAudit {
        let c = self.client().await;
        let tokens: Vec<i64> = c
            .query("SELECT token FROM shard_leases WHERE owner = $1", &[&id])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("token"))
            .collect();
        assert!(!tokens.is_empty(), "{id} holds no lease");
        let before: i64 = c
            .query_one("SELECT coalesce(max(id), 0) AS m FROM raw_events", &[])
            .await
            .unwrap()
            .get("m");
        CutAudit {
            id: id.to_owned(),
            tokens,
            before,
        }
    }

    /// Waits until the other collectors hold every lease and `id` none; panics after `within`.
    pub async fn wait_taken_over(&self, id: &str, within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let o = self.lease_owners().await;
            if !o.contains_key(id) && o.values().sum::<i64>() == 64 {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "{id}'s leases not taken over within {within:?}: {o:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rows the cut-off collector staged after the cut under a token it had lost (fencing
    /// holds when this is 0).
    pub async fn staged_under_lost_tokens(&self, a: &CutAudit) -> i64 {
        self.client()
            .await
            .query_one(
                "SELECT count(*) AS n FROM raw_events
                 WHERE id > $1 AND collector_id = $2 AND lease_token = ANY($3)",
                &[&a.before, &a.id, &a.tokens],
            )
            .await
            .unwrap()
            .get("n")
    }

    /// Waits until nothing is pending and the history invariants hold (a late row, e.g. a
    /// periodic reconcile, may be pending for a moment); panics after `within`.
    pub async fn settle_history(&self, within: Duration) {
        let t = Instant::now();
        while let Err(e) = self.check_history().await {
            assert!(t.elapsed() < within, "{e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// History invariants: each staged row produced at most one history row, no staged row is
    /// left pending (within 30 s), and consecutive history rows of a streamer chain (new → previous).
    pub async fn check_history(&self) -> Result<(), String> {
        let c = self.client().await;
        let dup: i64 = c
            .query_one("SELECT count(*) FROM (SELECT raw_event_id FROM status_events GROUP BY 1 HAVING count(*) > 1) d", &[])
            .await
            .unwrap()
            .get(0);
        if dup > 0 {
            return Err(format!(
                "{dup} staged rows produced more than one history row"
            ));
        }
        // Statuses may converge before the writer is done: the collector applies the plain
        // cases itself, while a writer that lost the database may still be in its reconnect
        // backoff (up to 10 s). What it has left must drain within 30 s.
        let waited = Instant::now();
        loop {
            let (pending, _) = kick_shared::db::pending_events(&c).await.unwrap();
            if pending == 0 {
                break;
            }
            if waited.elapsed() > Duration::from_secs(30) {
                return Err(format!("{pending} staged rows still pending after 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let broken: i64 = c
            .query_one(
                "SELECT count(*) FROM (
                   SELECT previous_status, lag(new_status) OVER (PARTITION BY streamer_id ORDER BY id) AS before
                   FROM status_events) h
                 WHERE before IS NOT NULL AND before <> previous_status",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if broken > 0 {
            return Err(format!(
                "{broken} history rows do not follow the previous one"
            ));
        }
        Ok(())
    }

    /// The last lines of a service's log (for failure messages).
    pub fn log_tail(&self, svc: &Service) -> String {
        let text = std::fs::read_to_string(&svc.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The last `n` lines of every service log of this stack (for a failure message).
    pub fn all_logs(&self, n: usize) -> String {
        let mut out = String::new();
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "log"))
        {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!(
                "--- {}\n{}\n",
                f.display(),
                lines[lines.len().saturating_sub(n)..].join("\n")
            );
        }
        out
    }
}

/// A stand-in for systemd's notify socket: every datagram a service sends (`READY=1`,
/// `WATCHDOG=1`, `STATUS=…`, `STOPPING=1`) is recorded with its arrival time.
#[derive(Debug)]
pub struct NotifySocket {
    pub path: PathBuf,
    messages: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    pub fn bind(dir: &std::path::Path, name: &str) -> NotifySocket {
        let path = dir.join(format!("notify-{name}.sock"));
        let _ = std::fs::remove_file(&path);
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let m = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                m.lock().unwrap().push((Instant::now(), text));
            }
        });
        NotifySocket { path, messages }
    }

    /// The environment a service needs to report here, with a watchdog of `watchdog`.
    pub fn env(&self, watchdog: Duration) -> Vec<(&'static str, String)> {
        vec![
            ("NOTIFY_SOCKET", self.path.display().to_string()),
            ("WATCHDOG_USEC", watchdog.as_micros().to_string()),
        ]
    }

    /// Whether a datagram containing `text` arrived.
    pub fn saw(&self, text: &str) -> bool {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m.contains(text))
    }

    /// The longest time without `WATCHDOG=1` between `from` and `to` (the edges count).
    pub fn longest_watchdog_gap(&self, from: Instant, to: Instant) -> Duration {
        let times: Vec<Instant> = self
            .messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, m)| m.contains("WATCHDOG=1") && *t >= from && *t <= to)
            .map(|(t, _)| *t)
            .collect();
        let mut last = from;
        let mut longest = Duration::ZERO;
        for t in times.into_iter().chain([to]) {
            longest = longest.max(t.duration_since(last));
            last = t;
        }
        longest
    }
}

impl Stack {
    fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// Runs `kick-admin` with the stack's environment (never this machine's packaged files);
    /// returns (exit code, stdout, stderr) and how long it took.
    pub fn admin(&self, args: &[&str]) -> (i32, String, String, Duration) {
        let t0 = Instant::now();
        let out = Command::new(bin_dir().join("kick-admin"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KICK_MONITOR_ENV_FILE", "/dev/null")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            t0.elapsed(),
        )
    }

    /// `kick-admin db roles`: the services' least-privilege roles (`kick_collector`,
    /// `kick_writer`, `kick_webhooks`), for services spawned with `DATABASE_USER`.
    fn create_service_roles(&self) {
        let mut cmd = Command::new(bin_dir().join("kick-admin"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.args(["db", "roles"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The collector has subscribed `channels` (within `subscribed_within`) and every status is
    /// kick-sim's (within `converged_within`); else a panic with the collector's log.
    pub async fn settle(
        &self,
        channels: i64,
        subscribed_within: Duration,
        converged_within: Duration,
        collector: &Service,
    ) {
        self.wait_subscribed(channels, subscribed_within)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail(collector)));
        self.converge(converged_within)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail(collector)));
    }

    /// kick-writer and kick-collector under their least-privilege roles (created first), once
    /// the collector has subscribed `channels` (within 30 s, else a panic with its log).
    pub async fn spawn_least_privileged(&self, channels: i64) -> (Service, Service) {
        self.create_service_roles();
        let writer = self.spawn("kick-writer", &[("DATABASE_USER", "kick_writer")]);
        let collector = self.spawn("kick-collector", &[("DATABASE_USER", "kick_collector")]);
        self.wait_subscribed(channels, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail(&collector)));
        (writer, collector)
    }

    /// Every realtime event kick-sim published after `since_seq`, as the dedupe keys the
    /// collector stages them under.
    pub async fn published_keys(&self, since_seq: u64) -> Vec<String> {
        let v = self
            .http()
            .get(format!(
                "{}/control/published?since={since_seq}",
                self.sim.url()
            ))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        v["published"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let chan = p["channel"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("channel.");
                let ls = p["livestream_id"].as_i64().unwrap_or(0);
                let kind = if p["live"].as_bool().unwrap() {
                    "live"
                } else {
                    "stop"
                };
                format!("rt:{kind}:{chan}:{ls}")
            })
            .collect()
    }

    /// The sequence number of the last published event.
    pub async fn last_seq(&self) -> u64 {
        let v = self
            .http()
            .get(format!(
                "{}/control/published?since=0&limit=1",
                self.sim.url()
            ))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        v["last_seq"].as_u64().unwrap_or(0)
    }

    /// Those of `keys` not staged.
    pub async fn unstaged(&self, keys: &[String]) -> Vec<String> {
        let c = self.client().await;
        let staged: std::collections::HashSet<String> = c
            .query(
                "SELECT dedupe_key FROM raw_events WHERE dedupe_key = ANY($1)",
                &[&keys],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("dedupe_key"))
            .collect();
        keys.iter()
            .filter(|k| !staged.contains(*k))
            .cloned()
            .collect()
    }

    /// How many of `keys` are staged, and how many rows they have in all (dedupe keys are
    /// unique, so the two agree unless something is badly wrong).
    pub async fn staged(&self, keys: &[String]) -> i64 {
        let c = self.client().await;
        c.query_one(
            "SELECT count(*) FROM raw_events WHERE dedupe_key = ANY($1)",
            &[&keys],
        )
        .await
        .unwrap()
        .get(0)
    }
}
