//! `kick-admin probe`: checks, against the real Kick (or whatever the `KICK_*_URL` settings
//! name), each assumption kick-monitor makes that its tests cannot: the OAuth app token, a
//! channels lookup by slug (with Kick's `_` → `-` rule), the v1 livestreams endpoint (the only
//! official source of channel ids, deprecated), the realtime negotiation (general and per
//! channel), a guest token, and a WebSocket connect and subscribe. One line per check with the
//! evidence; exit 0 only if every required check passes (69 otherwise). Users should run it
//! first and report its output.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kick_shared::config::{Config, Transport};
use kick_shared::exit::Exit;
use kick_shared::kick::KICK_ORIGIN;
use kick_shared::kick::api::ApiClient;
use kick_shared::kick::realtime::negotiate::{Endpoint, USER_AGENT, Web};
use kick_shared::kick::realtime::{Action, centrifugo};
use serde::Serialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};

/// One check's result.
#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    /// Informational checks do not fail the probe.
    required: bool,
    evidence: String,
}

/// Runs every check; `slug` is a streamer to look up (ideally one whose username has an
/// underscore), `channel` a realtime channel id (else the slug's, when the API tells).
pub async fn run(
    config: &Config,
    slug: &str,
    channel: Option<i64>,
    json: bool,
) -> anyhow::Result<Exit> {
    let mut checks: Vec<Check> = Vec::new();
    let mut add = |name, required, r: Result<String, String>| {
        let (ok, evidence) = match r {
            Ok(e) => (true, e),
            Err(e) => (false, e),
        };
        if !json {
            println!(
                "{} {name}: {evidence}",
                match (ok, required) {
                    (true, _) => "ok  ",
                    (false, true) => "FAIL",
                    (false, false) => "note",
                }
            );
        }
        checks.push(Check {
            name,
            ok,
            required,
            evidence,
        });
    };
    let api = ApiClient::new(config.kick.clone())?;
    // 1. OAuth.
    let t0 = Instant::now();
    match api.check_token().await {
        Ok(()) => add(
            "oauth",
            true,
            Ok(format!(
                "app token obtained in {} ms",
                t0.elapsed().as_millis()
            )),
        ),
        Err(e) => add("oauth", true, Err(e.to_string())),
    }
    // 2. Channels by slug, and Kick's slug rule.
    let typed = slug.trim().to_lowercase();
    let normalised = typed.replace('_', "-");
    let mut found_user = None;
    match api
        .channels_by_slugs(std::slice::from_ref(&normalised))
        .await
    {
        Ok((found, _)) if !found.is_empty() => {
            let c = &found[0];
            found_user = Some(c.broadcaster_user_id);
            let mut evidence = format!(
                "slug {normalised}: user {}, live {}",
                c.broadcaster_user_id,
                c.is_live()
            );
            if typed != normalised {
                let underscore = api
                    .channels_by_slugs(std::slice::from_ref(&typed))
                    .await
                    .map(|(f, _)| !f.is_empty());
                evidence.push_str(&match underscore {
                    Ok(true) => format!("; {typed} also found (the `_` form is accepted too)"),
                    Ok(false) => {
                        format!("; {typed} is unknown: slugs use `-` where usernames have `_`")
                    }
                    Err(e) => format!("; {typed}: {e}"),
                });
            } else {
                evidence.push_str("; give --slug with an underscore to check the `_` → `-` rule");
            }
            add("channels by slug", true, Ok(evidence));
        }
        Ok(_) => add(
            "channels by slug",
            true,
            Err(format!("{normalised}: not found on kick")),
        ),
        Err(e) => add("channels by slug", true, Err(e.to_string())),
    }
    // 3. v1 livestreams (deprecated; the only official source of channel ids).
    let mut channel = channel;
    match found_user {
        Some(u) => match api.livestreams_by_ids(&[u]).await {
            Ok(ls) => {
                if channel.is_none() {
                    channel = ls.first().map(|l| l.channel_id);
                }
                add(
                    "v1 livestreams",
                    false,
                    Ok(format!(
                        "available ({} live stream{} for the user{})",
                        ls.len(),
                        if ls.len() == 1 { "" } else { "s" },
                        ls.first()
                            .map(|l| format!(", channel id {}", l.channel_id))
                            .unwrap_or_default()
                    )),
                );
            }
            Err(e) => add(
                "v1 livestreams",
                false,
                Err(format!(
                    "{e}: channel ids must come from --channel-id or KICK_CHANNEL_LOOKUP=web"
                )),
            ),
        },
        None => add("v1 livestreams", false, Err("skipped: no user".into())),
    }
    // 4. Negotiation, general and per channel; 5. a guest token; 6. connect and subscribe.
    let web = Web::new(api.http().clone(), 5.0, 5);
    let client_id = kick_shared::kick::realtime::negotiate::new_client_id();
    let web_url = &config.kick.web_url;
    let general = web
        .connection(
            web_url,
            &client_id,
            Transport::Centrifugo,
            &config.kick.pusher_url,
            None,
        )
        .await;
    let mut url = None;
    // After a refusal the web limiter is paused for minutes: the other web checks are skipped.
    let refused = matches!(&general, Err(e) if e.is_refusal());
    match &general {
        Ok(Endpoint::Centrifugo { url: u }) => {
            url = Some(u.clone());
            add("negotiation", true, Ok(format!("centrifugo at {u}")));
        }
        Ok(Endpoint::Pusher { url: u }) => {
            add(
                "negotiation",
                true,
                Err(format!("only pusher offered ({u})")),
            );
        }
        Err(e) => add("negotiation", true, Err(e.to_string())),
    }
    match channel {
        _ if refused => add(
            "channel negotiation",
            true,
            Err("skipped: kick refused the negotiation".into()),
        ),
        Some(ch) => match web
            .connection(web_url, &client_id, Transport::Centrifugo, &config.kick.pusher_url, Some(ch))
            .await
        {
            Ok(Endpoint::Centrifugo { url: u }) => {
                let same = url.as_deref() == Some(u.as_str());
                add(
                    "channel negotiation",
                    true,
                    Ok(format!(
                        "channel {ch} is served at {u}{}",
                        if same { " (the general server)" } else { " (another region)" }
                    )),
                );
                url = Some(u);
            }
            Ok(Endpoint::Pusher { .. }) => {
                add("channel negotiation", true, Err("only pusher offered".into()));
            }
            Err(e) => add("channel negotiation", true, Err(e.to_string())),
        },
        None => add(
            "channel negotiation",
            true,
            Err("no channel id: pass --channel-id (the streamer is not live, and v1 livestreams is the only official source)".into()),
        ),
    }
    let token = if refused {
        add(
            "guest token",
            true,
            Err("skipped: kick refused the negotiation".into()),
        );
        None
    } else {
        match web.guest_token(web_url, &client_id).await {
            Ok(t) => {
                add(
                    "guest token",
                    true,
                    Ok(format!(
                        "{} bytes, a JWT: {}",
                        t.len(),
                        t.split('.').count() == 3
                    )),
                );
                Some(t)
            }
            Err(e) => {
                add("guest token", true, Err(e.to_string()));
                None
            }
        }
    };
    match (url, token, channel) {
        (Some(url), Some(token), Some(ch)) => {
            let r = tokio::time::timeout(Duration::from_secs(15), subscribe(&url, &token, ch))
                .await
                .unwrap_or_else(|_| Err("no answer within 15 s".into()));
            add("websocket subscribe", true, r);
        }
        _ => add(
            "websocket subscribe",
            true,
            Err("skipped: needs a server, a guest token and a channel id".into()),
        ),
    }
    let passed = checks.iter().all(|c| c.ok || !c.required);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"passed": passed, "checks": checks}))?
        );
    }
    Ok(if passed { Exit::Ok } else { Exit::Unavailable })
}

/// Connects, sends `connect` and one subscription through the same session the collector uses,
/// and reports what the server said.
async fn subscribe(url: &str, token: &str, channel: i64) -> Result<String, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        http::header::ORIGIN,
        http::HeaderValue::from_static(KICK_ORIGIN),
    );
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    );
    let tls = tokio_tungstenite::Connector::Rustls(kick_shared::tls_client_config());
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(tls))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let now = Instant::now();
    let mut session = centrifugo::Session::new(
        [channel].into_iter().collect(),
        now,
        Duration::from_secs(20),
    );
    for a in session.open(token, now) {
        if let Action::Send(t) = a {
            ws.send(Message::Text(t.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let mut connect = None;
    while let Some(msg) = ws.next().await {
        let text = match msg.map_err(|e| format!("read: {e}"))? {
            Message::Text(t) => t.to_string(),
            Message::Close(f) => return Err(format!("closed by the server: {f:?}")),
            _ => continue,
        };
        if connect.is_none() && text.contains("\"connect\"") {
            connect = Some(text.chars().take(200).collect::<String>());
        }
        for a in session.on_text(&text, Instant::now()) {
            match a {
                Action::Up => {
                    let _ = ws.close(None).await;
                    return Ok(format!(
                        "connected and subscribed channel.{channel}; connect reply {}",
                        connect.unwrap_or_default()
                    ));
                }
                Action::Refused { code, message, .. } => {
                    return Err(format!("subscription refused: {code} {message}"));
                }
                Action::Close(end) => return Err(end.to_string()),
                Action::Send(t) => {
                    let _ = ws.send(Message::Text(t.into())).await;
                }
                _ => {}
            }
        }
    }
    Err("connection closed before the subscription was answered".into())
}
