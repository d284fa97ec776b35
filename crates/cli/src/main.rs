//! `tern`: the command-line entry point. Each subcommand lives in its own module and only parses
//! arguments and wires library crates together.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod disk;
mod states;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Tern: self-hosted server migration (an AWS SMS-compatible service)",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, convert and diff disk images (raw, qcow2, VMDK, VHD, VHDX).
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Validate and run Amazon States Language state machines offline.
    #[command(subcommand)]
    States(states::StatesCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Disk(cmd) => disk::run(cmd),
        Command::States(cmd) => states::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
