//! Kick's official API: an app token by OAuth client credentials (cached, renewed before expiry,
//! one retry after a 401), and the channel and livestream lookups, batched at 50 per request.
//! An HTML page (a Cloudflare challenge, even with status 200) is an error, never "offline".
//!
//! Everything Kick sends is read with a size limit ([`PAGE_LIMIT`], [`SMALL_LIMIT`]) and every
//! number in it is checked against a sane range before use (a token lifetime of `u64::MAX`
//! seconds is clamped to [`TOKEN_LIFETIME`], with a WARN; an id that is zero or negative fails the
//! page). The decoders are plain functions of the body ([`decode_page`], [`decode_token`]), fuzzed
//! without a network (`fuzz/`, `./scripts/fuzz`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::{ConfigError, KickConfig};
use crate::exit::{Classify, Exit};

/// Kick accepts at most 50 ids or slugs per request.
pub const BATCH: usize = 50;

/// The most an API page (channels, livestreams, users: at most 50 items of a few KiB) may weigh.
pub const PAGE_LIMIT: usize = 4 << 20;
/// The most an OAuth or realtime negotiation answer may weigh (they are a few hundred bytes).
pub const SMALL_LIMIT: usize = 64 << 10;
/// Accepted app-token lifetimes: anything outside is clamped (Kick documents none; kicksdk saw
/// 60 days, the OAuth examples one hour). Renewing at least daily costs one request a day.
pub const TOKEN_LIFETIME: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(86_400);
/// The official API's rate limit on our side: requests per second and burst. Kick publishes
/// none; 10/s with 50 ids per request is 500 streamers a second, plenty for a reconcile.
pub const API_RATE: f64 = 10.0;
pub const API_BURST: u32 = 20;
/// The longest `Retry-After` we honour; a larger value is clamped (a typo at Kick must not park
/// us for a week).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("kick is unreachable: {0}")]
    Unreachable(String),
    #[error("kick refused our credentials (http {status})")]
    Auth { status: u16 },
    #[error("kick rate-limited us (http 429){}", .retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    #[error("kick answered http {status}: {message}")]
    Status { status: u16, message: String },
    #[error("kick sent an html page instead of json (a challenge or block page)")]
    Html,
    #[error("kick sent a response we cannot read: {0}")]
    Decode(String),
    #[error("kick sent a response larger than {limit} bytes; not read")]
    TooLarge { limit: usize },
    #[error("not found on kick: {0}")]
    NotFound(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Classify for ApiError {
    fn exit(&self) -> Exit {
        match self {
            ApiError::Unreachable(_)
            | ApiError::Html
            | ApiError::Decode(_)
            | ApiError::TooLarge { .. } => Exit::Unavailable,
            ApiError::Auth { .. } => Exit::NoPerm,
            ApiError::RateLimited { .. } => Exit::TempFail,
            ApiError::Status { status, .. } if *status >= 500 => Exit::Unavailable,
            ApiError::Status { .. } => Exit::DataErr,
            ApiError::NotFound(_) => Exit::NoInput,
            ApiError::Config(e) => e.exit(),
        }
    }
}

/// A channel with a `channel_id` that cannot be Kick's dropped (the field is optional).
fn sane_channel(mut c: Channel) -> Channel {
    c.channel_id = c.channel_id.filter(|id| super::valid_id(*id));
    c
}

/// A channel as `GET /public/v1/channels` returns it (fields we use).
#[derive(Debug, Clone, Deserialize)]
pub struct Channel {
    #[serde(deserialize_with = "positive_id")]
    pub broadcaster_user_id: i64,
    pub slug: String,
    #[serde(default)]
    pub stream: Option<Stream>,
    #[serde(default)]
    pub stream_title: Option<String>,
    /// Not in Kick's documented response (issue #396), but used when present.
    #[serde(default, deserialize_with = "optional_positive_id")]
    pub channel_id: Option<i64>,
}

impl Channel {
    pub fn is_live(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_live)
    }
    pub fn start_time(&self) -> Option<DateTime<Utc>> {
        self.stream
            .as_ref()
            .and_then(|s| s.start_time.as_deref())
            .and_then(parse_time)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Stream {
    #[serde(default)]
    pub is_live: bool,
    #[serde(default)]
    pub start_time: Option<String>,
}

/// A live stream from `GET /public/v1/livestreams`: the only official source of the channel id.
#[derive(Debug, Clone, Deserialize)]
pub struct Livestream {
    #[serde(deserialize_with = "positive_id")]
    pub broadcaster_user_id: i64,
    #[serde(deserialize_with = "positive_id")]
    pub channel_id: i64,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
}

/// An event subscription of the app (`GET /public/v1/events/subscriptions`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Subscription {
    pub id: String,
    pub broadcaster_user_id: i64,
    pub event: String,
    #[serde(default)]
    pub version: Option<i64>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// One item of a subscribe answer: an id, or Kick's per-item error.
#[derive(Debug, Deserialize)]
struct SubscribeResult {
    #[serde(default)]
    subscription_id: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Subscriptions deleted per request (Kick failed a request removing ~330; 50 works).
pub const DELETE_BATCH: usize = 50;

/// A user from `GET /public/v1/users`.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    #[serde(deserialize_with = "positive_id")]
    pub user_id: i64,
    #[serde(default)]
    pub name: Option<String>,
}

/// Kick's ids are from 1 to 2^53 ([`super::valid_id`]): another one is a decode error (the whole
/// page fails, as for any malformed item), never a streamer with id 0 or `i64::MAX`.
fn positive_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match i64::deserialize(d)? {
        id if super::valid_id(id) => Ok(id),
        id => Err(serde::de::Error::custom(format!(
            "id {id} is not a kick id"
        ))),
    }
}

/// [`positive_id`] for an optional id (`null` or absent is `None`).
fn optional_positive_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<i64>::deserialize(d)? {
        Some(id) if !super::valid_id(id) => Err(serde::de::Error::custom(format!(
            "id {id} is not a kick id"
        ))),
        id => Ok(id),
    }
}

/// RFC 3339 in any offset ("…Z" on the wire, "+11:00" in Kick's docs).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// An app token as the OAuth server granted it, its lifetime already clamped.
#[derive(Debug)]
pub struct TokenGrant {
    pub access_token: SecretString,
    pub lifetime: Duration,
}

/// Clamps a duration from outside into `range`, with a WARN naming what was clamped.
pub fn clamp_duration(
    what: &str,
    value: Duration,
    range: &std::ops::RangeInclusive<Duration>,
) -> Duration {
    let clamped = value.clamp(*range.start(), *range.end());
    if clamped != value {
        tracing::warn!(
            what,
            value_s = value.as_secs(),
            clamped_s = clamped.as_secs(),
            "value from kick out of range: clamped"
        );
    }
    clamped
}

/// Decodes an OAuth token answer (no envelope). `expires_in` may be a number or a string, or
/// absent (an hour is assumed); the lifetime is clamped to [`TOKEN_LIFETIME`].
pub fn decode_token(body: &str) -> Result<TokenGrant, ApiError> {
    if looks_like_html(body) {
        return Err(ApiError::Html);
    }
    let tr: TokenResponse =
        serde_json::from_str(body).map_err(|e| ApiError::Decode(format!("token: {e}")))?;
    if tr.access_token.is_empty() {
        return Err(ApiError::Decode("token: empty access_token".into()));
    }
    let seconds = match tr.expires_in {
        None | Some(serde_json::Value::Null) => 3600,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            // A negative or fractional lifetime is as good as none: renew soon.
            .or_else(|| v.as_f64().map(|f| if f > 0.0 { f as u64 } else { 0 }))
            .ok_or_else(|| ApiError::Decode(format!("token: expires_in is {v}")))?,
    };
    Ok(TokenGrant {
        access_token: SecretString::from(tr.access_token),
        lifetime: clamp_duration(
            "oauth expires_in",
            Duration::from_secs(seconds),
            &TOKEN_LIFETIME,
        ),
    })
}

/// Decodes an API answer `{"data": T, "message": …}`. `path` names it in errors.
pub fn decode_page<T: serde::de::DeserializeOwned>(path: &str, body: &str) -> Result<T, ApiError> {
    if looks_like_html(body) {
        return Err(ApiError::Html);
    }
    let env: Envelope<T> =
        serde_json::from_str(body).map_err(|e| ApiError::Decode(format!("{path}: {e}")))?;
    Ok(env.data)
}

/// Reads a response body, refusing more than `limit` bytes (the rest is never buffered).
pub async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<String, ApiError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
        if buf.len().saturating_add(chunk.len()) > limit {
            return Err(ApiError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

struct Token {
    value: SecretString,
    renew_at: Instant,
}

/// The official API client. Cheap to share behind an `Arc`; the token is cached inside.
pub struct ApiClient {
    http: reqwest::Client,
    cfg: std::sync::Mutex<KickConfig>,
    /// One bucket for the official API (Kick publishes no limits; see `ratelimit`).
    limiter: crate::ratelimit::RateLimiter,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("api_url", &self.cfg.lock().unwrap().api_url)
            .finish_non_exhaustive()
    }
}

fn transport_error(e: &reqwest::Error) -> ApiError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    ApiError::Unreachable(msg.to_lowercase())
}

pub fn looks_like_html(body: &str) -> bool {
    let head = body
        .trim_start()
        .get(..200.min(body.trim_start().len()))
        .unwrap_or("")
        .to_ascii_lowercase();
    head.starts_with("<!doctype")
        || head.starts_with("<html")
        || head.contains("just a moment")
        || head.contains("cf_chl")
}

impl ApiClient {
    pub fn new(cfg: KickConfig) -> Result<Self, ApiError> {
        crate::init_tls();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("kick-monitor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| transport_error(&e))?;
        Ok(Self {
            http,
            cfg: std::sync::Mutex::new(cfg),
            limiter: crate::ratelimit::RateLimiter::new("api.kick.com", API_RATE, API_BURST),
            token: Mutex::new(None),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Uses new settings (after `config_changed`); a cached token is dropped when the
    /// credentials or the OAuth server changed.
    pub async fn set_config(&self, cfg: KickConfig) {
        let changed = {
            let mut cur = self.cfg.lock().unwrap();
            let changed = cur.auth_url != cfg.auth_url
                || cur.client_id != cfg.client_id
                || cur
                    .client_secret
                    .as_ref()
                    .map(|s| s.expose_secret().to_owned())
                    != cfg
                        .client_secret
                        .as_ref()
                        .map(|s| s.expose_secret().to_owned());
            *cur = cfg;
            changed
        };
        if changed {
            *self.token.lock().await = None;
        }
    }

    /// Obtains an app token (or uses the cached one): proves the credentials work.
    pub async fn check_token(&self) -> Result<(), ApiError> {
        self.token().await.map(|_| ())
    }

    /// The official API's rate limiter (a 429 pauses it for `Retry-After`).
    pub fn limiter(&self) -> &crate::ratelimit::RateLimiter {
        &self.limiter
    }

    async fn token(&self) -> Result<SecretString, ApiError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.clone());
        }
        let (auth_url, (id, secret)) = {
            let cfg = self.cfg.lock().unwrap();
            (cfg.auth_url.clone(), cfg.credentials()?)
        };
        self.limiter.acquire().await;
        let resp = self
            .http
            .post(format!("{auth_url}/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", secret.expose_secret()),
            ])
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(&resp);
        let body = read_body(resp, SMALL_LIMIT).await?;
        match status {
            200 => {}
            400 | 401 | 403 => return Err(ApiError::Auth { status }),
            429 => return Err(ApiError::RateLimited { retry_after }),
            _ => return Err(status_error(status, &body)),
        }
        let grant = decode_token(&body)?;
        // Renew at 90% of the lifetime, and at least a minute early (never past half of it).
        let lifetime = grant.lifetime;
        let early = (lifetime / 10)
            .max(Duration::from_secs(60))
            .min(lifetime / 2);
        let value = grant.access_token;
        *guard = Some(Token {
            value: value.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(early),
        });
        tracing::debug!(lifetime_s = lifetime.as_secs(), "kick app token obtained");
        Ok(value)
    }

    /// GET `path` with the app token; one retry with a fresh token after a 401.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        let body = self.send(reqwest::Method::GET, path, query, None).await?;
        decode_page(path, &body)
    }

    /// One request with the app token; one retry with a fresh token after a 401. Returns the
    /// body of a 2xx answer.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        json: Option<&serde_json::Value>,
    ) -> Result<String, ApiError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let api_url = self.cfg.lock().unwrap().api_url.clone();
            self.limiter.acquire().await;
            let mut req = self
                .http
                .request(method.clone(), format!("{api_url}{path}"))
                .bearer_auth(token.expose_secret())
                .query(query);
            if let Some(j) = json {
                req = req.json(j);
            }
            let resp = req.send().await.map_err(|e| transport_error(&e))?;
            let status = resp.status().as_u16();
            let retry_after = retry_after(&resp);
            let body = read_body(resp, PAGE_LIMIT).await?;
            match status {
                200..=299 => return Ok(body),
                401 if attempt == 0 => {
                    *self.token.lock().await = None;
                    continue;
                }
                401 | 403 => {
                    return if looks_like_html(&body) {
                        Err(ApiError::Html)
                    } else {
                        Err(ApiError::Auth { status })
                    };
                }
                429 => {
                    self.limiter
                        .pause(retry_after.unwrap_or(Duration::from_secs(5)));
                    return Err(ApiError::RateLimited { retry_after });
                }
                _ => return Err(status_error(status, &body)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Every event subscription of this app (`GET /public/v1/events/subscriptions`).
    pub async fn subscriptions(&self) -> Result<Vec<Subscription>, ApiError> {
        self.get("/public/v1/events/subscriptions", &[]).await
    }

    /// Subscribes `livestream.status.updated` v1 for a broadcaster. The outer error is the
    /// request's; the inner one Kick's per-item refusal (e.g. "subscription limit reached").
    pub async fn subscribe_status(
        &self,
        broadcaster_user_id: i64,
    ) -> Result<Result<String, String>, ApiError> {
        let path = "/public/v1/events/subscriptions";
        let body = serde_json::json!({
            "broadcaster_user_id": broadcaster_user_id,
            "events": [{"name": crate::kick::webhook::STATUS_UPDATED, "version": 1}],
            "method": "webhook",
        });
        let text = self
            .send(reqwest::Method::POST, path, &[], Some(&body))
            .await?;
        let items: Vec<SubscribeResult> = decode_page(path, &text)?;
        let item = items
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Decode(format!("{path}: an empty answer")))?;
        Ok(match (item.subscription_id, item.error) {
            (Some(id), None) => Ok(id),
            (_, Some(e)) => Err(e),
            (None, None) => Err("no subscription id".into()),
        })
    }

    /// Deletes subscriptions, at most [`DELETE_BATCH`] per request (Kick fails larger ones).
    pub async fn unsubscribe(&self, ids: &[String]) -> Result<(), ApiError> {
        for chunk in ids.chunks(DELETE_BATCH) {
            let q: Vec<_> = chunk.iter().map(|id| ("id", id.clone())).collect();
            self.send(
                reqwest::Method::DELETE,
                "/public/v1/events/subscriptions",
                &q,
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Kick's webhook public key, PEM (`GET /public/v1/public-key`). The key is public: no
    /// token is sent, so a receiver without app credentials can verify deliveries.
    pub async fn public_key(&self) -> Result<String, ApiError> {
        #[derive(Deserialize)]
        struct Key {
            public_key: String,
        }
        let path = "/public/v1/public-key";
        let api_url = self.cfg.lock().unwrap().api_url.clone();
        self.limiter.acquire().await;
        let resp = self
            .http
            .get(format!("{api_url}{path}"))
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        let body = read_body(resp, SMALL_LIMIT).await?;
        if status != 200 {
            return Err(ApiError::Status {
                status,
                message: body.chars().take(200).collect(),
            });
        }
        let k: Key = decode_page(path, &body)?;
        Ok(k.public_key)
    }

    /// Channels by broadcaster user id, batched at 50. Ids Kick does not return are absent.
    pub async fn channels_by_ids(&self, ids: &[i64]) -> Result<Vec<Channel>, ApiError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let q: Vec<_> = chunk
                .iter()
                .map(|id| ("broadcaster_user_id", id.to_string()))
                .collect();
            let got = self.get::<Vec<Channel>>("/public/v1/channels", &q).await?;
            // Only what was asked for, with ids that can be Kick's (see `valid_id`).
            out.extend(
                got.into_iter()
                    .filter(|c| chunk.contains(&c.broadcaster_user_id))
                    .map(sane_channel),
            );
        }
        Ok(out)
    }

    /// Channels by slug. One unknown slug fails Kick's whole request with 400, so a failed batch
    /// is retried one slug at a time; unknown slugs are returned in the second list.
    pub async fn channels_by_slugs(
        &self,
        slugs: &[String],
    ) -> Result<(Vec<Channel>, Vec<String>), ApiError> {
        let mut found = Vec::new();
        let mut unknown = Vec::new();
        for chunk in slugs.chunks(BATCH) {
            let q: Vec<_> = chunk.iter().map(|s| ("slug", s.clone())).collect();
            match self.get::<Vec<Channel>>("/public/v1/channels", &q).await {
                Ok(chs) => {
                    let chs: Vec<Channel> = chs
                        .into_iter()
                        .filter(|c| super::valid_id(c.broadcaster_user_id))
                        .map(sane_channel)
                        .collect();
                    for s in chunk {
                        if !chs.iter().any(|c| c.slug.eq_ignore_ascii_case(s)) {
                            unknown.push(s.clone());
                        }
                    }
                    found.extend(chs);
                }
                Err(ApiError::Status {
                    status: 400 | 404, ..
                }) => {
                    for s in chunk {
                        match self
                            .get::<Vec<Channel>>("/public/v1/channels", &[("slug", s.clone())])
                            .await
                        {
                            Ok(chs) if !chs.is_empty() => found.extend(
                                chs.into_iter()
                                    .filter(|c| super::valid_id(c.broadcaster_user_id))
                                    .map(sane_channel),
                            ),
                            Ok(_)
                            | Err(ApiError::Status {
                                status: 400 | 404, ..
                            }) => unknown.push(s.clone()),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok((found, unknown))
    }

    /// Users by id (display names), batched at 50.
    pub async fn users_by_ids(&self, ids: &[i64]) -> Result<Vec<User>, ApiError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(BATCH) {
            let q: Vec<_> = chunk.iter().map(|id| ("id", id.to_string())).collect();
            out.extend(self.get::<Vec<User>>("/public/v1/users", &q).await?);
        }
        Ok(out)
    }

    /// Live streams of these broadcasters (offline ones are simply absent), batched at 50.
    pub async fn livestreams_by_ids(&self, ids: &[i64]) -> Result<Vec<Livestream>, ApiError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(BATCH) {
            let mut q: Vec<_> = chunk
                .iter()
                .map(|id| ("broadcaster_user_id", id.to_string()))
                .collect();
            q.push(("limit", "100".into()));
            let got = self
                .get::<Vec<Livestream>>("/public/v1/livestreams", &q)
                .await?;
            out.extend(got.into_iter().filter(|l| {
                chunk.contains(&l.broadcaster_user_id) && super::valid_id(l.channel_id)
            }));
        }
        Ok(out)
    }
}

/// `Retry-After` in seconds, clamped to [`MAX_RETRY_AFTER`] (an HTTP date is ignored).
pub fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

pub fn status_error(status: u16, body: &str) -> ApiError {
    if looks_like_html(body) {
        return ApiError::Html;
    }
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(120).collect());
    ApiError::Status { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetimes_from_outside_are_clamped() {
        let cases: &[(&str, u64)] = &[
            (r#"{"access_token":"a","expires_in":3600}"#, 3600),
            (r#"{"access_token":"a","expires_in":"7200"}"#, 7200),
            (r#"{"access_token":"a"}"#, 3600),
            (r#"{"access_token":"a","expires_in":null}"#, 3600),
            (
                r#"{"access_token":"a","expires_in":18446744073709551615}"#,
                86_400,
            ),
            (r#"{"access_token":"a","expires_in":1e300}"#, 86_400),
            (r#"{"access_token":"a","expires_in":-5}"#, 60),
            (r#"{"access_token":"a","expires_in":0}"#, 60),
            (r#"{"access_token":"a","expires_in":5184000}"#, 86_400),
        ];
        for (body, want) in cases {
            let g = decode_token(body).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(g.lifetime, Duration::from_secs(*want), "{body}");
        }
        for bad in [
            "",
            "<!DOCTYPE html><html>",
            r#"{"access_token":""}"#,
            r#"{"access_token":5}"#,
            r#"{"access_token":"a","expires_in":{"x":1}}"#,
            r#"[1,2]"#,
        ] {
            assert!(decode_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages_decode_or_fail_cleanly() {
        let chs: Vec<Channel> = decode_page(
            "/c",
            r#"{"data":[{"broadcaster_user_id":1,"slug":"a","stream":{"is_live":true,"start_time":"2026-01-01T00:00:00Z"}}],"message":"OK"}"#,
        )
        .unwrap();
        assert!(chs[0].is_live());
        assert!(matches!(
            decode_page::<Vec<Channel>>("/c", "<html>"),
            Err(ApiError::Html)
        ));
        assert!(matches!(
            decode_page::<Vec<Channel>>("/c", r#"{"data":[{"broadcaster_user_id":"x"}]}"#),
            Err(ApiError::Decode(_))
        ));
        // Deep nesting is refused by the JSON parser's recursion limit, not by a stack overflow.
        let deep = format!("{{\"data\":{}{}}}", "[".repeat(3000), "]".repeat(3000));
        assert!(decode_page::<Vec<Channel>>("/c", &deep).is_err());
    }

    /// See: fuzz finding, api_livestreams' first crash (and the hostile seeds of api_channels
    /// and api_users). Zero and negative ids were accepted; a livestream with `channel_id` 0
    /// would have taught the collector channel 0. Such an id now fails the page.
    #[test]
    fn fuzz_non_positive_api_ids_fail_the_page() {
        for body in [
            r#"{"data":[{"broadcaster_user_id":0,"slug":"a"}]}"#,
            r#"{"data":[{"broadcaster_user_id":-1,"slug":"a"}]}"#,
            r#"{"data":[{"broadcaster_user_id":1,"slug":"a","channel_id":0}]}"#,
        ] {
            assert!(
                matches!(
                    decode_page::<Vec<Channel>>("/c", body),
                    Err(ApiError::Decode(_))
                ),
                "{body}"
            );
        }
        for body in [
            r#"{"data":[{"broadcaster_user_id":1,"channel_id":0}]}"#,
            r#"{"data":[{"broadcaster_user_id":-9223372036854775808,"channel_id":1}]}"#,
        ] {
            assert!(
                decode_page::<Vec<Livestream>>("/l", body).is_err(),
                "{body}"
            );
        }
        assert!(decode_page::<Vec<User>>("/u", r#"{"data":[{"user_id":0}]}"#).is_err());
        // Absent or null optional ids are still fine.
        let chs: Vec<Channel> = decode_page(
            "/c",
            r#"{"data":[{"broadcaster_user_id":1,"slug":"a","channel_id":null},{"broadcaster_user_id":2,"slug":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(chs[0].channel_id, None);
        assert_eq!(chs[1].channel_id, None);
    }
}
