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
    /// One-time set-up as the database superuser: database, roles, migrations, peer authentication.
    ///
    /// Run as `sudo -u postgres kick-admin db init`. Creates the database, its owner role
    /// kick_monitor, runs the migrations as the owner, creates the service roles kick_collector,
    /// kick_writer and kick_webhooks with their grants, then prints (or with --write-hba, writes)
    /// the pg_ident.conf map and pg_hba.conf line for peer authentication.
    /// Idempotent: a second run changes nothing and says so. Passwords are optional and come from
    /// KICK_COLLECTOR_DB_PASSWORD, KICK_WRITER_DB_PASSWORD, KICK_WEBHOOKS_DB_PASSWORD and
    /// KICK_MONITOR_DB_PASSWORD (sent as SCRAM verifiers, never as plaintext). Without
    /// DATABASE_URL, it connects to the Unix socket in /var/run/postgresql as the OS user and
    /// creates the database DATABASE_NAME (default kick_monitor).
    Init {
        /// Write the map and the line into the files `SHOW ident_file` and `SHOW hba_file` name
        /// (the line before the first `local all all` line), then reload the server's
        /// configuration.
        #[arg(long)]
        write_hba: bool,
        #[arg(long)]
        json: bool,
    },
    /// Create or update the least-privilege service roles and their grants.
    ///
    /// The roles kick_collector, kick_writer and kick_webhooks (part of `db init`). Passwords come from
    /// KICK_COLLECTOR_DB_PASSWORD, KICK_WRITER_DB_PASSWORD and KICK_WEBHOOKS_DB_PASSWORD when set
    /// and are sent as SCRAM verifiers (roles without a password suit peer or cert
    /// authentication). Needs the database superuser or a role with CREATEROLE (exit 77 otherwise).
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
        DbCommand::Init { write_hba, json } => {
            crate::db_init::run(config, crate::db_init::InitOptions { write_hba }, json).await
        }
        DbCommand::Roles => {
            let client = db::connect(&config.database).await?;
            let dbname = config.database.pg.get_dbname().unwrap_or("").to_owned();
            let steps = create_roles(&client, &dbname, &passwords_from_env())
                .await
                .map_err(|e| permission_hint(e, "db roles"))?;
            for step in &steps {
                println!("{:<10} {}", step.outcome, step.what);
            }
            let roles = SERVICE_ROLES.map(|(r, _)| r).join(", ");
            println!("roles {roles} are ready on database {dbname}");
            println!(
                "  kick_collector: read streamers, insert raw_events, upsert its collectors row, record coverage gaps"
            );
            println!(
                "  kick_writer:    claim/update/prune raw_events, update streamers, insert status_events"
            );
            println!(
                "  kick_webhooks:  read streamers, insert raw_events (source webhook), keep webhook_subscriptions"
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

/// The role that owns the database and its tables (`db init` creates it; `db migrate` and the
/// `sudo kick-admin …` commands run as it).
pub const OWNER_ROLE: &str = "kick_monitor";

/// The least-privilege login roles of the services, with the environment variable that may hold
/// each one's password (roles without a password suit peer or certificate authentication).
pub const SERVICE_ROLES: [(&str, &str); 3] = [
    ("kick_collector", "KICK_COLLECTOR_DB_PASSWORD"),
    ("kick_writer", "KICK_WRITER_DB_PASSWORD"),
    ("kick_webhooks", "KICK_WEBHOOKS_DB_PASSWORD"),
];

/// The grants of the service roles. Everything else (the `config` table with its secrets,
/// deleting streamers, DDL) stays with the owner that runs `kick-admin`. `kick_webhooks` (the
/// webhook receiver, facing the Internet) may read `streamers` (the subscriptions to keep),
/// insert `raw_events` rows of source `webhook` only (a row-level security policy, V7), and
/// keep `webhook_subscriptions`.
const GRANTS: &str = "
    GRANT USAGE ON SCHEMA public TO kick_collector, kick_writer, kick_webhooks;
    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM kick_collector, kick_writer, kick_webhooks;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM kick_collector, kick_writer, kick_webhooks;
    GRANT SELECT ON streamers TO kick_collector, kick_webhooks;
    GRANT INSERT, SELECT (dedupe_key) ON raw_events TO kick_collector, kick_webhooks;
    GRANT USAGE ON SEQUENCE raw_events_id_seq TO kick_collector, kick_webhooks;
    GRANT SELECT, INSERT, UPDATE ON staging_barriers TO kick_collector, kick_webhooks;
    GRANT SELECT, INSERT, UPDATE, DELETE ON collectors TO kick_collector;
    GRANT SELECT, INSERT, UPDATE ON coverage_gaps TO kick_collector;
    GRANT USAGE ON SEQUENCE coverage_gaps_id_seq TO kick_collector;
    GRANT SELECT, UPDATE, DELETE ON raw_events TO kick_writer;
    GRANT SELECT, UPDATE ON streamers TO kick_writer;
    GRANT INSERT, SELECT (raw_event_id) ON status_events TO kick_writer;
    GRANT USAGE ON SEQUENCE status_events_id_seq TO kick_writer;
    GRANT SELECT ON v_pending_events TO kick_collector, kick_writer;
    GRANT SELECT ON v_config_plain TO kick_collector, kick_writer, kick_webhooks;
    GRANT SELECT ON refinery_schema_history TO kick_collector, kick_writer, kick_webhooks;
    GRANT SELECT, INSERT, UPDATE, DELETE ON channel_coverage, channel_regions TO kick_collector;
    GRANT SELECT ON v_streamer_status TO kick_collector, kick_writer;
    GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_subscriptions TO kick_webhooks;
    GRANT SELECT ON webhook_subscriptions TO kick_collector;
    GRANT SELECT, INSERT, UPDATE, DELETE ON shard_members, shard_leases TO kick_collector;
    GRANT SELECT, INSERT ON shard_moves TO kick_collector;
    GRANT USAGE ON SEQUENCE shard_lease_token, shard_moves_id_seq TO kick_collector;
    GRANT SELECT (shard, token, prev_token, handoff_until) ON shard_leases TO kick_webhooks;
    REVOKE ALL ON FUNCTION stage_applying FROM PUBLIC, kick_writer, kick_webhooks;
    GRANT EXECUTE ON FUNCTION stage_applying TO kick_collector;
";

/// Every privilege on the database, its public schema and the objects in it, as one string: equal
/// before and after a step means the step changed no privilege.
const PRIVILEGES_SNAPSHOT: &str = "
    SELECT concat_ws(E'\\n',
        (SELECT datacl::text FROM pg_database WHERE datname = current_database()),
        (SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public'),
        (SELECT string_agg(c.relname || '=' || coalesce(c.relacl::text, ''), ',' ORDER BY c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'),
        (SELECT string_agg(c.relname || '.' || a.attname || '=' || a.attacl::text, ','
                           ORDER BY c.relname, a.attname)
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND a.attacl IS NOT NULL),
        (SELECT string_agg(p.proname || '=' || coalesce(p.proacl::text, ''), ',' ORDER BY p.proname)
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'))";

/// One thing `db init` or `db roles` did, or found already done.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// What, e.g. "role kick_writer" or "migration V3__hot_status_updates".
    pub what: String,
    /// `created`, `updated`, `applied`, `set` or `unchanged`.
    pub outcome: &'static str,
}

impl Step {
    pub fn new(what: impl Into<String>, outcome: &'static str) -> Self {
        Self {
            what: what.into(),
            outcome,
        }
    }

    pub fn changed(&self) -> bool {
        self.outcome != "unchanged"
    }
}

/// The passwords to set, by role, from the role's environment variable (empty counts as unset).
pub fn passwords_from_env() -> Vec<(&'static str, String)> {
    SERVICE_ROLES
        .iter()
        .filter_map(|(role, var)| {
            let pw = std::env::var(var).ok().filter(|v| !v.is_empty())?;
            Some((*role, pw))
        })
        .collect()
}

/// Creates the role `role` (LOGIN, no other attribute) unless it exists, and sets its password
/// when one is given and differs from the stored one. The password is sent only as a SCRAM
/// verifier computed here ([`crate::scram`]), never as plaintext.
pub async fn ensure_login_role(
    client: &tokio_postgres::Client,
    role: &str,
    password: Option<&str>,
) -> Result<Vec<Step>, db::DbError> {
    let mut steps = Vec::new();
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await?
        .get(0);
    // Role names are this module's constants, never user input.
    if exists {
        let can_login: bool = client
            .query_one(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await?
            .get(0);
        if can_login {
            steps.push(Step::new(format!("role {role}"), "unchanged"));
        } else {
            client
                .batch_execute(&format!("ALTER ROLE {role} LOGIN"))
                .await?;
            steps.push(Step::new(format!("role {role} (LOGIN)"), "updated"));
        }
    } else {
        client
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
            ))
            .await?;
        steps.push(Step::new(format!("role {role}"), "created"));
    }
    if let Some(pw) = password {
        // Only a superuser may read pg_authid; anyone else sets the password unconditionally.
        let stored: Option<String> = client
            .query_opt(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&role],
            )
            .await
            .ok()
            .flatten()
            .and_then(|row| row.get(0));
        if stored.is_some_and(|s| crate::scram::matches(pw, &s)) {
            steps.push(Step::new(format!("password of {role}"), "unchanged"));
        } else {
            let verifier = crate::scram::verifier(pw);
            // Base64, digits, '$' and ':' only: nothing to quote.
            debug_assert!(!verifier.contains('\''));
            client
                .batch_execute(&format!("ALTER ROLE {role} PASSWORD '{verifier}'"))
                .await?;
            steps.push(Step::new(format!("password of {role}"), "set"));
        }
    }
    Ok(steps)
}

/// Creates (or updates) the service roles and their grants on database `dbname`, to which
/// `client` is connected; idempotent. Returns what it did, grants included ("unchanged" when the
/// privileges are the same afterwards).
pub async fn create_roles(
    client: &tokio_postgres::Client,
    dbname: &str,
    passwords: &[(&str, String)],
) -> Result<Vec<Step>, db::DbError> {
    let mut steps = Vec::new();
    for (role, _) in SERVICE_ROLES {
        let pw = passwords
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| p.as_str());
        steps.extend(ensure_login_role(client, role, pw).await?);
    }
    let before: String = client.query_one(PRIVILEGES_SNAPSHOT, &[]).await?.get(0);
    let quoted: String = client
        .query_one("SELECT quote_ident($1)", &[&dbname])
        .await?
        .get(0);
    let roles = SERVICE_ROLES.map(|(r, _)| r).join(", ");
    client
        .batch_execute(&format!("GRANT CONNECT ON DATABASE {quoted} TO {roles}"))
        .await?;
    client.batch_execute(GRANTS).await?;
    let after: String = client.query_one(PRIVILEGES_SNAPSHOT, &[]).await?.get(0);
    steps.push(Step::new(
        "privileges of the service roles",
        if before == after {
            "unchanged"
        } else {
            "updated"
        },
    ));
    Ok(steps)
}

/// Permission errors (SQLSTATE 42501: "permission denied to create role", "must be superuser or
/// have CREATEROLE", …) become exit 77 with what to do instead; anything else is unchanged.
pub fn permission_hint(err: db::DbError, command: &str) -> anyhow::Error {
    if let db::DbError::Query(e) = &err
        && e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    {
        return kick_shared::exit::ExitError::new(
            Exit::NoPerm,
            format!(
                "{err}; run it as the database superuser: sudo -u postgres kick-admin {command}"
            ),
        )
        .into();
    }
    err.into()
}
