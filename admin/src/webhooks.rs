//! `kick-admin webhooks`: the app's `livestream.status.updated` subscriptions at Kick.
//!
//! `list` compares Kick's subscriptions with the enabled streamers and shows each one's state;
//! `sync` makes them equal (creates the missing ones, deletes those of removed or disabled
//! streamers and duplicates, 50 ids per DELETE) and records the result in
//! `webhook_subscriptions`, which the `webhook` coverage of `v_streamer_status` reads. Kick's
//! per-item refusals are reported per streamer; "subscription limit reached" exits 75 (try again
//! once subscriptions are freed), any other refusal 65.

use std::collections::{BTreeMap, BTreeSet};

use clap::Subcommand;
use kick_shared::config::Config;
use kick_shared::db;
use kick_shared::exit::Exit;
use kick_shared::kick::api::ApiClient;
use kick_shared::kick::subscriptions::{self, Outcome, Plan};
use kick_shared::kick::webhook::STATUS_UPDATED;
use serde_json::json;

use crate::table;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Kick's subscriptions of this app next to the enabled streamers: `subscribed`, `missing`
    /// (an enabled streamer without one), `orphaned` (no enabled streamer), `duplicate`, or
    /// `other event` (left alone by sync).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make Kick's livestream.status.updated subscriptions equal to the enabled streamers.
    /// Exit 75 when Kick refused some for its subscription limit, 65 for other refusals.
    Sync {
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

/// An enabled streamer, by Kick user id.
async fn streamers(client: &tokio_postgres::Client) -> anyhow::Result<BTreeMap<i64, String>> {
    Ok(client
        .query(
            "SELECT kick_user_id, username FROM streamers WHERE enabled ORDER BY kick_user_id",
            &[],
        )
        .await
        .map_err(db::DbError::from)?
        .iter()
        .map(|r| (r.get("kick_user_id"), r.get("username")))
        .collect())
}

pub async fn run(cmd: WebhooksCommand, config: &Config) -> anyhow::Result<Exit> {
    let mut client = db::connect(&config.database).await?;
    let api = ApiClient::new(config.kick.clone())?;
    match cmd {
        WebhooksCommand::List { json } => list(&api, &client, json).await,
        WebhooksCommand::Sync { dry_run, json } => sync(&api, &mut client, dry_run, json).await,
    }
}

async fn list(
    api: &ApiClient,
    client: &tokio_postgres::Client,
    json: bool,
) -> anyhow::Result<Exit> {
    let names = streamers(client).await?;
    let subs = api.subscriptions().await?;
    let mut seen = BTreeSet::new();
    let mut rows = Vec::new();
    for s in &subs {
        let state = if s.event != STATUS_UPDATED {
            "other event"
        } else if !names.contains_key(&s.broadcaster_user_id) {
            "orphaned"
        } else if !seen.insert(s.broadcaster_user_id) {
            "duplicate"
        } else {
            "subscribed"
        };
        rows.push(json!({
            "kick_user_id": s.broadcaster_user_id,
            "username": names.get(&s.broadcaster_user_id),
            "subscription_id": s.id,
            "event": s.event,
            "version": s.version,
            "created_at": s.created_at,
            "state": state,
        }));
    }
    for (user, name) in &names {
        if !seen.contains(user) {
            rows.push(json!({
                "kick_user_id": user, "username": name, "subscription_id": null,
                "event": STATUS_UPDATED, "version": null, "created_at": null, "state": "missing",
            }));
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(Exit::Ok);
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            [
                "kick_user_id",
                "username",
                "state",
                "subscription_id",
                "event",
                "created_at",
            ]
            .iter()
            .map(|k| text(&r[k]))
            .collect()
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "USER_ID",
                "STREAMER",
                "STATE",
                "SUBSCRIPTION",
                "EVENT",
                "CREATED"
            ],
            &table_rows
        )
    );
    let count = |state: &str| rows.iter().filter(|r| r["state"] == state).count();
    let to_fix = count("missing") + count("orphaned") + count("duplicate");
    println!(
        "{} subscribed, {} missing, {} orphaned, {} duplicate{}",
        count("subscribed"),
        count("missing"),
        count("orphaned"),
        count("duplicate"),
        if to_fix > 0 {
            " (run `kick-admin webhooks sync` to fix)"
        } else {
            ""
        }
    );
    Ok(Exit::Ok)
}

async fn sync(
    api: &ApiClient,
    client: &mut tokio_postgres::Client,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<Exit> {
    let names = streamers(client).await?;
    let (plan, outcome) = subscriptions::sync(api, client, dry_run).await?;
    let name = |u: &i64| names.get(u).cloned().unwrap_or_else(|| "-".into());
    let exit = outcome.as_ref().map_or(Exit::Ok, exit_for);
    if json {
        let errors: Vec<_> = outcome
            .iter()
            .flat_map(|o| &o.errors)
            .map(|(u, e)| json!({"kick_user_id": u, "username": name(u), "error": e}))
            .collect();
        println!(
            "{}",
            json!({
                "dry_run": dry_run,
                "create": plan.create,
                "delete": plan.delete.iter().map(|s| json!({"subscription_id": s.id, "kick_user_id": s.broadcaster_user_id})).collect::<Vec<_>>(),
                "keep": plan.keep.len(),
                "created": outcome.as_ref().map(|o| o.created),
                "deleted": outcome.as_ref().map(|o| o.deleted),
                "errors": errors,
            })
        );
        return Ok(exit);
    }
    match &outcome {
        None => print_plan(&plan, &name),
        Some(o) => {
            println!(
                "created {}, deleted {}, kept {}, refused {}",
                o.created,
                o.deleted,
                o.kept,
                o.errors.len()
            );
            for (u, e) in &o.errors {
                eprintln!("kick-admin: webhooks sync: {} (user {u}): {e}", name(u));
            }
        }
    }
    Ok(exit)
}

fn print_plan(plan: &Plan, name: &dyn Fn(&i64) -> String) {
    println!(
        "would create {}, delete {}, keep {} (dry run: nothing changed)",
        plan.create.len(),
        plan.delete.len(),
        plan.keep.len()
    );
    for u in &plan.create {
        println!("create  {u} {}", name(u));
    }
    for s in &plan.delete {
        println!(
            "delete  {} {} ({})",
            s.broadcaster_user_id,
            name(&s.broadcaster_user_id),
            s.id
        );
    }
}

/// 75 when Kick's subscription limit refused some (freeing subscriptions fixes it), 65 for
/// other refusals, 0 when none.
fn exit_for(o: &Outcome) -> Exit {
    if o.errors.is_empty() {
        Exit::Ok
    } else if o
        .errors
        .values()
        .all(|e| e.to_lowercase().contains("limit"))
    {
        Exit::TempFail
    } else {
        Exit::DataErr
    }
}
