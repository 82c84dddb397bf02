//! `kick-admin config`: settings stored in the database's `config` table. Secret values are
//! read from standard input, never from the command line (see `secret_input`), and encrypted with AES-256-GCM (key from `KICK_CONFIG_KEY_FILE` or the systemd credential
//! `kick-config-key`; the setting's name is the associated data; random nonce); the plaintext is
//! never stored or logged. The services read the settings listed in `DB_SETTINGS`, with the
//! precedence environment > database > default.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use kick_shared::config::{Config, DB_SETTINGS};
use kick_shared::crypto::ConfigKey;
use kick_shared::db;
use kick_shared::exit::{Exit, ExitError};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::secret_input;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Store a setting. Secrets are read from standard input and stored encrypted.
    ///
    /// A secret is any value set with --secret, and always KICK_CLIENT_SECRET and any key
    /// ending in _SECRET or _PASSWORD. Its value never goes on the command line (where ps and
    /// shell history keep it): pipe it in (`echo -n … | kick-admin config set KEY --secret`;
    /// one trailing newline is removed), or run the command on a terminal to be prompted with
    /// echo off. A VALUE given for a secret is refused (exit 64, nothing stored); an empty
    /// secret is refused (exit 65).
    Set {
        /// The setting's name: A-Z, 0-9 and _ (e.g. KICK_CLIENT_SECRET).
        key: String,
        /// The value of a setting that is not secret.
        value: Option<String>,
        /// Read the value from standard input and store it encrypted.
        #[arg(long)]
        secret: bool,
    },
    /// Print a setting (decrypting a secret).
    Get { key: String },
    /// List settings; secrets show as ********.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a setting.
    Unset { key: String },
    /// Write a new random key file (mode 0600) for encrypted settings.
    Keygen {
        /// Where to write it (default: KICK_CONFIG_KEY_FILE).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Replace an existing file (secrets encrypted with the old key become unreadable).
        #[arg(long)]
        force: bool,
    },
}

/// True for the keys whose values are secret by nature: always encrypted, never taken from the
/// command line.
pub fn is_secret_key(key: &str) -> bool {
    key == "KICK_CLIENT_SECRET" || key.ends_with("_SECRET") || key.ends_with("_PASSWORD")
}

fn check_key(key: &str) -> Result<(), ExitError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key.starts_with(|c: char| c.is_ascii_uppercase())
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        let shown: String = key
            .chars()
            .take(40)
            .collect::<String>()
            .escape_debug()
            .to_string();
        Err(ExitError::new(
            Exit::DataErr,
            format!(
                "invalid setting name \"{shown}\": use A-Z, 0-9 and _ (e.g. KICK_CLIENT_SECRET)"
            ),
        ))
    }
}

pub async fn run(cmd: ConfigCommand, config: &Config) -> anyhow::Result<Exit> {
    match cmd {
        ConfigCommand::Set { key, value, secret } => set(config, &key, value, secret).await,
        ConfigCommand::Get { key } => get(config, &key).await,
        ConfigCommand::List { json } => list(config, json).await,
        ConfigCommand::Unset { key } => unset(config, &key).await,
        ConfigCommand::Keygen { output, force } => keygen(config, output, force),
    }
}

async fn set(
    config: &Config,
    key: &str,
    value: Option<String>,
    secret: bool,
) -> anyhow::Result<Exit> {
    check_key(key)?;
    let secret = secret || is_secret_key(key);
    // Refuse a secret on the command line before anything else; the value is never echoed.
    let value = match (value, secret) {
        (Some(_), true) => {
            return Err(ExitError::new(
                Exit::Usage,
                format!(
                    "{key} was not stored: secrets are read from standard input: \
                     echo -n … | kick-admin config set {key} --secret (or run it on a terminal \
                     to be prompted)"
                ),
            )
            .into());
        }
        (Some(v), false) => Some(v),
        (None, true) => None,
        (None, false) => {
            return Err(ExitError::new(
                Exit::Usage,
                format!(
                    "no value for {key}: kick-admin config set {key} VALUE (or --secret to read \
                     it from standard input)"
                ),
            )
            .into());
        }
    };
    if let Some(v) = &value {
        validate(key, v)?;
    }
    let (stored, encrypted) = match value {
        Some(v) if v.len() > secret_input::MAX_VALUE => {
            return Err(ExitError::new(Exit::DataErr, "value too long (64 KiB at most)").into());
        }
        Some(v) => (v, false),
        None => {
            // A missing or wrong key fails before the operator types the secret.
            let config_key = ConfigKey::load(config.config_key_file.as_deref())?;
            let plaintext = secret_input::read(key)?;
            (config_key.encrypt(key, plaintext.expose_secret()), true)
        }
    };
    let client = db::connect(&config.database).await?;
    client
        .execute(
            "INSERT INTO config (key, value, encrypted, updated_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (key) DO UPDATE SET value = $2, encrypted = $3, updated_at = now()",
            &[&key, &stored, &encrypted],
        )
        .await?;
    let note = if DB_SETTINGS.contains(&key) {
        ""
    } else {
        " (not a setting the services read)"
    };
    println!(
        "set {key}{}{note}",
        if encrypted { " (encrypted)" } else { "" }
    );
    Ok(Exit::Ok)
}

/// A setting the services read is checked as they would read it: a value they would refuse
/// is refused here (65, nothing stored), instead of stopping every service at its next start.
fn validate(key: &str, value: &str) -> anyhow::Result<()> {
    // No setting holds a control character (NUL, a newline, an escape sequence that would
    // rewrite a terminal showing `config list`).
    // Unicode's invisible format characters too: bidirectional overrides and isolates would
    // reorder what `config list` shows (U+202E, U+2066…), zero-width ones hide text.
    let invisible = |c: char| {
        matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}'
            | '\u{061C}' | '\u{FEFF}')
    };
    if let Some(c) = value.chars().find(|c| c.is_control() || invisible(*c)) {
        return Err(ExitError::new(
            Exit::DataErr,
            format!("{key} was not stored: the value holds a control character ({c:?})"),
        )
        .into());
    }
    if !DB_SETTINGS.contains(&key) {
        return Ok(());
    }
    let src = kick_shared::config::Source::from_pairs([
        ("DATABASE_HOST", "/"),
        ("DATABASE_NAME", "-"),
        (key, value),
    ]);
    match Config::from_source(&src) {
        Err(e) if e.var == key => Err(ExitError::new(
            Exit::DataErr,
            format!("{key} was not stored: {}", e.message),
        )
        .into()),
        _ => Ok(()),
    }
}

async fn get(config: &Config, key: &str) -> anyhow::Result<Exit> {
    check_key(key)?;
    let client = db::connect(&config.database).await?;
    let row = client
        .query_opt(
            "SELECT value, encrypted FROM config WHERE key = $1",
            &[&key],
        )
        .await?
        .ok_or_else(|| ExitError::new(Exit::NoInput, format!("no setting named {key}")))?;
    let value: String = row.try_get("value")?;
    if row.try_get("encrypted")? {
        let config_key = ConfigKey::load(config.config_key_file.as_deref())?;
        println!("{}", config_key.decrypt(key, &value)?.expose_secret());
    } else {
        println!("{value}");
    }
    Ok(Exit::Ok)
}

/// A row of `config list`; an encrypted value is shown as `********`.
#[derive(Debug, Serialize)]
struct Setting {
    key: String,
    value: String,
    encrypted: bool,
    updated_at: DateTime<Utc>,
}

impl Setting {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        let encrypted: bool = row.try_get("encrypted")?;
        Ok(Self {
            key: row.try_get("key")?,
            value: if encrypted {
                "********".into()
            } else {
                row.try_get("value")?
            },
            encrypted,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

async fn list(config: &Config, json: bool) -> anyhow::Result<Exit> {
    let client = db::connect(&config.database).await?;
    let settings = client
        .query(
            "SELECT key, value, encrypted, updated_at FROM config ORDER BY key",
            &[],
        )
        .await?
        .iter()
        .map(Setting::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    if json {
        #[derive(Serialize)]
        struct Out {
            config: Vec<Setting>,
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out { config: settings })?
        );
        return Ok(Exit::Ok);
    }
    let rows: Vec<Vec<String>> = settings
        .iter()
        .map(|s| {
            vec![
                s.key.clone(),
                s.value.clone(),
                if s.encrypted { "yes" } else { "no" }.to_owned(),
                s.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::table::render(&["KEY", "VALUE", "ENCRYPTED", "UPDATED (UTC)"], &rows)
    );
    Ok(Exit::Ok)
}

async fn unset(config: &Config, key: &str) -> anyhow::Result<Exit> {
    check_key(key)?;
    let client = db::connect(&config.database).await?;
    if client
        .execute("DELETE FROM config WHERE key = $1", &[&key])
        .await?
        == 0
    {
        return Err(ExitError::new(Exit::NoInput, format!("no setting named {key}")).into());
    }
    println!("unset {key}");
    Ok(Exit::Ok)
}

fn keygen(config: &Config, output: Option<PathBuf>, force: bool) -> anyhow::Result<Exit> {
    let path = output
        .or_else(|| config.config_key_file.clone())
        .ok_or_else(|| {
            ExitError::new(
                Exit::Usage,
                "where to write the key: pass --output or set KICK_CONFIG_KEY_FILE",
            )
        })?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(&path).map_err(|e| {
        let exit = if e.kind() == std::io::ErrorKind::AlreadyExists {
            Exit::Usage
        } else {
            Exit::NoPerm
        };
        ExitError::new(
            exit,
            format!(
                "cannot create {}: {} (use --force to replace a key)",
                path.display(),
                e.to_string().to_lowercase()
            ),
        )
    })?;
    let key = ConfigKey::generate_base64();
    writeln!(f, "{}", key.expose_secret())?;
    // Mode is applied at creation; make sure a replaced file is also 0600.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    println!("wrote a new config key to {} (mode 0600)", path.display());
    Ok(Exit::Ok)
}
