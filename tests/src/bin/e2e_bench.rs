//! e2e-bench: a seed and an incremental replication run of one VM through the whole local
//! pipeline, next to `qemu-img convert` of the same disk on the same machine, in the same run.
//!
//! ```text
//! cargo run --release -p tern-acceptance --bin e2e-bench -- [--size-gib 4] [--changed-pct 5]
//!     [--dir DIR] [--zeroed-pct 20] [--max-minutes 60]
//! ```
//!
//! Steps, all in this process:
//! 1. a sparse raw disk of `--size-gib`, about half of it allocated (random data, in 4 MiB
//!    extents chosen at random; the holes are never written);
//! 2. `tern serve` (`tern_local::start`: SMS API and S3 staging on one URL, the States engine on
//!    `replication-run.asl.json`, the image service, the scheduler ticking every second, the
//!    event bus) over a data directory next to the disk;
//! 3. a connector registers and reports the VM (`tern_connector::Agent`), the catalog is
//!    imported, and a replication job is created with its seed time now;
//! 4. the connector's replication side is played here exactly as the agent plays it: PollWork
//!    until the REPLICATE item, `tern_connector::replicate::run` against the server's S3
//!    endpoint (path-style, the connector's keys), ReportProgress at most once a second,
//!    CompleteWork; after the run, the COMMIT_RUN item is committed (`replicate::commit_run`)
//!    and completed, so the next run's delta is relative to the seed;
//! 5. `qemu-img convert -O vmdk -o subformat=streamOptimized` of the seed disk, timed;
//! 6. `--changed-pct` of the disk's 512 KiB blocks are changed at random (`--zeroed-pct` of
//!    those that held data become zeros, the others get new random data), an on-demand run is
//!    started and played the same way;
//! 7. the incremental run's image is exported (`ImageCatalog` → `snapshot_disk`) and compared
//!    with the disk byte for byte.
//!
//! A run is timed from the call that creates it (CreateReplicationJob for the seed, whose run
//! the scheduler creates at its next tick; StartOnDemandReplicationRun for the incremental) to
//! the moment GetReplicationRuns (polled every 100 ms) shows it COMPLETED. Inside that: until
//! the work item reached the connector (PollWork every 100 ms), the upload (`replicate::run`,
//! which reads the disk, writes the object and the manifest), and the import (from the manifest
//! being written to COMPLETED: the Object Created notification, the image task, the
//! registration). The stages GetReplicationRuns showed are printed with their times.
//! Everything lives in a temporary directory (under `--dir` when given), deleted at exit.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use aws_sdk_sms::config::Credentials;
use aws_sdk_sms::types::ReplicationRunState;
use tern_acceptance::REGION;
use tern_api::connector::{
    op, CompleteWorkRequest, CompleteWorkResponse, PollWorkRequest, PollWorkResponse,
    ReportProgressRequest, ReportProgressResponse, WorkItem,
};
use tern_connector::replicate::{
    self, DiskSource, Progress, ReplicateContext, ReplicateOptions, RunOutcome, Stage,
};
use tern_connector::{Agent, ApiClient, ConnectorConfig};
use tern_disk::blockmap::BLOCK_SIZE;
use tern_disk::VirtualDisk;
use tern_local::images::ImageCatalog;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Allocation granularity of the generated disk.
const EXTENT: u64 = 4 * MIB;
/// How often the connector side polls PollWork and the bench polls GetReplicationRuns.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// The agent reports progress at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

struct Args {
    size: u64,
    changed_pct: f64,
    zeroed_pct: f64,
    dir: Option<PathBuf>,
    max_time: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        size: 4 * GIB,
        changed_pct: 5.0,
        zeroed_pct: 20.0,
        dir: None,
        max_time: Duration::from_secs(3600),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<f64> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            let n: f64 = v
                .parse()
                .with_context(|| format!("{name} {v:?} is not a number"))?;
            if !n.is_finite() || n < 0.0 {
                bail!("{name} must be a positive number");
            }
            Ok(n)
        };
        match flag.as_str() {
            "--size-gib" => {
                let gib = value("--size-gib")?;
                // Whole extents, so the disk is a whole number of 512 KiB blocks too.
                args.size = ((gib * GIB as f64) as u64 / EXTENT) * EXTENT;
                if args.size == 0 {
                    bail!("--size-gib must be at least 4 MiB (0.004)");
                }
            }
            "--changed-pct" => {
                args.changed_pct = value("--changed-pct")?;
                if args.changed_pct > 100.0 {
                    bail!("--changed-pct is at most 100");
                }
            }
            "--zeroed-pct" => {
                args.zeroed_pct = value("--zeroed-pct")?;
                if args.zeroed_pct > 100.0 {
                    bail!("--zeroed-pct is at most 100");
                }
            }
            "--max-minutes" => {
                args.max_time = Duration::from_secs_f64(value("--max-minutes")? * 60.0)
            }
            "--dir" => {
                args.dir = Some(PathBuf::from(it.next().context("--dir needs a directory")?))
            }
            "-h" | "--help" => {
                println!("usage: e2e-bench [--size-gib 4] [--changed-pct 5] [--zeroed-pct 20] [--dir DIR] [--max-minutes 60]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(args)
}

/// A small deterministic generator (xorshift64): incompressible data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes a sparse raw disk: each 4 MiB extent holds random data with probability 1/2, the
/// others stay holes. Returns the bytes written.
fn make_disk(path: &Path, size: u64, rng: &mut Rng) -> anyhow::Result<u64> {
    let f = File::create(path)?;
    f.set_len(size)?;
    let mut buf = vec![0u8; EXTENT as usize];
    let mut written = 0;
    for i in 0..size / EXTENT {
        if rng.next() & 1 == 1 {
            rng.fill(&mut buf);
            f.write_all_at(&buf, i * EXTENT)?;
            written += EXTENT;
        }
    }
    f.sync_all()?;
    Ok(written)
}

/// What [`change_disk`] did.
struct Changes {
    blocks: u64,
    zeroed: u64,
}

/// Changes `pct` % of the 512 KiB blocks, chosen at random: `zeroed_pct` % of those that held
/// data become zeros, every other one gets new random data (so each chosen block differs).
fn change_disk(path: &Path, pct: f64, zeroed_pct: f64, rng: &mut Rng) -> anyhow::Result<Changes> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let bs = BLOCK_SIZE as u64;
    let total = f.metadata()?.len() / bs;
    let want = ((total as f64 * pct / 100.0).round() as u64).min(total);
    // A partial Fisher-Yates shuffle picks `want` distinct blocks.
    let mut order: Vec<u64> = (0..total).collect();
    for i in 0..want as usize {
        let j = i + rng.below(total - i as u64) as usize;
        order.swap(i, j);
    }
    let mut chosen = order[..want as usize].to_vec();
    chosen.sort_unstable();
    let mut buf = vec![0u8; bs as usize];
    let mut zeroed = 0;
    for b in chosen {
        f.read_exact_at(&mut buf, b * bs)?;
        let had_data = buf.iter().any(|&x| x != 0);
        if had_data && (rng.below(10_000) as f64) < zeroed_pct * 100.0 {
            buf.fill(0);
            zeroed += 1;
        } else {
            rng.fill(&mut buf);
        }
        f.write_all_at(&buf, b * bs)?;
    }
    f.sync_all()?;
    Ok(Changes {
        blocks: want,
        zeroed,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The connector side of the bench: the agent's calls, made by hand.
struct Connector {
    id: String,
    api: ApiClient,
    ctx: ReplicateContext,
}

impl Connector {
    async fn poll(&self) -> anyhow::Result<Vec<WorkItem>> {
        let r: PollWorkResponse = self
            .api
            .call(
                op::POLL_WORK,
                &PollWorkRequest {
                    connector_id: self.id.clone(),
                    max_results: None,
                    kinds: None,
                },
            )
            .await?;
        Ok(r.work_items)
    }

    async fn complete(&self, work_id: &str) -> anyhow::Result<()> {
        let _: CompleteWorkResponse = self
            .api
            .call(
                op::COMPLETE_WORK,
                &CompleteWorkRequest {
                    connector_id: self.id.clone(),
                    work_id: work_id.to_string(),
                },
            )
            .await?;
        Ok(())
    }

    /// Polls until a REPLICATE item comes; COMMIT_RUN items met on the way are answered.
    async fn next_replication(
        &self,
        deadline: Instant,
    ) -> anyhow::Result<(String, tern_api::connector::ReplicationWork)> {
        loop {
            for item in self.poll().await? {
                if let Some(w) = item.replication() {
                    return Ok((item.work_id, w));
                }
                if let Some(c) = item.commit_run() {
                    replicate::commit_run(&self.ctx.state_dir, &c.job_id, &c.run_id)?;
                    self.complete(&item.work_id).await?;
                }
            }
            if Instant::now() > deadline {
                bail!("no REPLICATE work item before the deadline");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Polls until the COMMIT_RUN item of `run_id` comes, commits the run and completes the item.
    async fn commit(&self, run_id: &str, deadline: Instant) -> anyhow::Result<()> {
        loop {
            for item in self.poll().await? {
                if let Some(c) = item.commit_run() {
                    replicate::commit_run(&self.ctx.state_dir, &c.job_id, &c.run_id)?;
                    self.complete(&item.work_id).await?;
                    if c.run_id == run_id {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no COMMIT_RUN work item for {run_id} before the deadline");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Uploads one run as the agent does: `replicate::run`, progress reported at most once a
    /// second (and at every stage change), then CompleteWork.
    async fn upload(
        &self,
        work_id: &str,
        work: &tern_api::connector::ReplicationWork,
    ) -> anyhow::Result<RunOutcome> {
        let mut disks: Vec<_> = work.disks.iter().collect();
        disks.sort_by_key(|d| d.index);
        let run_work = replicate::ReplicationWork {
            job_id: work.job_id.clone(),
            run_id: work.run_id.clone(),
            server_id: work.server_id.clone(),
            disks: disks
                .iter()
                .map(|d| DiskSource::File {
                    path: PathBuf::from(&d.path),
                    format: d.format.as_deref().and_then(|f| f.parse().ok()),
                    backing_chain: Vec::new(),
                })
                .collect(),
            staging: replicate::Staging {
                bucket: work.staging.bucket.clone(),
                prefix: work.staging.prefix.clone(),
            },
            seed: work.seed,
        };
        let virtual_total: u64 = disks
            .iter()
            .map(|d| std::fs::metadata(&d.path).map_or(0, |m| m.len()))
            .sum();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
        let last: Mutex<Option<(Stage, Instant)>> = Mutex::new(None);
        let on_progress = move |p: Progress| {
            let mut last = last.lock().expect("throttle lock");
            let now = Instant::now();
            let due = match *last {
                None => true,
                Some((stage, at)) => stage != p.stage || now.duration_since(at) >= PROGRESS_EVERY,
            };
            if due {
                *last = Some((p.stage, now));
                let _ = tx.send(p);
            }
        };
        let reporter = {
            let (api, connector_id, work_id) =
                (self.api.clone(), self.id.clone(), work_id.to_string());
            tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    let request = ReportProgressRequest {
                        connector_id: connector_id.clone(),
                        work_id: work_id.clone(),
                        stage: match p.stage {
                            Stage::Preparing => "Preparing",
                            Stage::Uploading => "Uploading",
                            Stage::Completed => "Uploaded",
                        }
                        .into(),
                        percent: p.percent.clamp(0.0, 100.0).floor() as u8,
                        bytes_done: p.bytes_done,
                        bytes_total: p.bytes_total.unwrap_or(virtual_total),
                        note: p.note.clone(),
                    };
                    if let Err(e) = api
                        .call::<_, ReportProgressResponse>(op::REPORT_PROGRESS, &request)
                        .await
                    {
                        eprintln!("warning: ReportProgress failed: {e}");
                    }
                }
            })
        };
        let outcome = replicate::run(&run_work, &self.ctx, &on_progress).await;
        drop(on_progress);
        let _ = reporter.await;
        let outcome = outcome.context("replicate::run")?;
        self.complete(work_id).await?;
        Ok(outcome)
    }
}

/// What one run measured.
struct RunTimes {
    run_id: String,
    seed: bool,
    total: Duration,
    to_work: Duration,
    upload: Duration,
    import: Duration,
    ami: String,
    outcome: RunOutcome,
    /// (seconds since the run was requested, stage, status message) as GetReplicationRuns
    /// showed them.
    stages: Vec<(Duration, String, String)>,
}

/// When the image service's task of `run_id` was created and last updated (its completion),
/// from `images.db`, as offsets from `since`.
fn image_task_times(
    data_dir: &Path,
    run_id: &str,
    since: SystemTime,
) -> anyhow::Result<Vec<(Duration, Duration)>> {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("images.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let since = since.duration_since(SystemTime::UNIX_EPOCH)?.as_nanos() as i64;
    let mut stmt = conn.prepare(
        "SELECT created_at, updated_at FROM tasks WHERE description LIKE ?1 AND state = 'completed' ORDER BY created_at",
    )?;
    let rows = stmt.query_map([format!("%, run {run_id})")], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    let offset = |ns: i64| Duration::from_nanos(ns.saturating_sub(since).max(0) as u64);
    let mut out = Vec::new();
    for row in rows {
        let (created, updated) = row?;
        out.push((offset(created), offset(updated)));
    }
    Ok(out)
}

impl RunTimes {
    /// Object bytes and manifest bytes the run put in staging.
    fn uploaded(&self) -> (u64, u64) {
        let objects = self.outcome.manifest.disks.iter().map(|d| d.size).sum();
        let manifest = serde_json::to_vec_pretty(&self.outcome.manifest)
            .expect("manifests serialise")
            .len() as u64;
        (objects, manifest)
    }
}

struct Bench {
    sms: aws_sdk_sms::Client,
    data_dir: PathBuf,
    connector: Connector,
    deadline: Instant,
}

/// The run's (state, stage, status message, AMI), as GetReplicationRuns shows it.
async fn run_status(
    sms: &aws_sdk_sms::Client,
    job_id: &str,
    run_id: &str,
) -> anyhow::Result<Option<(ReplicationRunState, String, String, Option<String>)>> {
    let out = sms
        .get_replication_runs()
        .replication_job_id(job_id)
        .send()
        .await?;
    Ok(out
        .replication_run_list()
        .iter()
        .find(|r| r.replication_run_id() == Some(run_id))
        .map(|r| {
            (
                r.state().cloned().unwrap_or(ReplicationRunState::Pending),
                r.stage_details()
                    .and_then(|s| s.stage())
                    .unwrap_or("")
                    .to_string(),
                r.status_message().unwrap_or("").to_string(),
                r.ami_id().map(String::from),
            )
        }))
}

impl Bench {
    /// Plays the connector for the job's next run, requested at `requested`, and waits for it to
    /// complete.
    async fn run(&self, job_id: &str, requested: Instant) -> anyhow::Result<RunTimes> {
        let requested_wall = SystemTime::now() - requested.elapsed();
        let (work_id, work) = self.connector.next_replication(self.deadline).await?;
        if work.job_id != job_id {
            bail!("work for job {}, expected {job_id}", work.job_id);
        }
        let to_work = requested.elapsed();
        let run_id = work.run_id.clone();
        // The stages are watched while the connector uploads, as a user of the API would.
        let watching = Arc::new(Mutex::new(Vec::<(Duration, String, String)>::new()));
        let stop = Arc::new(tokio::sync::Notify::new());
        let watcher = {
            let (sms, job_id, run_id, watching, stop) = (
                self.sms.clone(),
                job_id.to_string(),
                run_id.clone(),
                watching.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                loop {
                    if let Ok(Some((state, stage, message, _))) =
                        run_status(&sms, &job_id, &run_id).await
                    {
                        let mut seen = watching.lock().expect("stages lock");
                        let label = format!("{state}/{stage}");
                        let changed = seen.last().is_none_or(|(_, l, m)| {
                            *l != label || (!m.contains('%') && *m != message)
                        });
                        if changed {
                            seen.push((requested.elapsed(), label, message));
                        }
                    }
                    tokio::select! {
                        _ = stop.notified() => return,
                        _ = tokio::time::sleep(POLL_EVERY) => {}
                    }
                }
            })
        };
        let t_upload = Instant::now();
        let outcome = self.connector.upload(&work_id, &work).await?;
        let upload = t_upload.elapsed();
        let t_import = Instant::now();
        let (state, message, ami) = loop {
            if let Some((state, _, message, ami)) = run_status(&self.sms, job_id, &run_id).await? {
                if matches!(
                    state,
                    ReplicationRunState::Completed | ReplicationRunState::Failed
                ) {
                    break (state, message, ami);
                }
            }
            if Instant::now() > self.deadline {
                bail!("run {run_id} did not finish before the deadline");
            }
            tokio::time::sleep(POLL_EVERY).await;
        };
        let total = requested.elapsed();
        let import = t_import.elapsed();
        stop.notify_one();
        let _ = watcher.await;
        if state != ReplicationRunState::Completed {
            bail!("run {run_id} ended {state}: {message}");
        }
        let ami = ami.context("a completed run has an AMI")?;
        // The agent keeps the run's block maps once the control plane says so.
        self.connector.commit(&run_id, self.deadline).await?;
        let mut stages = watching.lock().expect("stages lock").clone();
        if !stages
            .last()
            .is_some_and(|(_, l, _)| l.starts_with("COMPLETED"))
        {
            stages.push((total, "COMPLETED".into(), message));
        }
        stages.push((
            total - import,
            "(manifest written)".into(),
            "replicate::run returned".into(),
        ));
        for (i, (start, end)) in image_task_times(&self.data_dir, &run_id, requested_wall)?
            .into_iter()
            .enumerate()
        {
            let what = if work.seed { "import" } else { "apply-delta" };
            stages.push((
                start,
                format!("(image task {i})"),
                format!("{what} created"),
            ));
            stages.push((
                end,
                format!("(image task {i})"),
                format!("{what} completed"),
            ));
        }
        stages.sort_by_key(|(at, _, _)| *at);
        Ok(RunTimes {
            run_id,
            seed: work.seed,
            total,
            to_work,
            upload,
            import,
            ami,
            outcome,
            stages,
        })
    }
}

/// Compares the image's root disk with the source, chunk by chunk. Returns the bytes compared.
fn verify_image(data_dir: &Path, ami: &str, source: &Path) -> anyhow::Result<u64> {
    let catalog = ImageCatalog::open(data_dir)?;
    let image = catalog.describe_image(ami)?;
    let root = image
        .block_devices
        .first()
        .context("the image has no block device")?;
    let disk = catalog.snapshot_disk(&root.snapshot_id)?;
    let f = File::open(source)?;
    let size = f.metadata()?.len();
    if disk.size() < size {
        bail!(
            "the image's disk has {} bytes, the source {size}",
            disk.size()
        );
    }
    let chunk = 8 * MIB;
    let (mut want, mut got) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    let mut offset = 0;
    while offset < disk.size() {
        let n = chunk.min(disk.size() - offset) as usize;
        let src_n = size.saturating_sub(offset).min(n as u64) as usize;
        f.read_exact_at(&mut want[..src_n], offset)?;
        want[src_n..n].fill(0);
        disk.read_at(&mut got[..n], offset)?;
        if want[..n] != got[..n] {
            let at = want[..n]
                .iter()
                .zip(&got[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(0) as u64;
            bail!(
                "the image differs from the source at byte {} (block {})",
                offset + at,
                (offset + at) / BLOCK_SIZE as u64
            );
        }
        offset += n as u64;
    }
    Ok(disk.size())
}

fn print_stages(name: &str, r: &RunTimes) {
    println!("{name} run {} (seed: {}):", r.run_id, r.seed);
    for (at, label, message) in &r.stages {
        println!("  {:>8}  {label:<28} {message}", secs(*at));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let qemu = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .context("qemu-img is not installed (apt-get install qemu-utils)")?;
    let mut builder = tempfile::Builder::new();
    builder.prefix("e2e-bench-");
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            builder.tempdir_in(d)?
        }
        None => builder.tempdir()?,
    };
    let load_start = load_average();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let deadline = Instant::now() + args.max_time;
    println!(
        "e2e-bench: {} raw disk, {}% of its 512 KiB blocks changed, {cores} cores, {qemu}, scratch {}",
        gib(args.size),
        args.changed_pct,
        dir.path().display()
    );

    // 1. The disk.
    let disk = dir.path().join("vm-disk0.raw");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let t = Instant::now();
    let allocated = make_disk(&disk, args.size, &mut rng)?;
    println!(
        "disk: {} allocated of {} (random data), written in {}",
        gib(allocated),
        gib(args.size),
        secs(t.elapsed())
    );

    // 2. The server.
    let mut serve = tern_local::ServeConfig::new(dir.path().join("data"), "127.0.0.1:0".parse()?);
    serve.region = REGION.into();
    let running = tern_local::start(serve)
        .await
        .context("starting tern serve")?;
    let admin = Credentials::new(
        &running.admin().access_key_id,
        &running.admin().secret_access_key,
        None,
        None,
        "bench-admin",
    );
    let connector_keys = Credentials::new(
        &running.connector().access_key_id,
        &running.connector().secret_access_key,
        None,
        None,
        "bench-connector",
    );
    let sms = tern_acceptance::sms_client(&running.endpoint(), admin);

    // 3. Connector, catalog, job.
    let conn_dir = dir.path().join("connector");
    std::fs::create_dir_all(&conn_dir)?;
    std::fs::write(
        conn_dir.join("inventory.toml"),
        format!(
            "vm_manager_id = \"vc-bench\"\nvm_manager_type = \"VSPHERE\"\n\n[[vms]]\nid = \"vm-0\"\nname = \"bench\"\nos_type = \"LINUX\"\ndisks = [{:?}]\n",
            disk.display().to_string()
        ),
    )?;
    let conf = conn_dir.join("connector.toml");
    std::fs::write(
        &conf,
        format!(
            "endpoint = {:?}\nregion = {REGION:?}\nname = \"bench\"\nprofile = \"connector\"\ncredentials_file = {:?}\nstate_dir = \"state\"\n[files]\ninventory = \"inventory.toml\"\n",
            running.endpoint(),
            running.credentials_file().display().to_string()
        ),
    )?;
    let mut agent = Agent::new(ConnectorConfig::load(&conf)?).await?;
    agent.run_once().await?;
    sms.import_server_catalog().send().await?;
    agent.poll_once().await?;
    let connector_id = agent
        .connector_id()
        .context("the connector registered")?
        .to_string();
    let servers = sms.get_servers().send().await?;
    let server_id = servers
        .server_list()
        .first()
        .and_then(|s| s.server_id())
        .context("the catalog holds the VM")?
        .to_string();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(REGION))
            .endpoint_url(running.endpoint())
            .force_path_style(true)
            .credentials_provider(connector_keys.clone())
            .build(),
    );
    let bench = Bench {
        sms: sms.clone(),
        data_dir: dir.path().join("data"),
        connector: Connector {
            id: connector_id,
            api: ApiClient::new(
                &running.endpoint(),
                REGION,
                connector_keys,
                Duration::from_secs(600),
            )?,
            ctx: ReplicateContext {
                s3,
                state_dir: conn_dir.join("state"),
                options: ReplicateOptions::default(),
            },
        },
        deadline,
    };

    // 4. The seed.
    let requested = Instant::now();
    let job_id = sms
        .create_replication_job()
        .server_id(&server_id)
        .seed_replication_time(aws_smithy_types::DateTime::from_secs(
            tern_acceptance::now_secs(),
        ))
        .frequency(12)
        .number_of_recent_amis_to_keep(0)
        .send()
        .await?
        .replication_job_id()
        .context("CreateReplicationJob returns the job id")?
        .to_string();
    let seed = bench.run(&job_id, requested).await.context("seed run")?;
    if !seed.seed {
        bail!("the first run was not a seed");
    }
    print_stages("seed", &seed);

    // 5. qemu-img on the same disk, as the seed read it.
    let qemu_out = dir.path().join("qemu-seed.vmdk");
    let t = Instant::now();
    let status = {
        let (src, out) = (disk.clone(), qemu_out.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("qemu-img")
                .args(["convert", "-O", "vmdk", "-o", "subformat=streamOptimized"])
                .arg(&src)
                .arg(&out)
                .status()
        })
        .await??
    };
    let qemu_time = t.elapsed();
    if !status.success() {
        bail!("qemu-img convert failed: {status}");
    }
    let qemu_size = std::fs::metadata(&qemu_out)?.len();
    std::fs::remove_file(&qemu_out)?;

    // 6. Changes, then the incremental run.
    let changes = change_disk(&disk, args.changed_pct, args.zeroed_pct, &mut rng)?;
    let requested = Instant::now();
    let run_id = sms
        .start_on_demand_replication_run()
        .replication_job_id(&job_id)
        .send()
        .await?
        .replication_run_id()
        .context("StartOnDemandReplicationRun returns the run id")?
        .to_string();
    let inc = bench
        .run(&job_id, requested)
        .await
        .context("incremental run")?;
    if inc.run_id != run_id {
        bail!("the connector got run {}, expected {run_id}", inc.run_id);
    }
    if inc.seed {
        bail!("the second run was a seed, not an incremental run");
    }
    print_stages("incremental", &inc);

    // 7. The final image against the disk.
    let t = Instant::now();
    let compared = {
        let (data, ami, disk) = (dir.path().join("data"), inc.ami.clone(), disk.clone());
        tokio::task::spawn_blocking(move || verify_image(&data, &ami, &disk)).await??
    };
    println!(
        "check: image {} of the incremental run equals the disk ({} compared in {})",
        inc.ami,
        gib(compared),
        secs(t.elapsed())
    );
    let load_end = load_average();
    running.shutdown().await;

    // The table.
    let (seed_objects, _) = seed.uploaded();
    let (inc_objects, inc_manifest) = inc.uploaded();
    let inc_uploaded = inc_objects + inc_manifest;
    let changed_bytes = changes.blocks * BLOCK_SIZE as u64;
    let d = &inc.outcome.manifest.disks[0];
    println!();
    println!(
        "{} disk, {} allocated; {} of {} blocks changed ({} zeroed)",
        gib(args.size),
        gib(allocated),
        changes.blocks,
        args.size / BLOCK_SIZE as u64,
        changes.zeroed
    );
    println!("| {:<40} | {:>9} | {:<58} |", "measure", "time", "detail");
    println!("|{:-<42}|{:->11}|{:-<60}|", "", "", "");
    for (name, r) in [
        ("seed run (created -> COMPLETED)", &seed),
        ("incremental run (created -> COMPLETED)", &inc),
    ] {
        let detail = format!(
            "work {}, upload {}, import {}",
            secs(r.to_work),
            secs(r.upload),
            secs(r.import)
        );
        println!("| {name:<40} | {:>9} | {detail:<58} |", secs(r.total));
    }
    println!(
        "| {:<40} | {:>9} | {:<58} |",
        "qemu-img convert (streamOptimized)",
        secs(qemu_time),
        format!("{} out; seed object {}", gib(qemu_size), gib(seed_objects))
    );
    println!(
        "| {:<40} | {:>9} | {:<58} |",
        "ratio seed / qemu-img",
        format!("{:.2}", seed.total.as_secs_f64() / qemu_time.as_secs_f64()),
        format!(
            "upload alone / qemu-img {:.2}",
            seed.upload.as_secs_f64() / qemu_time.as_secs_f64()
        )
    );
    println!(
        "| {:<40} | {:>9} | {:<58} |",
        "incremental bytes uploaded",
        "",
        format!("{inc_uploaded} ({inc_objects} delta + {inc_manifest} manifest)")
    );
    println!(
        "| {:<40} | {:>9} | {:<58} |",
        "bytes changed",
        "",
        format!(
            "{changed_bytes} ({} blocks x 512 KiB; delta: {} changed, {} zero)",
            changes.blocks,
            d.changed_blocks.unwrap_or(0),
            d.zero_blocks.unwrap_or(0)
        )
    );
    // Zeroed blocks cost 56 bytes of delta, not 512 KiB: the second ratio is the overhead on
    // the changed blocks that carry data.
    let data_bytes = (changes.blocks - changes.zeroed) * BLOCK_SIZE as u64;
    println!(
        "| {:<40} | {:>9} | {:<58} |",
        "ratio uploaded / changed",
        format!("{:.4}", inc_uploaded as f64 / changed_bytes.max(1) as f64),
        format!(
            "{:.4} of the {} changed blocks that hold data",
            inc_uploaded as f64 / data_bytes.max(1) as f64,
            changes.blocks - changes.zeroed
        )
    );
    println!(
        "| {:<40} | {:>9} | {:<58} |",
        "load average (1, 5, 15 min)",
        "",
        format!("start {load_start}; end {load_end}")
    );
    Ok(())
}
