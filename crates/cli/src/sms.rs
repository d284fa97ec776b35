use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum SmsCommand {}

pub fn run(cmd: SmsCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
