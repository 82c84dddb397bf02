//! `kick-writer`: process wiring only; the writer is the `kick_writer` library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if let Err(e) = kick_writer::cli::Cli::try_parse() {
        let _ = e.print();
        return if e.use_stderr() {
            kick_shared::exit::Exit::Usage.into()
        } else {
            ExitCode::SUCCESS
        };
    }
    let config = match kick_shared::service_config(kick_shared::config::Service::Writer) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let shutdown = kick_shared::shutdown::on_signals();
    match kick_writer::run(kick_writer::WriterConfig::from_config(config), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "writer failed");
            kick_shared::exit::report("kick-writer", &e)
        }
    }
}
