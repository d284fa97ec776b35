use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum ConnectorCommand {}

pub fn run(cmd: ConnectorCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
