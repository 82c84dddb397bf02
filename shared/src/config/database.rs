//! Database connection settings, resolved the way libpq (and so `psql`) resolves them, so that
//! what works with `psql` works here.
//!
//! Each parameter comes from the first of: the per-service user (`COLLECTOR_DATABASE_USER`, …,
//! user only), `DATABASE_URL`, the `DATABASE_*` variable, the standard `PG*` variable, libpq's
//! default. The password also comes from the systemd credential `database-password` (after
//! `DATABASE_PASSWORD`) and, last, from the password file (`PGPASSFILE` or `~/.pgpass`).
//!
//! `sslmode` has libpq's meaning; see [`SslMode`]. Unix-socket connections never use TLS.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::pgpass;
use super::{ConfigError, Service, Source, shown};
use crate::tls::Verification;

/// libpq's default socket directory on Debian: the host when none is given.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// How TLS is used for the database connection (`sslmode`), with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain text first; TLS (not verified) only if the server refuses a plain connection.
    Allow,
    /// TLS without verification when the server offers it, else plain text (the default).
    Prefer,
    /// TLS, not verified; but with a root certificate the chain is verified, as `VerifyCa`.
    Require,
    /// TLS; the certificate chain is verified against the root certificate, not the host name.
    VerifyCa,
    /// TLS; the chain and the host name are verified.
    VerifyFull,
}

impl SslMode {
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(text: &str) -> Option<SslMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The roots a server certificate is verified against (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// The web's public roots (`sslrootcert=system`); implies `verify-full`.
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCert::System => f.write_str("system"),
            RootCert::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Database connection settings. Debug output never shows the password.
#[derive(Clone)]
pub struct DbConfig {
    /// What tokio-postgres connects with: host, port, user, password, `sslmode` as tokio-postgres
    /// understands it (verification is in the TLS connector), timeouts and startup options.
    pub pg: tokio_postgres::Config,
    sslmode: SslMode,
    sslrootcert: Option<RootCert>,
    /// What `sslmode` and `sslrootcert` make of the server's certificate.
    verification: Verification,
    /// The shared TLS configuration that does this verification.
    tls: MakeRustlsConnect,
    /// The startup `options` given in `DATABASE_URL`: session timeouts are added to them.
    base_options: Option<String>,
    timeouts: SessionTimeouts,
    /// Things worth a warning in the log once logging is set up (e.g. an ignored password file).
    warnings: Vec<String>,
}

/// Server-side limits for the sessions opened with a [`DbConfig`]; `None` leaves the server's
/// (or role's) setting alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SessionTimeouts {
    statement: Option<Duration>,
    lock: Option<Duration>,
    idle_in_transaction: Option<Duration>,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("target", &self.describe())
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("password", &self.pg.get_password().map(|_| "[REDACTED]"))
            .field("options", &self.pg.get_options())
            .finish()
    }
}

impl DbConfig {
    /// Settings without a per-service user (kick-admin, tests).
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        Self::from_source_for(src, Service::Admin)
    }

    /// Settings for `service`: its own database user variable, if set, wins over every other.
    pub fn from_source_for(src: &Source, service: Service) -> Result<Self, ConfigError> {
        // DATABASE_PORT is checked even when DATABASE_URL names a port: it must not be wrong
        // silently. The PG* variables are checked only when used, as libpq does.
        let fallback_ports = match ports(src, "DATABASE_PORT")? {
            Some(p) => Some(p),
            None => ports(src, "PGPORT")?,
        };
        // A URL's hosts without a port take a single fallback port (a list is for the hosts of
        // DATABASE_HOST / PGHOST).
        let fallback_port = fallback_ports
            .as_deref()
            .and_then(|p| (p.len() == 1).then(|| p[0]));
        let url = match src.get("DATABASE_URL") {
            Some(text) => Some(ConnString::parse(text.trim(), fallback_port)?),
            None => None,
        };
        let (mut pg, url_tls) = match url {
            Some(c) => (c.pg, c.tls),
            None => (tokio_postgres::Config::new(), TlsParams::default()),
        };
        let base_options = pg.get_options().map(str::to_owned);

        if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
            // Several hosts, comma-separated, as libpq takes them (a primary and its standbys:
            // tried in order; `target_session_attrs=read-write` skips the read-only ones).
            let (var, hosts) = first(src, &["DATABASE_HOST", "PGHOST"])
                .unwrap_or(("DATABASE_HOST", DEFAULT_SOCKET_DIR));
            let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
            if hosts.iter().any(|h| h.is_empty()) {
                return Err(ConfigError::new(var, "an empty host in the list"));
            }
            for h in &hosts {
                pg.host(*h);
            }
            match fallback_ports.as_deref() {
                None => {
                    pg.port(5432);
                }
                Some([one]) => {
                    pg.port(*one);
                }
                Some(list) if list.len() == hosts.len() => {
                    for p in list {
                        pg.port(*p);
                    }
                }
                Some(list) => {
                    return Err(ConfigError::new(
                        "DATABASE_PORT",
                        format!(
                            "{} ports for {} hosts (give one port, or one per host)",
                            list.len(),
                            hosts.len()
                        ),
                    ));
                }
            }
        }

        if pg.get_ports().is_empty() {
            pg.port(fallback_port.unwrap_or(5432));
        }

        if let Some((var, text)) = first(
            src,
            &["DATABASE_TARGET_SESSION_ATTRS", "PGTARGETSESSIONATTRS"],
        ) {
            use tokio_postgres::config::TargetSessionAttrs;
            pg.target_session_attrs(match text.trim() {
                "any" => TargetSessionAttrs::Any,
                "read-write" => TargetSessionAttrs::ReadWrite,
                other => {
                    return Err(ConfigError::new(
                        var,
                        format!("'{}' is not one of any, read-write", shown(other)),
                    ));
                }
            });
        }

        if pg.get_dbname().is_none() {
            let (_, name) = first(src, &["DATABASE_NAME", "PGDATABASE"]).ok_or_else(|| {
                let mut message =
                    "not set (set DATABASE_NAME or PGDATABASE, or a DATABASE_URL that names the database)"
                        .to_owned();
                if let Some(hint) = src.unreadable_env_file_hint() {
                    message.push_str("; ");
                    message.push_str(&hint);
                }
                ConfigError::new("DATABASE_NAME", message)
            })?;
            pg.dbname(name.trim());
        }

        let service_user = service
            .database_user_var()
            .and_then(|var| src.get(var))
            .map(str::trim);
        if let Some(user) = service_user {
            pg.user(user);
        } else if pg.get_user().is_none() {
            let user = match first(src, &["DATABASE_USER", "PGUSER"]) {
                Some((_, u)) => u.trim().to_owned(),
                None => os_user_name(src).ok_or_else(|| {
                    ConfigError::new(
                        "DATABASE_USER",
                        "not set, and the operating system's user name is unknown",
                    )
                })?,
            };
            pg.user(user);
        }

        let mut warnings = Vec::new();
        if pg.get_password().is_none()
            && let Some(pw) = password(src, &pg, &mut warnings)
        {
            pg.password(pw);
        }

        let TlsChoice {
            sslmode,
            sslrootcert,
            verification,
            tls,
        } = TlsChoice::resolve(src, url_tls)?;
        pg.ssl_mode(if unix_sockets_only(&pg) {
            // PostgreSQL does not speak TLS on Unix sockets; libpq does not ask.
            tokio_postgres::config::SslMode::Disable
        } else {
            match sslmode {
                // `allow` starts in plain text; `db::connect` retries with TLS when refused.
                SslMode::Disable | SslMode::Allow => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            }
        });

        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        // A dead peer (a crashed host, a dropped NAT entry) is noticed in about a minute, idle
        // or not, instead of after the kernel's two hours of silence or fifteen retransmissions.
        pg.keepalives(true);
        pg.keepalives_idle(Duration::from_secs(30));
        pg.keepalives_interval(Duration::from_secs(10));
        pg.keepalives_retries(3);
        if pg.get_tcp_user_timeout().is_none() {
            pg.tcp_user_timeout(Duration::from_secs(30));
        }

        Ok(Self {
            pg,
            sslmode,
            sslrootcert,
            verification,
            tls,
            base_options,
            timeouts: SessionTimeouts::default(),
            warnings,
        })
    }

    /// `user@host:port/dbname`, for messages: never includes the password.
    pub fn describe(&self) -> String {
        let host = match self.pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => match self.pg.get_hostaddrs().first() {
                Some(addr) => addr.to_string(),
                None => "localhost".into(),
            },
        };
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{}@{}:{}/{}",
            self.pg.get_user().unwrap_or("?"),
            host,
            port,
            self.pg.get_dbname().unwrap_or("?")
        )
    }

    /// How the connection is protected, for messages: `sslmode=…` (and the root certificate
    /// when one is used), or `None` for a Unix socket, where TLS does not apply.
    pub fn describe_tls(&self) -> Option<String> {
        if unix_sockets_only(&self.pg) {
            return None;
        }
        Some(match (&self.sslrootcert, &self.verification) {
            (
                Some(root),
                Verification::Chain(_) | Verification::Full(_) | Verification::FullSystem,
            ) => {
                format!("sslmode={}, sslrootcert={root}", self.sslmode)
            }
            _ => format!("sslmode={}", self.sslmode),
        })
    }

    /// [`DbConfig::describe`] followed by [`DbConfig::describe_tls`] in brackets, for errors.
    pub fn describe_with_tls(&self) -> String {
        match self.describe_tls() {
            Some(tls) => format!("{} ({tls})", self.describe()),
            None => self.describe(),
        }
    }

    /// True when the server is reached through a Unix socket (never with TLS).
    pub(crate) fn unix_socket(&self) -> bool {
        unix_sockets_only(&self.pg)
    }

    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    pub fn sslrootcert(&self) -> Option<&RootCert> {
        self.sslrootcert.as_ref()
    }

    /// Things found while loading that the operator should see in the log, such as a password
    /// file that was ignored. Never holds a secret.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The TLS connector for this configuration (cheap to clone: the configuration is shared).
    pub(crate) fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// These settings, with `statement_timeout` set for the sessions opened with them: the server
    /// cancels any statement running longer (SQLSTATE 57014). `Duration::ZERO` turns the limit
    /// off even if the role or database sets one.
    pub fn with_statement_timeout(&self, limit: Duration) -> DbConfig {
        self.with(SessionTimeouts {
            statement: Some(limit),
            ..self.timeouts
        })
    }

    /// These settings, with `lock_timeout` set: a statement waiting longer than this for a lock
    /// fails (SQLSTATE 55P03) instead of queueing behind, and in front of, everyone else.
    pub fn with_lock_timeout(&self, limit: Duration) -> DbConfig {
        self.with(SessionTimeouts {
            lock: Some(limit),
            ..self.timeouts
        })
    }

    /// These settings, with `idle_in_transaction_session_timeout` set: the server ends a session
    /// that sits idle inside a transaction for longer, releasing its locks.
    pub fn with_idle_in_transaction_timeout(&self, limit: Duration) -> DbConfig {
        self.with(SessionTimeouts {
            idle_in_transaction: Some(limit),
            ..self.timeouts
        })
    }

    /// Sets the limits through the startup packet's `options` (`-c name=value`), after any options
    /// from `DATABASE_URL`: they apply from the first statement, with no extra round trip.
    fn with(&self, timeouts: SessionTimeouts) -> DbConfig {
        let mut cfg = self.clone();
        cfg.timeouts = timeouts;
        let mut options: Vec<String> = cfg.base_options.iter().cloned().collect();
        for (name, limit) in [
            ("statement_timeout", timeouts.statement),
            ("lock_timeout", timeouts.lock),
            (
                "idle_in_transaction_session_timeout",
                timeouts.idle_in_transaction,
            ),
        ] {
            if let Some(limit) = limit {
                options.push(format!("-c {name}={}", milliseconds(limit)));
            }
        }
        cfg.pg.options(options.join(" "));
        cfg
    }
}

/// The password when the URL has none: `DATABASE_PASSWORD`, the credential
/// `database-password`, `PGPASSWORD`, then the password file.
fn password(
    src: &Source,
    pg: &tokio_postgres::Config,
    warnings: &mut Vec<String>,
) -> Option<String> {
    if let Some(pw) = src.get("DATABASE_PASSWORD") {
        return Some(pw.to_owned());
    }
    if let Some(pw) = src.credential("database-password") {
        return Some(pw.expose_secret().to_owned());
    }
    if let Some(pw) = src.get("PGPASSWORD") {
        return Some(pw.to_owned());
    }
    password_file(src, pg, warnings)
}

/// What `sslmode` and `sslrootcert` come to, with libpq's rules.
struct TlsChoice {
    sslmode: SslMode,
    sslrootcert: Option<RootCert>,
    verification: Verification,
    tls: MakeRustlsConnect,
}

impl TlsChoice {
    fn resolve(src: &Source, url: TlsParams) -> Result<TlsChoice, ConfigError> {
        let (sslmode, sslmode_var) = match url.sslmode {
            Some(m) => (Some(m), "DATABASE_URL"),
            None => match first(src, &["DATABASE_SSLMODE", "PGSSLMODE"]) {
                Some((var, text)) => (Some(parse_sslmode(var, text.trim())?), var),
                None => (None, "DATABASE_SSLMODE"),
            },
        };
        let (sslrootcert, rootcert_var) = match url.sslrootcert {
            Some(r) => (Some(r), "DATABASE_URL"),
            None => match first(src, &["DATABASE_SSLROOTCERT", "PGSSLROOTCERT"]) {
                Some((var, text)) => (Some(root_cert(text.trim())), var),
                // libpq's default root file, used when it exists.
                None => (default_root_cert(src), "DATABASE_SSLROOTCERT"),
            },
        };
        let (sslmode, verification) = match &sslrootcert {
            // As libpq: the public roots make sense only with the host name checked.
            Some(RootCert::System) => match sslmode {
                None | Some(SslMode::VerifyFull) => (SslMode::VerifyFull, Verification::FullSystem),
                Some(weak) => {
                    return Err(ConfigError::new(
                        sslmode_var,
                        format!(
                            "sslmode '{weak}' may not be used with sslrootcert=system (use verify-full)"
                        ),
                    ));
                }
            },
            Some(RootCert::File(path)) => {
                // Checked even when this sslmode does not verify, so that a wrong path shows
                // now rather than the day someone turns verification on.
                crate::tls::load_roots(path)
                    .map_err(|m| ConfigError::new(rootcert_var, format!("sslrootcert: {m}")))?;
                let sslmode = sslmode.unwrap_or(SslMode::Prefer);
                let verification = match sslmode {
                    SslMode::Disable | SslMode::Allow | SslMode::Prefer => Verification::None,
                    SslMode::Require | SslMode::VerifyCa => Verification::Chain(path.clone()),
                    SslMode::VerifyFull => Verification::Full(path.clone()),
                };
                (sslmode, verification)
            }
            None => match sslmode.unwrap_or(SslMode::Prefer) {
                m @ (SslMode::VerifyCa | SslMode::VerifyFull) => {
                    return Err(ConfigError::new(
                        sslmode_var,
                        format!(
                            "sslmode '{m}' needs a root certificate: set DATABASE_SSLROOTCERT to a PEM file of CA certificates, or to 'system' for the public web roots"
                        ),
                    ));
                }
                m => (m, Verification::None),
            },
        };
        let tls = crate::tls::connector(&verification)
            .map_err(|m| ConfigError::new(rootcert_var, format!("sslrootcert: {m}")))?;
        Ok(TlsChoice {
            sslmode,
            sslrootcert,
            verification,
            tls,
        })
    }
}

/// Whole milliseconds, the unit of PostgreSQL's timeouts; a non-zero limit is at least 1 ms
/// (0 would mean "no limit").
fn milliseconds(limit: Duration) -> u128 {
    match limit.as_millis() {
        0 if !limit.is_zero() => 1,
        ms => ms,
    }
}

/// True when every host is a Unix-socket directory: no TLS, whatever `sslmode` says.
fn unix_sockets_only(pg: &tokio_postgres::Config) -> bool {
    !pg.get_hosts().is_empty()
        && pg.get_hostaddrs().is_empty()
        && pg.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)))
}

/// The first of `vars` that is set, with its name.
fn first<'a>(src: &'a Source, vars: &[&'static str]) -> Option<(&'static str, &'a str)> {
    vars.iter().find_map(|var| src.get(var).map(|v| (*var, v)))
}

/// A port, or a comma-separated list of them (one per host, as libpq takes them).
fn ports(src: &Source, var: &'static str) -> Result<Option<Vec<u16>>, ConfigError> {
    let Some(text) = src.get(var) else {
        return Ok(None);
    };
    text.split(',')
        .map(|p| match p.trim().parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(ConfigError::new(
                var,
                format!("'{}' is not a port number (1-65535)", shown(text)),
            )),
        })
        .collect::<Result<Vec<u16>, _>>()
        .map(Some)
}

fn parse_sslmode(var: &'static str, text: &str) -> Result<SslMode, ConfigError> {
    SslMode::parse(text).ok_or_else(|| {
        let all: Vec<&str> = SslMode::ALL.iter().map(|m| m.as_str()).collect();
        ConfigError::new(
            var,
            format!("'{}' is not one of {}", shown(text), all.join(", ")),
        )
    })
}

fn root_cert(text: &str) -> RootCert {
    if text == "system" {
        RootCert::System
    } else {
        RootCert::File(PathBuf::from(text))
    }
}

/// `~/.postgresql/root.crt`, libpq's root certificate file, when it exists.
fn default_root_cert(src: &Source) -> Option<RootCert> {
    let path = PathBuf::from(src.get("HOME")?).join(".postgresql/root.crt");
    path.is_file().then_some(RootCert::File(path))
}

/// The password for `pg`'s first host from `PGPASSFILE` or `~/.pgpass`.
fn password_file(
    src: &Source,
    pg: &tokio_postgres::Config,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let path = match src.get("PGPASSFILE") {
        Some(p) => PathBuf::from(p.trim()),
        None => PathBuf::from(src.get("HOME")?).join(".pgpass"),
    };
    let (host, is_unix_socket) = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => (h.clone(), false),
        Some(Host::Unix(p)) => (p.display().to_string(), true),
        None => (pg.get_hostaddrs().first()?.to_string(), false),
    };
    let target = pgpass::Target {
        host: &host,
        is_unix_socket,
        port: pg.get_ports().first().copied().unwrap_or(5432),
        dbname: pg.get_dbname()?,
        user: pg.get_user()?,
    };
    match pgpass::lookup(&path, &target) {
        pgpass::Lookup::Found(pw) if !pw.is_empty() => Some(pw),
        pgpass::Lookup::Found(_) | pgpass::Lookup::NotFound => None,
        pgpass::Lookup::Ignored(why) => {
            warnings.push(why);
            None
        }
    }
}

/// The name of the user this process runs as (libpq's default database user): the owner of
/// `/proc/self` looked up in `/etc/passwd`, else `$USER`.
fn os_user_name(src: &Source) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let from_passwd = || {
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let line_uid: u32 = fields.nth(1)?.parse().ok()?;
            (line_uid == uid).then(|| name.to_owned())
        })
    };
    from_passwd().or_else(|| src.get("USER").map(|u| u.trim().to_owned()))
}

/// The TLS parameters of a connection string that tokio-postgres does not understand.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    sslmode: Option<SslMode>,
    sslrootcert: Option<RootCert>,
}

/// `DATABASE_URL`, parsed: libpq's `sslmode` values and `sslrootcert` are taken out first, since
/// tokio-postgres refuses `verify-ca`, `verify-full`, `allow` and any root certificate.
struct ConnString {
    pg: tokio_postgres::Config,
    tls: TlsParams,
}

impl ConnString {
    /// `default_port` is for the hosts of a URL that name none (tokio-postgres would take 5432).
    fn parse(text: &str, default_port: Option<u16>) -> Result<ConnString, ConfigError> {
        let (rest, raw) = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let (rest, raw) = split_url(text);
            match default_port {
                Some(port) => (with_default_port(&rest, port), raw),
                None => (rest, raw),
            }
        } else {
            split_keywords(text).unwrap_or_else(|| (text.to_owned(), RawTlsParams::default()))
        };
        let pg = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            // The string may hold a password: say what is wrong without echoing it.
            ConfigError::new(
                "DATABASE_URL",
                format!("not a valid postgres URL or key=value string ({e})"),
            )
        })?;
        let sslmode =
            match raw.sslmode {
                Some(text) => Some(parse_sslmode("DATABASE_URL", &text).map_err(|e| {
                    ConfigError::new("DATABASE_URL", format!("sslmode {}", e.message))
                })?),
                None => None,
            };
        Ok(ConnString {
            pg,
            tls: TlsParams {
                sslmode,
                sslrootcert: raw.sslrootcert.as_deref().map(root_cert),
            },
        })
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct RawTlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

impl RawTlsParams {
    /// Keeps `value` if `key` is one of ours; `false` for any other key.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            _ => return false,
        }
        true
    }
}

/// `postgres://…?a=b&sslmode=x` → the URL without our parameters, and their decoded values.
/// Like tokio-postgres, the credentials end at the first `@` and the query starts at the first
/// `?` after them.
fn split_url(url: &str) -> (String, RawTlsParams) {
    let after_creds = url.find('@').map_or(0, |i| i + 1);
    let Some(q) = url[after_creds..].find('?').map(|i| i + after_creds) else {
        return (url.to_owned(), RawTlsParams::default());
    };
    let mut raw = RawTlsParams::default();
    let kept: Vec<&str> = url[q + 1..]
        .split('&')
        .filter(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            !raw.take(&percent_decode(key), percent_decode(value))
        })
        .collect();
    let mut rest = url[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    (rest, raw)
}

/// The URL with `:port` added to each host that has none (`postgres://a,b:6000/db` →
/// `postgres://a:5433,b:6000/db`). A URL without hosts is left alone.
fn with_default_port(url: &str, port: u16) -> String {
    let start = url
        .find('@')
        .map_or_else(|| url.find("://").map_or(0, |i| i + 3), |i| i + 1);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| i + start);
    let hosts = &url[start..end];
    if hosts.is_empty() {
        return url.to_owned();
    }
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|chunk| {
            // `[::1]:5432` or `[::1]`; `host:5432` or `host`.
            let has_port = match chunk.strip_prefix('[') {
                Some(rest) => rest
                    .split_once(']')
                    .is_some_and(|(_, p)| p.starts_with(':')),
                None => chunk.contains(':'),
            };
            if has_port || chunk.is_empty() {
                chunk.to_owned()
            } else {
                format!("{chunk}:{port}")
            }
        })
        .collect();
    format!("{}{}{}", &url[..start], hosts.join(","), &url[end..])
}

/// `host=h sslmode='verify-full'` → the string without our pairs, and their values. `None` when
/// the string does not tokenize; tokio-postgres then reports what is wrong with it.
fn split_keywords(text: &str) -> Option<(String, RawTlsParams)> {
    let mut raw = RawTlsParams::default();
    let mut kept = Vec::new();
    let mut it = text.char_indices().peekable();
    loop {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = it.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        it.next_if(|(_, c)| *c == '=')?;
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next()? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(it.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(it.next()?.1);
                } else {
                    value.push(c);
                }
            }
        }
        let end = it.peek().map_or(text.len(), |&(i, _)| i);
        if !raw.take(&key, value) {
            kept.push(&text[start..end]);
        }
    }
    Some((kept.join(" "), raw))
}

/// `%XX` decoding, as tokio-postgres decodes URL parts (`+` stays a plus).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA certificate (its key was thrown away): only loaded, never used to verify.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBrzCCAVWgAwIBAgIUehrxILFhdpmZLeucWY/qzUsbEwQwCgYIKoZIzj0EAwIw
JDEiMCAGA1UEAwwZa2ljay1tb25pdG9yIHVuaXQtdGVzdCBDQTAgFw0yNjExMjky
MDA5NTRaGA8yMTI2MTEwNTIwMDk1NFowJDEiMCAGA1UEAwwZa2ljay1tb25pdG9y
IHVuaXQtdGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABCO/RNGBCCOI
YPkiVCsg+PIxJzWzbgnyzJ942n257AqY2H5sZrymwscRmeAbaBEUUD8nUnX6Ivwn
VgZ/0o8VJ6ijYzBhMB0GA1UdDgQWBBSkbHD1msVJg/z2T+xtfPvTyQHUrzAfBgNV
HSMEGDAWgBSkbHD1msVJg/z2T+xtfPvTyQHUrzAPBgNVHRMBAf8EBTADAQH/MA4G
A1UdDwEB/wQEAwICBDAKBggqhkjOPQQDAgNIADBFAiEAv4iA/rw4W7yOoqy9GrmU
n/kDNkE9cEmel+v+ouBuM2wCIAVVa67s6LR5G/AblZWbMPB995qV8XSdO6bnKit0
XoBe
-----END CERTIFICATE-----
";

    /// The test CA in a file of its own (tests run in parallel).
    fn ca_file() -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "kick-unit-ca-{}-{:x}.pem",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, TEST_CA).unwrap();
        path
    }

    fn tcp(extra: &[(&str, &str)]) -> Source {
        let mut src =
            Source::from_pairs([("DATABASE_HOST", "db.example"), ("DATABASE_NAME", "kick")]);
        for (k, v) in extra {
            src.set(*k, *v);
        }
        src
    }

    #[test]
    fn urls_lose_only_the_tls_parameters() {
        let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            (
                "postgres://u:p@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
                "postgres://u:p@h/db?application_name=x",
                Some("verify-full"),
                Some("/etc/ca.pem"),
            ),
            (
                "postgres://u@h/db?sslmode=allow",
                "postgres://u@h/db",
                Some("allow"),
                None,
            ),
            ("postgresql://h/db", "postgresql://h/db", None, None),
            // A `?` in the password is part of the credentials, as tokio-postgres reads them.
            (
                "postgres://u:p?w@h/db?sslmode=require",
                "postgres://u:p?w@h/db",
                Some("require"),
                None,
            ),
        ];
        for (url, rest, mode, root) in cases {
            let (got, raw) = split_url(url);
            assert_eq!(got, *rest, "{url}");
            assert_eq!(raw.sslmode.as_deref(), *mode, "{url}");
            assert_eq!(raw.sslrootcert.as_deref(), *root, "{url}");
        }
        assert_eq!(percent_decode("%2Fa%2fb%zz%4"), "/a/b%zz%4");
    }

    #[test]
    fn url_hosts_without_a_port_get_the_fallback() {
        let cases = [
            ("postgres://u:p@h/db", "postgres://u:p@h:7000/db"),
            ("postgres://h", "postgres://h:7000"),
            (
                "postgres://h?application_name=x",
                "postgres://h:7000?application_name=x",
            ),
            ("postgres://a,b:6000/db", "postgres://a:7000,b:6000/db"),
            ("postgres://[::1]/db", "postgres://[::1]:7000/db"),
            ("postgres://[::1]:5/db", "postgres://[::1]:5/db"),
            ("postgres:///db", "postgres:///db"),
            ("postgres://u@/db", "postgres://u@/db"),
        ];
        for (url, want) in cases {
            assert_eq!(with_default_port(url, 7000), want, "{url}");
        }
        let src = Source::from_pairs([
            ("DATABASE_URL", "postgres://u@h/kick"),
            ("DATABASE_PORT", "7000"),
        ]);
        assert_eq!(DbConfig::from_source(&src).unwrap().pg.get_ports(), &[7000]);
        // With a port in the URL, DATABASE_PORT does not override it (but is still checked).
        let src = Source::from_pairs([
            ("DATABASE_URL", "postgres://u@h:6543/kick"),
            ("DATABASE_PORT", "7000"),
        ]);
        assert_eq!(DbConfig::from_source(&src).unwrap().pg.get_ports(), &[6543]);
    }

    #[test]
    fn keyword_strings_lose_only_the_tls_parameters() {
        let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            (
                "host=h sslmode=verify-ca dbname=d",
                "host=h dbname=d",
                Some("verify-ca"),
                None,
            ),
            (
                r"host = h  sslrootcert = '/a b/c\'a.pem' password='x y' sslmode= verify-full",
                "host = h password='x y'",
                Some("verify-full"),
                Some("/a b/c'a.pem"),
            ),
            (r"dbname=a\ b", r"dbname=a\ b", None, None),
        ];
        for (text, rest, mode, root) in cases {
            let (got, raw) = split_keywords(text).unwrap();
            assert_eq!(got, *rest, "{text}");
            assert_eq!(raw.sslmode.as_deref(), *mode, "{text}");
            assert_eq!(raw.sslrootcert.as_deref(), *root, "{text}");
        }
        assert!(split_keywords("host=h sslmode='unterminated").is_none());
        assert!(split_keywords("host h").is_none());
    }

    #[test]
    fn sslmodes_have_libpq_meanings() {
        use tokio_postgres::config::SslMode as Pg;
        let ca = ca_file();
        let ca_path = ca.to_str().unwrap();
        let chain = Verification::Chain(ca.clone());
        let full = Verification::Full(ca.clone());
        let cases: &[(Option<&str>, Option<&str>, SslMode, Pg, Verification)] = &[
            (None, None, SslMode::Prefer, Pg::Prefer, Verification::None),
            (
                Some("disable"),
                None,
                SslMode::Disable,
                Pg::Disable,
                Verification::None,
            ),
            (
                Some("allow"),
                None,
                SslMode::Allow,
                Pg::Disable,
                Verification::None,
            ),
            (
                Some("prefer"),
                Some(ca_path),
                SslMode::Prefer,
                Pg::Prefer,
                Verification::None,
            ),
            (
                None,
                Some(ca_path),
                SslMode::Prefer,
                Pg::Prefer,
                Verification::None,
            ),
            (
                Some("require"),
                None,
                SslMode::Require,
                Pg::Require,
                Verification::None,
            ),
            // With a root certificate, require verifies the chain as verify-ca (libpq).
            (
                Some("require"),
                Some(ca_path),
                SslMode::Require,
                Pg::Require,
                chain.clone(),
            ),
            (
                Some("verify-ca"),
                Some(ca_path),
                SslMode::VerifyCa,
                Pg::Require,
                chain,
            ),
            (
                Some("verify-full"),
                Some(ca_path),
                SslMode::VerifyFull,
                Pg::Require,
                full,
            ),
            (
                None,
                Some("system"),
                SslMode::VerifyFull,
                Pg::Require,
                Verification::FullSystem,
            ),
            (
                Some("verify-full"),
                Some("system"),
                SslMode::VerifyFull,
                Pg::Require,
                Verification::FullSystem,
            ),
        ];
        for (mode, root, want_mode, want_pg, want_verification) in cases {
            let mut src = tcp(&[]);
            if let Some(m) = mode {
                src.set("DATABASE_SSLMODE", *m);
            }
            if let Some(r) = root {
                src.set("DATABASE_SSLROOTCERT", *r);
            }
            let c =
                DbConfig::from_source(&src).unwrap_or_else(|e| panic!("{mode:?} {root:?}: {e}"));
            assert_eq!(c.sslmode(), *want_mode, "{mode:?} {root:?}");
            assert_eq!(c.pg.get_ssl_mode(), *want_pg, "{mode:?} {root:?}");
            assert_eq!(c.verification, *want_verification, "{mode:?} {root:?}");
        }
        std::fs::remove_file(ca).unwrap();
    }

    #[test]
    fn impossible_tls_settings_are_named() {
        let cases: &[(&[(&str, &str)], &str, &str)] = &[
            (
                &[("DATABASE_SSLMODE", "verify-ca")],
                "DATABASE_SSLMODE",
                "needs a root certificate",
            ),
            (
                &[("PGSSLMODE", "verify-full")],
                "PGSSLMODE",
                "needs a root certificate",
            ),
            (
                &[
                    ("DATABASE_SSLMODE", "require"),
                    ("DATABASE_SSLROOTCERT", "system"),
                ],
                "DATABASE_SSLMODE",
                "use verify-full",
            ),
            (
                &[
                    ("DATABASE_SSLMODE", "verify-ca"),
                    ("PGSSLROOTCERT", "system"),
                ],
                "DATABASE_SSLMODE",
                "use verify-full",
            ),
            (
                &[("DATABASE_SSLROOTCERT", "/nonexistent/ca.pem")],
                "DATABASE_SSLROOTCERT",
                "cannot read /nonexistent/ca.pem",
            ),
            (
                &[("PGSSLROOTCERT", "/nonexistent/ca.pem")],
                "PGSSLROOTCERT",
                "cannot read",
            ),
            (
                &[("DATABASE_SSLMODE", "verify_full")],
                "DATABASE_SSLMODE",
                "verify-full",
            ),
            (&[("PGSSLMODE", "on")], "PGSSLMODE", "is not one of"),
            (&[("PGPORT", "0")], "PGPORT", "port number"),
        ];
        for (vars, var, message) in cases {
            let e = DbConfig::from_source(&tcp(vars)).unwrap_err();
            assert_eq!(e.var, *var, "{vars:?}: {e}");
            assert!(e.message.contains(message), "{vars:?}: {e}");
        }
        let src = Source::from_pairs([(
            "DATABASE_URL",
            "postgres://u:url-secret@h/db?sslmode=sometimes",
        )]);
        let e = DbConfig::from_source(&src).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        assert!(e.message.contains("sslmode 'sometimes'"), "{e}");
        assert!(!e.to_string().contains("url-secret"), "{e}");
    }

    #[test]
    fn several_hosts_as_libpq_takes_them() {
        use tokio_postgres::config::{Host, TargetSessionAttrs};
        let c = DbConfig::from_source(&Source::from_pairs([
            ("DATABASE_HOST", "/run/a, 10.0.0.2"),
            ("DATABASE_PORT", "5433,5434"),
            ("DATABASE_NAME", "kick"),
            ("DATABASE_USER", "u"),
            ("DATABASE_TARGET_SESSION_ATTRS", "read-write"),
        ]))
        .unwrap();
        assert_eq!(
            c.pg.get_hosts(),
            &[Host::Unix("/run/a".into()), Host::Tcp("10.0.0.2".into())]
        );
        assert_eq!(c.pg.get_ports(), &[5433, 5434]);
        assert_eq!(
            c.pg.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        // One port for every host.
        let c = DbConfig::from_source(&Source::from_pairs([
            ("PGHOST", "h1,h2,h3"),
            ("PGPORT", "6000"),
            ("PGDATABASE", "kick"),
            ("PGUSER", "u"),
        ]))
        .unwrap();
        assert_eq!(c.pg.get_ports(), &[6000]);
        assert_eq!(c.pg.get_hosts().len(), 3);
        // Mismatched lists, empty hosts and unknown attributes are refused by name.
        for (pairs, var) in [
            (
                vec![("DATABASE_HOST", "a,b"), ("DATABASE_PORT", "1,2,3")],
                "DATABASE_PORT",
            ),
            (vec![("DATABASE_HOST", "a,,b")], "DATABASE_HOST"),
            (vec![("DATABASE_PORT", "1,x")], "DATABASE_PORT"),
            (
                vec![("PGTARGETSESSIONATTRS", "primary-ish")],
                "PGTARGETSESSIONATTRS",
            ),
        ] {
            let mut pairs = pairs;
            pairs.extend([("DATABASE_NAME", "kick"), ("DATABASE_USER", "u")]);
            let e = DbConfig::from_source(&Source::from_pairs(pairs.clone())).unwrap_err();
            assert_eq!(e.var, var, "{pairs:?}: {e}");
        }
        // The URL form carries it too (tokio-postgres parses it).
        let c = DbConfig::from_source(&Source::from_pairs([(
            "DATABASE_URL",
            "postgres://u@h1:5433,h2:5434/kick?target_session_attrs=read-write",
        )]))
        .unwrap();
        assert_eq!(c.pg.get_ports(), &[5433, 5434]);
        assert_eq!(
            c.pg.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn url_tls_parameters_work_in_both_forms() {
        let ca = ca_file();
        let url = format!(
            "postgres://u:pw@localhost:6543/kick?sslmode=verify-full&sslrootcert={}",
            ca.display()
        );
        let c =
            DbConfig::from_source(&Source::from_pairs([("DATABASE_URL", url.as_str())])).unwrap();
        assert_eq!(c.sslmode(), SslMode::VerifyFull);
        assert_eq!(c.verification, Verification::Full(ca.clone()));
        assert_eq!(c.describe(), "u@localhost:6543/kick");
        assert_eq!(
            c.describe_tls().unwrap(),
            format!("sslmode=verify-full, sslrootcert={}", ca.display())
        );
        let kv = format!(
            "host=localhost dbname=kick user=u sslmode=verify-ca sslrootcert='{}'",
            ca.display()
        );
        let c =
            DbConfig::from_source(&Source::from_pairs([("DATABASE_URL", kv.as_str())])).unwrap();
        assert_eq!(c.verification, Verification::Chain(ca.clone()));
        // The URL's sslmode wins over DATABASE_SSLMODE (which fills in what a URL leaves out).
        let c = DbConfig::from_source(&Source::from_pairs([
            ("DATABASE_URL", "postgres://u@h/kick?sslmode=disable"),
            ("DATABASE_SSLMODE", "require"),
        ]))
        .unwrap();
        assert_eq!(c.sslmode(), SslMode::Disable);
        std::fs::remove_file(ca).unwrap();
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        for mode in ["prefer", "require", "allow"] {
            let src = Source::from_pairs([
                ("DATABASE_HOST", "/var/run/postgresql"),
                ("DATABASE_NAME", "kick"),
                ("DATABASE_SSLMODE", mode),
            ]);
            let c = DbConfig::from_source(&src).unwrap();
            assert_eq!(
                c.pg.get_ssl_mode(),
                tokio_postgres::config::SslMode::Disable,
                "{mode}"
            );
            assert!(c.unix_socket());
            assert_eq!(c.describe_tls(), None);
        }
    }

    #[test]
    fn every_connection_has_keepalives_and_timeouts() {
        let c = DbConfig::from_source(&tcp(&[])).unwrap();
        assert_eq!(c.pg.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert!(c.pg.get_keepalives());
        assert_eq!(c.pg.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(
            c.pg.get_keepalives_interval(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(c.pg.get_keepalives_retries(), Some(3));
        assert_eq!(c.pg.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
        assert_eq!(c.pg.get_options(), None);
    }

    #[test]
    fn session_timeouts_go_in_the_startup_options() {
        let c = DbConfig::from_source(&tcp(&[])).unwrap();
        let t = c
            .with_statement_timeout(Duration::from_secs(5))
            .with_lock_timeout(Duration::from_millis(1500));
        assert_eq!(
            t.pg.get_options(),
            Some("-c statement_timeout=5000 -c lock_timeout=1500")
        );
        // The original is untouched; a second value replaces the first.
        assert_eq!(c.pg.get_options(), None);
        let t = t
            .with_statement_timeout(Duration::from_secs(30))
            .with_idle_in_transaction_timeout(Duration::from_micros(10));
        assert_eq!(
            t.pg.get_options(),
            Some(
                "-c statement_timeout=30000 -c lock_timeout=1500 -c idle_in_transaction_session_timeout=1"
            )
        );
        let t = c.with_statement_timeout(Duration::ZERO);
        assert_eq!(t.pg.get_options(), Some("-c statement_timeout=0"));
        // Options from the URL are kept, first.
        let src = Source::from_pairs([(
            "DATABASE_URL",
            "postgres://u@h/kick?options=-c%20search_path%3Dkick",
        )]);
        let c = DbConfig::from_source(&src).unwrap();
        let t = c.with_lock_timeout(Duration::from_secs(2));
        assert_eq!(
            t.pg.get_options(),
            Some("-c search_path=kick -c lock_timeout=2000")
        );
    }
}
