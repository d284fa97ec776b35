//! `tern`: the command-line entry point. Each subcommand lives in its own module and only parses
//! arguments and wires library crates together.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "server")]
mod connector;
#[cfg(all(feature = "server", feature = "client"))]
mod demo;
mod disk;
#[cfg(feature = "server")]
mod images;
#[cfg(feature = "aws")]
mod keys;
#[cfg(feature = "server")]
mod serve;
#[cfg(feature = "client")]
mod sms;
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
    /// Run Tern on one machine: the SMS-compatible API, the S3 staging bucket, replication and events.
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
    /// Run the connector agent next to the hypervisor.
    #[cfg(feature = "server")]
    #[command(subcommand)]
    Connector(connector::ConnectorCommand),
    /// Call the SMS-compatible API (AWS CLI option names, JSON output).
    #[cfg(feature = "client")]
    #[command(subcommand)]
    Sms(sms::SmsCommand),
    // No doc comment: it would replace the about and long_about of `DemoArgs`.
    #[cfg(all(feature = "server", feature = "client"))]
    Demo(demo::DemoArgs),
    /// Inspect, convert and diff disk images (raw, qcow2, VMDK, VHD, VHDX).
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// List the local image service's machine images and export their disks.
    #[cfg(feature = "server")]
    #[command(subcommand)]
    Images(images::ImagesCommand),
    /// Validate and run Amazon States Language state machines offline.
    #[command(subcommand)]
    States(states::StatesCommand),
    /// Issue, rotate, revoke and list the access keys of an AWS deployment (for unmodified SMS
    /// clients and connectors calling its SmsEndpoint).
    #[cfg(feature = "aws")]
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        #[cfg(feature = "server")]
        Command::Serve(args) => serve::run(args),
        #[cfg(feature = "server")]
        Command::Connector(cmd) => connector::run(cmd),
        #[cfg(feature = "client")]
        Command::Sms(cmd) => sms::run(cmd),
        #[cfg(all(feature = "server", feature = "client"))]
        Command::Demo(args) => demo::run(args),
        Command::Disk(cmd) => disk::run(cmd),
        #[cfg(feature = "server")]
        Command::Images(cmd) => images::run(cmd),
        Command::States(cmd) => states::run(cmd),
        #[cfg(feature = "aws")]
        Command::Keys(cmd) => keys::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
