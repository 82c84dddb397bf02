//! `kick-webhooks`: process wiring only; the receiver is `kick_collector::webhooks`.

use std::process::ExitCode;

use clap::Parser;

// One thread: the receiver waits on sockets and the database.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if let Err(e) = kick_collector::webhooks::cli::Cli::try_parse() {
        let _ = e.print();
        return if e.use_stderr() {
            kick_shared::exit::Exit::Usage.into()
        } else {
            ExitCode::SUCCESS
        };
    }
    let config = match kick_shared::service_config(kick_shared::config::Service::Webhooks) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let shutdown = kick_shared::shutdown::on_signals();
    match kick_collector::webhooks::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "webhook receiver failed");
            kick_shared::exit::report("kick-webhooks", &e)
        }
    }
}
