//! `kick-manpages OUTDIR`: writes section-1 man pages for kick-admin (and one page per
//! subcommand, `kick-admin-db.1`, `kick-admin-db-init.1`, …), kick-collector, kick-writer and
//! kick-webhooks, rendered by clap_mangen from the same `Cli` definitions the binaries parse, so `--help` and
//! `man` never disagree. `scripts/package` runs it and gzips the pages into the .deb.
//!
//! A separate binary rather than a hidden subcommand: the services stay free of a man-page
//! renderer, and one program covers every command.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory as _;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        anyhow::bail!("usage: kick-manpages OUTDIR");
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for cmd in [
        kick_admin::Cli::command(),
        kick_collector::cli::Cli::command(),
        kick_writer::cli::Cli::command(),
        kick_collector::webhooks::cli::Cli::command(),
    ] {
        let name = cmd.get_name().to_owned();
        clap_mangen::generate_to(cmd, &out)
            .with_context(|| format!("rendering the man pages of {name} into {}", out.display()))?;
    }
    Ok(())
}
