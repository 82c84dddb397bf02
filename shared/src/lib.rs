//! Code shared by the kick-monitor processes: configuration, exit codes, models, database access
//! and migrations, the Kick protocol (frames and the official API), config-value encryption,
//! logging and shutdown handling.
//!
//! Nothing here owns a long-running task: the binaries decide what runs; this crate gives them
//! the vocabulary.

pub mod config;
pub mod crypto;
pub mod db;
pub mod duration;
pub mod exit;
pub mod kick;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod shutdown;
pub mod systemd;

/// Installs the process-wide rustls crypto provider (ring). Call once at process start, before any
/// TLS connection (database, Kick API or WebSocket) is made; later calls are harmless.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The version of this build, reported by `--version`, in heartbeats and in metrics.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
