//! Encryption of secret config values: AES-256-GCM with a random 96-bit nonce and the config key
//! name as associated data (so a ciphertext cannot be moved to another key). Stored form:
//! `v1:` + base64(nonce ‖ ciphertext ‖ tag). The key file holds 32 random bytes, base64-encoded.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::exit::{Classify, Exit};

const PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "no config key: set KICK_CONFIG_KEY_FILE or pass the systemd credential kick-config-key"
    )]
    NoKey,
    #[error("cannot read the config key {path}: {message}")]
    KeyUnreadable { path: String, message: String },
    #[error(
        "the config key {path} is not a base64-encoded 32-byte key (make one with `kick-admin config keygen`)"
    )]
    KeyInvalid { path: String },
    #[error("cannot decrypt {key}: wrong config key, or the value was tampered with")]
    Decrypt { key: String },
    #[error("stored value of {key} is not in the encrypted format")]
    Format { key: String },
}

impl Classify for CryptoError {
    fn exit(&self) -> Exit {
        match self {
            // A missing key is a permission problem for the operator: exit 77, as a wrong key.
            CryptoError::NoKey
            | CryptoError::KeyUnreadable { .. }
            | CryptoError::KeyInvalid { .. }
            | CryptoError::Decrypt { .. } => Exit::NoPerm,
            CryptoError::Format { .. } => Exit::DataErr,
        }
    }
}

/// A loaded config key. Never printed.
pub struct ConfigKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for ConfigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigKey([REDACTED])")
    }
}

impl ConfigKey {
    pub fn load(path: Option<&Path>) -> Result<Self, CryptoError> {
        let path = path.ok_or(CryptoError::NoKey)?;
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CryptoError::KeyUnreadable {
            path: shown.clone(),
            message: e.to_string().to_lowercase(),
        })?;
        Self::from_base64(text.trim()).ok_or(CryptoError::KeyInvalid { path: shown })
    }

    pub fn from_base64(text: &str) -> Option<Self> {
        let bytes = B64.decode(text).ok()?;
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(SecretBox::new(Box::new(arr))))
    }

    /// A new random key, base64-encoded, for `config keygen`.
    pub fn generate_base64() -> SecretString {
        let key: [u8; 32] = rand::random();
        SecretString::from(B64.encode(key))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.0.expose_secret()).expect("32-byte key")
    }

    pub fn encrypt(&self, key_name: &str, plaintext: &str) -> String {
        let nonce: [u8; 12] = rand::random();
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: key_name.as_bytes(),
                },
            )
            .expect("aes-gcm encryption cannot fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("{PREFIX}{}", B64.encode(out))
    }

    pub fn decrypt(&self, key_name: &str, stored: &str) -> Result<SecretString, CryptoError> {
        let body = stored
            .strip_prefix(PREFIX)
            .ok_or_else(|| CryptoError::Format {
                key: key_name.into(),
            })?;
        let raw = B64.decode(body).map_err(|_| CryptoError::Format {
            key: key_name.into(),
        })?;
        if raw.len() < 12 + 16 {
            return Err(CryptoError::Format {
                key: key_name.into(),
            });
        }
        let (nonce, ct) = raw.split_at(12);
        let pt = self
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: key_name.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt {
                key: key_name.into(),
            })?;
        String::from_utf8(pt)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Decrypt {
                key: key_name.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let k1 = ConfigKey::from_base64(ConfigKey::generate_base64().expose_secret()).unwrap();
        let k2 = ConfigKey::from_base64(ConfigKey::generate_base64().expose_secret()).unwrap();
        let stored = k1.encrypt("KICK_CLIENT_SECRET", "very-secret");
        assert!(!stored.contains("very-secret"));
        assert_eq!(
            k1.decrypt("KICK_CLIENT_SECRET", &stored)
                .unwrap()
                .expose_secret(),
            "very-secret"
        );
        assert!(matches!(
            k2.decrypt("KICK_CLIENT_SECRET", &stored),
            Err(CryptoError::Decrypt { .. })
        ));
        // The key name is associated data: a value moved to another key does not decrypt.
        assert!(matches!(
            k1.decrypt("OTHER", &stored),
            Err(CryptoError::Decrypt { .. })
        ));
        assert!(matches!(
            k1.decrypt("X", "plain"),
            Err(CryptoError::Format { .. })
        ));
        // Two encryptions of the same value differ (random nonce).
        assert_ne!(stored, k1.encrypt("KICK_CLIENT_SECRET", "very-secret"));
        assert_eq!(format!("{k1:?}"), "ConfigKey([REDACTED])");
    }
}
