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
    /// Create or update the least-privilege login roles kick_collector and kick_writer.
    /// Passwords come from KICK_COLLECTOR_DB_PASSWORD and KICK_WRITER_DB_PASSWORD when set
    /// (roles without a password suit peer or cert authentication).
    Roles,
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
        DbCommand::Roles => {
            let client = db::connect(&config.database).await?;
            let dbname = config.database.pg.get_dbname().unwrap_or("").to_owned();
            let pw = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
            create_roles(
                &client,
                &dbname,
                pw("KICK_COLLECTOR_DB_PASSWORD"),
                pw("KICK_WRITER_DB_PASSWORD"),
            )
            .await?;
            println!("roles kick_collector and kick_writer are ready on database {dbname}");
            println!(
                "  kick_collector: read streamers, insert raw_events, upsert its collectors row, record coverage gaps"
            );
            println!(
                "  kick_writer:    claim/update/prune raw_events, update streamers, insert status_events"
            );
            Ok(Exit::Ok)
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

/// The grants of the service roles. Everything else (the `config` table with its secrets,
/// deleting streamers, DDL) stays with the owner that runs `kick-admin`.
const GRANTS: &str = "
    GRANT USAGE ON SCHEMA public TO kick_collector, kick_writer;
    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM kick_collector, kick_writer;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM kick_collector, kick_writer;
    GRANT SELECT ON streamers TO kick_collector;
    GRANT INSERT, SELECT (dedupe_key) ON raw_events TO kick_collector;
    GRANT USAGE ON SEQUENCE raw_events_id_seq TO kick_collector;
    GRANT SELECT, INSERT, UPDATE, DELETE ON collectors TO kick_collector;
    GRANT SELECT, INSERT, UPDATE ON coverage_gaps TO kick_collector;
    GRANT USAGE ON SEQUENCE coverage_gaps_id_seq TO kick_collector;
    GRANT SELECT, UPDATE, DELETE ON raw_events TO kick_writer;
    GRANT SELECT, UPDATE ON streamers TO kick_writer;
    GRANT INSERT, SELECT (raw_event_id) ON status_events TO kick_writer;
    GRANT USAGE ON SEQUENCE status_events_id_seq TO kick_writer;
    GRANT SELECT ON v_pending_events, v_config_plain TO kick_collector, kick_writer;
    GRANT SELECT ON refinery_schema_history TO kick_collector, kick_writer;
    GRANT SELECT, INSERT, UPDATE, DELETE ON channel_coverage, channel_regions TO kick_collector;
    GRANT SELECT ON v_streamer_status TO kick_collector, kick_writer;
";

/// Creates (or updates) the service roles and their grants; idempotent.
pub async fn create_roles(
    client: &tokio_postgres::Client,
    dbname: &str,
    collector_password: Option<String>,
    writer_password: Option<String>,
) -> Result<(), db::DbError> {
    for (role, pw) in [
        ("kick_collector", collector_password),
        ("kick_writer", writer_password),
    ] {
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
                &[&role],
            )
            .await?
            .get(0);
        if !exists {
            client
                .batch_execute(&format!(
                    "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                ))
                .await?;
        }
        if let Some(pw) = pw {
            // Quoted by the server (format %L), never interpolated here.
            let sql: String = client
                .query_one(
                    &format!("SELECT format('ALTER ROLE {role} PASSWORD %L', $1::text)"),
                    &[&pw],
                )
                .await?
                .get(0);
            client.batch_execute(&sql).await?;
        }
    }
    let quoted: String = client
        .query_one("SELECT quote_ident($1)", &[&dbname])
        .await?
        .get(0);
    client
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {quoted} TO kick_collector, kick_writer"
        ))
        .await?;
    client.batch_execute(GRANTS).await?;
    Ok(())
}
