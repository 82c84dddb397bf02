//! The floor `kick-bench compare` measures kick-monitor against: a competent single-process
//! implementation of the original design. It subscribes every channel on the same transport
//! (the same sans-io sessions decode Kick's frames), and writes each live/offline event straight
//! into `streamers` with one durable commit and its `status_changed` NOTIFY, in one statement:
//! no staging table, no second process. Events go to a small pool of connections by channel, so
//! one streamer's events stay in order while commits of different streamers overlap (one
//! connection could not sustain 1,000 durable commits a second).
//!
//! It is a benchmark baseline, not a product: no reconcile, no recovery, no history table.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use kick_shared::config::{Config, Transport};
use kick_shared::kick::KICK_ORIGIN;
use kick_shared::kick::frame::KickEvent;
use kick_shared::kick::realtime::negotiate::{Endpoint, USER_AGENT, Web, new_client_id};
use kick_shared::kick::realtime::{Action, centrifugo, pusher};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};

/// Connections that commit events (by channel id modulo this).
pub const WRITERS: usize = 8;
/// Channels per WebSocket, as the collector's default.
const PER_SOCKET: usize = 100;

const WRITE: &str = "WITH u AS (
        UPDATE streamers SET status = $2, livestream_id = coalesce($3, livestream_id),
               status_changed_at = now(), updated_at = now()
        WHERE kick_channel_id = $1 AND status IS DISTINCT FROM $2
        RETURNING username)
    SELECT pg_notify('status_changed', username) FROM u";

/// Runs until the process is killed: subscribes every streamer's channel and writes each event.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let db = kick_shared::db::connect(&cfg.database).await?;
    let channels: Vec<i64> = db
        .query(
            "SELECT kick_channel_id FROM streamers WHERE kick_channel_id IS NOT NULL ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get("kick_channel_id"))
        .collect();
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let c = kick_shared::db::connect(&cfg.database).await?;
        c.batch_execute("SET synchronous_commit = on").await?;
        let stmt = c.prepare(WRITE).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<(i64, bool, Option<i64>)>();
        tokio::spawn(async move {
            while let Some((channel, live, ls)) = rx.recv().await {
                let status = if live { "online" } else { "offline" };
                if let Err(e) = c.query(&stmt, &[&channel, &status, &ls]).await {
                    eprintln!("reference: write failed: {e}");
                }
            }
        });
        writers.push(tx);
    }
    let web = std::sync::Arc::new(Web::new(reqwest::Client::new(), 500.0, 1000));
    let mut tasks = Vec::new();
    for chunk in channels.chunks(PER_SOCKET) {
        let chans: BTreeSet<i64> = chunk.iter().copied().collect();
        let (cfg, web, writers) = (cfg.clone(), web.clone(), writers.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                if let Err(e) = socket(&cfg, &web, chans.clone(), &writers).await {
                    eprintln!("reference: socket ended: {e:#}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

enum Session {
    Centrifugo(centrifugo::Session),
    Pusher(pusher::Session),
}

async fn socket(
    cfg: &Config,
    web: &Web,
    chans: BTreeSet<i64>,
    writers: &[mpsc::UnboundedSender<(i64, bool, Option<i64>)>],
) -> anyhow::Result<()> {
    let client_id = new_client_id();
    // With regions, each channel's own server (asked once per socket for its first channel:
    // kick-sim serves a channel's region from the per-channel answer).
    let first = chans.first().copied();
    let endpoint = web
        .connection(
            &cfg.kick.web_url,
            &client_id,
            cfg.kick.transport,
            &cfg.kick.pusher_url,
            first.filter(|_| cfg.kick.transport != Transport::Pusher),
        )
        .await?;
    let now = Instant::now();
    let grace = Duration::from_secs(20);
    let (url, mut session, opening) = match endpoint {
        Endpoint::Centrifugo { url } => {
            let token = web.guest_token(&cfg.kick.web_url, &client_id).await?;
            let mut s = centrifugo::Session::new(chans, now, grace);
            let opening = s.open(&token, now);
            (url, Session::Centrifugo(s), opening)
        }
        Endpoint::Pusher { url } => (
            url,
            Session::Pusher(pusher::Session::new(chans, now, grace)),
            Vec::new(),
        ),
    };
    let mut req = url.as_str().into_client_request()?;
    req.headers_mut().insert(
        http::header::ORIGIN,
        http::HeaderValue::from_static(KICK_ORIGIN),
    );
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .context("websocket connect")?;
    let mut pending = opening;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        for a in pending.drain(..) {
            match a {
                Action::Send(t) => ws.send(Message::text(t)).await?,
                Action::Ping => ws.send(Message::Ping(Vec::new().into())).await?,
                Action::Event { event, .. } => match event {
                    KickEvent::Live(e) => {
                        let _ = writers[e.channel_id as usize % WRITERS].send((
                            e.channel_id,
                            true,
                            Some(e.livestream_id),
                        ));
                    }
                    KickEvent::Stop(e) => {
                        let _ = writers[e.channel_id as usize % WRITERS].send((
                            e.channel_id,
                            false,
                            Some(e.livestream_id),
                        ));
                    }
                    KickEvent::Other(_) => {}
                },
                Action::Close(end) => anyhow::bail!("closed: {}", end.reason),
                _ => {}
            }
        }
        tokio::select! {
            msg = ws.next() => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        pending = match &mut session {
                            Session::Centrifugo(s) => { s.on_activity(now); s.on_text(&t, now) }
                            Session::Pusher(s) => { s.on_activity(now); s.on_text(&t, now) }
                        };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("connection closed"),
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                pending = match &mut session {
                    Session::Centrifugo(s) => s.on_tick(now),
                    Session::Pusher(s) => s.on_tick(now),
                };
            }
        }
    }
}
