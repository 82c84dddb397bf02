//! Database access: connecting (TLS through rustls with libpq's `sslmode` meanings, Unix
//! sockets), LISTEN connections whose notifications are actually delivered, migrations under an
//! advisory lock, and the error type with its retryable/fatal classifier.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Connection, Notification, Socket};

use crate::config::{DbConfig, SslMode};
use crate::exit::{Classify, Exit};

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Advisory lock key held while migrations run, so two concurrent `db migrate` runs serialize.
/// (The bytes of "kickmigr".)
const MIGRATION_LOCK: i64 = 0x6b69_636b_6d69_6772;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `target` is the connection as [`DbConfig::describe_with_tls`] says. The message holds the
    /// cause on one line (with a hint for a refused certificate), so the cause is not also a
    /// `source`: `{:#}` would print it twice.
    #[error("cannot connect to the database {target}: {}", connect_cause(.cause))]
    Connect {
        target: String,
        cause: tokio_postgres::Error,
    },
    #[error("database error: {}", cause_line(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migrate(String),
    /// The database's schema is not the one this build was made for.
    #[error("{0}")]
    Schema(String),
    /// The database did not answer in time (a hung server, a lock held elsewhere).
    #[error("the database did not answer within {0}s")]
    Timeout(u64),
}

/// tokio-postgres errors print a generic top line ("db error"); the useful text is in the
/// database error or the source. One line, for logs and for stderr.
pub fn cause_line(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity().to_lowercase(), db.message());
    }
    match std::error::Error::source(e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

/// The cause of a connection failure, with a hint when the server's certificate was refused.
fn connect_cause(e: &tokio_postgres::Error) -> String {
    let line = cause_line(e);
    match crate::tls::certificate_hint(e) {
        Some(hint) => format!("{line} ({hint})"),
        None => line,
    }
}

/// True for errors after which the same work may succeed on a fresh attempt or connection.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            code == &SqlState::T_R_SERIALIZATION_FAILURE
                || code == &SqlState::T_R_DEADLOCK_DETECTED
                || code == &SqlState::ADMIN_SHUTDOWN
                || code == &SqlState::CRASH_SHUTDOWN
                || code == &SqlState::CANNOT_CONNECT_NOW
                || code == &SqlState::TOO_MANY_CONNECTIONS
                || code.code().starts_with("08")
        }
        // No SQLSTATE: an I/O or protocol failure of the connection itself.
        None => true,
    }
}

impl Classify for DbError {
    fn exit(&self) -> Exit {
        match self {
            DbError::Connect { cause, .. } => match cause.code() {
                Some(c)
                    if c == &SqlState::INVALID_PASSWORD
                        || c == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
                {
                    Exit::NoPerm
                }
                Some(c) if c == &SqlState::INVALID_CATALOG_NAME => Exit::Config,
                _ => Exit::Unavailable,
            },
            DbError::Query(e) if is_transient(e) => Exit::Unavailable,
            DbError::Query(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                Exit::NoPerm
            }
            DbError::Query(_) | DbError::Migrate(_) => Exit::Software,
            DbError::Schema(_) => Exit::Config,
            DbError::Timeout(_) => Exit::Unavailable,
        }
    }
    fn is_retryable(&self) -> bool {
        match self {
            DbError::Connect { .. } => matches!(self.exit(), Exit::Unavailable),
            DbError::Query(e) => is_transient(e),
            DbError::Migrate(_) | DbError::Schema(_) => false,
            DbError::Timeout(_) => true,
        }
    }
}

type TlsStream = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// Opens a connection as `cfg` says. For `sslmode=allow` a plain connection comes first and, if
/// the server refuses it (say, `hostssl` only), TLS without verification, as libpq does.
async fn open(cfg: &DbConfig) -> Result<(Client, Connection<Socket, TlsStream>), DbError> {
    let res = match cfg.pg.connect(cfg.tls()).await {
        Err(e)
            if cfg.sslmode() == SslMode::Allow
                && !cfg.unix_socket()
                && e.as_db_error().is_some() =>
        {
            let mut with_tls = cfg.pg.clone();
            with_tls.ssl_mode(tokio_postgres::config::SslMode::Require);
            with_tls.connect(cfg.tls()).await
        }
        res => res,
    };
    res.map_err(|cause| DbError::Connect {
        target: cfg.describe_with_tls(),
        cause,
    })
}

/// Opens a connection and drives it on a spawned task. Notifications on this connection are
/// dropped: use [`listen`] for LISTEN.
pub async fn connect(cfg: &DbConfig) -> Result<Client, DbError> {
    let (client, conn) = open(cfg).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %cause_line(&e), "database connection ended");
        }
    });
    Ok(client)
}

/// Opens a dedicated connection, LISTENs on `channels` (each LISTEN commits at once: autocommit)
/// and forwards its notifications. The receiver yields `None` once the connection is gone: the
/// caller reconnects, LISTENs again and re-scans the table, since notifications sent meanwhile
/// are lost.
pub async fn listen(
    cfg: &DbConfig,
    channels: &[&str],
) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), DbError> {
    let (client, mut conn) = open(cfg).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // `Connection`'s Future impl silently drops notifications; poll_message delivers them.
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %cause_line(&e), "listen connection ended");
                    break;
                }
            }
        }
    });
    for ch in channels {
        // Channel names are our constants, never user input.
        client.batch_execute(&format!("LISTEN {ch}")).await?;
    }
    Ok((client, rx))
}

/// How long a migration waits for a lock before giving up (and retrying): a migration that
/// queues behind a reader must not stall every service query queued behind it.
pub const MIGRATION_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The pause between attempts: longer than the lock timeout, so that the services' queries that
/// queued behind an attempt drain before the next one.
const MIGRATION_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(3);
/// Attempts when a lock is not available in time (about two minutes in all).
const MIGRATION_ATTEMPTS: u32 = 25;

/// Applies pending migrations; returns the names of those applied now (empty: already current).
/// Safe to run concurrently (the runs serialize on an advisory lock, and the second finds
/// nothing to do) and while the services run: each migration is its own transaction with a
/// `lock_timeout` of [`MIGRATION_LOCK_TIMEOUT`], retried with a pause when a lock is not
/// available in time, so the services' queries never wait long behind it.
pub async fn migrate(cfg: &DbConfig) -> Result<Vec<String>, DbError> {
    migrate_with(cfg, embedded::migrations::runner()).await
}

/// [`migrate`] with another set of migrations (tests add one to exercise migrating while busy).
pub async fn migrate_with(
    cfg: &DbConfig,
    mut runner: refinery::Runner,
) -> Result<Vec<String>, DbError> {
    let mut client = connect(cfg).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{}ms'; SET application_name = 'kick-admin migrate'",
            MIGRATION_LOCK_TIMEOUT.as_millis()
        ))
        .await?;
    runner = runner.set_grouped(false).set_abort_divergent(true);
    let mut applied = Vec::new();
    let mut attempt = 0;
    let result = loop {
        match runner.run_async(&mut client).await {
            Ok(report) => {
                applied.extend(
                    report
                        .applied_migrations()
                        .iter()
                        .map(|m| format!("V{}__{}", m.version(), m.name())),
                );
                break Ok(());
            }
            Err(e) => {
                // Migrations applied before the failure are committed (one transaction each).
                if let Some(report) = e.report() {
                    applied.extend(
                        report
                            .applied_migrations()
                            .iter()
                            .map(|m| format!("V{}__{}", m.version(), m.name())),
                    );
                }
                let pg = postgres_cause(&e);
                let text = match pg {
                    Some(pg) => format!("{e}: {}", cause_line(pg)),
                    None => e.to_string(),
                };
                let lock_timeout =
                    pg.is_some_and(|pg| pg.code() == Some(&SqlState::LOCK_NOT_AVAILABLE));
                attempt += 1;
                if attempt < MIGRATION_ATTEMPTS && lock_timeout {
                    tracing::warn!(attempt, "migration waited too long for a lock; retrying");
                    tokio::time::sleep(MIGRATION_RETRY_PAUSE).await;
                    continue;
                }
                break Err(DbError::Migrate(text));
            }
        }
    };
    // The lock is per session; release it explicitly so a pooled session could be reused.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result.map(|()| applied)
}

/// The PostgreSQL error behind a refinery error, if there is one.
fn postgres_cause(e: &refinery::Error) -> Option<&tokio_postgres::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(pg) = c.downcast_ref::<tokio_postgres::Error>() {
            return Some(pg);
        }
        cause = c.source();
    }
    None
}

/// The migrations embedded in this build (tests add one to them to migrate while busy).
pub fn embedded_migrations() -> Vec<refinery::Migration> {
    embedded::migrations::runner().get_migrations().to_vec()
}

/// The schema version this build needs: its newest migration.
pub fn expected_schema_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Checks that the database's schema is exactly the one this build expects; otherwise a
/// [`DbError::Schema`] telling the operator what to do (exit 78).
pub async fn check_schema(client: &Client, program: &str) -> Result<(), DbError> {
    let want = expected_schema_version();
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let have: i64 = if exists {
        client
            .query_one(
                "SELECT coalesce(max(version), 0)::bigint FROM refinery_schema_history",
                &[],
            )
            .await?
            .get(0)
    } else {
        0
    };
    if have == want {
        Ok(())
    } else if have < want {
        Err(DbError::Schema(format!(
            "the database schema is at version {have}, this {program} {} needs version {want}: run `kick-admin db migrate`",
            crate::VERSION
        )))
    } else {
        Err(DbError::Schema(format!(
            "the database schema is at version {have}, newer than this {program} {} knows (version {want}): upgrade kick-monitor",
            crate::VERSION
        )))
    }
}

/// Awaits a connection attempt for at most `limit` (connecting to a hung server can otherwise
/// take as long as the TCP stack allows).
pub async fn bounded_connect<T>(
    limit: std::time::Duration,
    fut: impl Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(DbError::Timeout(limit.as_secs())),
    }
}

/// Runs `fut` for at most `secs` seconds; a timeout is [`DbError::Timeout`].
pub async fn bounded<T>(
    secs: u64,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(std::time::Duration::from_secs(secs), fut).await {
        Ok(r) => r.map_err(DbError::from),
        Err(_) => Err(DbError::Timeout(secs)),
    }
}

/// One migration and whether it is applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationState {
    pub version: i64,
    pub name: String,
    pub applied_on: Option<String>,
}

/// Every migration this build knows, with whether and when each was applied.
pub async fn migration_status(client: &Client) -> Result<Vec<MigrationState>, DbError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let mut applied = std::collections::HashMap::new();
    if exists {
        for row in client
            .query(
                "SELECT version::bigint, applied_on FROM refinery_schema_history",
                &[],
            )
            .await?
        {
            applied.insert(row.get::<_, i64>(0), row.get::<_, Option<String>>(1));
        }
    }
    Ok(embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| {
            let version = i64::from(m.version());
            MigrationState {
                version,
                name: m.name().to_owned(),
                applied_on: applied.get(&version).cloned().flatten(),
            }
        })
        .collect())
}

/// Queue depth and the age of the oldest pending staged row, from `v_pending_events`.
pub async fn pending_events(client: &Client) -> Result<(i64, f64), DbError> {
    let row = client
        .query_one(
            "SELECT pending, oldest_age_seconds FROM v_pending_events",
            &[],
        )
        .await?;
    Ok((row.get("pending"), row.get("oldest_age_seconds")))
}

/// A statement the server ended because it ran out of time (`statement_timeout`,
/// `lock_timeout`) or was cancelled: for queries that are key lookups or small reads, a wait
/// for a lock held elsewhere.
pub fn is_lock_wait(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c == &SqlState::QUERY_CANCELED || c == &SqlState::LOCK_NOT_AVAILABLE)
}

/// A session (not a writer) holding a lock that makes the writer's batches wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: i32,
    pub user: Option<String>,
    pub application: Option<String>,
    /// `table mode` pairs, e.g. `streamers RowShareLock`.
    pub locks: String,
}

/// One line whatever the names hold: the user and application (up to 63 bytes each in
/// PostgreSQL, and any characters) are quoted with their control characters escaped.
impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} (user {:?}, application {:?}: {})",
            self.pid,
            self.user.as_deref().unwrap_or("?"),
            self.application.as_deref().unwrap_or(""),
            self.locks
        )
    }
}

/// Lock holders on one line (for a log line, `/healthz`, `kick-admin status`).
pub fn holders_line(holders: &[LockHolder]) -> String {
    if holders.is_empty() {
        return "none now (the lock was released)".to_string();
    }
    holders
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Sessions other than writers holding a lock on `streamers` stronger than a read (a row lock
/// from `SELECT … FOR UPDATE`, an update) or one on `raw_events` that stops a row-locking claim
/// (`LOCK TABLE`, a migration): what a writer's batch can wait for. PostgreSQL shows every role
/// the pid, user and application of every session (what they run only to their own role or a
/// monitoring one).
pub async fn lock_holders(client: &Client) -> Result<Vec<LockHolder>, DbError> {
    let rows = client
        .query(
            "SELECT l.pid, a.usename::text AS usename, a.application_name::text AS application_name,
                    string_agg(DISTINCT l.relation::regclass::text || ' ' || l.mode, ', ') AS locks
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
               AND a.application_name IS DISTINCT FROM 'kick-writer'
               AND ((l.relation = 'streamers'::regclass AND l.mode <> 'AccessShareLock')
                 OR (l.relation = 'raw_events'::regclass AND l.mode IN
                     ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')))
             GROUP BY l.pid, a.usename, a.application_name
             ORDER BY l.pid LIMIT 5",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| LockHolder {
            pid: r.get("pid"),
            user: r.get("usename"),
            application: r.get("application_name"),
            locks: r.get("locks"),
        })
        .collect())
}

/// Deletes processed staged rows older than `age` in batches of 5,000, so no one transaction
/// holds many row locks. Pending rows are never deleted; history is untouched.
pub async fn prune_processed(client: &Client, age: std::time::Duration) -> Result<u64, DbError> {
    let secs = age.as_secs_f64();
    let mut total = 0;
    loop {
        let n = client
            .execute(
                "DELETE FROM raw_events WHERE id IN (
                    SELECT id FROM raw_events
                    WHERE processed_at IS NOT NULL AND processed_at < now() - make_interval(secs => $1)
                    LIMIT 5000)",
                &[&secs],
            )
            .await?;
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_holder_prints_on_one_line_whatever_its_names_hold() {
        let h = LockHolder {
            pid: 4242,
            user: Some("ops\nERROR fake line".into()),
            application: Some("psql\u{1b}[31m\"red\"\r\n".into()),
            locks: "streamers RowShareLock".into(),
        };
        let line = h.to_string();
        assert!(
            !line.contains('\n') && !line.contains('\r') && !line.contains('\u{1b}'),
            "{line}"
        );
        assert!(
            line.starts_with("pid 4242 (user \"ops\\nERROR fake line\""),
            "{line}"
        );
        assert!(line.ends_with(": streamers RowShareLock)"), "{line}");
        let none = LockHolder {
            user: None,
            application: None,
            ..h
        };
        assert_eq!(
            none.to_string(),
            "pid 4242 (user \"?\", application \"\": streamers RowShareLock)"
        );
    }
}
