//! `tern instances`: the QEMU guests LaunchApp started on `tern serve` (its local launcher's
//! stacks under `<data dir>/instances/`): list them, print a console, stop one.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use serde_json::json;
use tern_local::launcher::{self, InstanceRecord, StackRecord};

use crate::images::DataDir;

#[derive(clap::Subcommand)]
pub enum InstancesCommand {
    /// List every launched application's stack and its instances (running or not).
    List {
        #[command(flatten)]
        data: DataDir,
        /// Print the stacks as JSON (each with its instances and whether they run).
        #[arg(long)]
        json: bool,
    },
    /// Print an instance's serial console (what its firmware and OS printed).
    Console {
        /// The instance id (i-…), its Name tag or its logical id in the template.
        instance: String,
        /// Keep printing what the guest prints until interrupted.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        data: DataDir,
    },
    /// Stop an instance's QEMU (SIGTERM, then SIGKILL after 5 s). Its disks stay until the
    /// application is terminated (TerminateApp).
    Stop {
        /// The instance id (i-…), its Name tag or its logical id in the template.
        instance: String,
        #[command(flatten)]
        data: DataDir,
    },
}

pub fn run(cmd: InstancesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        InstancesCommand::List { data, json } => {
            let stacks = launcher::list(&data.data_dir).map_err(|e| anyhow!(e))?;
            if json {
                let out: Vec<_> = stacks.iter().map(stack_json).collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_list(&stacks);
            }
        }
        InstancesCommand::Console {
            instance,
            follow,
            data,
        } => {
            let (_, inst) = launcher::find(&data.data_dir, &instance).map_err(|e| anyhow!(e))?;
            let path = inst.console();
            let mut f = std::fs::File::open(&path).map_err(|e| {
                anyhow!(
                    "{} has no console yet ({}: {e})",
                    inst.instance_id,
                    path.display()
                )
            })?;
            let mut out = std::io::stdout().lock();
            std::io::copy(&mut f, &mut out)?;
            while follow && inst.running() {
                std::thread::sleep(Duration::from_millis(200));
                let at = f.stream_position()?;
                let mut more = Vec::new();
                f.read_to_end(&mut more)?;
                if more.is_empty() {
                    f.seek(SeekFrom::Start(at))?;
                }
                out.write_all(&more)?;
                out.flush()?;
            }
        }
        InstancesCommand::Stop { instance, data } => {
            let (_, inst) = launcher::find(&data.data_dir, &instance).map_err(|e| anyhow!(e))?;
            if !inst.running() {
                println!("{} is not running", inst.instance_id);
            } else {
                launcher::stop_instance(&inst).map_err(|e| anyhow!(e))?;
                println!("stopped {}", inst.instance_id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn state(i: &InstanceRecord) -> &'static str {
    if i.running() {
        "running"
    } else {
        "stopped"
    }
}

fn stack_json(s: &StackRecord) -> serde_json::Value {
    let instances: Vec<_> = s
        .instances
        .iter()
        .map(|i| {
            let mut v = serde_json::to_value(i).unwrap_or_default();
            v["state"] = json!(state(i));
            v["console"] = json!(i.console());
            v
        })
        .collect();
    json!({"stackName": s.stack_name, "stackId": s.stack_id, "status": s.status,
           "reason": s.reason, "instances": instances})
}

fn print_list(stacks: &[StackRecord]) {
    if stacks.is_empty() {
        println!("no launched applications (LaunchApp starts them)");
        return;
    }
    for s in stacks {
        println!("{}  {}", s.stack_name, s.status);
        if let Some(r) = &s.reason {
            println!("  {r}");
        }
        println!(
            "  {:<19}  {:<22}  {:<5}  {:<10}  {:<8}  {:>4}  {:>6}  {:<5}  {:<4}  image",
            "instance id", "logical id", "order", "type", "state", "vCPU", "MiB", "boot", "accel"
        );
        for i in &s.instances {
            // The firmware is chosen when the instance starts (the image's boot mode).
            let boot = match (&i.uefi, &i.accel) {
                (Some(_), _) => "UEFI",
                (None, Some(_)) => "BIOS",
                (None, None) => "-",
            };
            println!(
                "  {:<19}  {:<22}  {:<5}  {:<10}  {:<8}  {:>4}  {:>6}  {:<5}  {:<4}  {}",
                i.instance_id,
                i.logical_id,
                i.launch_level + 1,
                i.instance_type,
                state(i),
                i.vcpus,
                i.memory_mib,
                boot,
                i.accel.as_deref().unwrap_or("-"),
                i.image_id
            );
        }
    }
}
