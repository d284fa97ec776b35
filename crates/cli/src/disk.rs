use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum DiskCommand {}

pub fn run(cmd: DiskCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
