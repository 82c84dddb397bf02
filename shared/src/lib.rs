//! Code shared by the kick-monitor processes: configuration, exit codes, models, database access
//! and migrations, the Kick protocol (frames and the official API), config-value encryption,
//! logging and shutdown handling.
//!
//! Nothing here decides what runs: the binaries do; this crate gives them the vocabulary, and
//! the [`supervise::Supervisor`] that keeps their tasks running.

pub mod backoff;
pub mod config;
pub mod crypto;
pub mod db;
pub mod duration;
pub mod exit;
pub mod health;
pub mod kick;
pub mod logbudget;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod ratelimit;
pub mod shutdown;
pub mod startup;
pub mod supervise;
pub mod systemd;
mod tls;

/// Installs the process-wide rustls crypto provider (ring). Call once at process start, before any
/// TLS connection (database, Kick API or WebSocket) is made; later calls are harmless.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The process-wide TLS client configuration (webpki roots), built once and shared by every
/// database connection and WebSocket: one root store in memory, not one per connection.
pub fn tls_client_config() -> std::sync::Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            init_tls();
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            std::sync::Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// Start-up shared by the services' `main`: configuration from the environment (with the
/// service's own database user, see [`config::Service`]) and logging. An error has already been
/// reported on stderr; its exit code is returned. The settings stored in the database's `config`
/// table are merged in by the service once the database answers (see
/// [`config::with_db_settings`]): a service never runs on defaults because the database was down
/// when it started.
pub fn service_config(service: config::Service) -> Result<config::Config, std::process::ExitCode> {
    init_tls();
    let prog = service.program();
    let config =
        config::Config::from_env_for(service).map_err(|e| exit::report(prog, &e.into()))?;
    logging::init(&config.log);
    for warning in config.database.warnings() {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

/// The version of this build, reported by `--version`, in heartbeats and in metrics.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
