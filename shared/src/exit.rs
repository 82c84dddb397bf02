//! The exit-code contract shared by every binary (sysexits.h values), and the mapping from an
//! error chain to a code. Operators and monitoring scripts rely on these numbers: never renumber.

use std::fmt;

/// A process exit status from the shared contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Usage = 64,
    DataErr = 65,
    NoInput = 66,
    Unavailable = 69,
    Software = 70,
    TempFail = 75,
    NoPerm = 77,
    Config = 78,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// The table printed in every binary's `--help` and in the README.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   ok
  64  usage error (bad arguments)
  65  bad input data
  66  not found (e.g. unknown streamer)
  69  service unavailable (database or Kick unreachable; a component down)
  70  internal error
  75  temporary failure, retry later (timeout, Kick 429)
  77  permission or authentication (wrong key, Kick 401/403)
  78  configuration error (bad or missing setting)";

/// Errors that know which exit code they deserve and whether retrying may help.
pub trait Classify {
    fn exit(&self) -> Exit;
    /// True when the same operation may succeed if tried again later.
    fn is_retryable(&self) -> bool {
        matches!(self.exit(), Exit::Unavailable | Exit::TempFail)
    }
}

/// An error raised directly by a binary with a chosen exit code (e.g. "streamer not found").
#[derive(Debug)]
pub struct ExitError {
    pub exit: Exit,
    pub message: String,
}

impl ExitError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }
}

impl fmt::Display for ExitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitError {}

impl Classify for ExitError {
    fn exit(&self) -> Exit {
        self.exit
    }
}

/// Finds the exit code for an error chain: the outermost error that classifies itself wins;
/// anything unclassified is an internal error (70).
pub fn exit_for(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<ExitError>() {
            return e.exit();
        }
        if let Some(e) = cause.downcast_ref::<crate::config::ConfigError>() {
            return e.exit();
        }
        if let Some(e) = cause.downcast_ref::<crate::db::DbError>() {
            return e.exit();
        }
        if let Some(e) = cause.downcast_ref::<crate::kick::api::ApiError>() {
            return e.exit();
        }
        if let Some(e) = cause.downcast_ref::<crate::crypto::CryptoError>() {
            return e.exit();
        }
        if let Some(e) = cause.downcast_ref::<crate::kick::subscriptions::SyncError>() {
            return e.exit();
        }
    }
    Exit::Software
}

/// Prints an error as one line on stderr (`prog: cause: cause`) and returns its exit code.
pub fn report(prog: &str, err: &anyhow::Error) -> std::process::ExitCode {
    let line = format!("{err:#}").replace('\n', " ");
    eprintln!("{prog}: {line}");
    exit_for(err).into()
}
