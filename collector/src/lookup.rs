//! Learning missing realtime channel ids from Kick's website API, when the operator enabled it
//! (`KICK_CHANNEL_LOOKUP=web`; off by default: it is an unofficial endpoint, behind Cloudflare).
//! The official sources come first (`/public/v1/livestreams` while it exists, `--channel-id`);
//! this one fills the rest, paced at [`RATE`] lookups a second, and a 403 or 429 means "not now":
//! lookups pause for [`PAUSE`]. The id is staged (`ChannelId`) and the writer stores it; the
//! `streamers_changed` trigger then makes the placement subscribe it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kick_shared::config::ChannelLookup;
use kick_shared::kick::api::{self, SMALL_LIMIT};
use kick_shared::kick::realtime::negotiate::USER_AGENT;
use kick_shared::ratelimit::RateLimiter;
use serde_json::Value;

use crate::ctx::Ctx;
use crate::rows;

/// Lookups per second.
pub const RATE: f64 = 1.0;
/// How long lookups stop after a refusal.
pub const PAUSE: Duration = Duration::from_secs(600);
/// How often the streamers without a channel id are looked at.
const EVERY: Duration = Duration::from_secs(60);

/// Why one lookup did not give an id.
#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error("kick refused the lookup (http {0})")]
    Refused(u16),
    #[error("{0}")]
    Failed(String),
}

/// Runs until shutdown (supervised); idle unless `KICK_CHANNEL_LOOKUP=web`.
pub async fn run(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let pace = RateLimiter::new("kick.com channel lookups", RATE, 1);
    loop {
        if ctx.cfg().channel_lookup == ChannelLookup::Web {
            let rows = ctx
                .query(
                    "SELECT kick_user_id, username FROM streamers
                     WHERE enabled AND kick_channel_id IS NULL
                       AND mod(kick_user_id, 64)::int = ANY($1)
                     ORDER BY id LIMIT 1000",
                    // Each collector looks up the streamers of the shards it holds.
                    &[&ctx.leases.shards()],
                )
                .await?;
            for r in rows {
                let (user_id, slug): (i64, String) = (r.get("kick_user_id"), r.get("username"));
                if ctx.shutdown.is_cancelled() {
                    return Ok(());
                }
                pace.acquire().await;
                match lookup(&ctx, &slug, user_id).await {
                    Ok(Some(channel)) => {
                        tracing::info!(username = %slug, channel, "channel id learned from kick's website");
                        ctx.stager
                            .stage_wait(rows::channel_id(user_id, channel, "web", Utc::now()))
                            .await;
                    }
                    Ok(None) => {}
                    Err(LookupError::Refused(status)) => {
                        tracing::warn!(
                            status,
                            pause_s = PAUSE.as_secs(),
                            "kick's website refused a channel lookup: pausing lookups"
                        );
                        pace.pause(PAUSE);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(username = %slug, error = %e, "channel lookup failed");
                    }
                }
            }
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// `GET {KICK_SITE_URL}/api/v2/channels/{slug}`: the channel id, if the answer is for this
/// user (a slug can be taken over after a rename).
async fn lookup(ctx: &Ctx, slug: &str, user_id: i64) -> Result<Option<i64>, LookupError> {
    let url = format!("{}/api/v2/channels/{slug}", ctx.cfg().site_url);
    let resp = ctx
        .api
        .http()
        .get(url)
        .header(reqwest::header::USER_AGENT, USER_AGENT)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| LookupError::Failed(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = api::read_body(resp, SMALL_LIMIT * 4)
        .await
        .map_err(|e| LookupError::Failed(e.to_string()))?;
    if matches!(status, 403 | 429) || api::looks_like_html(&body) {
        return Err(LookupError::Refused(status));
    }
    if status == 404 {
        return Ok(None);
    }
    if status != 200 {
        return Err(LookupError::Failed(format!("http {status}")));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| LookupError::Failed(e.to_string()))?;
    let id = v.get("id").and_then(Value::as_i64).filter(|i| *i > 0);
    let owner = v.get("user_id").and_then(Value::as_i64);
    Ok(id.filter(|_| owner == Some(user_id)))
}
