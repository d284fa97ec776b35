//! `tern demo`: the whole migration pipeline on one machine, end to end, with no arguments.
//!
//! 1. builds a sample VM in a fresh directory ([`vm`]): a boot disk (MBR, one ext4 partition)
//!    as a stream-optimized VMDK and a data disk as qcow2;
//! 2. starts `tern serve` in-process (port 0, its own data directory) and subscribes to its
//!    event bus;
//! 3. starts a connector agent in-process over an inventory listing the VM's two disks;
//! 4. imports the server catalog, creates a replication job (frequency 12 h, seed now, keep 2
//!    AMIs) and waits for the seed run, which the scheduler starts at seedReplicationTime;
//! 5. twice: changes a few % of each disk's 512 KiB blocks (zeroing some) and starts an
//!    on-demand run (the default limit of two on-demand runs a day is enough: the seed comes
//!    from the schedule);
//! 6. reports every run's stages, the bytes uploaded against the disk sizes and the AMI, the
//!    events received, then exports the latest image's disks and checks that they are
//!    byte-identical to the current source disks;
//! 7. with `--boot`, boots the exported disks under QEMU ([`boot`]) and checks that the VM
//!    starts and reads both disks as the source had them at the last run.

mod boot;
mod bootable;
mod launch;
mod replicate;
mod report;
mod services;
mod verify;
pub mod vm;

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use aws_sdk_sms::error::DisplayErrorContext;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tern_local::guest::{BootKit, Qemu};
use tern_local::Running;

use report::{bytes, Check, EventLine, RunReport, Summary};
use vm::{FsChoice, Rng, SampleVm};

const REGION: &str = "us-east-1";
const VM_ID: &str = "vm-demo";
const JOB_STATE_CHANGE: &str = "Server Migration Job State Change";
/// How often the demo looks at a run's state.
const POLL: Duration = Duration::from_millis(150);

#[derive(clap::Args, Debug)]
#[command(
    about = "Replicate a sample VM end to end on this machine and check the result",
    long_about = "\
Replicate a sample VM end to end on this machine and check the result.

With no arguments, tern demo builds a small VM in a temporary directory (a 64 MiB boot disk with \
an MBR and an ext4 partition, written as a stream-optimized VMDK, and a 32 MiB data disk as \
qcow2), starts `tern serve` and a connector in-process, imports the server catalog, creates a \
replication job and lets the scheduler run the seed. It then changes a few percent of each \
disk's 512 KiB blocks (zeroing some of them) and starts an on-demand run, twice. For every run \
it prints the stages as they happened, the bytes uploaded against the disk sizes and the AMI; \
then the job state change events received; finally it exports the latest image's disks and \
checks that they are byte-identical to the current source disks and that the boot disk still \
shows its partition table and filesystem.

Each check prints a PASS or FAIL line; the exit status is 0 only if every check passed. The \
directory is deleted after a passing run, and kept (its path printed) after a failure or with \
--keep.",
    after_help = "\
Needs nothing but this binary: the ext4 partition is made with mke2fs (e2fsprogs) when it is \
installed; without it the partition is a FAT16 filesystem the demo writes itself, and the \
output says so. Nothing runs as root, and no loop device or mount is used.

The seed run is scheduled (seedReplicationTime = now); the two incremental runs are on-demand \
runs, within the default limit of two per job per 24 hours.

Progress shows as a spinner on a terminal, as plain lines otherwise. With --json, the human \
output goes to stderr and stdout carries one JSON summary. RUST_LOG shows the server's and the \
connector's logs (default: errors only)."
)]
pub struct DemoArgs {
    /// Size of the boot disk, MiB (at least 8).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    size_mib: u64,
    /// Size of the data disk, MiB (default: half the boot disk).
    #[arg(long, value_name = "MIB")]
    data_size_mib: Option<u64>,
    /// Share of each disk's 512 KiB blocks changed before each incremental run, percent
    /// (at least two blocks).
    #[arg(long, value_name = "PERCENT", default_value_t = 3.0)]
    change_percent: f64,
    /// Filesystem of the boot partition.
    #[arg(long, value_enum, default_value_t = FsChoice::Auto)]
    filesystem: FsChoice,
    /// Seed of the random data and changes, to repeat a demo exactly (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Work in DIR (created; must be empty) instead of a temporary directory; it is kept.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep the directory (VM disks, server data, connector state) after a passing run.
    #[arg(long)]
    keep: bool,
    /// Print a machine-readable summary on stdout (the human output goes to stderr).
    #[arg(long)]
    json: bool,
    /// Longest wait for one replication run, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    run_timeout_secs: u64,
    /// After the checks, boot the latest image's exported disks under qemu-system-x86_64 and
    /// check that the VM starts and reads both disks as they were at the last run (needs the
    /// boot kit; the boot disk must be at least 24 MiB).
    #[arg(long)]
    boot: bool,
    /// After the checks (and before --boot), launch the migrated server as a one-server
    /// application on tern serve's local launcher (CreateApp, PutAppReplicationConfiguration,
    /// StartAppReplication adopting the demo's job, PutAppLaunchConfiguration, LaunchApp) and
    /// check that the instance boots the migrated disk: its console shows the VM's boot marker.
    /// Then TerminateApp. Needs what --boot needs.
    #[arg(long)]
    launch: bool,
    /// The boot kit that makes the VM bootable (default: $TERN_BOOT_KIT, else
    /// ~/.cache/tern/boot-kit when scripts/boot-kit.sh built one there).
    #[arg(long, value_name = "DIR")]
    boot_kit: Option<PathBuf>,
    /// The QEMU for --boot (default: $TERN_QEMU_SYSTEM, else the boot kit's, else
    /// qemu-system-x86_64 on PATH).
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// QEMU's accelerator for --boot: auto (KVM when /dev/kvm can be opened, TCG if KVM does
    /// not start the VM), kvm or tcg.
    #[arg(long, value_name = "ACCEL", default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    accel: String,
    /// Longest wait for the booted VM's report, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    boot_timeout_secs: u64,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    if !(args.change_percent > 0.0 && args.change_percent <= 50.0) {
        bail!("--change-percent must be more than 0 and at most 50");
    }
    // Everything --boot and --launch need is checked before anything runs.
    let kit = BootKit::find(args.boot_kit.as_deref())?;
    let qemu = if args.boot || args.launch {
        let flag = if args.boot { "--boot" } else { "--launch" };
        let Some(kit) = &kit else {
            bail!("{flag} needs the boot kit (a kernel, GRUB and QEMU from your distribution's packages): run scripts/boot-kit.sh, or name one with --boot-kit");
        };
        if args.size_mib < bootable::MIN_BOOTABLE_MIB {
            bail!(
                "{flag} needs a boot disk of at least {} MiB (--size-mib) to hold the kernel",
                bootable::MIN_BOOTABLE_MIB
            );
        }
        Some(Qemu::locate(args.qemu.as_deref(), Some(kit))?)
    } else {
        None
    };
    let (dir, temporary) = match &args.dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(d)?.next().is_some() {
                bail!(
                    "{} is not empty; give an empty or new directory",
                    d.display()
                );
            }
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), false)
        }
        None => (make_temp_dir()?, true),
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let ui = Ui::new(args.json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut demo = Demo {
        args,
        ui,
        dir: dir.clone(),
        seed,
        rng: Rng::new(seed),
        kit,
        qemu,
        boot: None,
        launch: None,
        vm: None,
        endpoint: None,
        server_id: None,
        job_id: None,
        runs: Vec::new(),
        events: Arc::new(Mutex::new((Vec::new(), 0))),
        checks: Vec::new(),
        step: String::new(),
    };
    let outcome = runtime.block_on(demo.run_all());
    // Whatever is still running (a blocking read of the image service, say) must not keep the
    // demo from reporting.
    runtime.shutdown_timeout(Duration::from_secs(5));
    let error = outcome.err().map(|e| format!("{e:#}"));
    if let Some(e) = &error {
        demo.ui.line(format!("FAIL at step {}: {e}", demo.step));
    }
    let passed = error.is_none() && !demo.checks.is_empty() && demo.checks.iter().all(|c| c.passed);
    let kept = !passed || demo.args.keep || !temporary;
    demo.ui.finish();
    if passed {
        demo.ui
            .line(format!("Result: PASS ({} checks)", demo.checks.len()));
    } else {
        let failed = demo.checks.iter().filter(|c| !c.passed).count();
        demo.ui.line(match &error {
            Some(_) => format!(
                "Result: FAIL (stopped at step {}; {failed} of {} checks made so far failed)",
                demo.step,
                demo.checks.len()
            ),
            None => format!(
                "Result: FAIL ({failed} of {} checks failed)",
                demo.checks.len()
            ),
        });
    }
    if kept {
        demo.ui.line(format!("Directory kept: {}", dir.display()));
    } else if let Err(e) = std::fs::remove_dir_all(&dir) {
        demo.ui
            .line(format!("Could not delete {}: {e}", dir.display()));
    }
    if demo.args.json {
        let summary = demo.summary(passed, kept, error);
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,s3s=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn make_temp_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = base.join(format!(
            "tern-demo-{}-{:08x}",
            std::process::id(),
            stamp.wrapping_add(attempt)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("could not create a directory under {}", base.display())
}

/// Human output: lines on stdout (stderr with `--json`), a spinner on stderr when it is a
/// terminal.
struct Ui {
    to_stderr: bool,
    spinner: Option<ProgressBar>,
}

impl Ui {
    fn new(json: bool) -> Self {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        });
        Ui {
            to_stderr: json,
            spinner,
        }
    }

    fn line(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        let print = || {
            if self.to_stderr {
                eprintln!("{text}");
            } else {
                println!("{text}");
            }
        };
        match &self.spinner {
            Some(pb) => pb.suspend(print),
            None => print(),
        }
    }

    fn status(&self, text: impl Into<String>) {
        if let Some(pb) = &self.spinner {
            pb.set_message(text.into());
        }
    }

    fn finish(&mut self) {
        if let Some(pb) = self.spinner.take() {
            pb.finish_and_clear();
        }
    }
}

/// Keeps each run's manifest: the staging store calls this right after an object is created,
/// before the image service can have deleted the run's staged objects.
struct Manifests {
    staging_root: PathBuf,
    /// The server's staging layout, which says which objects are run manifests.
    staging: tern_core::replication::StagingLocation,
    by_run: Mutex<HashMap<String, Value>>,
}

impl tern_local::s3::ObjectCreatedSink for Manifests {
    fn object_created(&self, event: Value) {
        let Some(object) = tern_core::replication::ObjectCreated::from_event(&event) else {
            return;
        };
        if object.bucket != self.staging.bucket
            || self.staging.run_of_manifest_key(&object.key).is_none()
        {
            return;
        }
        let path = self.staging_root.join(&object.bucket).join(&object.key);
        let manifest = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        if let Some(m) = manifest {
            if let Some(run) = m.get("runId").and_then(Value::as_str) {
                let run = run.to_owned();
                self.by_run
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(run, m);
            }
        }
    }
}

struct Demo {
    args: DemoArgs,
    ui: Ui,
    dir: PathBuf,
    seed: u64,
    rng: Rng,
    kit: Option<BootKit>,
    qemu: Option<Qemu>,
    /// What `--boot` saw, for the summary.
    boot: Option<Value>,
    /// What `--launch` saw, for the summary.
    launch: Option<Value>,
    vm: Option<SampleVm>,
    endpoint: Option<String>,
    server_id: Option<String>,
    job_id: Option<String>,
    runs: Vec<RunReport>,
    /// Events received, and how many repeated deliveries were dropped.
    events: Arc<Mutex<(Vec<EventLine>, usize)>>,
    checks: Vec<Check>,
    /// The step under way, for the failure message.
    step: String,
}

/// The in-process server and connector, stopped in [`Demo::run_all`] whatever happened.
struct Services {
    running: Running,
    client: aws_sdk_sms::Client,
    manifests: Arc<Manifests>,
    agent_stop: Option<tokio::sync::oneshot::Sender<()>>,
    agent: Option<tokio::task::JoinHandle<Result<(), tern_connector::ConnectorError>>>,
    events_task: tokio::task::JoinHandle<()>,
}

impl Demo {
    fn check(&mut self, passed: bool, what: impl Into<String>) {
        let c = Check {
            passed,
            what: what.into(),
        };
        self.ui.line(c.line());
        self.checks.push(c);
    }

    async fn run_all(&mut self) -> anyhow::Result<()> {
        self.ui.line(format!(
            "tern demo: the whole pipeline on this machine, in {} (random seed {})",
            self.dir.display(),
            self.seed
        ));
        self.build_vm()?;
        let mut services = self.start_services().await?;
        let mut result = self.replicate(&mut services).await;
        if result.is_ok() && self.args.launch {
            result = self.launch_check(&services).await;
        }
        if result.is_ok() {
            self.step = "stopping the connector and the server".into();
        }
        self.ui.status("stopping the connector and the server");
        if let Some(stop) = services.agent_stop.take() {
            let _ = stop.send(());
        }
        let agent_result = match services.agent.take() {
            Some(handle) => tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .ok(),
            None => None,
        };
        services.running.shutdown().await;
        services.events_task.abort();
        result?;
        if let Some(Ok(Err(e))) = agent_result {
            bail!("the connector stopped with an error: {e}");
        }
        if self.args.boot {
            self.boot_check()?;
        }
        Ok(())
    }

    fn vm(&self) -> &SampleVm {
        self.vm.as_ref().expect("the VM is built first")
    }

    fn build_vm(&mut self) -> anyhow::Result<()> {
        let boot = self.args.size_mib;
        let data = self.args.data_size_mib.unwrap_or((boot / 2).max(1));
        self.step = "1/6, building the sample VM".into();
        self.ui.status("building the sample VM");
        let started = Instant::now();
        let vm = tokio::task::block_in_place(|| {
            vm::build(
                &self.dir,
                boot,
                data,
                self.args.filesystem,
                &mut self.rng,
                self.kit.as_ref(),
            )
        })
        .context("building the sample VM")?;
        if (self.args.boot || self.args.launch) && vm.boots.is_none() {
            bail!("--boot/--launch: the sample VM is {}", vm.boot_note);
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or_default();
        self.ui.line(format!(
            "[1/6] Sample VM built in {:.1}s: {}",
            started.elapsed().as_secs_f64(),
            vm.filesystem_note
        ));
        self.ui.line(format!(
            "      boot disk {}: MBR, partition 1 {} -> {} (stream-optimized VMDK, {})",
            bytes(vm.boot.size),
            vm.filesystem.name(),
            vm.boot.image.display(),
            bytes(size(&vm.boot.image))
        ));
        self.ui.line(format!(
            "      data disk {} -> {} (qcow2, {})",
            bytes(vm.data.size),
            vm.data.image.display(),
            bytes(size(&vm.data.image))
        ));
        self.ui.line(format!("      {}", vm.boot_note));
        self.vm = Some(vm);
        Ok(())
    }

    fn summary(&self, passed: bool, kept: bool, error: Option<String>) -> Summary {
        let vm = self.vm.as_ref().map(|vm| {
            json!({
                "filesystem": vm.filesystem.name(),
                "filesystemNote": vm.filesystem_note,
                "boots": vm.boots,
                "bootNote": vm.boot_note,
                "disks": vm.disks().iter().map(|d| json!({
                    "name": d.name,
                    "image": d.image.display().to_string(),
                    "format": d.format.to_string(),
                    "size": d.size,
                })).collect::<Vec<_>>(),
            })
        });
        // One lock: a second one in the same expression would wait for the first forever.
        let (events, duplicate_events) = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Summary {
            result: if passed { "PASS" } else { "FAIL" },
            directory: self.dir.display().to_string(),
            kept,
            seed: self.seed,
            vm: vm.unwrap_or(Value::Null),
            endpoint: self.endpoint.clone(),
            server_id: self.server_id.clone(),
            replication_job_id: self.job_id.clone(),
            runs: self.runs.clone(),
            events,
            duplicate_events,
            checks: self.checks.clone(),
            boot: self.boot.clone(),
            launch: self.launch.clone(),
            error,
        }
    }
}

impl Services {
    /// Fails when the connector stopped on its own (it runs until the demo stops it).
    async fn check_agent(&mut self) -> anyhow::Result<()> {
        if self.agent.as_ref().is_some_and(|h| h.is_finished()) {
            let handle = self.agent.take().expect("checked above");
            return Err(match handle.await {
                Ok(Ok(())) => anyhow!("the connector stopped"),
                Ok(Err(e)) => anyhow!("the connector stopped: {e}"),
                Err(e) => anyhow!("the connector task failed: {e}"),
            });
        }
        Ok(())
    }
}

fn sdk<E, R>(err: aws_sdk_sms::error::SdkError<E, R>) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    anyhow!("{}", DisplayErrorContext(&err))
}
