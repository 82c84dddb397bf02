//! Kick's web realtime endpoints (`KICK_WEB_URL`): where to connect (the general negotiation,
//! or the per-channel one that names the region serving a channel) and the guest connection
//! token. Every request waits for the shared web rate limiter; answers are read with a size
//! limit; refusals (403 challenge, 423 country block, 429) are a class of their own, paused with
//! `Retry-After` and retried only after a long wait.

use std::time::Duration;

use crate::config::Transport;
use crate::kick::KICK_ORIGIN;
use crate::kick::api::{self, ApiError, SMALL_LIMIT};
use crate::ratelimit::RateLimiter;
use serde_json::{Value, json};

/// The User-Agent on every request and WebSocket handshake to Kick.
pub const USER_AGENT: &str = concat!(
    "kick-monitor/",
    env!("CARGO_PKG_VERSION"),
    " (+https://example.invalid/kick-monitor)"
);

/// A random UUIDv4, as Kick's web client uses for its client id (a fresh one per connection, and
/// after every refusal).
pub fn new_client_id() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

/// How long to stay away after Kick refused a negotiation without saying for how long.
pub const REFUSAL_PAUSE: Duration = Duration::from_secs(300);
/// The longest pause a refusal's `Retry-After` can ask for.
pub const MAX_REFUSAL_PAUSE: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    /// Kick refused us (403 challenge, 423 country block, 429): wait long, do not hammer.
    #[error("kick refused {what} (http {status})")]
    Refused {
        what: &'static str,
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("{what}: {source}")]
    Unavailable {
        what: &'static str,
        #[source]
        source: ApiError,
    },
    #[error("{what}: unexpected answer: {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("negotiation offered no provider we implement")]
    NoProvider,
}

impl NegotiateError {
    /// Whether this is Kick telling us to go away (as opposed to a passing fault).
    pub fn is_refusal(&self) -> bool {
        matches!(self, NegotiateError::Refused { .. })
    }
}

/// Where a socket connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Centrifugo { url: String },
    Pusher { url: String },
}

impl Endpoint {
    pub fn transport(&self) -> &'static str {
        match self {
            Endpoint::Centrifugo { .. } => "centrifugo",
            Endpoint::Pusher { .. } => "pusher",
        }
    }
}

/// The web endpoints' client: one HTTP client and one rate limiter for `KICK_WEB_URL`.
#[derive(Debug)]
pub struct Web {
    http: reqwest::Client,
    pub limiter: RateLimiter,
}

impl Web {
    pub fn new(http: reqwest::Client, rate_per_s: f64, burst: u32) -> Self {
        Web {
            http,
            limiter: RateLimiter::new("web.kick.com", rate_per_s, burst),
        }
    }

    async fn post(
        &self,
        what: &'static str,
        url: &str,
        body: Value,
    ) -> Result<Value, NegotiateError> {
        self.limiter.acquire().await;
        let resp = self
            .http
            .post(url)
            .header("Origin", KICK_ORIGIN)
            .header("Referer", format!("{KICK_ORIGIN}/"))
            .header("x-app-platform", "web")
            .header(reqwest::header::USER_AGENT, USER_AGENT)
            .json(&body)
            .send()
            .await
            .map_err(|e| NegotiateError::Unavailable {
                what,
                source: ApiError::Unreachable(e.to_string().to_lowercase()),
            })?;
        let status = resp.status().as_u16();
        let retry_after = api::retry_after(&resp);
        let text = api::read_body(resp, SMALL_LIMIT)
            .await
            .map_err(|source| NegotiateError::Unavailable { what, source })?;
        match status {
            200..=299 => {}
            403 | 423 | 429 => {
                // Retry-After is believed up to MAX_REFUSAL_PAUSE: an absurd one (hours) must
                // not keep every new socket from connecting that long.
                self.limiter
                    .pause(retry_after.unwrap_or(REFUSAL_PAUSE).min(MAX_REFUSAL_PAUSE));
                return Err(NegotiateError::Refused {
                    what,
                    status,
                    retry_after,
                });
            }
            _ => {
                return Err(NegotiateError::Unavailable {
                    what,
                    source: api::status_error(status, &text),
                });
            }
        }
        if api::looks_like_html(&text) {
            // A challenge page with status 200: a refusal in disguise.
            self.limiter.pause(REFUSAL_PAUSE);
            return Err(NegotiateError::Refused {
                what,
                status,
                retry_after: None,
            });
        }
        serde_json::from_str(&text).map_err(|e| NegotiateError::Decode {
            what,
            detail: e.to_string(),
        })
    }

    /// Where to connect. `channel`: ask where that channel is served (its region); `None`: the
    /// general endpoint. `auto` offers Centrifugo only (Kick's Pusher key is gone); `pusher`
    /// skips negotiation and uses `KICK_PUSHER_URL`.
    pub async fn connection(
        &self,
        web_url: &str,
        client_id: &str,
        transport: Transport,
        pusher_url: &str,
        channel: Option<i64>,
    ) -> Result<Endpoint, NegotiateError> {
        if transport == Transport::Pusher {
            return Ok(Endpoint::Pusher {
                url: pusher_url.to_owned(),
            });
        }
        let (what, url) = match channel {
            Some(ch) => (
                "channel negotiation",
                format!("{web_url}/api/v1/realtime/channels/{ch}/chat/connection"),
            ),
            None => (
                "negotiation",
                format!("{web_url}/api/v1/realtime/connection"),
            ),
        };
        let body = json!({"client": {"id": client_id, "type": "web"},
            "capabilities": {"accepted_providers": [{"provider": "centrifugo"}]}});
        let v = self.post(what, &url, body).await?;
        parse_connection(&v, pusher_url)
    }

    /// A guest connection token for `client_id` (the same id as the negotiation).
    pub async fn guest_token(
        &self,
        web_url: &str,
        client_id: &str,
    ) -> Result<String, NegotiateError> {
        let v = self
            .post(
                "auth/connection",
                &format!("{web_url}/api/v1/realtime/auth/connection"),
                json!({"client_id": client_id}),
            )
            .await?;
        v.pointer("/data/token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 16 * 1024)
            .map(str::to_owned)
            .ok_or(NegotiateError::Decode {
                what: "auth/connection",
                detail: "no token".into(),
            })
    }
}

/// The first offered connection we implement: Centrifugo (`credentials.url`, a ws/wss URL)
/// first; a Pusher element only if nothing else is offered (its app key replaces the one in
/// `pusher_url`).
pub fn parse_connection(v: &Value, pusher_url: &str) -> Result<Endpoint, NegotiateError> {
    let conns = v
        .pointer("/data/connections")
        .and_then(Value::as_array)
        .ok_or(NegotiateError::Decode {
            what: "negotiation",
            detail: "no data.connections".into(),
        })?;
    let mut pusher = None;
    for c in conns.iter().take(16) {
        match c.get("provider").and_then(Value::as_str) {
            Some("centrifugo") => {
                if let Some(url) = c.pointer("/credentials/url").and_then(Value::as_str)
                    && (url.starts_with("wss://") || url.starts_with("ws://"))
                    && url.len() <= 2048
                {
                    return Ok(Endpoint::Centrifugo {
                        url: url.to_owned(),
                    });
                }
            }
            Some("pusher") if pusher.is_none() => {
                let key = c
                    .pointer("/credentials/app_key")
                    .and_then(Value::as_str)
                    .filter(|k| k.len() <= 64 && k.chars().all(|c| c.is_ascii_alphanumeric()));
                pusher = Some(Endpoint::Pusher {
                    url: pusher_url_with_key(pusher_url, key),
                });
            }
            _ => {}
        }
    }
    pusher.ok_or(NegotiateError::NoProvider)
}

/// `KICK_PUSHER_URL` with the app key the negotiation handed out (Kick changed keys before).
pub fn pusher_url_with_key(base: &str, key: Option<&str>) -> String {
    let Some(key) = key else {
        return base.to_owned();
    };
    match base.find("/app/") {
        Some(i) => {
            let rest = &base[i + 5..];
            let end = rest.find(['?', '/']).unwrap_or(rest.len());
            format!("{}/app/{key}{}", &base[..i], &rest[end..])
        }
        None => base.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kick");

    #[test]
    fn recorded_negotiation_answers_parse() {
        let text = std::fs::read_to_string(format!(
            "{FIXTURES}/realtime-connection.response.centrifugo.2026-10-03.json"
        ))
        .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parse_connection(&v, "wss://x/app/k").unwrap(),
            Endpoint::Centrifugo {
                url: "wss://realtime.us-east-1.platform.kick.com/connection/websocket".into()
            }
        );
        let pusher_elem = std::fs::read_to_string(format!(
            "{FIXTURES}/realtime-connection.response.pusher-connection-element.json"
        ))
        .unwrap();
        let elem: Value = serde_json::from_str(&pusher_elem).unwrap();
        // Pusher listed first, Centrifugo second: Centrifugo wins.
        let both = json!({"data": {"connections": [elem,
            {"provider": "centrifugo", "credentials": {"url": "wss://r/connection/websocket"}}]}});
        assert!(matches!(
            parse_connection(&both, "wss://ws-us2.pusher.com/app/old?protocol=7").unwrap(),
            Endpoint::Centrifugo { .. }
        ));
        // Only Pusher: its key replaces the configured one.
        let only = json!({"data": {"connections": [elem]}});
        assert_eq!(
            parse_connection(&only, "wss://ws-us2.pusher.com/app/old?protocol=7").unwrap(),
            Endpoint::Pusher {
                url: "wss://ws-us2.pusher.com/app/32cbd69e4b950bf97679?protocol=7".into()
            }
        );
        assert!(matches!(
            parse_connection(&json!({"data": {"connections": []}}), ""),
            Err(NegotiateError::NoProvider)
        ));
        assert!(parse_connection(&json!({"data": 5}), "").is_err());
        // A URL that is not a WebSocket URL is not used.
        let bad = json!({"data": {"connections": [{"provider": "centrifugo", "credentials": {"url": "file:///etc/passwd"}}]}});
        assert!(parse_connection(&bad, "").is_err());
    }

    #[test]
    fn client_ids_are_uuids() {
        let u = new_client_id();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_client_id());
    }

    #[test]
    fn negotiated_pusher_key_replaces_the_configured_one() {
        let base = "wss://ws-us2.pusher.com/app/32cbd69e4b950bf97679?protocol=7&client=js&version=8.4.0&flash=false";
        assert_eq!(
            pusher_url_with_key(base, Some("newkey")),
            "wss://ws-us2.pusher.com/app/newkey?protocol=7&client=js&version=8.4.0&flash=false"
        );
        assert_eq!(pusher_url_with_key(base, None), base);
    }
}
