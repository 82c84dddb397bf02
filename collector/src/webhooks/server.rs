//! The webhook endpoint: plain HTTP/1.1 behind the operator's TLS reverse proxy. Only `POST`
//! on `WEBHOOK_PATH`; a body of at most [`MAX_BODY`]; the signature, the timestamp and the body
//! checked before anything is staged; the answer sent once the row is durable.
//!
//! | what | answer |
//! |---|---|
//! | another path / another method | 404 / 405 |
//! | body over 64 KiB | 413 |
//! | no signature headers, a bad signature, a timestamp more than 5 min off | 401 |
//! | malformed headers or body (wrong JSON types) | 400 |
//! | an event type other than `livestream.status.updated` | 200, ignored (counted) |
//! | staged in `raw_events` (or already there: a replay) | 200 |
//! | the database is down (the row is spooled: replayed later) | 503 with `Retry-After` |
//!
//! Limits keep the endpoint from exhausting the process: at most [`MAX_CONNECTIONS`]
//! connections (more are closed at once), headers within [`HEADER_TIMEOUT`], the body within
//! [`BODY_TIMEOUT`], a connection's life within [`CONNECTION_TIMEOUT`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use kick_shared::backoff::Backoff;
use kick_shared::kick::webhook::{self, VerifyError};
use tokio_util::sync::CancellationToken;

use super::Receiver;
use crate::rows::{self, Ack, Durability};

pub const MAX_BODY: usize = 64 * 1024;
pub const MAX_CONNECTIONS: usize = 256;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a delivery waits for its row to be durable before the answer says "try again".
const STAGE_TIMEOUT: Duration = Duration::from_secs(10);

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, text: &str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// How long requests in flight at shutdown may take to finish (they wait for the stager, which
/// is still running then).
const DRAIN: Duration = Duration::from_secs(12);

/// Kick's event types: verified deliveries of these are counted by name, anything else as
/// `other` (a label never takes arbitrary values).
const KNOWN_EVENTS: &[&str] = &[
    "chat.message.sent",
    "channel.followed",
    "channel.subscription.renewal",
    "channel.subscription.gifts",
    "channel.subscription.new",
    "channel.reward.redemption.updated",
    "livestream.metadata.updated",
    "moderation.banned",
    "kicks.gifted",
];

/// Accepts connections until `shutdown`, then lets the requests in flight finish (idle
/// keep-alive connections are closed).
pub async fn serve(
    rx: Arc<Receiver>,
    listener: Arc<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => {
                connections.close();
                if tokio::time::timeout(DRAIN, connections.wait()).await.is_err() {
                    tracing::warn!(open = connections.len(), "webhooks: connections still open at shutdown; closed");
                }
                return Ok(());
            }
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => {
                backoff.reset();
                s
            }
            Err(e) => {
                // Out of file descriptors and the like: the condition lasts; do not spin.
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "webhooks: accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => continue,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            rx.metrics.requests.add("connection_refused", 1);
            drop(stream);
            continue;
        };
        let (rx, stop) = (rx.clone(), shutdown.clone());
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let rx = rx.clone();
                async move { Ok::<_, Infallible>(handle(&rx, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let life = tokio::time::sleep(CONNECTION_TIMEOUT);
            tokio::select! {
                _ = &mut conn => {}
                _ = life => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
        });
    }
}

/// One request.
async fn handle(rx: &Receiver, req: Request<Incoming>) -> Answer {
    let started = Instant::now();
    let (status, text) = handle_inner(rx, req).await;
    rx.metrics.requests.add(status.as_str(), 1);
    rx.metrics.latency.observe(started.elapsed().as_secs_f64());
    let mut r = answer(status, &text);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("30"),
        );
    }
    r
}

fn header<'a>(req: &'a hyper::http::request::Parts, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// A Kick message id: a ULID, or anything short and plain (it becomes part of a dedupe key).
fn valid_message_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

async fn handle_inner(rx: &Receiver, req: Request<Incoming>) -> (StatusCode, String) {
    if req.uri().path() != rx.path {
        return (StatusCode::NOT_FOUND, "not found".into());
    }
    if req.method() != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "only POST".into());
    }
    let (parts, body) = req.into_parts();
    if let Some(len) = header(&parts, "content-length").and_then(|l| l.parse::<u64>().ok())
        && len > MAX_BODY as u64
    {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB".into());
    }
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return (StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB".into());
            }
            Ok(Err(_)) => return (StatusCode::BAD_REQUEST, "body not read".into()),
            Err(_) => return (StatusCode::REQUEST_TIMEOUT, "body too slow".into()),
        };
    // A header that is present but not visible ASCII is malformed, not missing.
    for name in [
        "kick-event-message-id",
        "kick-event-message-timestamp",
        "kick-event-signature",
    ] {
        if parts.headers.get(name).is_some() && header(&parts, name).is_none() {
            rx.metrics.verification_failures.add("malformed", 1);
            rx.log_refusal("-", "malformed", &format!("{name} is not ASCII"));
            return (StatusCode::BAD_REQUEST, format!("malformed {name}"));
        }
    }
    let id = header(&parts, "kick-event-message-id");
    let ts = header(&parts, "kick-event-message-timestamp");
    let sig = header(&parts, "kick-event-signature");
    let (Some(id), Some(ts), Some(sig)) = (id, ts, sig) else {
        let missing = if id.is_none() {
            "Kick-Event-Message-Id"
        } else if ts.is_none() {
            "Kick-Event-Message-Timestamp"
        } else {
            "Kick-Event-Signature"
        };
        return rx.refuse(&VerifyError::Missing(missing), id.unwrap_or("-"));
    };
    if !valid_message_id(id) {
        rx.metrics.verification_failures.add("malformed", 1);
        rx.log_refusal(id, "malformed", "malformed message id");
        return (
            StatusCode::BAD_REQUEST,
            "malformed Kick-Event-Message-Id".into(),
        );
    }
    if let Err(e) = webhook::check_timestamp(ts, Utc::now()) {
        return rx.refuse(&e, id);
    }
    if let Err(e) = rx.verify(id, ts, &body, sig).await {
        return rx.refuse(&e, id);
    }
    // Verified. Only one event type is acted on; the others are acknowledged (Kick would keep
    // failing deliveries otherwise) and counted.
    let event_type = header(&parts, "kick-event-type").unwrap_or("");
    let version = header(&parts, "kick-event-version").unwrap_or("1");
    if event_type == webhook::STATUS_UPDATED && version.trim() != "1" {
        // A version we do not know the shape of: acknowledged, not guessed at.
        rx.metrics
            .ignored
            .add("livestream.status.updated:other-version", 1);
        return (StatusCode::OK, "ignored: unknown version".into());
    }
    if event_type != webhook::STATUS_UPDATED {
        let label = KNOWN_EVENTS
            .iter()
            .find(|k| **k == event_type)
            .copied()
            .unwrap_or("other");
        rx.metrics.ignored.add(label, 1);
        return (StatusCode::OK, "ignored".into());
    }
    let status = match webhook::decode_status(&body, Utc::now()) {
        Ok(s) => s,
        Err(e) => {
            rx.metrics.verification_failures.add("bad_body", 1);
            rx.log_refusal(id, "bad_body", &e);
            return (
                StatusCode::BAD_REQUEST,
                "body is not a valid livestream.status.updated v1 event".into(),
            );
        }
    };
    let mut row = rows::webhook(id, &status, Utc::now());
    let (ack, wait) = Ack::new();
    row.ack = Some(ack);
    rx.stager.stage(row);
    match tokio::time::timeout(STAGE_TIMEOUT, wait).await {
        Ok(Ok(Durability::Committed)) => {
            rx.metrics.staged.inc();
            (StatusCode::OK, "ok".into())
        }
        // Durable here, and replayed into the database later: still ask Kick to retry (a
        // retry is deduplicated by the message id).
        Ok(Ok(Durability::Spooled)) => {
            rx.metrics.spooled.inc();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable; spooled".into(),
            )
        }
        Ok(Err(_)) | Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unavailable".into(),
        ),
    }
}
