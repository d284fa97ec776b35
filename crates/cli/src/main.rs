//! `tern`: the command-line entry point. Each subcommand lives in its own module and only parses
//! arguments and wires library crates together.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[cfg(feature = "server")]
mod connector;
#[cfg(all(feature = "server", feature = "client"))]
mod demo;
mod disk;
#[cfg(feature = "server")]
mod images;
#[cfg(feature = "server")]
mod instances;
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
    /// See the QEMU guests LaunchApp started on tern serve: list them, read a console, stop one.
    #[cfg(feature = "server")]
    #[command(subcommand)]
    Instances(instances::InstancesCommand),
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
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `tern sms` takes an operation's options from --cli-input-json, and prints skeletons,
    // before its command line is parsed.
    #[cfg(feature = "client")]
    let args = match sms::prepare(args, &Cli::command()) {
        sms::Prepared::Args(args) => args,
        sms::Prepared::Exit(code) => return code,
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // The AWS CLI's status for a refused command line is 252; clap's own elsewhere.
            #[cfg(feature = "client")]
            if e.use_stderr() && args.get(1).is_some_and(|a| a == "sms") {
                return ExitCode::from(sms::USAGE_EXIT);
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
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
        #[cfg(feature = "server")]
        Command::Instances(cmd) => instances::run(cmd),
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
