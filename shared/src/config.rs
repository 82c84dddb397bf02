//! Configuration from `.env` and the environment (the environment wins). Every variable name here
//! is a contract with operators; a bad or missing value is a [`ConfigError`] naming the variable,
//! which the binaries turn into exit code 78.
//!
//! Settings are read from a [`Source`] rather than from `std::env` directly so that tests can
//! supply their own values without touching the process environment.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::exit::{Classify, Exit};

pub const DEFAULT_API_URL: &str = "https://api.kick.com";
pub const DEFAULT_AUTH_URL: &str = "https://id.kick.com";
pub const DEFAULT_WEB_URL: &str = "https://web.kick.com";
pub const DEFAULT_PUSHER_URL: &str = "wss://ws-us2.pusher.com/app/32cbd69e4b950bf97679?protocol=7&client=js&version=8.4.0&flash=false";

/// A setting that is missing or cannot be used. The message always starts with the variable.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

impl Classify for ConfigError {
    fn exit(&self) -> Exit {
        Exit::Config
    }
}

/// Where settings come from: the process environment over `.env`, or a map in tests.
#[derive(Clone, Default)]
pub struct Source {
    vars: HashMap<String, String>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be secrets: only the names are shown.
        let mut keys: Vec<_> = self.vars.keys().collect();
        keys.sort();
        f.debug_struct("Source").field("vars", &keys).finish()
    }
}

impl Source {
    /// Reads `.env` from the working directory if present, then the process environment, which
    /// wins. A `.env` that exists but cannot be parsed is an error.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars = HashMap::new();
        match dotenvy::from_path_iter(".env") {
            Ok(iter) => {
                for item in iter {
                    let (k, v) =
                        item.map_err(|e| ConfigError::new(".env", format!("cannot parse: {e}")))?;
                    vars.insert(k, v);
                }
            }
            Err(e) if e.not_found() => {}
            Err(e) => return Err(ConfigError::new(".env", format!("cannot read: {e}"))),
        }
        for (k, v) in std::env::vars_os() {
            if let (Some(k), Some(v)) = (k.to_str(), v.to_str()) {
                vars.insert(k.to_owned(), v.to_owned());
            }
        }
        Ok(Self { vars })
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub fn set(&mut self, k: impl Into<String>, v: impl Into<String>) {
        self.vars.insert(k.into(), v.into());
    }

    /// The value of `var`, with empty values treated as unset.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    fn parse<T: FromStr>(
        &self,
        var: &'static str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| ConfigError::new(var, format!("'{}' is not {what}", shown(v)))),
        }
    }

    fn duration(&self, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => crate::duration::parse(v).map_err(|m| ConfigError::new(var, m)),
        }
    }

    fn url(
        &self,
        var: &'static str,
        default: &str,
        schemes: &[&str],
    ) -> Result<String, ConfigError> {
        let v = self
            .get(var)
            .unwrap_or(default)
            .trim()
            .trim_end_matches('/')
            .to_owned();
        let scheme = v.split("://").next().unwrap_or("");
        if !v.contains("://") || !schemes.contains(&scheme) {
            return Err(ConfigError::new(
                var,
                format!(
                    "'{}' is not a URL with scheme {}",
                    shown(&v),
                    schemes.join(" or ")
                ),
            ));
        }
        Ok(v)
    }
}

/// Values echoed in error messages are cut short: they may be long or sensitive-adjacent.
fn shown(v: &str) -> String {
    let mut s: String = v.chars().take(40).collect();
    if v.chars().count() > 40 {
        s.push('…');
    }
    s
}

/// How TLS is used for the database connection (`DATABASE_SSLMODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
}

/// Database connection settings. Debug output never shows the password.
#[derive(Clone)]
pub struct DbConfig {
    pub pg: tokio_postgres::Config,
    pub sslmode: SslMode,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("target", &self.describe())
            .field("sslmode", &self.sslmode)
            .field("password", &self.pg.get_password().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl DbConfig {
    /// `user@host:port/dbname`, for messages: never includes the password.
    pub fn describe(&self) -> String {
        let host = match self.pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
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

    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let sslmode = match src.get("DATABASE_SSLMODE").map(str::trim) {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some(other) => {
                return Err(ConfigError::new(
                    "DATABASE_SSLMODE",
                    format!("'{}' is not one of disable, prefer, require", shown(other)),
                ));
            }
        };
        let mut pg = if let Some(url) = src.get("DATABASE_URL") {
            let mut pg = tokio_postgres::Config::from_str(url.trim()).map_err(|e| {
                // The URL may hold a password: say what is wrong without echoing it.
                ConfigError::new(
                    "DATABASE_URL",
                    format!("not a valid postgres URL or key=value string ({e})"),
                )
            })?;
            if pg.get_hosts().is_empty() {
                pg.host("localhost");
            }
            if pg.get_dbname().is_none() {
                return Err(ConfigError::new("DATABASE_URL", "has no database name"));
            }
            pg
        } else {
            let host = src.get("DATABASE_HOST").ok_or_else(|| {
                ConfigError::new(
                    "DATABASE_URL",
                    "not set (set DATABASE_URL, or DATABASE_HOST and DATABASE_NAME)",
                )
            })?;
            let mut pg = tokio_postgres::Config::new();
            pg.host(host.trim());
            let port: u16 = src.parse("DATABASE_PORT", 5432, "a port number (1-65535)")?;
            if port == 0 {
                return Err(ConfigError::new(
                    "DATABASE_PORT",
                    "'0' is not a port number (1-65535)",
                ));
            }
            pg.port(port);
            let name = src
                .get("DATABASE_NAME")
                .ok_or_else(|| ConfigError::new("DATABASE_NAME", "not set"))?;
            pg.dbname(name.trim());
            let user = src
                .get("DATABASE_USER")
                .map(str::to_owned)
                .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "kick_monitor".into()));
            pg.user(user.trim());
            if let Some(pw) = src.get("DATABASE_PASSWORD") {
                pg.password(pw);
            } else if let Some(pw) = read_credential(src, "database-password") {
                pg.password(pw.expose_secret());
            }
            pg
        };
        if src.get("DATABASE_PORT").is_some() && src.get("DATABASE_URL").is_some() {
            // DATABASE_PORT alongside a URL still has to be valid: it must not be silently ignored.
            let port: u16 = src.parse("DATABASE_PORT", 5432, "a port number (1-65535)")?;
            pg.port(port);
        }
        if pg.get_user().is_none() {
            pg.user("kick_monitor");
        }
        pg.ssl_mode(match sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require => tokio_postgres::config::SslMode::Require,
        });
        pg.connect_timeout(Duration::from_secs(10));
        pg.keepalives_idle(Duration::from_secs(30));
        Ok(Self { pg, sslmode })
    }
}

/// Reads a systemd credential (`$CREDENTIALS_DIRECTORY/name`) if one was passed to the service.
fn read_credential(src: &Source, name: &str) -> Option<SecretString> {
    let dir = src.get("CREDENTIALS_DIRECTORY")?;
    let text = std::fs::read_to_string(PathBuf::from(dir).join(name)).ok()?;
    Some(SecretString::from(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

/// Which realtime transport the collector speaks (`KICK_REALTIME_TRANSPORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Auto,
    Centrifugo,
    Pusher,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Centrifugo => "centrifugo",
            Transport::Pusher => "pusher",
        }
    }
}

/// Kick endpoints and app credentials. Credentials are optional at load time: only the commands
/// that call the official API need them, via [`KickConfig::credentials`].
#[derive(Clone)]
pub struct KickConfig {
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub api_url: String,
    pub auth_url: String,
    pub web_url: String,
    pub transport: Transport,
    pub pusher_url: String,
}

impl fmt::Debug for KickConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KickConfig")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("api_url", &self.api_url)
            .field("auth_url", &self.auth_url)
            .field("web_url", &self.web_url)
            .field("transport", &self.transport)
            .field("pusher_url", &self.pusher_url)
            .finish()
    }
}

impl KickConfig {
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let transport = match src.get("KICK_REALTIME_TRANSPORT").map(str::trim) {
            None | Some("auto") => Transport::Auto,
            Some("centrifugo") => Transport::Centrifugo,
            Some("pusher") => Transport::Pusher,
            Some(other) => {
                return Err(ConfigError::new(
                    "KICK_REALTIME_TRANSPORT",
                    format!("'{}' is not one of auto, centrifugo, pusher", shown(other)),
                ));
            }
        };
        let client_secret = match src.get("KICK_CLIENT_SECRET") {
            Some(s) => Some(SecretString::from(s.to_owned())),
            None => read_credential(src, "kick-client-secret"),
        };
        Ok(Self {
            client_id: src.get("KICK_CLIENT_ID").map(|s| s.trim().to_owned()),
            client_secret,
            api_url: src.url("KICK_API_URL", DEFAULT_API_URL, &["http", "https"])?,
            auth_url: src.url("KICK_AUTH_URL", DEFAULT_AUTH_URL, &["http", "https"])?,
            web_url: src.url("KICK_WEB_URL", DEFAULT_WEB_URL, &["http", "https"])?,
            transport,
            pusher_url: src.url("KICK_PUSHER_URL", DEFAULT_PUSHER_URL, &["ws", "wss"])?,
        })
    }

    /// The app credentials, or an error naming the missing variable.
    pub fn credentials(&self) -> Result<(String, SecretString), ConfigError> {
        let id = self
            .client_id
            .clone()
            .ok_or_else(|| ConfigError::new("KICK_CLIENT_ID", "not set"))?;
        let secret = self
            .client_secret
            .clone()
            .ok_or_else(|| ConfigError::new("KICK_CLIENT_SECRET", "not set"))?;
        Ok((id, secret))
    }
}

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// Every setting the three processes read. Each process uses the parts it needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DbConfig,
    pub kick: KickConfig,
    pub log: LogConfig,
    /// Rows per staging insert (collector) and per claimed batch (writer). `BATCH_SIZE`.
    pub batch_size: usize,
    /// The key for encrypted config values: `KICK_CONFIG_KEY_FILE` or the systemd credential.
    pub config_key_file: Option<PathBuf>,
    /// `KICK_CHANNELS_PER_CONNECTION` (default 100).
    pub channels_per_connection: usize,
    /// `KICK_RECONCILE_INTERVAL` (default 300 s).
    pub reconcile_interval: Duration,
    /// `KICK_OFFLINE_GRACE` (default 0: offline is immediate).
    pub offline_grace: Duration,
    /// `KICK_RAW_RETENTION` (default 7 days): processed staged rows older than this are pruned.
    pub raw_retention: Duration,
    /// `WRITER_POLL_INTERVAL` (default 500 ms): the writer's fallback scan when no NOTIFY comes.
    pub writer_poll_interval: Duration,
    /// `METRICS_ADDR`: where the Prometheus endpoint listens; unset = no endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// `COLLECTOR_ID` (default `hostname:pid`).
    pub collector_id: Option<String>,
    /// `KICK_SILENCE_GRACE` (default 20 s): a socket silent for the protocol's ping interval plus
    /// this long is dead and reconnected.
    pub silence_grace: Duration,
    /// `KICK_TERMINAL_RETRY` (default 5 min): the wait after a terminal close code (Pusher
    /// 4000–4099, Centrifugo 3500–3999 and 4500–4999) before starting again from negotiation.
    pub terminal_retry: Duration,
    /// Where the collector keeps its spool and its slot lock: `STATE_DIRECTORY` (systemd's
    /// `StateDirectory=`; the first of several), else `$XDG_STATE_HOME/kick-monitor`, else
    /// `$HOME/.local/state/kick-monitor`, else `/var/lib/kick-monitor`.
    pub state_dir: PathBuf,
    /// `KICK_SPOOL_MAX_MB` (default 256): the spool's size limit in MiB.
    pub spool_max_bytes: u64,
    /// The environment (and `.env`) this configuration was made from: the services merge the
    /// `config` table under it again whenever the table changes.
    pub env: Source,
}

impl Config {
    /// Loads `.env` and the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Source::from_env()?)
    }

    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let level = src.get("LOG_LEVEL").unwrap_or("info").trim().to_owned();
        tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| {
            ConfigError::new(
                "LOG_LEVEL",
                format!("'{}' is not a log level or filter ({e})", shown(&level)),
            )
        })?;
        let format = match src.get("LOG_FORMAT").map(str::trim) {
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("'{}' is not one of json, text", shown(other)),
                ));
            }
        };
        let batch_size: usize = src.parse("BATCH_SIZE", 100, "a whole number from 1 to 10000")?;
        if !(1..=10_000).contains(&batch_size) {
            return Err(ConfigError::new(
                "BATCH_SIZE",
                format!("{batch_size} is not from 1 to 10000"),
            ));
        }
        // Centrifugo refuses subscriptions past a per-connection limit (its default: 128).
        let channels_per_connection: usize = src.parse(
            "KICK_CHANNELS_PER_CONNECTION",
            100,
            "a whole number from 1 to 128",
        )?;
        if !(1..=128).contains(&channels_per_connection) {
            return Err(ConfigError::new(
                "KICK_CHANNELS_PER_CONNECTION",
                format!("{channels_per_connection} is not from 1 to 128"),
            ));
        }
        let reconcile_interval =
            src.duration("KICK_RECONCILE_INTERVAL", Duration::from_secs(300))?;
        if reconcile_interval < Duration::from_secs(5) {
            return Err(ConfigError::new(
                "KICK_RECONCILE_INTERVAL",
                "must be at least 5s",
            ));
        }
        let writer_poll_interval =
            src.duration("WRITER_POLL_INTERVAL", Duration::from_millis(500))?;
        if writer_poll_interval < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "WRITER_POLL_INTERVAL",
                "must be at least 10ms",
            ));
        }
        let metrics_addr = match src.get("METRICS_ADDR") {
            None => None,
            Some(v) => Some(v.trim().parse().map_err(|_| {
                ConfigError::new(
                    "METRICS_ADDR",
                    format!("'{}' is not an address like 127.0.0.1:9101", shown(v)),
                )
            })?),
        };
        let spool_max_mb: u64 = src.parse(
            "KICK_SPOOL_MAX_MB",
            256,
            "a whole number of MiB from 1 to 1048576",
        )?;
        if !(1..=1 << 20).contains(&spool_max_mb) {
            return Err(ConfigError::new(
                "KICK_SPOOL_MAX_MB",
                format!("{spool_max_mb} is not from 1 to 1048576"),
            ));
        }
        let config_key_file = src
            .get("KICK_CONFIG_KEY_FILE")
            .map(PathBuf::from)
            .or_else(|| {
                src.get("CREDENTIALS_DIRECTORY")
                    .map(|d| PathBuf::from(d).join("kick-config-key"))
            });
        Ok(Self {
            database: DbConfig::from_source(src)?,
            kick: KickConfig::from_source(src)?,
            log: LogConfig { level, format },
            batch_size,
            config_key_file,
            channels_per_connection,
            reconcile_interval,
            offline_grace: src.duration("KICK_OFFLINE_GRACE", Duration::ZERO)?,
            raw_retention: src.duration("KICK_RAW_RETENTION", Duration::from_secs(7 * 86400))?,
            writer_poll_interval,
            metrics_addr,
            collector_id: src.get("COLLECTOR_ID").map(|s| s.trim().to_owned()),
            silence_grace: src.duration("KICK_SILENCE_GRACE", Duration::from_secs(20))?,
            terminal_retry: src.duration("KICK_TERMINAL_RETRY", Duration::from_secs(300))?,
            state_dir: state_dir(src),
            spool_max_bytes: spool_max_mb.saturating_mul(1 << 20),
            env: src.clone(),
        })
    }
}

/// The collector's state directory (see [`Config::state_dir`]).
fn state_dir(src: &Source) -> PathBuf {
    if let Some(d) = src
        .get("STATE_DIRECTORY")
        .and_then(|d| d.split(':').next())
        .filter(|d| !d.is_empty())
    {
        return PathBuf::from(d);
    }
    if let Some(d) = src.get("XDG_STATE_HOME") {
        return PathBuf::from(d).join("kick-monitor");
    }
    if let Some(h) = src.get("HOME") {
        return PathBuf::from(h).join(".local/state/kick-monitor");
    }
    PathBuf::from("/var/lib/kick-monitor")
}

/// Settings the services also read from the `config` table (set with `kick-admin config set`).
/// Precedence: environment (and `.env`) > database > default. Database and logging settings are
/// not among them: they are needed before the database can be read.
pub const DB_SETTINGS: &[&str] = &[
    "KICK_CLIENT_ID",
    "KICK_CLIENT_SECRET",
    "KICK_API_URL",
    "KICK_AUTH_URL",
    "KICK_WEB_URL",
    "KICK_REALTIME_TRANSPORT",
    "KICK_PUSHER_URL",
    "KICK_CHANNELS_PER_CONNECTION",
    "KICK_RECONCILE_INTERVAL",
    "KICK_OFFLINE_GRACE",
    "KICK_RAW_RETENTION",
    "KICK_SILENCE_GRACE",
    "KICK_TERMINAL_RETRY",
    "WRITER_POLL_INTERVAL",
    "BATCH_SIZE",
];

impl Source {
    /// Adds values from the `config` table where the environment has none. `decrypt` turns a
    /// stored secret into its plaintext.
    pub fn merge_db<E>(
        &mut self,
        rows: &[(String, String, bool)],
        mut decrypt: impl FnMut(&str, &str) -> Result<String, E>,
    ) -> Result<Vec<String>, E> {
        let mut applied = Vec::new();
        for (key, value, encrypted) in rows {
            if !DB_SETTINGS.contains(&key.as_str()) || self.get(key).is_some() {
                continue;
            }
            let v = if *encrypted {
                decrypt(key, value)?
            } else {
                value.clone()
            };
            self.vars.insert(key.clone(), v);
            applied.push(key.clone());
        }
        Ok(applied)
    }
}

/// Loads `.env` and the environment, then settings from the `config` table (see
/// [`DB_SETTINGS`]). When the database cannot be reached the environment alone is used (for
/// `kick-admin`, which reports the database's absence itself when it needs it; the services
/// wait for the database instead, see [`with_db_settings`]).
pub async fn load_with_db() -> anyhow::Result<Config> {
    let src = Source::from_env()?;
    let base = Config::from_source(&src)?;
    let client = match crate::db::connect(&base.database).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "config table not read: database unavailable; using the environment only");
            return Ok(base);
        }
    };
    match with_db_settings(&src, &client).await {
        Ok(c) => Ok(c),
        Err(e) if e.downcast_ref::<crate::db::DbError>().is_some() => {
            tracing::warn!(error = %format!("{e:#}"), "config table not read; using the environment only");
            Ok(base)
        }
        Err(e) => Err(e),
    }
}

/// The configuration: the environment `src` over the settings stored in the `config` table
/// (read through `client`) over the defaults. The service roles may read only the plaintext
/// settings (`v_config_plain`); an unmigrated database has none. A database error is returned
/// (the caller decides whether to wait); a stored value that is invalid is a [`ConfigError`].
pub async fn with_db_settings(
    src: &Source,
    client: &tokio_postgres::Client,
) -> anyhow::Result<Config> {
    // Secrets in the `config` table decrypt with the key the environment names.
    use tokio_postgres::error::SqlState;
    let base = Config::from_source(src)?;
    let rows = match client
        .query("SELECT key, value, encrypted FROM config", &[])
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            match client
                .query("SELECT key, value, encrypted FROM v_config_plain", &[])
                .await
            {
                Ok(rows) => rows,
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(base),
                Err(e) => return Err(crate::db::DbError::from(e).into()),
            }
        }
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(base),
        Err(e) => return Err(crate::db::DbError::from(e).into()),
    };
    let rows: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get("key"), r.get("value"), r.get("encrypted")))
        .collect();
    let mut src = src.clone();
    let mut key: Option<crate::crypto::ConfigKey> = None;
    let applied = src.merge_db(&rows, |k, v| {
        if key.is_none() {
            key = Some(crate::crypto::ConfigKey::load(
                base.config_key_file.as_deref(),
            )?);
        }
        key.as_ref()
            .unwrap()
            .decrypt(k, v)
            .map(|s| s.expose_secret().to_owned())
    })?;
    if !applied.is_empty() {
        tracing::debug!(settings = ?applied, "settings read from the config table");
    }
    Ok(Config::from_source(&src)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Source {
        Source::from_pairs([("DATABASE_HOST", "/tmp"), ("DATABASE_NAME", "kick")])
    }

    fn err_var(src: &Source) -> &'static str {
        Config::from_source(src).unwrap_err().var
    }

    #[test]
    fn defaults() {
        let c = Config::from_source(&base()).unwrap();
        assert_eq!(c.batch_size, 100);
        assert_eq!(c.kick.api_url, DEFAULT_API_URL);
        assert_eq!(c.kick.transport, Transport::Auto);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.offline_grace, Duration::ZERO);
        assert_eq!(c.database.pg.get_ports(), &[5432]);
        assert!(matches!(
            c.database.pg.get_hosts()[0],
            tokio_postgres::config::Host::Unix(_)
        ));
    }

    #[test]
    fn each_bad_variable_is_named() {
        let cases: &[(&str, &str)] = &[
            ("DATABASE_PORT", "abc"),
            ("DATABASE_PORT", "70000"),
            ("DATABASE_SSLMODE", "maybe"),
            ("DATABASE_URL", "postgres://u@h:notaport/db"),
            ("KICK_API_URL", "ftp://x"),
            ("KICK_AUTH_URL", "nourl"),
            ("KICK_WEB_URL", "::"),
            ("KICK_PUSHER_URL", "http://not-ws"),
            ("KICK_REALTIME_TRANSPORT", "carrier-pigeon"),
            ("LOG_LEVEL", "loud=[[["),
            ("LOG_FORMAT", "xml"),
            ("BATCH_SIZE", "0"),
            ("BATCH_SIZE", "lots"),
            ("KICK_CHANNELS_PER_CONNECTION", "-1"),
            ("KICK_RECONCILE_INTERVAL", "1s"),
            ("KICK_OFFLINE_GRACE", "soon"),
            ("KICK_RAW_RETENTION", "7y"),
            ("WRITER_POLL_INTERVAL", "1ms"),
            ("METRICS_ADDR", "everywhere"),
            ("KICK_SILENCE_GRACE", "-"),
            ("KICK_TERMINAL_RETRY", "forever"),
        ];
        for (var, value) in cases {
            let mut src = base();
            src.set(*var, *value);
            let e = Config::from_source(&src).unwrap_err();
            assert_eq!(e.var, *var, "{var}={value} gave {e}");
            assert!(
                e.to_string().contains(var),
                "message names the variable: {e}"
            );
            assert_eq!(e.exit(), Exit::Config);
        }
    }

    #[test]
    fn missing_database_settings_are_named() {
        assert_eq!(err_var(&Source::default()), "DATABASE_URL");
        assert_eq!(
            err_var(&Source::from_pairs([("DATABASE_HOST", "db")])),
            "DATABASE_NAME"
        );
    }

    #[test]
    fn url_form_works_and_port_override_is_checked() {
        let src = Source::from_pairs([("DATABASE_URL", "postgres://kick:pw@db.example:6543/kick")]);
        let c = Config::from_source(&src).unwrap();
        assert_eq!(c.database.describe(), "kick@db.example:6543/kick");
        let src = Source::from_pairs([
            ("DATABASE_URL", "postgres://kick@db/kick"),
            ("DATABASE_PORT", "x"),
        ]);
        assert_eq!(err_var(&src), "DATABASE_PORT");
    }

    #[test]
    fn credentials_are_optional_until_needed() {
        let c = Config::from_source(&base()).unwrap();
        assert_eq!(c.kick.credentials().unwrap_err().var, "KICK_CLIENT_ID");
        let mut src = base();
        src.set("KICK_CLIENT_ID", "id");
        let c = Config::from_source(&src).unwrap();
        assert_eq!(c.kick.credentials().unwrap_err().var, "KICK_CLIENT_SECRET");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut src = base();
        src.set("DATABASE_PASSWORD", "hunter2-db-secret");
        src.set("KICK_CLIENT_ID", "my-client");
        src.set("KICK_CLIENT_SECRET", "s3cr3t-kick-value");
        let c = Config::from_source(&src).unwrap();
        let dbg = format!("{c:?} {src:?}");
        assert!(!dbg.contains("hunter2-db-secret"), "{dbg}");
        assert!(!dbg.contains("s3cr3t-kick-value"), "{dbg}");
        assert!(dbg.contains("REDACTED"));
        assert!(dbg.contains("my-client"));
        let src = Source::from_pairs([("DATABASE_URL", "postgres://u:url-pass-123@h/db")]);
        let c = Config::from_source(&src).unwrap();
        assert!(!format!("{c:?}").contains("url-pass-123"));
        // Errors about a URL never echo it either.
        let src = Source::from_pairs([("DATABASE_URL", "postgres://u:url-pass-123@h:bad/db")]);
        assert!(
            !Config::from_source(&src)
                .unwrap_err()
                .to_string()
                .contains("url-pass-123")
        );
    }

    #[test]
    fn systemd_credentials_are_read() {
        let dir = std::env::temp_dir().join(format!("kick-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("database-password"), "from-credential\n").unwrap();
        let mut src = base();
        src.set("CREDENTIALS_DIRECTORY", dir.to_str().unwrap());
        let c = Config::from_source(&src).unwrap();
        assert_eq!(c.database.pg.get_password(), Some(&b"from-credential"[..]));
        assert_eq!(c.config_key_file, Some(dir.join("kick-config-key")));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
