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
//!    byte-identical to the current source disks.

mod report;
pub mod vm;

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use aws_sdk_sms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sms::error::DisplayErrorContext;
use aws_sdk_sms::types::ReplicationRunState;
use aws_smithy_types::DateTime;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tern_disk::inspect::{inspect, PartitionTable};
use tern_disk::{OpenOptions, VirtualDisk};
use tern_local::images::ImageCatalog;
use tern_local::{Running, ServeConfig};

use report::{bytes, Check, DiskUpload, EventLine, RunReport, StageStep, Summary};
use vm::{FsChoice, Rng, SampleVm, MIB};

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
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    if !(args.change_percent > 0.0 && args.change_percent <= 50.0) {
        bail!("--change-percent must be more than 0 and at most 50");
    }
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
        let result = self.replicate(&mut services).await;
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
            vm::build(&self.dir, boot, data, self.args.filesystem, &mut self.rng)
        })
        .context("building the sample VM")?;
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
        self.vm = Some(vm);
        Ok(())
    }

    async fn start_services(&mut self) -> anyhow::Result<Services> {
        self.step = "2/6, starting tern serve".into();
        self.ui.status("starting tern serve");
        let data_dir = self.dir.join("server");
        let mut cfg = ServeConfig::new(&data_dir, "127.0.0.1:0".parse().expect("an address"));
        let manifests = Arc::new(Manifests {
            staging_root: data_dir.join(tern_local::s3::STAGING_DIR),
            staging: cfg
                .replication
                .as_ref()
                .map(|r| r.settings.staging())
                .unwrap_or_else(|| {
                    tern_core::replication::ReplicationSettings::default().staging()
                }),
            by_run: Mutex::new(HashMap::new()),
        });
        cfg.region = REGION.into();
        cfg.object_created = Some(manifests.clone());
        if let Some(replication) = cfg.replication.as_mut() {
            // Runs start within a quarter second of being due, instead of a second.
            replication.tick_interval = Duration::from_millis(250);
        }
        let running = tern_local::start(cfg)
            .await
            .context("starting tern serve")?;
        let mut rx = running.events().subscribe();
        let events = self.events.clone();
        let events_task = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        if event.detail_type != JOB_STATE_CHANGE {
                            continue;
                        }
                        if let Ok(v) = serde_json::to_value(&event) {
                            let line = EventLine::from_event(&v);
                            let mut seen = events.lock().unwrap_or_else(|p| p.into_inner());
                            // Delivery is at-least-once; a repeat carries the same id.
                            if seen.0.iter().any(|e| e.id == line.id) {
                                seen.1 += 1;
                            } else {
                                seen.0.push(line);
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the demo fell behind the event bus")
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        self.endpoint = Some(running.endpoint());
        self.ui.line(format!(
            "[2/6] tern serve is running in-process at {} (data in {}), events subscribed",
            running.endpoint(),
            data_dir.display()
        ));
        let admin = running.admin();
        let config = aws_sdk_sms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(running.endpoint())
            .credentials_provider(Credentials::new(
                &admin.access_key_id,
                &admin.secret_access_key,
                None,
                None,
                "tern-demo-admin",
            ))
            .build();
        let client = aws_sdk_sms::Client::from_conf(config);

        self.step = "3/6, starting the connector".into();
        self.ui.status("starting the connector");
        let connector_dir = self.dir.join("connector");
        let config_path = self.write_connector_files(&connector_dir, &running)?;
        let config = tern_connector::ConnectorConfig::load(&config_path)?;
        let mut agent = tern_connector::Agent::new(config)
            .await
            .context("starting the connector")?;
        let (agent_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(async move {
            agent
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        let mut services = Services {
            running,
            client,
            manifests,
            agent_stop: Some(agent_stop),
            agent: Some(agent),
            events_task,
        };
        let client = services.client.clone();
        let connector_id = self
            .wait_for(
                "the connector to register",
                Duration::from_secs(30),
                &mut services,
                || {
                    let client = client.clone();
                    async move {
                        let out = client.get_connectors().send().await.map_err(sdk)?;
                        Ok(out
                            .connector_list()
                            .first()
                            .and_then(|c| c.connector_id())
                            .map(str::to_owned))
                    }
                },
            )
            .await?;
        self.ui.line(format!(
            "[3/6] Connector {connector_id} registered (config {})",
            config_path.display()
        ));
        Ok(services)
    }

    fn write_connector_files(&self, dir: &Path, running: &Running) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let vm = self.vm();
        let disk = |d: &vm::DiskFiles| {
            format!(
                "{{ path = {:?}, format = {:?} }}",
                d.image.display().to_string(),
                match d.format {
                    tern_disk::Format::Qcow2 => "qcow2",
                    _ => "vmdk",
                }
            )
        };
        let inventory = format!(
            "# The demo's VM, as a connector's `files` source lists it.\n\
             vm_manager_id = \"demo-vcenter\"\n\
             vm_manager_name = \"tern demo\"\n\
             vm_manager_type = \"VSPHERE\"\n\n\
             [[vms]]\n\
             id = \"{VM_ID}\"\n\
             name = \"demo-web01\"\n\
             folder = \"/demo/vm\"\n\
             os_type = \"LINUX\"\n\
             disks = [{}, {}]\n",
            disk(&vm.boot),
            disk(&vm.data)
        );
        std::fs::write(dir.join("inventory.toml"), inventory)?;
        let keys = running.connector();
        let config = format!(
            "# The demo's connector: the in-process server's connector keys.\n\
             endpoint = {:?}\n\
             region = \"{REGION}\"\n\
             name = \"tern-demo\"\n\
             state_dir = \"state\"\n\
             heartbeat_interval_secs = 1\n\
             poll_interval_secs = 1\n\n\
             [credentials]\n\
             access_key_id = {:?}\n\
             secret_access_key = {:?}\n\n\
             [files]\n\
             inventory = \"inventory.toml\"\n",
            running.endpoint(),
            keys.access_key_id,
            keys.secret_access_key
        );
        let path = dir.join("connector.toml");
        std::fs::write(&path, config)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(path)
    }

    /// Polls `f` until it yields a value, failing after `timeout` or when the connector stops.
    async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        services: &mut Services,
        mut f: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        self.ui.status(format!("waiting for {what}"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await? {
                return Ok(v);
            }
            services.check_agent().await?;
            if Instant::now() > deadline {
                bail!("timed out after {}s waiting for {what}", timeout.as_secs());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn replicate(&mut self, services: &mut Services) -> anyhow::Result<()> {
        let client = services.client.clone();
        self.step = "4/6, importing the catalog and creating the job".into();
        self.ui.status("importing the server catalog");
        client
            .import_server_catalog()
            .send()
            .await
            .map_err(sdk)
            .context("ImportServerCatalog")?;
        let c = client.clone();
        let server_id = self
            .wait_for(
                "GetServers to list the VM",
                Duration::from_secs(60),
                services,
                || {
                    let client = c.clone();
                    async move {
                        let out = client.get_servers().send().await.map_err(sdk)?;
                        Ok(out
                            .server_list()
                            .iter()
                            .find(|s| {
                                s.vm_server()
                                    .and_then(|v| v.vm_server_address())
                                    .and_then(|a| a.vm_id())
                                    == Some(VM_ID)
                            })
                            .and_then(|s| s.server_id())
                            .map(str::to_owned))
                    }
                },
            )
            .await?;
        self.server_id = Some(server_id.clone());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let job_id = client
            .create_replication_job()
            .server_id(&server_id)
            .seed_replication_time(DateTime::from_secs(now))
            .frequency(12)
            .number_of_recent_amis_to_keep(2)
            .description("tern demo")
            .send()
            .await
            .map_err(sdk)
            .context("CreateReplicationJob")?
            .replication_job_id()
            .ok_or_else(|| anyhow!("CreateReplicationJob returned no replicationJobId"))?
            .to_owned();
        self.job_id = Some(job_id.clone());
        self.ui.line(format!(
            "[4/6] Catalog imported: server {server_id} ({VM_ID}, 2 disks); replication job \
             {job_id}: frequency 12 h, seed now, numberOfRecentAmisToKeep 2"
        ));

        // Run 1: the seed, started by the scheduler at seedReplicationTime.
        let c = client.clone();
        let j = job_id.clone();
        let seed_run = self
            .wait_for(
                "the scheduler to start the seed run",
                Duration::from_secs(60),
                services,
                || {
                    let client = c.clone();
                    let job_id = j.clone();
                    async move {
                        let out = client
                            .get_replication_runs()
                            .replication_job_id(job_id)
                            .send()
                            .await
                            .map_err(sdk)?;
                        Ok(out
                            .replication_run_list()
                            .first()
                            .and_then(|r| r.replication_run_id())
                            .map(str::to_owned))
                    }
                },
            )
            .await?;
        self.ui.line("[5/6] Replication runs");
        self.ui.line(format!(
            "  run 1: the seed, started by the scheduler at seedReplicationTime ({seed_run})"
        ));
        self.watch_run(services, &job_id, &seed_run, Vec::new())
            .await?;

        for number in 2..=3 {
            self.step = "5/6, changing blocks of both disks".into();
            self.ui.status("changing blocks of both disks");
            let vm = self.vm().clone();
            let percent = self.args.change_percent;
            let rng = &mut self.rng;
            let changes = tokio::task::block_in_place(|| {
                vm.disks()
                    .iter()
                    .map(|d| vm::mutate(d, percent, rng))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .context("changing the disks")?;
            let run_id = client
                .start_on_demand_replication_run()
                .replication_job_id(&job_id)
                .description(format!("tern demo: incremental run {}", number - 1))
                .send()
                .await
                .map_err(sdk)
                .context("StartOnDemandReplicationRun")?
                .replication_run_id()
                .ok_or_else(|| anyhow!("StartOnDemandReplicationRun returned no run id"))?
                .to_owned();
            let described: Vec<String> = vm
                .disks()
                .iter()
                .zip(&changes)
                .map(|(d, c)| {
                    format!(
                        "{} disk {} blocks ({} zeroed)",
                        d.name,
                        c.count(),
                        c.zeroed.len()
                    )
                })
                .collect();
            self.ui.line(format!(
                "  run {number}: on demand ({run_id}), after changing {}",
                described.join(", ")
            ));
            self.watch_run(services, &job_id, &run_id, changes).await?;
        }

        self.step = "6/6, events and checks".into();
        self.ui.status("waiting for the last events");
        let want: Vec<String> = self.runs.iter().map(|r| r.run_id.clone()).collect();
        let events = self.events.clone();
        let _ = self
            .wait_for(
                "a Completed event for every run",
                Duration::from_secs(15),
                services,
                || {
                    let events = events.clone();
                    let want = want.clone();
                    async move {
                        let ev = &events.lock().unwrap_or_else(|p| p.into_inner()).0;
                        Ok(want
                            .iter()
                            .all(|r| ev.iter().any(|e| &e.run_id == r && e.state == "Completed"))
                            .then_some(()))
                    }
                },
            )
            .await;
        let (events, duplicates) = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let repeats = match duplicates {
            0 => String::new(),
            1 => ", and 1 repeated delivery dropped by event id".into(),
            n => format!(", and {n} repeated deliveries dropped by event id"),
        };
        self.ui.line(format!(
            "[6/6] Events received: {} \"{JOB_STATE_CHANGE}\"{repeats} (time, state, job, run, ami-id)",
            events.len()
        ));
        for e in &events {
            self.ui.line(format!("  {}", e.describe()));
        }
        self.verify(&events)
    }

    /// Follows one run until it completes, recording its stages; fails when it fails.
    async fn watch_run(
        &mut self,
        services: &mut Services,
        job_id: &str,
        run_id: &str,
        changes: Vec<vm::Changes>,
    ) -> anyhow::Result<()> {
        let number = self.runs.len() + 1;
        self.step = format!("5/6, replication run {number} ({run_id})");
        let started = Instant::now();
        let timeout = Duration::from_secs(self.args.run_timeout_secs);
        let mut stages: Vec<StageStep> = Vec::new();
        let mut report = RunReport {
            number,
            run_id: run_id.to_owned(),
            run_type: String::new(),
            state: String::new(),
            ami_id: None,
            seconds: 0.0,
            stages: Vec::new(),
            uploads: Vec::new(),
            changes,
        };
        let outcome: anyhow::Result<()> = async {
            loop {
                let out = services
                    .client
                    .get_replication_runs()
                    .replication_job_id(job_id)
                    .send()
                    .await
                    .map_err(sdk)
                    .context("GetReplicationRuns")?;
                let run = out
                    .replication_run_list()
                    .iter()
                    .find(|r| r.replication_run_id() == Some(run_id))
                    .ok_or_else(|| {
                        anyhow!("run {run_id} is no longer listed by GetReplicationRuns")
                    })?;
                let state = run
                    .state()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                let step = StageStep {
                    at_secs: started.elapsed().as_secs_f64(),
                    state: state.clone(),
                    stage: run
                        .stage_details()
                        .and_then(|d| d.stage())
                        .map(str::to_owned),
                    progress: run
                        .stage_details()
                        .and_then(|d| d.stage_progress())
                        .map(str::to_owned),
                    status_message: run.status_message().map(str::to_owned),
                };
                report.run_type = run
                    .r#type()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default();
                report.state = state;
                if stages.last().is_none_or(|last| !last.same_as(&step)) {
                    self.ui.line(format!("      {}", step.describe()));
                    self.ui.status(format!(
                        "run {number}: {} {} {}",
                        step.state,
                        step.stage.as_deref().unwrap_or(""),
                        step.progress.as_deref().unwrap_or("")
                    ));
                    stages.push(step);
                }
                match run.state() {
                    Some(ReplicationRunState::Completed) => {
                        report.ami_id = run.ami_id().map(str::to_owned);
                        return Ok(());
                    }
                    Some(ReplicationRunState::Failed | ReplicationRunState::Deleted) => {
                        bail!(
                            "run {number} ({run_id}) ended {}: {}",
                            report.state,
                            run.status_message().unwrap_or("no status message")
                        );
                    }
                    _ => {}
                }
                services.check_agent().await?;
                if started.elapsed() > timeout {
                    bail!(
                        "run {number} ({run_id}) did not complete within {}s (last: {})",
                        timeout.as_secs(),
                        stages.last().map(StageStep::describe).unwrap_or_default()
                    );
                }
                tokio::time::sleep(POLL).await;
            }
        }
        .await;
        report.seconds = started.elapsed().as_secs_f64();
        report.stages = stages;
        let manifest = services
            .manifests
            .by_run
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned();
        if let Some(m) = &manifest {
            report.uploads = DiskUpload::from_manifest(m);
        }
        let names = ["boot", "data"];
        for u in &report.uploads {
            let name = names.get(u.index as usize).copied().unwrap_or("?");
            self.ui.line(format!("      {}", u.describe(name)));
        }
        if outcome.is_ok() {
            let total: u64 = self.vm().disks().iter().map(|d| d.size).sum();
            self.ui.line(format!(
                "      run {number} completed in {:.1}s: uploaded {} for {} of disks, AMI {}",
                report.seconds,
                bytes(report.uploaded()),
                bytes(total),
                report.ami_id.as_deref().unwrap_or("(none)")
            ));
        }
        self.runs.push(report);
        outcome
    }

    /// The checks: every run completed with an AMI, the incremental runs sent deltas, the
    /// events, retention, and the latest image's disks against the current source disks.
    fn verify(&mut self, events: &[EventLine]) -> anyhow::Result<()> {
        self.ui.line("Checks");
        let runs = self.runs.clone();
        for r in &runs {
            self.check(
                r.state == "COMPLETED" && r.ami_id.is_some(),
                format!(
                    "run {} ({}, {}) completed with AMI {}",
                    r.number,
                    r.run_type,
                    r.run_id,
                    r.ami_id.as_deref().unwrap_or("(none)")
                ),
            );
            let expected = if r.number == 1 { "seed-vmdk" } else { "delta" };
            let kinds: Vec<&str> = r.uploads.iter().map(|u| u.kind.as_str()).collect();
            let sizes: u64 = r.uploads.iter().map(|u| u.virtual_size).sum();
            self.check(
                kinds.len() == 2 && kinds.iter().all(|k| *k == expected),
                format!(
                    "run {} uploaded both disks as {expected} ({} sent for {} of disks; manifest kinds {:?})",
                    r.number,
                    bytes(r.uploaded()),
                    bytes(sizes),
                    kinds
                ),
            );
            if r.number > 1 {
                let changed: u64 = r.uploads.iter().filter_map(|u| u.changed_blocks).sum();
                let made: usize = r.changes.iter().map(vm::Changes::count).sum();
                self.check(
                    changed == made as u64,
                    format!(
                        "run {} sent exactly the {made} blocks the demo changed (deltas list {changed})",
                        r.number
                    ),
                );
            }
            let completed = events
                .iter()
                .find(|e| e.run_id == r.run_id && e.state == "Completed");
            self.check(
                completed.is_some_and(|e| e.ami_id == r.ami_id),
                format!(
                    "a Completed event for run {} with ami-id {}",
                    r.number,
                    completed
                        .and_then(|e| e.ami_id.as_deref())
                        .unwrap_or("(no such event)")
                ),
            );
        }

        self.ui.status("exporting the latest image");
        let data_dir = self.dir.join("server");
        let catalog = ImageCatalog::open(&data_dir)?;
        let amis: Vec<String> = runs.iter().filter_map(|r| r.ami_id.clone()).collect();
        let images = catalog.list_images()?;
        let kept: Vec<&String> = amis
            .iter()
            .filter(|a| images.iter().any(|i| &i.image_id == *a))
            .collect();
        self.check(
            amis.len() == 3 && kept.len() == 2 && !kept.contains(&&amis[0]),
            format!(
                "numberOfRecentAmisToKeep 2: images kept {:?}, the seed's {} deregistered",
                kept,
                amis.first().map(String::as_str).unwrap_or("(none)")
            ),
        );
        let Some(latest) = amis.last().filter(|_| amis.len() == runs.len()) else {
            bail!("no AMI to export");
        };
        let image = catalog.describe_image(latest)?;
        let export_dir = self.dir.join("export");
        std::fs::create_dir_all(&export_dir)?;
        let vm = self.vm().clone();
        if image.block_devices.len() != 2 {
            self.check(
                false,
                format!(
                    "{latest} has {} block devices, expected 2",
                    image.block_devices.len()
                ),
            );
        }
        for (device, disk) in image.block_devices.iter().zip(vm.disks()) {
            let snapshot = catalog.snapshot_disk(&device.snapshot_id)?;
            let out = export_dir.join(format!("{}.raw", disk.name));
            self.ui
                .status(format!("exporting {} {}", latest, device.device_name));
            let verdict = tokio::task::block_in_place(|| -> anyhow::Result<Option<String>> {
                tern_disk::write::write_raw(&snapshot, &out, &tern_disk::no_progress)
                    .with_context(|| {
                        format!("exporting {} to {}", device.snapshot_id, out.display())
                    })?;
                let exported = open(&out)?;
                let source = open(&disk.image)?;
                first_difference(exported.as_ref(), source.as_ref())
            })?;
            self.check(
                verdict.is_none(),
                match &verdict {
                    None => format!(
                        "{} disk: {} of {latest} ({}), exported to {}, is byte-identical to {} ({})",
                        disk.name,
                        device.device_name,
                        device.snapshot_id,
                        out.display(),
                        disk.image.display(),
                        bytes(disk.size)
                    ),
                    Some(diff) => format!(
                        "{} disk: {} of {latest} differs from {}: {diff}",
                        disk.name,
                        device.device_name,
                        disk.image.display()
                    ),
                },
            );
            if disk.name == "boot" {
                let report = inspect(open(&out)?.as_ref())?;
                let fs = report.partitions.first().and_then(|p| p.filesystem);
                self.check(
                    report.partition_table == PartitionTable::Mbr
                        && report.partitions.len() == 1
                        && fs == Some(vm.filesystem),
                    format!(
                        "the exported boot disk shows an MBR with partition 1 {} (found {:?}, {} partition(s), {})",
                        vm.filesystem.name(),
                        report.partition_table,
                        report.partitions.len(),
                        fs.map(|f| f.name()).unwrap_or("no filesystem")
                    ),
                );
            }
        }
        Ok(())
    }

    fn summary(&self, passed: bool, kept: bool, error: Option<String>) -> Summary {
        let vm = self.vm.as_ref().map(|vm| {
            json!({
                "filesystem": vm.filesystem.name(),
                "filesystemNote": vm.filesystem_note,
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

fn open(path: &Path) -> anyhow::Result<Box<dyn VirtualDisk>> {
    tern_disk::open(path, &OpenOptions::default())
        .with_context(|| format!("opening {}", path.display()))
}

/// `None` when both disks hold the same bytes; otherwise where they first differ.
fn first_difference(a: &dyn VirtualDisk, b: &dyn VirtualDisk) -> anyhow::Result<Option<String>> {
    if a.size() != b.size() {
        return Ok(Some(format!("sizes differ: {} and {}", a.size(), b.size())));
    }
    let mut x = vec![0u8; 4 * MIB as usize];
    let mut y = vec![0u8; 4 * MIB as usize];
    let mut pos = 0;
    while pos < a.size() {
        let n = (a.size() - pos).min(4 * MIB) as usize;
        a.read_at(&mut x[..n], pos)?;
        b.read_at(&mut y[..n], pos)?;
        if let Some(i) = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q) {
            let at = pos + i as u64;
            return Ok(Some(format!(
                "first difference at byte {at} (block {})",
                at / vm::BLOCK
            )));
        }
        pos += n as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_and_different_disks() {
        let a = tern_disk::open_bytes(vec![1u8; 3 << 20], &OpenOptions::default()).unwrap();
        let b = tern_disk::open_bytes(vec![1u8; 3 << 20], &OpenOptions::default()).unwrap();
        assert_eq!(first_difference(a.as_ref(), b.as_ref()).unwrap(), None);
        let mut bytes = vec![1u8; 3 << 20];
        bytes[(1 << 20) + 5] = 0;
        let c = tern_disk::open_bytes(bytes, &OpenOptions::default()).unwrap();
        let diff = first_difference(a.as_ref(), c.as_ref()).unwrap().unwrap();
        assert!(diff.contains("byte 1048581 (block 2)"), "{diff}");
        let d = tern_disk::open_bytes(vec![1u8; 1 << 20], &OpenOptions::default()).unwrap();
        assert!(first_difference(a.as_ref(), d.as_ref())
            .unwrap()
            .unwrap()
            .contains("sizes differ"));
    }
}
