//! The boot cache: what a collector needs to watch Kick when its database does not answer at
//! start (a machine rebooting, PostgreSQL slower to come up or down for maintenance): the
//! settings stored in the `config` table (secrets as stored, still encrypted), the channels this
//! collector watched, and where Kick serves each of them.
//!
//! [`keep`] writes it to the state directory (one file per slot, mode 0600) while the database
//! answers, whenever it changed, at most every [`EVERY`]: to a temporary file, fsync'd, renamed
//! over the old one, so a crash leaves the old cache or the new one, never half of one.
//!
//! At start the collector tries the database. If the first attempt fails (or gets no answer
//! within [`BOOT_WAIT`], or finds another schema) and a cache exists, the collector does not wait
//! idle: it takes the cached settings (never the defaults:
//! without a cache it waits, as before), subscribes the cached channels in their regions, and
//! the stager spools what they deliver. Those rows carry no lease token (no lease round has run:
//! the collector cannot know whether it still holds its shards, and they must not be refused for
//! a token issued after they were seen); the first lease round ends that. When the database
//! answers, its settings replace the cached ones, the listener reads the watched channels, the
//! lease round decides the shards, the reconciler checks the statuses, and the spool is replayed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kick_shared::config::{Config, read_db_settings};
use kick_shared::db;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ctx::Ctx;

/// How long a start waits for the database before it runs from the cache.
pub const BOOT_WAIT: Duration = Duration::from_secs(3);
/// How often the cache is compared with the database (and written when it differs).
pub const EVERY: Duration = Duration::from_secs(30);
/// The first write after a start: once the first lease round and region reads are done.
const FIRST: Duration = Duration::from_secs(5);
/// A cache file larger than this is not read (ten thousand channels take about 700 KB).
const MAX_BYTES: u64 = 64 << 20;
/// The format of the file; another version is ignored (and replaced at the next write).
const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootCache {
    pub version: u32,
    /// The `config` table's rows: key, value (encrypted values as stored), encrypted.
    pub settings: Vec<(String, String, bool)>,
    /// The channels this collector watched (those of the shards it held).
    pub channels: Vec<i64>,
    /// Where Kick serves them (channel, realtime server URL), as far as known.
    pub regions: Vec<(i64, String)>,
}

/// Why a boot cache was not read.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {bytes} bytes, more than a boot cache can be")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("{path} is not a boot cache: {source}")]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} is a boot cache of version {found}, not {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error(
        "{path} belongs to uid {uid} with mode {mode:o}: a boot cache must be this user's and writable by it alone"
    )]
    Foreign { path: PathBuf, uid: u32, mode: u32 },
}

impl BootCache {
    /// The cache at `path`: `Ok(None)` when there is none (a first start).
    pub fn load(path: &Path) -> Result<Option<BootCache>, CacheError> {
        let read = |source| CacheError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read(e)),
        };
        {
            // Written by this collector's user for it alone: one anybody else could have
            // written is not taken for its settings and channels.
            use std::os::unix::fs::MetadataExt;
            // `/proc/self` belongs to the process's effective user.
            let euid = std::fs::metadata("/proc/self").map_or(meta.uid(), |m| m.uid());
            if meta.uid() != euid || meta.mode() & 0o022 != 0 {
                return Err(CacheError::Foreign {
                    path: path.to_owned(),
                    uid: meta.uid(),
                    mode: meta.mode() & 0o7777,
                });
            }
        }
        let bytes = meta.len();
        if bytes > MAX_BYTES {
            return Err(CacheError::TooLarge {
                path: path.to_owned(),
                bytes,
            });
        }
        let text = std::fs::read(path).map_err(read)?;
        let mut cache: BootCache =
            serde_json::from_slice(&text).map_err(|source| CacheError::Format {
                path: path.to_owned(),
                source,
            })?;
        if cache.version != VERSION {
            return Err(CacheError::Version {
                path: path.to_owned(),
                found: cache.version,
            });
        }
        cache.sanitise(path);
        Ok(Some(cache))
    }

    /// Drops what cannot be a Kick channel id or a realtime server (the file is ours, but a
    /// hand edit or a torn disk must not send sockets anywhere), saying how much.
    fn sanitise(&mut self, path: &Path) {
        let (channels, regions) = (self.channels.len(), self.regions.len());
        self.channels.retain(|c| kick_shared::kick::valid_id(*c));
        self.channels.sort_unstable();
        self.channels.dedup();
        self.regions.retain(|(c, url)| {
            kick_shared::kick::valid_id(*c)
                && (url.starts_with("wss://") || url.starts_with("ws://"))
                && url.len() <= 2048
        });
        let dropped = channels - self.channels.len() + regions - self.regions.len();
        if dropped > 0 {
            tracing::warn!(
                path = %path.display(),
                dropped,
                "boot cache entries that are no channel id or realtime URL ignored"
            );
        }
    }

    /// Writes the cache to `path` atomically (a temporary file beside it, fsync'd, renamed, the
    /// directory fsync'd), readable by the collector's user only.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The configuration the cached settings give with this process's environment (which wins,
    /// as it does over the database).
    pub fn config(&self, env: &Config) -> anyhow::Result<Config> {
        kick_shared::config::merge_db_settings(env, &self.settings)
    }

    /// The shards of the cached channels.
    pub fn shards(&self) -> BTreeSet<i32> {
        self.channels
            .iter()
            .map(|c| kick_shared::model::shard::of(*c))
            .collect()
    }
}

/// Keeps the boot cache at `path` equal to what the database says (supervised). Written only
/// while this collector takes part in the lease rounds (before the first one, or while another
/// process uses its id, its channel set says nothing).
pub async fn keep(
    ctx: Arc<Ctx>,
    desired: watch::Receiver<Arc<BTreeSet<i64>>>,
    path: PathBuf,
) -> anyhow::Result<()> {
    let mut last: Option<BootCache> = None;
    let mut wait = FIRST;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = EVERY;
        if !ctx.leases.is_member() {
            continue;
        }
        let mut cache = match read(&ctx, &desired).await {
            Ok(c) => c,
            Err(e) => {
                // An outage: the cache on disk stays as it is (that is what it is for).
                tracing::debug!(error = %e, "boot cache not refreshed: the database did not answer");
                continue;
            }
        };
        // Settings the collector would refuse (a value written past `kick-admin config set`)
        // are not cached: the last ones that were valid stay (a start on the cache would
        // otherwise refuse the whole cache and watch nothing).
        if let Err(e) = cache.config(&ctx.cfg()) {
            let good = last.as_ref().map(|l| l.settings.clone()).or_else(|| {
                BootCache::load(&path)
                    .ok()
                    .flatten()
                    .filter(|old| old.config(&ctx.cfg()).is_ok())
                    .map(|old| old.settings)
            });
            tracing::debug!(error = %format!("{e:#}"), kept_earlier = good.is_some(), "the config table's settings are not valid: not cached");
            cache.settings = good.unwrap_or_default();
        }
        if last.as_ref() == Some(&cache) {
            continue;
        }
        let p = path.clone();
        let c = cache.clone();
        match tokio::task::spawn_blocking(move || c.save(&p)).await? {
            Ok(()) => {
                tracing::debug!(channels = cache.channels.len(), path = %path.display(), "boot cache written");
                last = Some(cache);
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot write the boot cache; a start without the database will wait for it");
            }
        }
    }
}

async fn read(
    ctx: &Ctx,
    desired: &watch::Receiver<Arc<BTreeSet<i64>>>,
) -> Result<BootCache, db::DbError> {
    let client = ctx.db().await?;
    let settings = db::bounded(5, read_db_settings(&client)).await?;
    let channels: Vec<i64> = desired.borrow().iter().copied().collect();
    let rows = ctx
        .query(
            "SELECT kick_channel_id, url FROM channel_regions WHERE kick_channel_id = ANY($1)
             ORDER BY kick_channel_id",
            &[&channels],
        )
        .await?;
    let regions = rows
        .iter()
        .map(|r| (r.get("kick_channel_id"), r.get("url")))
        .collect();
    Ok(BootCache {
        version: VERSION,
        settings,
        channels,
        regions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kick-bootcache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("boot-0.json")
    }

    fn sample() -> BootCache {
        BootCache {
            version: VERSION,
            settings: vec![("KICK_POLL_INTERVAL".into(), "45s".into(), false)],
            channels: vec![7, 9, 64 + 7],
            regions: vec![(7, "wss://a".into())],
        }
    }

    #[test]
    fn a_saved_cache_loads_back_and_only_its_owner_may_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let path = scratch("saved");
        assert!(BootCache::load(&path).unwrap().is_none(), "no cache yet");
        sample().save(&path).unwrap();
        assert_eq!(BootCache::load(&path).unwrap(), Some(sample()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!path.with_extension("json.tmp").exists());
        assert_eq!(sample().shards(), BTreeSet::from([7, 9]));
    }

    #[test]
    fn a_cache_others_may_write_is_not_used_and_absurd_entries_are_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let path = scratch("foreign");
        let mut odd = sample();
        odd.channels.extend([0, -1, 7, i64::MAX]);
        odd.regions.extend([
            (9, "file:///etc/passwd".into()),
            (-1, "wss://b".into()),
            (9, "wss://b".into()),
        ]);
        odd.save(&path).unwrap();
        let loaded = BootCache::load(&path).unwrap().unwrap();
        assert_eq!(loaded.channels, vec![7, 9, 71]);
        assert_eq!(
            loaded.regions,
            vec![(7, "wss://a".to_string()), (9, "wss://b".to_string())]
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            BootCache::load(&path),
            Err(CacheError::Foreign { mode: 0o666, .. })
        ));
    }

    #[test]
    fn a_damaged_or_foreign_cache_is_an_error_not_a_start_on_garbage() {
        let path = scratch("damaged");
        std::fs::write(&path, b"{\"version\":1,\"settings\":[[\"K\",\"v\",fal").unwrap();
        assert!(matches!(
            BootCache::load(&path),
            Err(CacheError::Format { .. })
        ));
        let mut other = sample();
        other.version = 2;
        other.save(&path).unwrap();
        assert!(matches!(
            BootCache::load(&path),
            Err(CacheError::Version { found: 2, .. })
        ));
    }
}
