//! `kick-admin`: the operator's CLI. All logic lives in the library; this only wires the process.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
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
