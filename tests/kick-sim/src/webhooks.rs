//! Webhooks: `livestream.status.updated` deliveries to the app's webhook URL for broadcasters
//! with a subscription, with Kick's `Kick-Event-*` headers and an RSA-SHA256 (PKCS#1 v1.5)
//! signature over `messageId.timestamp.body`, verifiable with the key that
//! `GET /public/v1/public-key` serves. (Kick's own private key is Kick's: the simulator signs
//! with a key pair of its own and serves that public key.)
//!
//! A failed delivery (no answer, or not 2xx) is not retried, as on Kick. With
//! `webhook_unsubscribe_after` set, that many consecutive failures of an event type delete the
//! app's subscriptions to it (Kick does so after a day of failures).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::json;
use sha2::Sha256;

use crate::Sim;
use crate::world::{Streamer, api_time};

/// Where and how deliveries go (`POST /control/webhooks`).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub url: Option<String>,
    pub delay: Duration,
    pub duplicate: bool,
}

struct Keys {
    signing: SigningKey<Sha256>,
    public_pem: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let private = RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa key generation");
        let public_pem = RsaPublicKey::from(&private)
            .to_public_key_pem(LineEnding::LF)
            .expect("pem");
        Keys {
            signing: SigningKey::<Sha256>::new(private),
            public_pem,
        }
    })
}

/// The PEM public key deliveries are signed with.
pub fn public_key_pem() -> String {
    keys().public_pem.clone()
}

/// A ULID (Crockford base32: 48-bit milliseconds, 80 random bits), as Kick's message ids.
pub fn ulid() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = chrono::Utc::now().timestamp_millis() as u128;
    let rand: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let mut n = (ms << 80) | rand;
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    String::from_utf8(out.to_vec()).unwrap()
}

/// Signs `messageId.timestamp.body`, base64.
pub fn sign(message_id: &str, timestamp: &str, body: &str) -> String {
    let signed = format!("{message_id}.{timestamp}.{body}");
    let sig = keys().signing.sign(signed.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
}

/// Sends `livestream.status.updated` for a streamer that went live or offline, if the app has a
/// webhook URL and a subscription for this broadcaster.
pub fn status_updated(sim: &Arc<Sim>, s: &Streamer) {
    let target = sim.webhook_target.lock().unwrap().clone();
    let Some(url) = target.url else { return };
    let subscription = sim
        .subscriptions
        .lock()
        .unwrap()
        .iter()
        .find(|sub| {
            sub["broadcaster_user_id"] == s.user_id && sub["event"] == "livestream.status.updated"
        })
        .and_then(|sub| sub["id"].as_str().map(str::to_owned));
    let Some(subscription) = subscription else {
        return;
    };
    let now = chrono::Utc::now();
    let body = json!({
        "broadcaster": {
            "is_anonymous": false,
            "user_id": s.user_id,
            "username": s.display_name,
            "is_verified": false,
            "profile_picture": "https://kick.com/img/default-profile-pictures/default2.jpeg",
            "channel_slug": s.slug,
            "identity": null,
        },
        "is_live": s.live,
        "title": s.title,
        "started_at": s.started_at.map(api_time),
        "ended_at": if s.live { None } else { Some(api_time(now)) },
    })
    .to_string();
    let id = ulid();
    let http = sim.http.clone();
    let sim = sim.clone();
    let sends = if target.duplicate { 2 } else { 1 };
    tokio::spawn(async move {
        tokio::time::sleep(target.delay).await;
        // A late delivery is stamped and signed when it is sent (the message id and the body,
        // with its `started_at`/`ended_at`, are the event's).
        let timestamp = api_time(chrono::Utc::now());
        let signature = tokio::task::spawn_blocking({
            let (id, timestamp, body) = (id.clone(), timestamp.clone(), body.clone());
            move || sign(&id, &timestamp, &body)
        })
        .await
        .unwrap_or_default();
        for _ in 0..sends {
            // Kick does not retry a failed delivery; neither does the simulator.
            let res = http
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Kick-Event-Message-Id", &id)
                .header("Kick-Event-Subscription-Id", &subscription)
                .header("Kick-Event-Signature", &signature)
                .header("Kick-Event-Message-Timestamp", &timestamp)
                .header("Kick-Event-Type", "livestream.status.updated")
                .header("Kick-Event-Version", "1")
                .body(body.clone())
                .send()
                .await;
            let ok = res.is_ok_and(|r| r.status().is_success());
            delivered(&sim, "livestream.status.updated", ok);
        }
    });
}

/// Counts a delivery; enough consecutive failures of an event type unsubscribe the app from it.
fn delivered(sim: &Sim, event: &str, ok: bool) {
    let c = &sim.counters;
    c.webhook_sent.fetch_add(1, Ordering::Relaxed);
    let mut failures = sim.webhook_failures.lock().unwrap();
    if ok {
        failures.remove(event);
        return;
    }
    c.webhook_failed.fetch_add(1, Ordering::Relaxed);
    let n = failures.entry(event.to_owned()).or_default();
    *n += 1;
    let limit = sim.settings.lock().unwrap().webhook_unsubscribe_after;
    if limit.is_some_and(|l| *n >= l) {
        failures.remove(event);
        let mut subs = sim.subscriptions.lock().unwrap();
        let before = subs.len();
        subs.retain(|s| s["event"] != event);
        c.webhook_unsubscribed
            .fetch_add((before - subs.len()) as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_are_26_crockford_characters() {
        let a = ulid();
        assert_eq!(a.len(), 26);
        assert!(
            a.chars()
                .all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c))
        );
        assert_ne!(a, ulid());
    }
}
