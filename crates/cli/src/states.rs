use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum StatesCommand {}

pub fn run(cmd: StatesCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
