//! `kick-collector`: process wiring only; the collector is the `kick_collector` library.

use std::process::ExitCode;

use clap::Parser;

// One thread: the collector waits on sockets and the database, and a single thread keeps its
// memory in one allocator arena (measured: 500 sockets in less memory than with a thread pool).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if let Err(e) = kick_collector::cli::Cli::try_parse() {
        let _ = e.print();
        return if e.use_stderr() {
            kick_shared::exit::Exit::Usage.into()
        } else {
            ExitCode::SUCCESS
        };
    }
    let config = match kick_shared::service_config(kick_shared::config::Service::Collector) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let shutdown = kick_shared::shutdown::on_signals();
    match kick_collector::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "collector failed");
            kick_shared::exit::report("kick-collector", &e)
        }
    }
}
