//! Configuration from `.env` and the environment (the environment wins). Every variable name here
//! is a contract with operators; a bad or missing value is a [`ConfigError`] naming the variable,
//! which the binaries turn into exit code 78.
//!
//! Settings are read from a [`Source`] rather than from `std::env` directly so that tests can
//! supply their own values without touching the process environment. Database settings are in
//! [`database`] (libpq's conventions: `PG*` fallbacks, `sslmode`, the password file).

mod database;
mod pgpass;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub use self::database::{DEFAULT_SOCKET_DIR, DbConfig, RootCert, SslMode};
use crate::exit::{Classify, Exit};

pub const DEFAULT_API_URL: &str = "https://api.kick.com";
pub const DEFAULT_AUTH_URL: &str = "https://id.kick.com";
pub const DEFAULT_WEB_URL: &str = "https://web.kick.com";
pub const DEFAULT_SITE_URL: &str = "https://kick.com";
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

/// The environment file the Debian package installs, which kick-admin reads too.
pub const PACKAGED_ENV_FILE: &str = "/etc/kick-monitor/kick-monitor.env";

/// Which program is loading its configuration. A service may have its own database user
/// (`COLLECTOR_DATABASE_USER`, …), so that one environment file serves every unit; kick-admin
/// also reads the packaged files (see [`Source::from_env_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Collector,
    Writer,
    Webhooks,
    Admin,
}

impl Service {
    /// The binary's name, as in messages and `--help`.
    pub fn program(self) -> &'static str {
        match self {
            Service::Collector => "kick-collector",
            Service::Writer => "kick-writer",
            Service::Webhooks => "kick-webhooks",
            Service::Admin => "kick-admin",
        }
    }

    /// The service whose binary is called `program`.
    pub fn from_program(program: &str) -> Option<Service> {
        [
            Service::Collector,
            Service::Writer,
            Service::Webhooks,
            Service::Admin,
        ]
        .into_iter()
        .find(|s| s.program() == program)
    }

    /// The variable naming this service's own database user, which wins over `DATABASE_USER`
    /// and the user in `DATABASE_URL`. kick-admin has none: it runs as the operator's role.
    pub fn database_user_var(self) -> Option<&'static str> {
        match self {
            Service::Collector => Some("COLLECTOR_DATABASE_USER"),
            Service::Writer => Some("WRITER_DATABASE_USER"),
            Service::Webhooks => Some("WEBHOOKS_DATABASE_USER"),
            Service::Admin => None,
        }
    }
}

/// Where settings come from: the process environment over `.env`, or a map in tests.
#[derive(Clone, Default)]
pub struct Source {
    vars: HashMap<String, String>,
    /// Where credentials are looked for when `CREDENTIALS_DIRECTORY` is unset: the directory of
    /// the packaged environment file (kick-admin only).
    packaged_credentials: Option<PathBuf>,
    /// The packaged environment file exists but could not be read (e.g. kick-admin without
    /// sudo): worth saying when a database setting is then missing.
    unreadable_env_file: Option<PathBuf>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be secrets: only the names are shown.
        let mut keys: Vec<_> = self.vars.keys().collect();
        keys.sort();
        f.debug_struct("Source")
            .field("vars", &keys)
            .field("packaged_credentials", &self.packaged_credentials)
            .finish()
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
        Ok(Self {
            vars,
            ..Self::default()
        })
    }

    /// As [`Source::from_env`]; for kick-admin, also the packaged files, so that
    /// `sudo kick-admin …` works on an installed system as the services do: the environment file
    /// ([`PACKAGED_ENV_FILE`], or `KICK_MONITOR_ENV_FILE`) with the lowest precedence, and, when
    /// `CREDENTIALS_DIRECTORY` is unset, the credential files beside it (`database-password`,
    /// `kick-client-secret`, `config.key`). The services get these from systemd instead.
    pub fn from_env_for(service: Service) -> Result<Self, ConfigError> {
        let mut src = Self::from_env()?;
        if service == Service::Admin {
            src.add_packaged_files()?;
        }
        Ok(src)
    }

    fn add_packaged_files(&mut self) -> Result<(), ConfigError> {
        let (path, explicit) = match self.get("KICK_MONITOR_ENV_FILE") {
            Some(p) => (PathBuf::from(p.trim()), true),
            None => (PathBuf::from(PACKAGED_ENV_FILE), false),
        };
        match dotenvy::from_path_iter(&path) {
            Ok(iter) => {
                for item in iter {
                    let (k, v) = item.map_err(|e| {
                        ConfigError::new(
                            "KICK_MONITOR_ENV_FILE",
                            format!("cannot parse {}: {e}", path.display()),
                        )
                    })?;
                    if self.get(&k).is_none() {
                        self.vars.insert(k, v);
                    }
                }
            }
            Err(e) if explicit => {
                return Err(ConfigError::new(
                    "KICK_MONITOR_ENV_FILE",
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
            Err(e) if e.not_found() => {}
            Err(_) => self.unreadable_env_file = Some(path.clone()),
        }
        self.packaged_credentials = path.parent().map(Path::to_path_buf);
        Ok(())
    }

    /// Says that the packaged environment file could not be read, if so.
    fn unreadable_env_file_hint(&self) -> Option<String> {
        let path = self.unreadable_env_file.as_ref()?;
        Some(format!(
            "{} exists but cannot be read by this user (try sudo)",
            path.display()
        ))
    }

    /// The file holding credential `name`: `$CREDENTIALS_DIRECTORY/name` (systemd), or for
    /// kick-admin without it the packaged file beside the environment file. A file that is
    /// missing, unreadable, empty or only whitespace counts as absent.
    fn credential_file(&self, name: &str) -> Option<PathBuf> {
        let path = match self.get("CREDENTIALS_DIRECTORY") {
            Some(dir) => PathBuf::from(dir).join(name),
            None => {
                let packaged_name = match name {
                    "kick-config-key" => "config.key",
                    other => other,
                };
                self.packaged_credentials.as_ref()?.join(packaged_name)
            }
        };
        let text = std::fs::read_to_string(&path).ok()?;
        (!text.trim().is_empty()).then_some(path)
    }

    /// The value of credential `name` (see [`Source::credential_file`]), without its trailing
    /// newline.
    fn credential(&self, name: &str) -> Option<SecretString> {
        let text = std::fs::read_to_string(self.credential_file(name)?).ok()?;
        let value = text.trim_end_matches(['\n', '\r']);
        (!value.trim().is_empty()).then(|| SecretString::from(value.to_owned()))
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..Self::default()
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

/// Where missing realtime channel ids are looked up (`KICK_CHANNEL_LOOKUP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelLookup {
    Off,
    /// Kick's website API (unofficial; paced, a refusal means "not now").
    Web,
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
            None => src.credential("kick-client-secret"),
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
    /// `KICK_SHARD_REPLICAS` (default 1, at most 3): how many collectors hold each shard's
    /// channels (2: a host's loss leaves no gap). Every collector must use the same value: set it
    /// in the `config` table.
    pub shard_replicas: u32,
    /// `KICK_WEB_RATE` (default 10, at most 1000): requests per second to Kick's web endpoints
    /// (realtime negotiation, guest tokens, region lookups), burst twice that. Kick publishes no
    /// limit; 10/s resolves 1,000 channels' regions in under two minutes, once (they are cached).
    pub web_rate: u32,
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
    /// `KICK_TERMINAL_RETRY` (default 5 min): the longest wait after a terminal close code
    /// (Pusher 4000–4099, Centrifugo 3500–3999 and 4500–4999) before starting again from
    /// negotiation; the first waits 10 s, doubling while they repeat.
    pub terminal_retry: Duration,
    /// Where the collector keeps its spool and its slot lock: `STATE_DIRECTORY` (systemd's
    /// `StateDirectory=`; the first of several), else `$XDG_STATE_HOME/kick-monitor`, else
    /// `$HOME/.local/state/kick-monitor`, else `/var/lib/kick-monitor`.
    pub state_dir: PathBuf,
    /// `KICK_SPOOL_MAX_MB` (default 256): the spool's size limit in MiB.
    pub spool_max_bytes: u64,
    /// `KICK_POLL_INTERVAL` (default 30 s): streamers without realtime coverage are checked
    /// through the official API this often.
    pub poll_interval: Duration,
    /// `KICK_REGION_REFRESH` (default 6 h): how often Kick is asked again where a channel is
    /// served.
    pub region_refresh: Duration,
    /// `KICK_CHANNEL_LOOKUP` (`off`, the default, or `web`): learn missing channel ids from
    /// Kick's website API (`{KICK_SITE_URL}/api/v2/channels/{slug}`), paced.
    pub channel_lookup: ChannelLookup,
    /// `KICK_SITE_URL` (default `https://kick.com`): Kick's website, for `KICK_CHANNEL_LOOKUP`.
    pub site_url: String,
    /// `WEBHOOKS` (`off`, the default, or `on`): whether the webhook receiver keeps Kick's
    /// subscriptions in sync with the enabled streamers (an operator without a public endpoint
    /// leaves it off).
    pub webhooks: bool,
    /// `WEBHOOK_LISTEN` (default `127.0.0.1:8095`): where `kick-webhooks` listens (plain HTTP,
    /// behind the operator's TLS reverse proxy).
    pub webhook_listen: SocketAddr,
    /// `WEBHOOK_PATH` (default `/kick/webhook`): the path deliveries are POSTed to.
    pub webhook_path: String,
    /// `KICK_WEBHOOK_PUBLIC_KEY_FILE`: Kick's webhook public key (PEM) from a file instead of
    /// `GET {KICK_API_URL}/public/v1/public-key`.
    pub webhook_public_key_file: Option<PathBuf>,
    /// The environment (and `.env`) this configuration was made from: the services merge the
    /// `config` table under it again whenever the table changes.
    pub env: Source,
    /// The program this configuration is for (its database user may be its own).
    pub service: Service,
}

impl Config {
    /// Loads `.env` and the environment, with no per-service database user.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Source::from_env()?)
    }

    /// Loads the configuration of `service` (see [`Source::from_env_for`] and
    /// [`Service::database_user_var`]).
    pub fn from_env_for(service: Service) -> Result<Self, ConfigError> {
        Self::from_source_for(&Source::from_env_for(service)?, service)
    }

    /// The configuration in `src`, with no per-service database user.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        Self::from_source_for(src, Service::Admin)
    }

    /// The configuration of `service` in `src`.
    pub fn from_source_for(src: &Source, service: Service) -> Result<Self, ConfigError> {
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
        let shard_replicas: u32 =
            src.parse("KICK_SHARD_REPLICAS", 1, "a whole number from 1 to 3")?;
        if !(1..=3).contains(&shard_replicas) {
            return Err(ConfigError::new(
                "KICK_SHARD_REPLICAS",
                format!("{shard_replicas} is not from 1 to 3"),
            ));
        }
        let web_rate: u32 = src.parse("KICK_WEB_RATE", 10, "a whole number from 1 to 1000")?;
        if !(1..=1000).contains(&web_rate) {
            return Err(ConfigError::new(
                "KICK_WEB_RATE",
                format!("{web_rate} is not from 1 to 1000"),
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
        let poll_interval = src.duration("KICK_POLL_INTERVAL", Duration::from_secs(30))?;
        if poll_interval < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "KICK_POLL_INTERVAL",
                "must be at least 1s",
            ));
        }
        let channel_lookup = match src.get("KICK_CHANNEL_LOOKUP").map(str::trim) {
            None | Some("off") => ChannelLookup::Off,
            Some("web") => ChannelLookup::Web,
            Some(other) => {
                return Err(ConfigError::new(
                    "KICK_CHANNEL_LOOKUP",
                    format!("'{}' is not one of off, web", shown(other)),
                ));
            }
        };
        let webhooks = match src.get("WEBHOOKS").map(str::trim) {
            None | Some("off") => false,
            Some("on") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    "WEBHOOKS",
                    format!("'{}' is not one of off, on", shown(other)),
                ));
            }
        };
        let webhook_listen: SocketAddr = match src.get("WEBHOOK_LISTEN") {
            None => SocketAddr::from(([127, 0, 0, 1], 8095)),
            Some(v) => v.trim().parse().map_err(|_| {
                ConfigError::new(
                    "WEBHOOK_LISTEN",
                    format!("'{}' is not an address like 127.0.0.1:8095", shown(v)),
                )
            })?,
        };
        let webhook_path = src
            .get("WEBHOOK_PATH")
            .unwrap_or("/kick/webhook")
            .trim()
            .to_owned();
        // A path a request line can carry as is: no query, fragment, escapes or spaces.
        if !webhook_path.starts_with('/')
            || webhook_path.len() > 200
            || !webhook_path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-._~".contains(c))
        {
            return Err(ConfigError::new(
                "WEBHOOK_PATH",
                format!(
                    "'{}' is not a path like /kick/webhook",
                    shown(&webhook_path)
                ),
            ));
        }
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
            .map(|p| PathBuf::from(p.trim()))
            .or_else(|| src.credential_file("kick-config-key"));
        Ok(Self {
            database: DbConfig::from_source_for(src, service)?,
            kick: KickConfig::from_source(src)?,
            log: LogConfig { level, format },
            batch_size,
            config_key_file,
            channels_per_connection,
            shard_replicas,
            web_rate,
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
            poll_interval,
            region_refresh: src.duration("KICK_REGION_REFRESH", Duration::from_secs(6 * 3600))?,
            channel_lookup,
            site_url: src.url("KICK_SITE_URL", DEFAULT_SITE_URL, &["http", "https"])?,
            webhooks,
            webhook_listen,
            webhook_path,
            webhook_public_key_file: src.get("KICK_WEBHOOK_PUBLIC_KEY_FILE").map(PathBuf::from),
            env: src.clone(),
            service,
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
    "KICK_SHARD_REPLICAS",
    "KICK_RECONCILE_INTERVAL",
    "KICK_OFFLINE_GRACE",
    "KICK_RAW_RETENTION",
    "KICK_SILENCE_GRACE",
    "KICK_TERMINAL_RETRY",
    "WRITER_POLL_INTERVAL",
    "BATCH_SIZE",
    "KICK_POLL_INTERVAL",
    "KICK_REGION_REFRESH",
    "KICK_CHANNEL_LOOKUP",
    "KICK_SITE_URL",
    "KICK_WEB_RATE",
    "WEBHOOKS",
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

/// Loads the configuration of `service` (see [`Config::from_env_for`]), then settings from the
/// `config` table (see [`DB_SETTINGS`]). When the database cannot be reached the environment alone
/// is used (for `kick-admin`, which reports the database's absence itself when it needs it; the
/// services wait for the database instead, see [`with_db_settings`]).
pub async fn load_with_db(service: Service) -> anyhow::Result<Config> {
    let src = Source::from_env_for(service)?;
    let base = Config::from_source_for(&src, service)?;
    let client = match crate::db::connect(&base.database).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "config table not read: database unavailable; using the environment only");
            return Ok(base);
        }
    };
    match with_db_settings(&base, &client).await {
        Ok(c) => Ok(c),
        Err(e) if e.downcast_ref::<crate::db::DbError>().is_some() => {
            tracing::warn!(error = %format!("{e:#}"), "config table not read; using the environment only");
            Ok(base)
        }
        Err(e) => Err(e),
    }
}

/// The configuration: `current`'s environment over the settings stored in the `config` table
/// (read through `client`) over the defaults. The service roles may read only the plaintext
/// settings (`v_config_plain`); an unmigrated database has none. A database error is returned
/// (the caller decides whether to wait); a stored value that is invalid is a [`ConfigError`].
pub async fn with_db_settings(
    current: &Config,
    client: &tokio_postgres::Client,
) -> anyhow::Result<Config> {
    let rows = read_db_settings(client)
        .await
        .map_err(crate::db::DbError::from)?;
    merge_db_settings(current, &rows)
}

/// The settings stored in the `config` table as `(key, value, encrypted)`, secrets still
/// encrypted (a collector keeps a copy of them for a start without the database). Empty for an
/// unmigrated database.
pub async fn read_db_settings(
    client: &tokio_postgres::Client,
) -> Result<Vec<(String, String, bool)>, tokio_postgres::Error> {
    use tokio_postgres::error::SqlState;
    // Asked first rather than tried: a refused `SELECT` would log an ERROR in the server's log
    // at every start and reload of every service.
    let full: bool = client
        .query_one(
            "SELECT coalesce(has_table_privilege(to_regclass('config'), 'SELECT'), false) AS full",
            &[],
        )
        .await?
        .get("full");
    let table = if full { "config" } else { "v_config_plain" };
    let rows = match client
        .query(&format!("SELECT key, value, encrypted FROM {table}"), &[])
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(rows
        .iter()
        .map(|r| (r.get("key"), r.get("value"), r.get("encrypted")))
        .collect())
}

/// `current`'s environment over `rows` (as [`read_db_settings`] returns them) over the
/// defaults. Secrets decrypt with the key the environment names.
pub fn merge_db_settings(
    current: &Config,
    rows: &[(String, String, bool)],
) -> anyhow::Result<Config> {
    let (src, service) = (&current.env, current.service);
    let base = Config::from_source_for(src, service)?;
    if rows.is_empty() {
        return Ok(base);
    }
    let mut src = src.clone();
    let mut key: Option<crate::crypto::ConfigKey> = None;
    let applied = src.merge_db(rows, |k, v| {
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
    let mut merged = Config::from_source_for(&src, service)?;
    // Keep the environment alone as the source of the next reload: had the merged values been
    // kept, the next reload would take this one's database values for environment ones (which
    // win) and ignore every later `config set` (found by a red-team run).
    merged.env = current.env.clone();
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

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
        // Host, port and user have libpq's defaults; the database has none of ours.
        let e = Config::from_source(&Source::default()).unwrap_err();
        assert_eq!(e.var, "DATABASE_NAME");
        assert!(e.message.contains("DATABASE_URL"), "{e}");
        assert_eq!(
            err_var(&Source::from_pairs([("DATABASE_HOST", "db")])),
            "DATABASE_NAME"
        );
        let src = Source::from_pairs([("DATABASE_URL", "postgres://u@h")]);
        assert_eq!(err_var(&src), "DATABASE_NAME");
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

    /// A directory of its own under the temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "kick-{name}-{}-{:x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn systemd_credentials_are_read() {
        let dir = TempDir::new("cred");
        dir.write("database-password", "from-credential\n");
        dir.write("kick-client-secret", "client-secret\n");
        dir.write("kick-config-key", "a key\n");
        let mut src = base();
        src.set("CREDENTIALS_DIRECTORY", dir.0.to_str().unwrap());
        let c = Config::from_source(&src).unwrap();
        assert_eq!(c.database.pg.get_password(), Some(&b"from-credential"[..]));
        assert_eq!(
            c.kick.client_secret.unwrap().expose_secret(),
            "client-secret"
        );
        assert_eq!(c.config_key_file, Some(dir.0.join("kick-config-key")));
    }

    #[test]
    fn empty_credential_files_count_as_absent() {
        let dir = TempDir::new("cred-empty");
        dir.write("database-password", "\n");
        dir.write("kick-client-secret", " \n\t\n");
        dir.write("kick-config-key", "");
        let mut src = base();
        src.set("CREDENTIALS_DIRECTORY", dir.0.to_str().unwrap());
        src.set("KICK_CLIENT_ID", "id");
        let c = Config::from_source(&src).unwrap();
        assert_eq!(c.database.pg.get_password(), None);
        assert_eq!(c.kick.credentials().unwrap_err().var, "KICK_CLIENT_SECRET");
        assert_eq!(c.config_key_file, None);
        // Empty variables too.
        src.set("KICK_CLIENT_SECRET", "  ");
        src.set("DATABASE_PASSWORD", "");
        let c = Config::from_source(&src).unwrap();
        assert_eq!(c.kick.credentials().unwrap_err().var, "KICK_CLIENT_SECRET");
        assert_eq!(c.database.pg.get_password(), None);
    }

    #[test]
    fn pg_variables_are_fallbacks() {
        use tokio_postgres::config::Host;
        let pg_only = Source::from_pairs([
            ("PGHOST", "pg.example"),
            ("PGPORT", "6000"),
            ("PGDATABASE", "pgdb"),
            ("PGUSER", "pguser"),
            ("PGPASSWORD", "pg-password"),
            ("PGSSLMODE", "require"),
        ]);
        let c = DbConfig::from_source(&pg_only).unwrap();
        assert_eq!(c.describe(), "pguser@pg.example:6000/pgdb");
        assert_eq!(c.pg.get_password(), Some(&b"pg-password"[..]));
        assert_eq!(c.sslmode(), SslMode::Require);

        // DATABASE_* wins over PG*.
        let mut both = pg_only;
        for (k, v) in [
            ("DATABASE_HOST", "db.example"),
            ("DATABASE_PORT", "7000"),
            ("DATABASE_NAME", "kick"),
            ("DATABASE_USER", "kick_user"),
            ("DATABASE_PASSWORD", "db-password"),
            ("DATABASE_SSLMODE", "disable"),
        ] {
            both.set(k, v);
        }
        let c = DbConfig::from_source(&both).unwrap();
        assert_eq!(c.describe(), "kick_user@db.example:7000/kick");
        assert_eq!(c.pg.get_password(), Some(&b"db-password"[..]));
        assert_eq!(c.sslmode(), SslMode::Disable);

        // DATABASE_URL wins over both; what it leaves out comes from them.
        let mut url = both.clone();
        url.set("DATABASE_URL", "postgres://url_user@url.example/urldb");
        let c = DbConfig::from_source(&url).unwrap();
        assert_eq!(c.describe(), "url_user@url.example:7000/urldb");
        assert_eq!(c.pg.get_password(), Some(&b"db-password"[..]));

        // Nothing set: libpq's defaults (the Debian socket directory, the OS user).
        let c = DbConfig::from_source(&Source::from_pairs([("PGDATABASE", "d")])).unwrap();
        assert_eq!(
            c.pg.get_hosts(),
            &[Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))]
        );
        assert_eq!(c.pg.get_ports(), &[5432]);
        assert_eq!(c.sslmode(), SslMode::Prefer);
        assert!(!c.pg.get_user().unwrap_or("").is_empty());
        // A URL without a host uses the socket directory too, as psql does.
        let src = Source::from_pairs([("DATABASE_URL", "postgres:///kick")]);
        let c = DbConfig::from_source(&src).unwrap();
        assert_eq!(
            c.pg.get_hosts(),
            &[Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))]
        );
    }

    #[test]
    fn password_sources_in_order() {
        let dir = TempDir::new("pw-order");
        dir.write("database-password", "credential-pw\n");
        let pgpass = dir.write("pgpass", "*:*:*:*:pgpass-pw\n");
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut src = base();
        src.set("PGPASSFILE", pgpass.to_str().unwrap());
        let password = |src: &Source| {
            let c = DbConfig::from_source(src).unwrap();
            String::from_utf8(c.pg.get_password().unwrap_or_default().to_vec()).unwrap()
        };
        assert_eq!(password(&src), "pgpass-pw");
        src.set("PGPASSWORD", "pgpassword-pw");
        assert_eq!(password(&src), "pgpassword-pw");
        src.set("CREDENTIALS_DIRECTORY", dir.0.to_str().unwrap());
        assert_eq!(password(&src), "credential-pw");
        src.set("DATABASE_PASSWORD", "database-pw");
        assert_eq!(password(&src), "database-pw");
        src.set("DATABASE_URL", "postgres://u:url-pw@h/kick");
        assert_eq!(password(&src), "url-pw");
    }

    #[test]
    fn pgpass_is_matched_against_the_final_settings() {
        let dir = TempDir::new("pgpass");
        let pgpass = dir.write(
            "pgpass",
            "db.example:5432:kick:kick_writer:writer-pw\n\
             localhost:5432:kick:kick_collector:collector-pw\n",
        );
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let src = Source::from_pairs([
            ("DATABASE_HOST", "db.example"),
            ("DATABASE_NAME", "kick"),
            ("DATABASE_USER", "kick_admin"),
            ("WRITER_DATABASE_USER", "kick_writer"),
            ("COLLECTOR_DATABASE_USER", "kick_collector"),
            ("HOME", dir.0.to_str().unwrap()),
        ]);
        // ~/.pgpass when PGPASSFILE is unset.
        std::fs::rename(&pgpass, dir.0.join(".pgpass")).unwrap();
        let c = DbConfig::from_source_for(&src, Service::Writer).unwrap();
        assert_eq!(c.pg.get_password(), Some(&b"writer-pw"[..]));
        let c = DbConfig::from_source(&src).unwrap();
        assert_eq!(c.pg.get_password(), None, "kick_admin has no line");
        // Over the default socket directory, the `localhost` line.
        let mut socket = src.clone();
        socket.set("DATABASE_HOST", DEFAULT_SOCKET_DIR);
        let c = DbConfig::from_source_for(&socket, Service::Collector).unwrap();
        assert_eq!(c.pg.get_password(), Some(&b"collector-pw"[..]));
        assert!(c.warnings().is_empty());
        // Readable by others: ignored, with a warning that names the file and no password.
        std::fs::set_permissions(
            dir.0.join(".pgpass"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let c = DbConfig::from_source_for(&src, Service::Writer).unwrap();
        assert_eq!(c.pg.get_password(), None);
        assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
        assert!(c.warnings()[0].contains(".pgpass"), "{:?}", c.warnings());
        assert!(!c.warnings()[0].contains("writer-pw"));
    }

    #[test]
    fn each_service_may_have_its_own_database_user() {
        let mut src = Source::from_pairs([
            ("DATABASE_URL", "postgres://kick_monitor:pw@db/kick"),
            ("DATABASE_USER", "ignored_by_the_url"),
            ("COLLECTOR_DATABASE_USER", "kick_collector"),
            ("WRITER_DATABASE_USER", "kick_writer"),
            ("WEBHOOKS_DATABASE_USER", "kick_webhooks"),
        ]);
        let user = |src: &Source, service| {
            Config::from_source_for(src, service)
                .unwrap()
                .database
                .pg
                .get_user()
                .unwrap()
                .to_owned()
        };
        assert_eq!(user(&src, Service::Collector), "kick_collector");
        assert_eq!(user(&src, Service::Writer), "kick_writer");
        assert_eq!(user(&src, Service::Webhooks), "kick_webhooks");
        assert_eq!(user(&src, Service::Admin), "kick_monitor");
        src.set("WRITER_DATABASE_USER", "");
        assert_eq!(
            user(&src, Service::Writer),
            "kick_monitor",
            "empty is unset"
        );
        for service in [
            Service::Collector,
            Service::Writer,
            Service::Webhooks,
            Service::Admin,
        ] {
            assert_eq!(Service::from_program(service.program()), Some(service));
        }
    }

    #[test]
    fn kick_admin_reads_the_packaged_files_below_everything_else() {
        let etc = TempDir::new("etc");
        let env_file = etc.write(
            "kick-monitor.env",
            "# packaged\nDATABASE_HOST=/var/run/postgresql\nDATABASE_NAME=packaged_db\n\
             DATABASE_USER=packaged_user\nKICK_CLIENT_ID=packaged-id\nLOG_FORMAT=json\n",
        );
        etc.write("database-password", "packaged-pw\n");
        etc.write("kick-client-secret", "packaged-secret\n");
        etc.write("config.key", "packaged key\n");
        let mut src = Source::from_pairs([
            ("KICK_MONITOR_ENV_FILE", env_file.to_str().unwrap()),
            ("DATABASE_USER", "from_env"),
            ("LOG_FORMAT", ""),
        ]);
        src.add_packaged_files().unwrap();
        let c = Config::from_source(&src).unwrap();
        assert_eq!(
            c.database.describe(),
            "from_env@/var/run/postgresql:5432/packaged_db"
        );
        assert_eq!(c.database.pg.get_password(), Some(&b"packaged-pw"[..]));
        let (id, secret) = c.kick.credentials().unwrap();
        assert_eq!(
            (id.as_str(), secret.expose_secret()),
            ("packaged-id", "packaged-secret")
        );
        assert_eq!(c.config_key_file, Some(etc.0.join("config.key")));
        assert_eq!(
            c.log.format,
            LogFormat::Json,
            "an empty variable does not hide the file's"
        );

        // A service's credentials directory wins over the packaged files.
        let creds = TempDir::new("creds");
        creds.write("database-password", "systemd-pw");
        let mut src = Source::from_pairs([
            ("KICK_MONITOR_ENV_FILE", env_file.to_str().unwrap()),
            ("CREDENTIALS_DIRECTORY", creds.0.to_str().unwrap()),
        ]);
        src.add_packaged_files().unwrap();
        let c = Config::from_source(&src).unwrap();
        assert_eq!(c.database.pg.get_password(), Some(&b"systemd-pw"[..]));
        assert_eq!(c.kick.client_secret.map(|_| ()), None);

        // Empty packaged credentials (as the package installs them) count as absent.
        etc.write("database-password", "");
        etc.write("kick-client-secret", "\n");
        etc.write("config.key", "");
        let mut src = Source::from_pairs([("KICK_MONITOR_ENV_FILE", env_file.to_str().unwrap())]);
        src.add_packaged_files().unwrap();
        let c = Config::from_source(&src).unwrap();
        assert_eq!(c.database.pg.get_password(), None);
        assert_eq!(c.kick.credentials().unwrap_err().var, "KICK_CLIENT_SECRET");
        assert_eq!(c.config_key_file, None);

        // A file named on purpose must exist.
        let mut src = Source::from_pairs([(
            "KICK_MONITOR_ENV_FILE",
            etc.0.join("absent.env").to_str().unwrap(),
        )]);
        assert_eq!(
            src.add_packaged_files().unwrap_err().var,
            "KICK_MONITOR_ENV_FILE"
        );
    }

    #[test]
    fn an_unreadable_packaged_file_is_mentioned_when_settings_are_missing() {
        let src = Source {
            unreadable_env_file: Some(PathBuf::from(PACKAGED_ENV_FILE)),
            ..Source::default()
        };
        let e = Config::from_source(&src).unwrap_err();
        assert_eq!(e.var, "DATABASE_NAME");
        assert!(e.message.contains("try sudo"), "{e}");
    }
}
