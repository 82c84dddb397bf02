//! REST faults, per endpoint family (`api` = `/public/*`, `oauth` = `/oauth/token`,
//! `negotiation` = `/api/v1/realtime/*`, `web` = `/api/v2/channels/{slug}`): each family has at
//! most one fault in force, until a deadline, for a number of requests, or on every n-th request.
//!
//! Some faults replace the answer (429 with Retry-After, 500, a Cloudflare challenge with 200 or
//! 403, 423 country block, a huge body); others alter it (slow, wrong JSON types, a hostile OAuth
//! `expires_in`).

use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Sim;

/// A group of endpoints that share a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// The official API, `/public/v1/*` and `/public/v2/*` (not the public key).
    Api,
    /// `POST /oauth/token`.
    Oauth,
    /// `/api/v1/realtime/*`: general and per-channel negotiation, guest tokens.
    Negotiation,
    /// The website API, `/api/v2/channels/{slug}`.
    Web,
}

pub const ALL_FAMILIES: [Family; 4] =
    [Family::Api, Family::Oauth, Family::Negotiation, Family::Web];

/// What a faulted request gets.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultMode {
    /// 429 with `Retry-After`.
    RateLimited { retry_after: u64 },
    /// 500.
    ServerError,
    /// A Cloudflare challenge page with status 200.
    Html,
    /// A Cloudflare challenge page with status 403.
    Challenge,
    /// 423: Kick blocks the caller's country.
    CountryBlocked,
    /// A 200 whose body is valid JSON of exactly `bytes` bytes (mostly padding).
    HugeBody { bytes: usize },
    /// OAuth only: the token answer carries this `expires_in` (`None`: no such field).
    HugeExpiresIn { expires_in: Option<Value> },
    /// API only: ids as strings or objects, `is_live` as a string.
    WrongTypes,
    /// The normal answer, after a delay.
    Slow { delay: Duration },
}

impl FaultMode {
    /// The mode's name in `/control/rest`.
    pub fn name(&self) -> &'static str {
        match self {
            FaultMode::RateLimited { .. } => "429",
            FaultMode::ServerError => "500",
            FaultMode::Html => "html",
            FaultMode::Challenge => "403",
            FaultMode::CountryBlocked => "423",
            FaultMode::HugeBody { .. } => "huge-body",
            FaultMode::HugeExpiresIn { .. } => "huge-expires-in",
            FaultMode::WrongTypes => "wrong-types",
            FaultMode::Slow { .. } => "slow",
        }
    }
}

/// A fault in force on one family.
#[derive(Debug, Clone)]
pub struct Fault {
    pub mode: FaultMode,
    /// The fault ends at this instant (`None`: never).
    until: Option<Instant>,
    /// The fault ends after this many faulted requests (`None`: no count).
    remaining: Option<u64>,
    /// Only every `every`-th request is faulted (1: all).
    every: u64,
    /// Requests seen while the fault is in force.
    seen: u64,
}

impl Fault {
    pub fn new(mode: FaultMode, seconds: Option<f64>, requests: Option<u64>, every: u64) -> Self {
        Self {
            mode,
            until: seconds.map(|s| Instant::now() + Duration::from_secs_f64(s.clamp(0.0, 1e9))),
            remaining: requests,
            every: every.max(1),
            seen: 0,
        }
    }

    /// `Options::web_challenge_every`: a 403 challenge on every `every`-th request, for ever.
    pub fn standing_challenge(every: u64) -> Self {
        Self::new(FaultMode::Challenge, None, None, every)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "mode": self.mode.name(),
            "seconds_left": self.until.map(|u| u.saturating_duration_since(Instant::now()).as_secs_f64()),
            "requests_left": self.remaining,
            "every": self.every,
        })
    }
}

/// How a handler must alter its normal answer.
#[derive(Debug, Clone, Default)]
pub struct Twist {
    pub wrong_types: bool,
    /// `Some(v)`: the OAuth answer's `expires_in` is `v` (`None` inside: no such field).
    pub expires_in: Option<Option<Value>>,
}

impl Sim {
    /// The fault mode for this request of `family`, if any (and counts the request).
    fn take_fault(&self, family: Family) -> Option<FaultMode> {
        let mut faults = self.faults.lock().unwrap();
        let fault = faults.get_mut(&family)?;
        if fault.until.is_some_and(|u| Instant::now() >= u) {
            faults.remove(&family);
            return None;
        }
        fault.seen += 1;
        if !fault.seen.is_multiple_of(fault.every) {
            return None;
        }
        let mode = fault.mode.clone();
        if let Some(left) = &mut fault.remaining {
            *left = left.saturating_sub(1);
            if *left == 0 {
                faults.remove(&family);
            }
        }
        Some(mode)
    }

    /// Applies the fault of `family` to a request: `Err` is the whole answer, `Ok` says how to
    /// alter the normal one (after sleeping, for a slow fault).
    ///
    /// # Errors
    ///
    /// The response to send instead of the normal answer.
    pub async fn gate(&self, family: Family) -> Result<Twist, Response> {
        match self.take_fault(family) {
            None => Ok(Twist::default()),
            Some(FaultMode::Slow { delay }) => {
                tokio::time::sleep(delay).await;
                Ok(Twist::default())
            }
            Some(FaultMode::WrongTypes) => Ok(Twist {
                wrong_types: true,
                ..Twist::default()
            }),
            Some(FaultMode::HugeExpiresIn { expires_in }) => Ok(Twist {
                expires_in: Some(expires_in),
                ..Twist::default()
            }),
            Some(mode) => Err(refusal(&mode)),
        }
    }

    /// The faults in force, for `/control/rest` and `/control/settings`.
    pub fn faults_json(&self) -> Value {
        let faults = self.faults.lock().unwrap();
        let mut out = serde_json::Map::new();
        for family in ALL_FAMILIES {
            if let Some(f) = faults.get(&family) {
                out.insert(json!(family).as_str().unwrap().to_owned(), f.to_json());
            }
        }
        Value::Object(out)
    }
}

/// A Cloudflare "Just a moment..." interstitial, as served to clients that fail its checks.
pub const CHALLENGE_PAGE: &str = "<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title>\
<meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\"></head><body>\
<noscript>Enable JavaScript and cookies to continue</noscript>\
<script>(function(){window._cf_chl_opt={cvId: '3',cZone: 'kick.com',cType: 'managed'};}());</script>\
</body></html>";

const COUNTRY_BLOCKED_PAGE: &str = "<!DOCTYPE html><html><head><title>Kick</title></head><body>\
<h1>Kick is not available in your country</h1></body></html>";

/// The status code Retry-After answers use; also for the rate limit.
pub fn too_many_requests(retry_after: u64) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry_after.to_string())],
        axum::Json(json!({"message": "Too Many Requests"})),
    )
        .into_response()
}

pub fn challenge(status: StatusCode) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=UTF-8"),
            (header::SERVER, "cloudflare"),
            (header::HeaderName::from_static("cf-mitigated"), "challenge"),
        ],
        CHALLENGE_PAGE,
    )
        .into_response()
}

/// A valid JSON body of exactly `bytes` bytes (or the shortest valid one, if `bytes` is smaller).
pub fn huge_json(bytes: usize) -> String {
    let head = r#"{"data":[],"message":"OK","pad":""#;
    let tail = r#""}"#;
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let mut out = String::with_capacity(head.len() + pad + tail.len());
    out.push_str(head);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str(tail);
    out
}

fn refusal(mode: &FaultMode) -> Response {
    match mode {
        FaultMode::RateLimited { retry_after } => too_many_requests(*retry_after),
        FaultMode::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"message": "Internal Server Error"})),
        )
            .into_response(),
        FaultMode::Html => challenge(StatusCode::OK),
        FaultMode::Challenge => challenge(StatusCode::FORBIDDEN),
        FaultMode::CountryBlocked => (
            StatusCode::LOCKED,
            [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
            COUNTRY_BLOCKED_PAGE,
        )
            .into_response(),
        FaultMode::HugeBody { bytes } => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            huge_json(*bytes),
        )
            .into_response(),
        // `gate` handles the altering modes itself.
        FaultMode::HugeExpiresIn { .. } | FaultMode::WrongTypes | FaultMode::Slow { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_json_is_valid_and_exactly_sized() {
        for n in [0, 10, 40, 1000, 10 << 20] {
            let s = huge_json(n);
            assert!(serde_json::from_str::<Value>(&s).is_ok());
            if n >= 40 {
                assert_eq!(s.len(), n);
            }
        }
    }
}
