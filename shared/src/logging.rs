//! Logging setup: JSON lines on stdout for journald by default (timestamp, level, target,
//! message, fields), or text for humans. `LOG_LEVEL` takes a level or an `EnvFilter` directive.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. The level was validated when the config was loaded.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .try_init(),
        LogFormat::Text => builder.with_writer(std::io::stderr).try_init(),
    };
}
