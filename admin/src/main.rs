//! `kick-admin`: the operator's CLI. All logic lives in the library; this only wires the process.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    restore_sigpipe();
    kick_shared::init_tls();
    let cli = match kick_admin::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return kick_admin::usage_exit(&e),
    };
    match kick_admin::run(cli).await {
        Ok(code) => code.into(),
        Err(e) => kick_shared::exit::report("kick-admin", &e),
    }
}

/// `kick-admin streamers list | head` must end quietly, as Unix tools do, instead of failing
/// on the closed pipe: restore the default SIGPIPE action that the Rust runtime ignores.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread or I/O exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
