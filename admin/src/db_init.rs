//! `kick-admin db init`: the one-time set-up a Debian operator runs as the database superuser
//! (`sudo -u postgres kick-admin db init`). It creates the owner role and the database, runs the
//! migrations as the owner (so the tables belong to `kick_monitor`, not to `postgres`), creates
//! the service roles with their grants (the same code as `db roles`), and prints, or writes with
//! `--write-hba`, the `pg_ident.conf` map and `pg_hba.conf` line that let the services (OS user
//! `kick-monitor`) and `sudo kick-admin` (OS user `root`) log in by peer authentication.
//!
//! Every step looks before it acts, so a second run changes nothing and says so.

use std::path::Path;

use kick_shared::config::Config;
use kick_shared::db::{self, DbError};
use kick_shared::exit::{Exit, ExitError};
use serde::Serialize;

use crate::db::{OWNER_ROLE, SERVICE_ROLES, Step, create_roles, ensure_login_role};

/// The `pg_ident.conf` map name used in the `pg_hba.conf` line.
pub const IDENT_MAP: &str = "kick-monitor";
/// The OS user the packaged units run as.
pub const SERVICE_OS_USER: &str = "kick-monitor";
/// The environment variable that may hold the owner's password.
pub const OWNER_PASSWORD_VAR: &str = "KICK_MONITOR_DB_PASSWORD";

const BEGIN_MARK: &str = "# kick-monitor: added by kick-admin db init";
const END_MARK: &str = "# end kick-monitor";

#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    /// Write the peer-authentication lines into the server's files and reload it.
    pub write_hba: bool,
}

/// One of the two authentication files and what `db init` found or did there.
#[derive(Debug, Serialize)]
struct AuthFile {
    /// The path the server reports (`SHOW hba_file` / `SHOW ident_file`).
    file: String,
    /// The lines kick-monitor needs in it, markers included.
    lines: Vec<String>,
    /// The lines are there, in the right place (`None`: the file cannot be read from here).
    present: Option<bool>,
    /// This run wrote them.
    written: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    database: String,
    server: String,
    changed: bool,
    steps: Vec<Step>,
    ident: AuthFile,
    hba: AuthFile,
    warnings: Vec<String>,
    next: Vec<String>,
}

/// Runs `db init`. `config.database` names the server, the superuser to connect as and the
/// database to create.
///
/// # Errors
///
/// Exit 77 when the connecting role is not a superuser (or cannot log in), 69 when the server
/// cannot be reached, 66 when `--write-hba` cannot read the server's files from this machine.
pub async fn run(config: &Config, opts: InitOptions, json: bool) -> anyhow::Result<Exit> {
    let dbname = config
        .database
        .pg
        .get_dbname()
        .unwrap_or("kick_monitor")
        .to_owned();
    let mut maintenance = config.database.clone();
    maintenance.pg.dbname("postgres");
    let client = db::connect(&maintenance).await.map_err(connect_hint)?;
    let (me, superuser): (String, bool) = {
        let row = client
            .query_one(
                "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    if !superuser {
        return Err(ExitError::new(
            Exit::NoPerm,
            format!(
                "role {me} is not a database superuser; run: sudo -u postgres kick-admin db init"
            ),
        )
        .into());
    }

    let mut steps = Vec::new();
    let owner_password = std::env::var(OWNER_PASSWORD_VAR)
        .ok()
        .filter(|v| !v.is_empty());
    steps.extend(ensure_login_role(&client, OWNER_ROLE, owner_password.as_deref()).await?);
    steps.push(ensure_database(&client, &dbname).await?);
    drop(client);

    // Migrations as the owner: the superuser's session takes the owner's role at start-up, so
    // every table, sequence and the migration history belong to kick_monitor.
    let mut as_owner = config.database.clone();
    as_owner.pg.options(format!("-c role={OWNER_ROLE}"));
    let applied = db::migrate(&as_owner).await?;
    if applied.is_empty() {
        steps.push(Step::new("migrations", "unchanged"));
    }
    steps.extend(
        applied
            .into_iter()
            .map(|m| Step::new(format!("migration {m}"), "applied")),
    );

    let client = db::connect(&config.database).await?;
    let mut warnings = Vec::new();
    let foreign: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'S', 'p')
                AND pg_get_userbyid(c.relowner) <> $1 ORDER BY 1",
            &[&OWNER_ROLE],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    if !foreign.is_empty() {
        warnings.push(format!(
            "not owned by {OWNER_ROLE} (created before db init by another role): {}; \
             as the superuser: REASSIGN OWNED BY <that role> TO {OWNER_ROLE} in database {dbname}, \
             or ALTER TABLE … OWNER TO {OWNER_ROLE}",
            foreign.join(", ")
        ));
    }
    steps.extend(create_roles(&client, &dbname, &crate::db::passwords_from_env()).await?);

    let hba_path: String = client.query_one("SHOW hba_file", &[]).await?.get(0);
    let ident_path: String = client.query_one("SHOW ident_file", &[]).await?.get(0);
    let ident_lines = ident_block();
    let hba_lines = hba_block(&dbname);
    let mut ident = AuthFile {
        present: read_local(&ident_path).map(|c| add_block(&c, &ident_lines, Placement::End) == c),
        file: ident_path,
        lines: ident_lines,
        written: false,
    };
    let mut hba = AuthFile {
        present: read_local(&hba_path)
            .map(|c| add_block(&c, &hba_lines, Placement::BeforeLocalAll) == c),
        file: hba_path,
        lines: hba_lines,
        written: false,
    };
    if opts.write_hba && (ident.present != Some(true) || hba.present != Some(true)) {
        write_auth_files(&client, &mut ident, &mut hba).await?;
        steps.push(Step::new(
            "peer authentication (pg_ident.conf, pg_hba.conf)",
            "updated",
        ));
    }
    let changed = steps.iter().any(Step::changed);

    let mut next = Vec::new();
    if ident.present != Some(true) || hba.present != Some(true) {
        next.push(format!(
            "peer authentication: add the map to {} and the line to {} before the first \
             `local all all` line (shown above), then: sudo -u postgres psql -c 'SELECT pg_reload_conf()'; \
             or run again with --write-hba",
            ident.file, hba.file
        ));
    }
    next.push(format!(
        "services connect as {} by peer authentication (OS user {SERVICE_OS_USER}); \
         sudo kick-admin connects as {OWNER_ROLE} (OS user root): no passwords needed on this host",
        SERVICE_ROLES.map(|(r, _)| r).join(", ")
    ));
    next.push(
        "put the Kick app secret in /etc/kick-monitor/kick-client-secret and set KICK_CLIENT_ID \
         in /etc/kick-monitor/kick-monitor.env"
            .into(),
    );
    next.push("add streamers: sudo kick-admin streamers add <username>…".into());
    next.push("start the services: sudo systemctl enable --now kick-writer kick-collector".into());
    next.push("check: sudo kick-admin status".into());

    let report = Report {
        database: dbname,
        server: config.database.describe(),
        changed,
        steps,
        ident,
        hba,
        warnings,
        next,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(Exit::Ok)
}

fn print_report(r: &Report) {
    println!("database {} ({})", r.database, r.server);
    for step in &r.steps {
        println!("  {:<10} {}", step.outcome, step.what);
    }
    if r.changed {
        let n = r.steps.iter().filter(|s| s.changed()).count();
        println!("done: {n} change(s)");
    } else {
        println!("nothing to do: already initialised, nothing changed");
    }
    for (name, f) in [("pg_ident.conf", &r.ident), ("pg_hba.conf", &r.hba)] {
        let state = match (f.written, f.present) {
            (true, _) => "written",
            (false, Some(true)) => "present",
            (false, Some(false)) => "missing",
            (false, None) => "cannot read it from here",
        };
        println!("{name} ({}): {state}", f.file);
        if !f.written && f.present != Some(true) {
            for line in &f.lines {
                println!("    {line}");
            }
        }
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    println!("next:");
    for (i, n) in r.next.iter().enumerate() {
        println!("  {}. {n}", i + 1);
    }
}

/// A connection refused for lack of permission (peer authentication as an OS user with no role,
/// a wrong password) says who should run the command.
fn connect_hint(err: DbError) -> anyhow::Error {
    if kick_shared::exit::Classify::exit(&err) == Exit::NoPerm {
        return ExitError::new(
            Exit::NoPerm,
            format!("{err}; run as the database superuser: sudo -u postgres kick-admin db init"),
        )
        .into();
    }
    err.into()
}

/// Creates the database owned by the owner role, or gives an existing one to it.
async fn ensure_database(client: &tokio_postgres::Client, dbname: &str) -> Result<Step, DbError> {
    let quoted: String = client
        .query_one("SELECT quote_ident($1)", &[&dbname])
        .await?
        .get(0);
    let owner: Option<String> = client
        .query_opt(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
            &[&dbname],
        )
        .await?
        .map(|r| r.get(0));
    Ok(match owner {
        None => {
            client
                .batch_execute(&format!(
                    "CREATE DATABASE {quoted} OWNER {OWNER_ROLE} ENCODING 'UTF8' TEMPLATE template0"
                ))
                .await?;
            Step::new(format!("database {dbname}"), "created")
        }
        Some(owner) if owner == OWNER_ROLE => Step::new(format!("database {dbname}"), "unchanged"),
        Some(_) => {
            client
                .batch_execute(&format!("ALTER DATABASE {quoted} OWNER TO {OWNER_ROLE}"))
                .await?;
            Step::new(format!("owner of database {dbname}"), "updated")
        }
    })
}

/// The `pg_ident.conf` lines: the services' OS user may be any service role, root the owner.
fn ident_block() -> Vec<String> {
    let mut lines = vec![BEGIN_MARK.to_owned()];
    for (role, _) in SERVICE_ROLES {
        lines.push(format!("{IDENT_MAP}  {SERVICE_OS_USER}  {role}"));
    }
    lines.push(format!("{IDENT_MAP}  root  {OWNER_ROLE}"));
    lines.push(END_MARK.to_owned());
    lines
}

/// The `pg_hba.conf` line: local connections to the database as one of our roles use peer
/// authentication through the map.
fn hba_block(dbname: &str) -> Vec<String> {
    let db = if dbname
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        dbname.to_owned()
    } else {
        format!("\"{}\"", dbname.replace('"', ""))
    };
    let mut roles = vec![OWNER_ROLE];
    roles.extend(SERVICE_ROLES.map(|(r, _)| r));
    vec![
        BEGIN_MARK.to_owned(),
        format!("local  {db}  {}  peer map={IDENT_MAP}", roles.join(",")),
        END_MARK.to_owned(),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Appended (pg_ident.conf: order does not matter).
    End,
    /// Before the first `local all all …` rule (pg_hba.conf: the first matching rule wins, and
    /// Debian's `local all all peer` would match our roles without the map).
    BeforeLocalAll,
}

/// `content` with our marked block (any earlier copy removed) at its place. Equal to `content`
/// when the block is already there, exactly and in the right place.
fn add_block(content: &str, block: &[String], placement: Placement) -> String {
    let mut lines: Vec<&str> = Vec::new();
    let mut inside = false;
    for line in content.lines() {
        if line.trim() == BEGIN_MARK {
            inside = true;
        }
        if !inside {
            lines.push(line);
        }
        if inside && line.trim() == END_MARK {
            inside = false;
        }
    }
    let at = match placement {
        Placement::End => lines.len(),
        Placement::BeforeLocalAll => lines
            .iter()
            .position(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.len() >= 3
                    && fields[0] == "local"
                    && fields[1] == "all"
                    && fields[2] == "all"
            })
            .unwrap_or(lines.len()),
    };
    let mut out: Vec<&str> = lines[..at].to_vec();
    out.extend(block.iter().map(String::as_str));
    out.extend(&lines[at..]);
    let mut text = out.join("\n");
    text.push('\n');
    text
}

fn read_local(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Writes both files (a temporary file renamed over the original, with its owner and mode), asks
/// the server to check them (`pg_hba_file_rules`), restores the originals if it finds an error,
/// and reloads the configuration.
async fn write_auth_files(
    client: &tokio_postgres::Client,
    ident: &mut AuthFile,
    hba: &mut AuthFile,
) -> anyhow::Result<()> {
    let read = |f: &AuthFile| {
        std::fs::read_to_string(&f.file).map_err(|e| {
            ExitError::new(
                Exit::NoInput,
                format!(
                    "--write-hba: cannot read {}: {e} (run db init on the database server as the OS user that owns it, usually postgres)",
                    f.file
                ),
            )
        })
    };
    let ident_old = read(ident)?;
    let hba_old = read(hba)?;
    let ident_new = add_block(&ident_old, &ident.lines, Placement::End);
    let hba_new = add_block(&hba_old, &hba.lines, Placement::BeforeLocalAll);
    replace_file(Path::new(&ident.file), &ident_new)?;
    if let Err(e) = replace_file(Path::new(&hba.file), &hba_new) {
        replace_file(Path::new(&ident.file), &ident_old)?;
        return Err(e);
    }
    // pg_hba_file_rules reads the file on disk (not the loaded rules); pg_ident_file_mappings
    // exists from PostgreSQL 15 on.
    let mut errors: Vec<String> = client
        .query(
            "SELECT format('pg_hba.conf line %s: %s', line_number, error) FROM pg_hba_file_rules
              WHERE error IS NOT NULL",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let has_ident_view: bool = client
        .query_one(
            "SELECT to_regclass('pg_catalog.pg_ident_file_mappings') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if has_ident_view {
        errors.extend(
            client
                .query(
                    "SELECT format('pg_ident.conf line %s: %s', line_number, error)
                       FROM pg_ident_file_mappings WHERE error IS NOT NULL",
                    &[],
                )
                .await?
                .into_iter()
                .map(|r| r.get::<_, String>(0)),
        );
    }
    if !errors.is_empty() {
        replace_file(Path::new(&ident.file), &ident_old)?;
        replace_file(Path::new(&hba.file), &hba_old)?;
        return Err(ExitError::new(
            Exit::Config,
            format!(
                "the server rejects pg_hba.conf after the edit ({}); the files are restored",
                errors.join("; ")
            ),
        )
        .into());
    }
    client.query_one("SELECT pg_reload_conf()", &[]).await?;
    ident.written = ident_new != ident_old;
    hba.written = hba_new != hba_old;
    ident.present = Some(true);
    hba.present = Some(true);
    Ok(())
}

fn replace_file(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    let tmp = path.with_extension("kick-monitor.tmp");
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, meta.permissions())?;
    // As root the copy would belong to root: give it the original's owner (the server must read it).
    let _ = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()));
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_HBA: &str = "\
# Database administrative login by Unix domain socket
local   all             postgres                                peer

# TYPE  DATABASE        USER            ADDRESS                 METHOD

# \"local\" is for Unix domain socket connections only
local   all             all                                     peer
# IPv4 local connections:
host    all             all             127.0.0.1/32            scram-sha-256
";

    #[test]
    fn hba_line_goes_before_local_all_all_and_only_once() {
        let block = hba_block("kick_monitor");
        let once = add_block(DEBIAN_HBA, &block, Placement::BeforeLocalAll);
        let ours = once.find("peer map=kick-monitor").unwrap();
        let theirs = once.find("local   all             all").unwrap();
        assert!(ours < theirs, "{once}");
        assert!(once.find("local   all             postgres").unwrap() < ours);
        assert_eq!(
            block[1],
            "local  kick_monitor  kick_monitor,kick_collector,kick_writer,kick_webhooks  peer map=kick-monitor"
        );
        // Idempotent: a second pass changes nothing.
        assert_eq!(add_block(&once, &block, Placement::BeforeLocalAll), once);
        // A block moved below `local all all` by hand is put back in its place.
        let moved = format!("{DEBIAN_HBA}{}\n", block.join("\n"));
        assert_eq!(add_block(&moved, &block, Placement::BeforeLocalAll), once);
    }

    #[test]
    fn ident_map_is_appended_once() {
        let block = ident_block();
        let start = "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n";
        let once = add_block(start, &block, Placement::End);
        assert!(once.starts_with(start));
        assert!(once.contains("kick-monitor  kick-monitor  kick_webhooks\n"));
        assert!(once.contains("kick-monitor  root  kick_monitor\n"));
        assert_eq!(add_block(&once, &block, Placement::End), once);
    }

    #[test]
    fn odd_database_names_are_quoted() {
        assert!(hba_block("Kick-DB")[1].starts_with("local  \"Kick-DB\"  "));
    }
}
