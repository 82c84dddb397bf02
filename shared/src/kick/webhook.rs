//! Kick's webhook deliveries (`livestream.status.updated`): signature verification and the body.
//!
//! Kick signs `{Kick-Event-Message-Id}.{Kick-Event-Message-Timestamp}.{raw body}` with RSA
//! (PKCS#1 v1.5 over SHA-256) and sends the signature base64 in `Kick-Event-Signature`; the
//! public key is the same for every app (`GET /public/v1/public-key`). Only the id, the timestamp
//! and the body are signed; every app shares the key, so a delivery to another app can be replayed
//! to us: the timestamp must be recent ([`TOLERANCE`]) and the message id is the dedupe key.
//!
//! The body is decoded strictly: a field of the wrong type is an error (the receiver answers 400),
//! never a guess.

use chrono::{DateTime, Utc};
use rsa::RsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use serde::Deserialize;
use sha2::Sha256;

/// How far a delivery's timestamp may be from now.
pub const TOLERANCE: std::time::Duration = std::time::Duration::from_secs(300);
/// The only event type acted on.
pub const STATUS_UPDATED: &str = "livestream.status.updated";

/// Why a delivery is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no {0} header")]
    Missing(&'static str),
    #[error("the signature is not base64")]
    SignatureEncoding,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the timestamp is not RFC 3339")]
    TimestampFormat,
    #[error("the timestamp is {0}s from now (at most {max}s)", max = TOLERANCE.as_secs())]
    Stale(i64),
    /// Kick's public key could not be obtained: nothing can be verified (answered 503, so
    /// Kick tries again).
    #[error("kick's public key is not available: {0}")]
    NoKey(String),
}

impl VerifyError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            VerifyError::Missing(_) => "unsigned",
            VerifyError::SignatureEncoding | VerifyError::TimestampFormat => "malformed",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Stale(_) => "stale",
            VerifyError::NoKey(_) => "no_key",
        }
    }
}

/// Kick's webhook public key.
#[derive(Debug, Clone)]
pub struct PublicKey(VerifyingKey<Sha256>);

impl PublicKey {
    /// From PEM: `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo, as Kick serves it) or
    /// `BEGIN RSA PUBLIC KEY` (PKCS#1).
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        use rsa::pkcs1::DecodeRsaPublicKey;
        use rsa::pkcs8::DecodePublicKey;
        let pem = pem.trim();
        use rsa::traits::PublicKeyParts;
        let key = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|e| format!("not an RSA public key in PEM: {e}"))?;
        // Kick's key is 2048 bits; a short key is forgeable, not Kick's.
        if key.size() * 8 < 2048 {
            return Err(format!(
                "the RSA key has {} bits; at least 2048 are required",
                key.size() * 8
            ));
        }
        Ok(PublicKey(VerifyingKey::new(key)))
    }

    /// Verifies a delivery's signature.
    pub fn verify(
        &self,
        message_id: &str,
        timestamp: &str,
        body: &[u8],
        signature_b64: &str,
    ) -> Result<(), VerifyError> {
        use base64::Engine as _;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim())
            .map_err(|_| VerifyError::SignatureEncoding)?;
        let sig = Signature::try_from(sig.as_slice()).map_err(|_| VerifyError::BadSignature)?;
        let mut signed = Vec::with_capacity(message_id.len() + timestamp.len() + body.len() + 2);
        signed.extend_from_slice(message_id.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(timestamp.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        self.0
            .verify(&signed, &sig)
            .map_err(|_| VerifyError::BadSignature)
    }
}

/// Checks a delivery's timestamp against `now` ([`TOLERANCE`] either way).
pub fn check_timestamp(timestamp: &str, now: DateTime<Utc>) -> Result<(), VerifyError> {
    let t = DateTime::parse_from_rfc3339(timestamp.trim())
        .map_err(|_| VerifyError::TimestampFormat)?
        .with_timezone(&Utc);
    let off = (now - t).num_seconds();
    if off.unsigned_abs() > TOLERANCE.as_secs() {
        return Err(VerifyError::Stale(off));
    }
    Ok(())
}

/// The broadcaster in a delivery.
#[derive(Debug, Clone, Deserialize)]
pub struct Broadcaster {
    pub user_id: i64,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub channel_slug: Option<String>,
}

/// A `livestream.status.updated` body (the fields used; others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct StatusUpdated {
    pub broadcaster: Broadcaster,
    pub is_live: bool,
    #[serde(default)]
    pub title: Option<String>,
    /// When the session started (both in the start and in the end delivery: it pairs them).
    #[serde(default, deserialize_with = "time")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "time")]
    pub ended_at: Option<DateTime<Utc>>,
}

fn time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom),
    }
}

/// Kick did not exist before this: an earlier time is garbage.
const EARLIEST: &str = "2020-01-01T00:00:00Z";

/// Decodes a status body. Wrong types, a missing field or a non-positive user id are errors, and
/// so are times that cannot order anything: no `started_at` (it names the session), an end
/// delivery without `ended_at`, a live one with an end, an end before the start, or a time
/// before 2020 or more than [`TOLERANCE`] after `now` (one far-future time would outrank every
/// real event of the streamer).
pub fn decode_status(body: &[u8], now: DateTime<Utc>) -> Result<StatusUpdated, String> {
    let s: StatusUpdated = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !super::valid_id(s.broadcaster.user_id) {
        return Err("broadcaster.user_id is not a user id".into());
    }
    let Some(started) = s.started_at else {
        return Err("started_at is missing".into());
    };
    match (s.is_live, s.ended_at) {
        (true, Some(_)) => return Err("is_live is true but ended_at is set".into()),
        (false, None) => return Err("is_live is false but ended_at is missing".into()),
        (false, Some(ended)) if ended < started => {
            return Err("ended_at is before started_at".into());
        }
        _ => {}
    }
    let earliest: DateTime<Utc> = EARLIEST.parse().expect("a valid constant");
    let latest = now + chrono::Duration::from_std(TOLERANCE).expect("small");
    for (name, t) in [("started_at", Some(started)), ("ended_at", s.ended_at)] {
        if let Some(t) = t
            && !(earliest..=latest).contains(&t)
        {
            return Err(format!("{name} {t} is not between 2020 and now"));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kick");

    #[test]
    fn kicks_key_and_documented_bodies_load() {
        let pem =
            std::fs::read_to_string(format!("{FIXTURES}/kick-webhook-public-key.pem")).unwrap();
        let key = PublicKey::from_pem(&pem).unwrap();
        // A signature by another key never verifies.
        assert_eq!(
            key.verify("id", "2026-01-01T00:00:00Z", b"{}", "AAAA"),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            key.verify("id", "t", b"{}", "not base64!"),
            Err(VerifyError::SignatureEncoding)
        );
        for (name, live) in [
            ("webhook-livestream-status-updated.started.json", true),
            ("webhook-livestream-status-updated.ended.json", false),
        ] {
            let body = std::fs::read(format!("{FIXTURES}/{name}")).unwrap();
            let s = decode_status(&body, "2025-06-01T00:00:00Z".parse().unwrap()).unwrap();
            assert_eq!(s.is_live, live);
            assert_eq!(s.broadcaster.user_id, 123456789);
            assert!(s.started_at.is_some());
            assert_eq!(s.ended_at.is_some(), !live);
        }
        for bad in [
            r#"{"broadcaster":{"user_id":"1"},"is_live":true}"#,
            r#"{"broadcaster":{"user_id":1},"is_live":"yes"}"#,
            r#"{"broadcaster":{"user_id":-1},"is_live":true}"#,
            r#"{"broadcaster":{"user_id":1},"is_live":true,"started_at":"yesterday"}"#,
            r#"{"is_live":true}"#,
            "[]",
            r#"{"broadcaster":{"user_id":1},"is_live":true}"#,
            r#"{"broadcaster":{"user_id":1},"is_live":false,"started_at":"2025-01-01T00:00:00Z"}"#,
            r#"{"broadcaster":{"user_id":1},"is_live":true,"started_at":"2025-01-01T00:00:00Z","ended_at":"2025-01-01T01:00:00Z"}"#,
            r#"{"broadcaster":{"user_id":1},"is_live":false,"started_at":"2025-01-01T02:00:00Z","ended_at":"2025-01-01T01:00:00Z"}"#,
            r#"{"broadcaster":{"user_id":1},"is_live":true,"started_at":"2999-01-01T00:00:00Z"}"#,
            r#"{"broadcaster":{"user_id":1},"is_live":true,"started_at":"2001-01-01T00:00:00Z"}"#,
        ] {
            let now = "2025-06-01T00:00:00Z".parse().unwrap();
            assert!(decode_status(bad.as_bytes(), now).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_signed_delivery_verifies_and_any_change_breaks_it() {
        use base64::Engine as _;
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        use rsa::signature::{SignatureEncoding, Signer};
        // A short key is refused.
        let short = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
        let short_pem = RsaPublicKey::from(&short)
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        assert!(PublicKey::from_pem(&short_pem).is_err());
        let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        let pem = RsaPublicKey::from(&private)
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(private);
        let body = br#"{"broadcaster":{"user_id":7},"is_live":true}"#;
        let sig = signer
            .sign(b"01ID.2026-11-29T20:00:00Z.{\"broadcaster\":{\"user_id\":7},\"is_live\":true}");
        let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
        let key = PublicKey::from_pem(&pem).unwrap();
        assert_eq!(
            key.verify("01ID", "2026-11-29T20:00:00Z", body, &sig),
            Ok(())
        );
        assert_eq!(
            key.verify("01ID2", "2026-11-29T20:00:00Z", body, &sig),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            key.verify("01ID", "2026-11-29T20:00:01Z", body, &sig),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            key.verify("01ID", "2026-11-29T20:00:00Z", b"{}", &sig),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn timestamps_must_be_recent() {
        let now = Utc::now();
        assert!(check_timestamp(&now.to_rfc3339(), now).is_ok());
        let old = (now - chrono::Duration::minutes(6)).to_rfc3339();
        assert!(matches!(
            check_timestamp(&old, now),
            Err(VerifyError::Stale(_))
        ));
        let future = (now + chrono::Duration::minutes(6)).to_rfc3339();
        assert!(matches!(
            check_timestamp(&future, now),
            Err(VerifyError::Stale(_))
        ));
        assert_eq!(check_timestamp("x", now), Err(VerifyError::TimestampFormat));
    }
}
