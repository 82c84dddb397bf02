//! `kick-admin config`: settings stored in the database's `config` table. Secret values are
//! encrypted with AES-256-GCM (key from `KICK_CONFIG_KEY_FILE` or the systemd credential
//! `kick-config-key`; the setting's name is the associated data; random nonce); the plaintext is
//! never stored or logged. The services read the settings listed in `DB_SETTINGS`, with the
//! precedence environment > database > default.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::Subcommand;
use kick_shared::config::{Config, DB_SETTINGS};
use kick_shared::crypto::ConfigKey;
use kick_shared::db;
use kick_shared::exit::{Exit, ExitError};
use secrecy::ExposeSecret;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Store a setting; with --secret it is encrypted.
    Set {
        key: String,
        value: String,
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
        ConfigCommand::Set { key, value, secret } => {
            check_key(&key)?;
            if value.len() > 64 * 1024 {
                return Err(
                    ExitError::new(Exit::DataErr, "value too long (64 KiB at most)").into(),
                );
            }
            let stored = if secret {
                ConfigKey::load(config.config_key_file.as_deref())?.encrypt(&key, &value)
            } else {
                value
            };
            let client = db::connect(&config.database).await?;
            client
                .execute(
                    "INSERT INTO config (key, value, encrypted, updated_at) VALUES ($1, $2, $3, now())
                     ON CONFLICT (key) DO UPDATE SET value = $2, encrypted = $3, updated_at = now()",
                    &[&key, &stored, &secret],
                )
                .await?;
            let note = if DB_SETTINGS.contains(&key.as_str()) {
                ""
            } else {
                " (not a setting the services read)"
            };
            println!(
                "set {key}{}{note}",
                if secret { " (encrypted)" } else { "" }
            );
            Ok(Exit::Ok)
        }
        ConfigCommand::Get { key } => {
            check_key(&key)?;
            let client = db::connect(&config.database).await?;
            let row = client
                .query_opt(
                    "SELECT value, encrypted FROM config WHERE key = $1",
                    &[&key],
                )
                .await?
                .ok_or_else(|| ExitError::new(Exit::NoInput, format!("no setting named {key}")))?;
            let (value, encrypted): (String, bool) = (row.get(0), row.get(1));
            if encrypted {
                let k = ConfigKey::load(config.config_key_file.as_deref())?;
                println!("{}", k.decrypt(&key, &value)?.expose_secret());
            } else {
                println!("{value}");
            }
            Ok(Exit::Ok)
        }
        ConfigCommand::List { json } => {
            let client = db::connect(&config.database).await?;
            let rows = client
                .query(
                    "SELECT key, value, encrypted, updated_at FROM config ORDER BY key",
                    &[],
                )
                .await?;
            let items: Vec<(String, String, bool, chrono::DateTime<chrono::Utc>)> = rows
                .iter()
                .map(|r| {
                    let enc: bool = r.get(2);
                    let v: String = if enc { "********".into() } else { r.get(1) };
                    (r.get(0), v, enc, r.get(3))
                })
                .collect();
            if json {
                let v: Vec<_> = items
                    .iter()
                    .map(|(k, v, e, t)| json!({"key": k, "value": v, "encrypted": e, "updated_at": t}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&json!({ "config": v }))?);
            } else {
                let t: Vec<Vec<String>> = items
                    .iter()
                    .map(|(k, v, e, t)| {
                        vec![
                            k.clone(),
                            v.clone(),
                            if *e { "yes".into() } else { "no".into() },
                            t.format("%Y-%m-%d %H:%M:%S").to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    crate::table::render(&["KEY", "VALUE", "ENCRYPTED", "UPDATED (UTC)"], &t)
                );
            }
            Ok(Exit::Ok)
        }
        ConfigCommand::Unset { key } => {
            check_key(&key)?;
            let client = db::connect(&config.database).await?;
            if client
                .execute("DELETE FROM config WHERE key = $1", &[&key])
                .await?
                == 0
            {
                return Err(
                    ExitError::new(Exit::NoInput, format!("no setting named {key}")).into(),
                );
            }
            println!("unset {key}");
            Ok(Exit::Ok)
        }
        ConfigCommand::Keygen { output, force } => {
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
    }
}
