//! The spool: a local, fsync'd, append-only file of staged rows that the database has not
//! accepted yet. While PostgreSQL is unreachable (or at shutdown with events still buffered) the
//! stager appends events here instead of holding them in memory, so a process killed during an
//! outage loses nothing; when the database is back (in this process or the next) the spool is
//! replayed into `raw_events`. Replaying twice is harmless: every row has a dedupe key.
//!
//! Format: one JSON object per line (a [`Staged`]). A torn last line (a crash mid-write) is
//! skipped with a WARN when read. The file is bounded ([`Spool::max_bytes`]); when full, new
//! events are refused with a clear error and counted.
//!
//! The directory is `$STATE_DIRECTORY` (systemd's `StateDirectory=`) or the documented default;
//! see [`StateDir`]. One collector owns a slot at a time (an exclusive file lock), which also
//! gives the collector a stable identity across restarts.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::rows::Staged;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "spool {path} is full ({max_bytes} bytes): events refused until staging succeeds and the spool is replayed"
    )]
    Full { path: String, max_bytes: u64 },
    #[error("spool {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The collector's state directory and its slot in it.
#[derive(Debug)]
pub struct StateDir {
    pub dir: PathBuf,
    /// 0 for the first collector using this directory, 1 for a second one at the same time, …
    pub slot: u32,
    /// Held for the process's life: the slot's exclusive lock.
    _lock: File,
}

/// At most this many collectors share one state directory at once (each takes a slot).
const MAX_SLOTS: u32 = 64;

impl StateDir {
    /// Creates `dir` if needed and takes the first free slot (an exclusive lock on
    /// `slot-<n>.lock`). A restarted collector gets its old slot back (the lock died with the old
    /// process) and with it its spool and identity.
    pub fn acquire(dir: &Path) -> std::io::Result<StateDir> {
        std::fs::create_dir_all(dir)?;
        for slot in 0..MAX_SLOTS {
            let path = dir.join(format!("slot-{slot}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            match file.try_lock() {
                Ok(()) => {
                    return Ok(StateDir {
                        dir: dir.to_owned(),
                        slot,
                        _lock: file,
                    });
                }
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        Err(std::io::Error::other(format!(
            "all {MAX_SLOTS} slots of {} are taken by running collectors",
            dir.display()
        )))
    }

    pub fn spool_path(&self) -> PathBuf {
        self.dir.join(format!("spool-{}.jsonl", self.slot))
    }

    /// The slot's boot cache (see `bootcache`).
    pub fn boot_cache_path(&self) -> PathBuf {
        self.dir.join(format!("boot-{}.json", self.slot))
    }
}

/// An open spool file.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: File,
    bytes: u64,
    events: usize,
    max_bytes: u64,
}

impl Spool {
    /// Opens (or creates) the spool at `path`, counting what an earlier process left in it.
    pub fn open(path: PathBuf, max_bytes: u64) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        let mut spool = Spool {
            path,
            file,
            bytes,
            events: 0,
            max_bytes,
        };
        spool.events = if bytes == 0 { 0 } else { spool.count()? };
        Ok(spool)
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn count(&self) -> Result<usize, SpoolError> {
        // Bytes, not `lines()`: a line that is not UTF-8 (a damaged file) must count, not end
        // the count (an empty-looking spool is never replayed).
        let f = File::open(&self.path).map_err(|e| self.io(e))?;
        let mut n = 0;
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(|e| self.io(e))?;
            if !line.trim_ascii().is_empty() {
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Events in the file (including any already replayed in this pass).
    pub fn events(&self) -> usize {
        self.events
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Appends `rows` and makes them durable (fsync) before returning. All or nothing: when the
    /// rows do not fit, nothing is written and [`SpoolError::Full`] is returned.
    pub fn append(&mut self, rows: &[Staged]) -> Result<(), SpoolError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(rows.len() * 400);
        for r in rows {
            serde_json::to_writer(&mut buf, r).map_err(|e| self.io(e.into()))?;
            buf.push(b'\n');
        }
        if self.bytes.saturating_add(buf.len() as u64) > self.max_bytes {
            return Err(SpoolError::Full {
                path: self.path.display().to_string(),
                max_bytes: self.max_bytes,
            });
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // A write cut short (no space left) leaves part of a line: cut it off, or the next
            // append would continue it and that event would be unreadable.
            let _ = self.file.set_len(self.bytes);
            return Err(self.io(e));
        }
        self.bytes += buf.len() as u64;
        self.events += rows.len();
        Ok(())
    }

    /// Reads up to `max` rows starting at byte `offset`; returns them and the offset after them.
    /// Lines that do not decode (a torn write, a damaged file: not JSON, not UTF-8) are skipped
    /// with a WARN; one bad line affects only itself.
    pub fn read(&self, offset: u64, max: usize) -> Result<(Vec<Staged>, u64), SpoolError> {
        let mut f = File::open(&self.path).map_err(|e| self.io(e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| self.io(e))?;
        let mut reader = BufReader::new(f);
        let mut rows = Vec::new();
        let mut pos = offset;
        // Bytes, not `read_line`: a line that is not UTF-8 is an error of that line (skipped
        // below), not of the read (which would stop every replay behind it).
        let mut line = Vec::new();
        while rows.len() < max {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| self.io(e))?;
            if n == 0 {
                break;
            }
            pos += n as u64;
            if line.trim_ascii().is_empty() {
                continue;
            }
            match serde_json::from_slice::<Staged>(&line) {
                Ok(r) => rows.push(r),
                Err(e) => tracing::warn!(
                    spool = %self.path.display(),
                    offset = pos - n as u64,
                    error = %e,
                    "unreadable spool line skipped (torn write?)"
                ),
            }
        }
        Ok((rows, pos))
    }

    /// Empties the file once everything in it is in the database.
    pub fn clear(&mut self) -> Result<(), SpoolError> {
        self.file.set_len(0).map_err(|e| self.io(e))?;
        self.file.sync_all().map_err(|e| self.io(e))?;
        self.bytes = 0;
        self.events = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn row(i: i64) -> Staged {
        crate::rows::unknown(i, Some(i), "t", Utc::now(), "test")
    }

    #[test]
    fn append_read_survive_a_reopen_and_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("kick-spool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::acquire(&dir).unwrap();
        assert_eq!(state.slot, 0);
        // A second collector on the same directory gets the next slot.
        let other = StateDir::acquire(&dir).unwrap();
        assert_eq!(other.slot, 1);
        drop(other);
        let path = state.spool_path();
        let mut s = Spool::open(path.clone(), 1 << 20).unwrap();
        s.append(&[row(1), row(2)]).unwrap();
        drop(s);
        // A crash mid-write leaves half a line.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"source\":\"rea")
            .unwrap();
        let mut s = Spool::open(path.clone(), 1 << 20).unwrap();
        assert_eq!(s.events(), 3, "counts lines, the torn one included");
        let (rows, end) = s.read(0, 10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].user_id, Some(2));
        assert_eq!(end, s.bytes());
        let (first, off) = s.read(0, 1).unwrap();
        assert_eq!(first.len(), 1);
        let (rest, _) = s.read(off, 10).unwrap();
        assert_eq!(rest.len(), 1);
        s.clear().unwrap();
        assert!(s.is_empty());
        // A damaged file: a line that is not UTF-8, between good ones, costs only itself; alone,
        // it still counts (the spool is not taken for empty).
        s.append(&[row(3)]).unwrap();
        drop(s);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"x\xff\n{\"user_id\":\"\xfe\"}\n").unwrap();
        drop(f);
        let mut s = Spool::open(path.clone(), 1 << 20).unwrap();
        s.append(&[row(4)]).unwrap();
        assert_eq!(s.events(), 4);
        let (rows, end) = s.read(0, 10).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.user_id).collect::<Vec<_>>(),
            [Some(3), Some(4)]
        );
        assert_eq!(end, s.bytes());
        s.clear().unwrap();
        drop(s);
        std::fs::write(&path, b"\xff\n").unwrap();
        let s = Spool::open(path.clone(), 1 << 20).unwrap();
        assert_eq!(s.events(), 1);
        assert!(s.read(0, 10).unwrap().0.is_empty());
        drop(s);
        std::fs::write(&path, b"").unwrap();
        // Bounded: a batch that does not fit is refused whole.
        let mut s = Spool::open(path, 500).unwrap();
        let many: Vec<Staged> = (0..10).map(row).collect();
        assert!(matches!(s.append(&many), Err(SpoolError::Full { .. })));
        assert!(s.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
