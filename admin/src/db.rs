//! `kick-admin db`: migrate, status and prune.

use clap::Subcommand;
use kick_shared::config::Config;
use kick_shared::db;
use kick_shared::exit::Exit;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending migrations (idempotent; safe when two run at once).
    Migrate,
    /// Applied migrations, pending staged events and the oldest pending age.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Delete processed staged events older than a duration (history is kept).
    Prune {
        /// e.g. 7d, 12h, 30m.
        #[arg(long, default_value = "7d")]
        older_than: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: DbCommand, config: &Config) -> anyhow::Result<Exit> {
    match cmd {
        DbCommand::Migrate => {
            let applied = db::migrate(&config.database).await?;
            if applied.is_empty() {
                println!("database is up to date");
            } else {
                for m in &applied {
                    println!("applied {m}");
                }
            }
            Ok(Exit::Ok)
        }
        DbCommand::Status { json } => {
            let client = db::connect(&config.database).await?;
            let migrations = db::migration_status(&client).await?;
            let current = migrations.iter().all(|m| m.applied_on.is_some());
            let (pending, oldest) = if current {
                db::pending_events(&client).await?
            } else {
                (0, 0.0)
            };
            if json {
                let out = json!({
                    "database": config.database.describe(),
                    "migrated": current,
                    "migrations": migrations,
                    "pending_events": pending,
                    "oldest_pending_age_seconds": oldest,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("database: {}", config.database.describe());
                let rows: Vec<Vec<String>> = migrations
                    .iter()
                    .map(|m| {
                        vec![
                            format!("V{}", m.version),
                            m.name.clone(),
                            m.applied_on.clone().unwrap_or_else(|| "pending".into()),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    crate::table::render(&["VERSION", "NAME", "APPLIED"], &rows)
                );
                if current {
                    println!("pending events: {pending}");
                    println!("oldest pending age: {oldest:.1}s");
                } else {
                    println!("migrations pending: run `kick-admin db migrate`");
                }
            }
            // Not migrated is a component that is not ready: monitoring should see it.
            Ok(if current { Exit::Ok } else { Exit::Unavailable })
        }
        DbCommand::Prune { older_than, json } => {
            let age = kick_shared::duration::parse(&older_than).map_err(|m| {
                kick_shared::exit::ExitError::new(Exit::Usage, format!("--older-than: {m}"))
            })?;
            let client = db::connect(&config.database).await?;
            let deleted = db::prune_processed(&client, age).await?;
            if json {
                println!("{}", json!({ "deleted": deleted }));
            } else {
                println!("deleted {deleted} processed staged events older than {older_than}");
            }
            Ok(Exit::Ok)
        }
    }
}
