//! Kick's webhook public key: from `KICK_WEBHOOK_PUBLIC_KEY_FILE` or from
//! `GET {KICK_API_URL}/public/v1/public-key`, cached. When a signature fails the key is obtained
//! again once (Kick may have rotated it), but at most every [`REFETCH_EVERY`]: a stream of forged
//! deliveries must not become a stream of requests to Kick.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kick_shared::kick::api::ApiClient;
use kick_shared::kick::webhook::{PublicKey, VerifyError};
use tokio::sync::Mutex;

use super::metrics::WebhookMetrics;

/// The shortest time between two fetches of the key: a rotation costs at most this long of
/// refused deliveries; forged ones cause at most one request to Kick per this.
pub const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// A fetch on a request's path waits at most this long (the request is answered 503 after).
const INLINE_FETCH: Duration = Duration::from_secs(5);

/// Where the key comes from.
#[derive(Debug)]
pub enum KeySource {
    File(PathBuf),
    Api(Arc<ApiClient>),
}

/// The cached key.
#[derive(Debug)]
pub struct Keys {
    source: KeySource,
    state: Mutex<KeyState>,
    metrics: Arc<WebhookMetrics>,
}

#[derive(Debug, Default)]
struct KeyState {
    key: Option<Arc<PublicKey>>,
    fetched: Option<Instant>,
}

/// Why a key could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("KICK_WEBHOOK_PUBLIC_KEY_FILE {path}: {reason}")]
    File { path: String, reason: String },
    #[error("GET /public/v1/public-key: {0}")]
    Api(#[from] kick_shared::kick::api::ApiError),
    #[error("GET /public/v1/public-key: {0}")]
    Pem(String),
}

impl Keys {
    pub fn new(source: KeySource, metrics: Arc<WebhookMetrics>) -> Keys {
        Keys {
            source,
            state: Mutex::new(KeyState::default()),
            metrics,
        }
    }

    /// Reads or fetches the key now.
    pub async fn load(&self) -> Result<Arc<PublicKey>, KeyError> {
        self.metrics.public_key_fetches.inc();
        let key = match &self.source {
            KeySource::File(path) => {
                let err = |reason: String| KeyError::File {
                    path: path.display().to_string(),
                    reason,
                };
                let pem = read_small(path).map_err(|e| err(e.to_string()))?;
                PublicKey::from_pem(&pem).map_err(err)?
            }
            KeySource::Api(api) => {
                let pem = api.public_key().await?;
                PublicKey::from_pem(&pem).map_err(KeyError::Pem)?
            }
        };
        let key = Arc::new(key);
        let mut st = self.state.lock().await;
        st.key = Some(key.clone());
        st.fetched = Some(Instant::now());
        self.metrics.public_key_loaded.set(1.0);
        Ok(key)
    }

    /// The cached key, loading it when there is none yet (at most every [`REFETCH_EVERY`]).
    async fn current(&self) -> Result<Arc<PublicKey>, VerifyError> {
        let (key, fetched) = {
            let st = self.state.lock().await;
            (st.key.clone(), st.fetched)
        };
        if let Some(k) = key {
            return Ok(k);
        }
        if fetched.is_some_and(|t| t.elapsed() < REFETCH_EVERY) {
            return Err(VerifyError::NoKey("not loaded yet".into()));
        }
        self.state.lock().await.fetched = Some(Instant::now());
        match tokio::time::timeout(INLINE_FETCH, self.load()).await {
            Ok(r) => r.map_err(|e| VerifyError::NoKey(e.to_string())),
            Err(_) => Err(VerifyError::NoKey("fetching the key timed out".into())),
        }
    }

    /// Verifies a delivery; a bad signature makes the key be obtained once more first.
    pub async fn verify(
        &self,
        id: &str,
        ts: &str,
        body: &[u8],
        sig: &str,
    ) -> Result<(), VerifyError> {
        let key = self.current().await?;
        match key.verify(id, ts, body, sig) {
            Err(VerifyError::BadSignature) => {
                let due = {
                    let mut st = self.state.lock().await;
                    let due = st.fetched.is_none_or(|t| t.elapsed() >= REFETCH_EVERY);
                    if due {
                        st.fetched = Some(Instant::now());
                    }
                    due
                };
                if !due {
                    return Err(VerifyError::BadSignature);
                }
                match tokio::time::timeout(INLINE_FETCH, self.load())
                    .await
                    .unwrap_or_else(|_| Err(KeyError::Pem("fetching the key timed out".into())))
                {
                    Ok(fresh) => fresh.verify(id, ts, body, sig),
                    Err(e) => {
                        tracing::warn!(error = %e, "webhooks: could not obtain the public key again; keeping the cached one");
                        Err(VerifyError::BadSignature)
                    }
                }
            }
            other => other,
        }
    }
}

/// Reads a key file of at most 64 KiB (a PEM key is a few hundred bytes).
fn read_small(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut s = String::new();
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_string(&mut s)?;
    Ok(s)
}
