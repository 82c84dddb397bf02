//! Keeping Kick's webhook subscriptions equal to the enabled streamers: one
//! `livestream.status.updated` v1 subscription per `broadcaster_user_id` (an app token may
//! subscribe for any channel). Used by `kick-admin webhooks sync` and by the receiver's periodic
//! re-sync (Kick unsubscribes an app silently after a day of failed deliveries). The last synced
//! state is mirrored in `webhook_subscriptions`, which `v_streamer_status.coverage` reads.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tokio_postgres::Client;

use crate::kick::api::{ApiClient, ApiError, Subscription};
use crate::kick::webhook::STATUS_UPDATED;

/// What a sync will do.
#[derive(Debug, Default, Serialize)]
pub struct Plan {
    /// Broadcasters to subscribe.
    pub create: Vec<i64>,
    /// Subscriptions to delete (of removed or disabled streamers, and duplicates).
    pub delete: Vec<Subscription>,
    /// Subscriptions that stay.
    pub keep: Vec<Subscription>,
}

/// Compares Kick's subscriptions with the wanted broadcasters. Subscriptions to other events
/// are left alone.
pub fn plan(existing: &[Subscription], wanted: &BTreeSet<i64>) -> Plan {
    let mut plan = Plan::default();
    let mut seen: BTreeSet<i64> = BTreeSet::new();
    for s in existing.iter().filter(|s| s.event == STATUS_UPDATED) {
        if wanted.contains(&s.broadcaster_user_id) && seen.insert(s.broadcaster_user_id) {
            plan.keep.push(s.clone());
        } else {
            plan.delete.push(s.clone());
        }
    }
    plan.create = wanted.difference(&seen).copied().collect();
    plan
}

/// What a sync did.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub created: usize,
    pub deleted: usize,
    pub kept: usize,
    /// Kick's per-item refusals, by broadcaster (e.g. "subscription limit reached").
    pub errors: BTreeMap<i64, String>,
    /// broadcaster → subscription id, as it now stands.
    #[serde(skip)]
    pub active: BTreeMap<i64, String>,
}

/// Carries out `plan`. A request failing (not an item) stops the sync with that error.
pub async fn apply(api: &ApiClient, plan: &Plan) -> Result<Outcome, ApiError> {
    let mut out = Outcome {
        kept: plan.keep.len(),
        active: plan
            .keep
            .iter()
            .map(|s| (s.broadcaster_user_id, s.id.clone()))
            .collect(),
        ..Outcome::default()
    };
    let ids: Vec<String> = plan.delete.iter().map(|s| s.id.clone()).collect();
    api.unsubscribe(&ids).await?;
    out.deleted = ids.len();
    for b in &plan.create {
        match api.subscribe_status(*b).await? {
            Ok(id) => {
                out.created += 1;
                out.active.insert(*b, id);
            }
            Err(e) => {
                out.errors.insert(*b, e);
            }
        }
    }
    Ok(out)
}

/// The enabled streamers' Kick user ids.
pub async fn wanted(client: &Client) -> Result<BTreeSet<i64>, tokio_postgres::Error> {
    Ok(client
        .query("SELECT kick_user_id FROM streamers WHERE enabled", &[])
        .await?
        .iter()
        .map(|r| r.get("kick_user_id"))
        .collect())
}

/// Mirrors the active subscriptions in `webhook_subscriptions` (one transaction).
pub async fn record(
    client: &mut Client,
    active: &BTreeMap<i64, String>,
) -> Result<(), tokio_postgres::Error> {
    let users: Vec<i64> = active.keys().copied().collect();
    let ids: Vec<&str> = active.values().map(String::as_str).collect();
    let tx = client.transaction().await?;
    tx.execute(
        "DELETE FROM webhook_subscriptions WHERE NOT (kick_user_id = ANY($1))",
        &[&users],
    )
    .await?;
    tx.execute(
        "INSERT INTO webhook_subscriptions (kick_user_id, subscription_id, synced_at)
         SELECT u, i, now() FROM unnest($1::bigint[], $2::text[]) AS x(u, i)
         ON CONFLICT (kick_user_id) DO UPDATE SET subscription_id = excluded.subscription_id,
                                                  synced_at = now()",
        &[&users, &ids],
    )
    .await?;
    tx.commit().await
}

/// Why a sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("database: {}", crate::db::cause_line(.0))]
    Db(#[from] tokio_postgres::Error),
}

impl crate::exit::Classify for SyncError {
    fn exit(&self) -> crate::exit::Exit {
        match self {
            SyncError::Api(e) => e.exit(),
            SyncError::Db(e) => match e.code() {
                Some(c) if c == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
                    crate::exit::Exit::NoPerm
                }
                _ => crate::exit::Exit::Unavailable,
            },
        }
    }
}

/// One sync: reads the enabled streamers and Kick's subscriptions, plans, and (unless
/// `dry_run`) carries the plan out and records the result.
pub async fn sync(
    api: &ApiClient,
    client: &mut Client,
    dry_run: bool,
) -> Result<(Plan, Option<Outcome>), SyncError> {
    let wanted = wanted(client).await?;
    let existing = api.subscriptions().await?;
    let plan = plan(&existing, &wanted);
    if dry_run {
        return Ok((plan, None));
    }
    let outcome = apply(api, &plan).await?;
    record(client, &outcome.active).await?;
    Ok((plan, Some(outcome)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, b: i64, event: &str) -> Subscription {
        Subscription {
            id: id.into(),
            broadcaster_user_id: b,
            event: event.into(),
            version: Some(1),
            method: Some("webhook".into()),
            created_at: None,
        }
    }

    #[test]
    fn plans_create_delete_and_keep() {
        let existing = vec![
            sub("a", 1, STATUS_UPDATED),
            sub("b", 2, STATUS_UPDATED),
            sub("c", 2, STATUS_UPDATED),
            sub("d", 9, "chat.message.sent"),
            sub("e", 5, STATUS_UPDATED),
        ];
        let wanted = BTreeSet::from([1, 2, 3]);
        let p = plan(&existing, &wanted);
        assert_eq!(p.create, vec![3]);
        let deleted: Vec<&str> = p.delete.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(deleted, ["c", "e"], "a duplicate and a removed streamer's");
        assert_eq!(p.keep.len(), 2);
        // Idempotent: once done, nothing to do.
        let after = vec![
            sub("a", 1, STATUS_UPDATED),
            sub("b", 2, STATUS_UPDATED),
            sub("f", 3, STATUS_UPDATED),
        ];
        let p = plan(&after, &wanted);
        assert!(p.create.is_empty() && p.delete.is_empty());
    }
}
