//! Kick's official API: an app token by OAuth client credentials (cached, renewed before expiry,
//! one retry after a 401), and the channel and livestream lookups, batched at 50 per request.
//! An HTML page (a Cloudflare challenge, even with status 200) is an error, never "offline".

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::{ConfigError, KickConfig};
use crate::exit::{Classify, Exit};

/// Kick accepts at most 50 ids or slugs per request.
pub const BATCH: usize = 50;

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
    #[error("not found on kick: {0}")]
    NotFound(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Classify for ApiError {
    fn exit(&self) -> Exit {
        match self {
            ApiError::Unreachable(_) | ApiError::Html | ApiError::Decode(_) => Exit::Unavailable,
            ApiError::Auth { .. } => Exit::NoPerm,
            ApiError::RateLimited { .. } => Exit::TempFail,
            ApiError::Status { status, .. } if *status >= 500 => Exit::Unavailable,
            ApiError::Status { .. } => Exit::DataErr,
            ApiError::NotFound(_) => Exit::NoInput,
            ApiError::Config(e) => e.exit(),
        }
    }
}

/// A channel as `GET /public/v1/channels` returns it (fields we use).
#[derive(Debug, Clone, Deserialize)]
pub struct Channel {
    pub broadcaster_user_id: i64,
    pub slug: String,
    #[serde(default)]
    pub stream: Option<Stream>,
    #[serde(default)]
    pub stream_title: Option<String>,
    /// Not in Kick's documented response (issue #396), but used when present.
    #[serde(default)]
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
    pub broadcaster_user_id: i64,
    pub channel_id: i64,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
}

/// A user from `GET /public/v1/users`.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub user_id: i64,
    #[serde(default)]
    pub name: Option<String>,
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

struct Token {
    value: SecretString,
    renew_at: Instant,
}

/// The official API client. Cheap to share behind an `Arc`; the token is cached inside.
pub struct ApiClient {
    http: reqwest::Client,
    cfg: KickConfig,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("api_url", &self.cfg.api_url)
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

fn looks_like_html(body: &str) -> bool {
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
            cfg,
            token: Mutex::new(None),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn token(&self) -> Result<SecretString, ApiError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.clone());
        }
        let (id, secret) = self.cfg.credentials()?;
        let resp = self
            .http
            .post(format!("{}/oauth/token", self.cfg.auth_url))
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
        let body = resp.text().await.map_err(|e| transport_error(&e))?;
        match status {
            200 => {}
            400 | 401 | 403 => return Err(ApiError::Auth { status }),
            429 => return Err(ApiError::RateLimited { retry_after }),
            _ => return Err(status_error(status, &body)),
        }
        if looks_like_html(&body) {
            return Err(ApiError::Html);
        }
        let tr: TokenResponse =
            serde_json::from_str(&body).map_err(|e| ApiError::Decode(format!("token: {e}")))?;
        let expires_in = tr
            .expires_in
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(3600);
        // Renew at 90% of the lifetime, and at least a minute early.
        let lifetime = Duration::from_secs(expires_in);
        let early = (lifetime / 10)
            .max(Duration::from_secs(60))
            .min(lifetime / 2);
        let value = SecretString::from(tr.access_token);
        *guard = Some(Token {
            value: value.clone(),
            renew_at: Instant::now() + lifetime - early,
        });
        tracing::debug!(expires_in, "kick app token obtained");
        Ok(value)
    }

    /// GET `path` with the app token; one retry with a fresh token after a 401.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let resp = self
                .http
                .get(format!("{}{path}", self.cfg.api_url))
                .bearer_auth(token.expose_secret())
                .query(query)
                .send()
                .await
                .map_err(|e| transport_error(&e))?;
            let status = resp.status().as_u16();
            let retry_after = retry_after(&resp);
            let body = resp.text().await.map_err(|e| transport_error(&e))?;
            match status {
                200 => {
                    if looks_like_html(&body) {
                        return Err(ApiError::Html);
                    }
                    let env: Envelope<T> = serde_json::from_str(&body)
                        .map_err(|e| ApiError::Decode(format!("{path}: {e}")))?;
                    return Ok(env.data);
                }
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
                429 => return Err(ApiError::RateLimited { retry_after }),
                _ => return Err(status_error(status, &body)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Channels by broadcaster user id, batched at 50. Ids Kick does not return are absent.
    pub async fn channels_by_ids(&self, ids: &[i64]) -> Result<Vec<Channel>, ApiError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let q: Vec<_> = chunk
                .iter()
                .map(|id| ("broadcaster_user_id", id.to_string()))
                .collect();
            out.extend(self.get::<Vec<Channel>>("/public/v1/channels", &q).await?);
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
                            Ok(chs) if !chs.is_empty() => found.extend(chs),
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
            out.extend(
                self.get::<Vec<Livestream>>("/public/v1/livestreams", &q)
                    .await?,
            );
        }
        Ok(out)
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn status_error(status: u16, body: &str) -> ApiError {
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
