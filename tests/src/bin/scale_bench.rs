//! scale-bench: one machine, a large catalog and a storm of replication runs due in the same
//! minute, with the SMS API read while it lasts.
//!
//! ```text
//! cargo run --release -p tern-acceptance --bin scale-bench -- [--servers 10000] [--jobs 1000]
//!     [--disk-mib 8] [--readers 4] [--max-minutes 30] [--dir DIR]
//! ```
//!
//! Steps, all in this process:
//! 1. one small raw disk with a GPT (an EFI system partition and a Linux partition) that every
//!    VM of the inventory lists, as 10,000 VMs cloned from one template would;
//! 2. `tern serve` (`tern_local::start`: SQLite store, SMS API and S3 staging on one URL, the
//!    States engine, the image service, the event bus) with the active-job limit raised through
//!    configuration: `Config::from_env` with `TERN_MAX_ACTIVE_JOBS`, the same path the `api`
//!    Lambda and `tern serve --config` use. The scheduler ticks every second as in `tern serve`,
//!    but the ticks are called from here so each one can be timed;
//! 3. a connector (`tern_connector::Agent`, `files` inventory of `--servers` VMs) answers
//!    ImportServerCatalog; the catalog must hold every VM and read AVAILABLE;
//! 4. `--jobs` replication jobs whose seed time is the same minute;
//! 5. the storm: the agent (`Agent::run`, polling every second) uploads every run while
//!    `--readers` clients page through GetServers and GetReplicationJobs (100 per page) and
//!    record each request's latency; a monitor lists the jobs every 5 s to see runs complete;
//! 6. every run must be COMPLETED with an AMI whose root disk reads back equal to the source,
//!    byte for byte.
//!
//! Printed: the import (time, pages, disks inspected, peak RSS), the scheduler's tick times,
//! the API latencies during the storm, runs completed per minute, peak RSS of the process
//! during the storm (server, connector and clients: they share this process; the peak is reset
//! through `/proc/self/clear_refs` between phases), and the verification. Exit status 1 if any
//! check fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use aws_sdk_sms::config::Credentials;
use serde_json::{json, Value};
use tern_acceptance::{sms_target, REGION};
use tern_connector::{Agent, ConnectorConfig};
use tern_disk::VirtualDisk;
use tern_local::images::ImageCatalog;

const MIB: u64 = 1 << 20;
const PAGE: usize = 100;

struct Args {
    servers: usize,
    jobs: usize,
    disk_mib: u64,
    readers: usize,
    max_time: Duration,
    dir: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        servers: 10_000,
        jobs: 1_000,
        disk_mib: 8,
        readers: 4,
        max_time: Duration::from_secs(30 * 60),
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name} {v:?} is not a whole number"))
        };
        match flag.as_str() {
            "--servers" => args.servers = value("--servers")? as usize,
            "--jobs" => args.jobs = value("--jobs")? as usize,
            "--disk-mib" => args.disk_mib = value("--disk-mib")?.max(5),
            "--readers" => args.readers = value("--readers")?.max(2) as usize,
            "--max-minutes" => args.max_time = Duration::from_secs(value("--max-minutes")? * 60),
            "--dir" => args.dir = Some(it.next().context("--dir needs a value")?.into()),
            "-h" | "--help" => {
                println!("scale-bench [--servers N] [--jobs N] [--disk-mib N] [--readers N] [--max-minutes N] [--dir DIR]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if args.jobs > args.servers {
        bail!("--jobs must not exceed --servers");
    }
    Ok(args)
}

/// A raw disk with a GPT: an EFI system partition (FAT32 boot sector) and a Linux partition.
fn gpt_disk(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut img = tern_test_support::fixtures::gpt_disk(size);
    // Some data in the Linux partition, so the images hold more than zeros.
    for (i, b) in img[(3 * MIB) as usize..(3 * MIB + MIB) as usize]
        .iter_mut()
        .enumerate()
    {
        *b = (i % 251) as u8;
    }
    std::fs::write(path, img)?;
    Ok(())
}

fn inventory(count: usize, disk: &Path) -> String {
    let mut s = String::from("vm_manager_id = \"vc-scale\"\nvm_manager_type = \"VSPHERE\"\n");
    for i in 0..count {
        s.push_str(&format!(
            "[[vms]]\nid = \"vm-{i:05}\"\nname = \"web{i:05}\"\nfolder = \"/dc1/vm/web\"\nos_type = \"LINUX\"\ndisks = [{:?}]\n",
            disk.display().to_string()
        ));
    }
    s
}

/// `VmHWM` (peak resident set) or `VmRSS` of this process, in bytes.
fn proc_status(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets `VmHWM` to the current RSS, so the next reading is the peak of the next phase.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| {
        format!("{:.0} MiB", b as f64 / MIB as f64)
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A signed awsJson POST; the answer's JSON, or a message.
#[derive(Clone)]
struct Caller {
    http: reqwest::Client,
    url: String,
    credentials: Credentials,
}

impl Caller {
    async fn call(&self, operation: &str, body: &Value) -> Result<Value, String> {
        let target = sms_target(operation);
        let payload = serde_json::to_vec(body).expect("json");
        let headers = [
            ("content-type", tern_api::CONTENT_TYPE),
            ("x-amz-target", target.as_str()),
        ];
        let signed = tern_connector::signing::sign_post(
            &self.credentials,
            REGION,
            &self.url,
            &headers,
            &payload,
            SystemTime::now(),
        )
        .map_err(|e| e.to_string())?;
        let mut request = self.http.post(&self.url).body(payload);
        for (n, v) in headers {
            request = request.header(n, v);
        }
        for (n, v) in &signed {
            request = request.header(n.as_str(), v.as_str());
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "{operation}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{operation}: {e}"))
    }

    /// Every item of a paginated listing.
    async fn all(&self, operation: &str, list: &str, page: usize) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({ "maxResults": page });
            if let Some(t) = &token {
                body["nextToken"] = json!(t);
            }
            let answer = self.call(operation, &body).await?;
            out.extend(answer[list].as_array().cloned().unwrap_or_default());
            match answer["nextToken"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(out),
            }
        }
    }
}

/// One scheduler tick: when it ended (epoch s), how long it took, runs created, executions started.
type Tick = (u64, Duration, usize, usize);

/// Latencies of one operation, and its errors.
#[derive(Default)]
struct Stats {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Stats {
    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    }

    fn print(&mut self, name: &str) -> Duration {
        self.latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let p99 = Self::percentile(&self.latencies, 0.99);
        println!(
            "  {name:<34} {:>6} requests  {:>3} errors  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
            self.latencies.len(),
            self.errors,
            ms(Self::percentile(&self.latencies, 0.50)),
            ms(p99),
            ms(self.latencies.last().copied().unwrap_or_default()),
        );
        if let Some(e) = &self.first_error {
            println!("    first error: {e}");
        }
        p99
    }
}

/// Pages through `operation` over and over until `stop`, recording each page's latency.
async fn reader(
    caller: Caller,
    operation: &'static str,
    list: &'static str,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
) {
    let mut token: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut body = json!({ "maxResults": PAGE });
        if let Some(t) = &token {
            body["nextToken"] = json!(t);
        }
        let t0 = Instant::now();
        let answer = caller.call(operation, &body).await;
        let took = t0.elapsed();
        let mut s = stats.lock().expect("stats");
        match answer {
            Ok(v) if v[list].is_array() => {
                s.latencies.push(took);
                token = v["nextToken"].as_str().map(str::to_string);
            }
            Ok(v) => {
                s.errors += 1;
                s.first_error.get_or_insert(format!("no {list} in {v}"));
                token = None;
            }
            Err(e) => {
                s.errors += 1;
                s.first_error.get_or_insert(e);
                token = None;
            }
        }
    }
}

/// Compares the image's root disk with the source. Returns an error naming the first difference.
fn verify_image(catalog: &ImageCatalog, ami: &str, source: &[u8]) -> anyhow::Result<()> {
    let image = catalog.describe_image(ami)?;
    let root = image
        .block_devices
        .first()
        .context("the image has no block device")?;
    let disk = catalog.snapshot_disk(&root.snapshot_id)?;
    if disk.size() < source.len() as u64 {
        bail!(
            "the image's disk has {} bytes, the source {}",
            disk.size(),
            source.len()
        );
    }
    let mut got = vec![0u8; source.len()];
    disk.read_at(&mut got, 0)?;
    if got != source {
        let at = got
            .iter()
            .zip(source)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        bail!("differs from the source at byte {at}");
    }
    Ok(())
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
    let mut builder = tempfile::Builder::new();
    builder.prefix("scale-bench-");
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            builder.tempdir_in(d)?
        }
        None => builder.tempdir()?,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let deadline = Instant::now() + args.max_time;
    println!(
        "scale-bench: {} servers, {} jobs due in one minute, {} MiB GPT disk shared by every VM, {} readers, {cores} cores, load {}",
        args.servers,
        args.jobs,
        args.disk_mib,
        args.readers,
        load_average()
    );
    let mut failures: Vec<String> = Vec::new();

    // 1. The disk every VM lists.
    let disk = dir.path().join("template.raw");
    gpt_disk(&disk, args.disk_mib * MIB)?;
    let source = std::fs::read(&disk)?;

    // 2. The server, its limits from configuration.
    let max_active = (args.jobs + 10).to_string();
    let config = tern_core::Config::from_env(|name| {
        (name == "TERN_MAX_ACTIVE_JOBS").then(|| max_active.clone())
    })
    .context("configuration")?;
    println!("config: TERN_MAX_ACTIVE_JOBS={max_active} (default 50)");
    let mut serve = tern_local::ServeConfig::new(dir.path().join("data"), "127.0.0.1:0".parse()?);
    serve.region = REGION.into();
    serve.config = config;
    // The bench calls the scheduler's tick itself, every second like `tern serve`, to time it.
    serve.replication = Some(tern_local::ReplicationOptions {
        tick_interval: Duration::from_secs(24 * 3600),
        ..Default::default()
    });
    let running = tern_local::start(serve)
        .await
        .context("starting tern serve")?;
    let admin = Credentials::new(
        &running.admin().access_key_id,
        &running.admin().secret_access_key,
        None,
        None,
        "scale-bench",
    );
    let caller = Caller {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?,
        url: format!("{}/", running.endpoint()),
        credentials: admin.clone(),
    };

    // 3. The catalog, through the connector.
    let conn_dir = dir.path().join("connector");
    std::fs::create_dir_all(&conn_dir)?;
    std::fs::write(
        conn_dir.join("inventory.toml"),
        inventory(args.servers, &disk),
    )?;
    std::fs::write(
        conn_dir.join("connector.toml"),
        format!(
            "endpoint = {:?}\nregion = {REGION:?}\nname = \"scale\"\nprofile = \"connector\"\ncredentials_file = {:?}\nstate_dir = \"state\"\nheartbeat_interval_secs = 5\npoll_interval_secs = 1\nrequest_timeout_secs = 120\n[files]\ninventory = \"inventory.toml\"\n",
            running.endpoint(),
            running.credentials_file().display().to_string()
        ),
    )?;
    let mut agent = Agent::new(ConnectorConfig::load(&conn_dir.join("connector.toml"))?).await?;
    let rss_before = proc_status("VmRSS:");
    let peak_resettable = reset_peak();
    let t = Instant::now();
    agent.run_once().await?;
    caller
        .call("ImportServerCatalog", &json!({}))
        .await
        .map_err(anyhow::Error::msg)?;
    let report = agent.poll_once().await?;
    let import_time = t.elapsed();
    let import_peak = proc_status("VmHWM:");
    let servers = caller
        .all("GetServers", "serverList", 1000)
        .await
        .map_err(anyhow::Error::msg)?;
    let head = caller
        .call("GetServers", &json!({"maxResults": 1}))
        .await
        .map_err(anyhow::Error::msg)?;
    let status = head["serverCatalogStatus"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    println!(
        "import: {} VMs in {} pages, {} disk image(s) opened, {:.1} s; catalog {status} with {} servers{}",
        report.vms_reported,
        report.inventory_pages,
        report.disks_inspected,
        import_time.as_secs_f64(),
        servers.len(),
        head["serverCatalogStatusMessage"]
            .as_str()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default()
    );
    println!(
        "  RSS before {}, peak during the import {}{}",
        mib(rss_before),
        mib(import_peak),
        if peak_resettable {
            ""
        } else {
            " (peak not resettable: whole process)"
        }
    );
    if servers.len() != args.servers || status != "AVAILABLE" || report.failed > 0 {
        failures.push(format!(
            "import: {} servers, status {status}, {} failed items",
            servers.len(),
            report.failed
        ));
    }

    // 4. Jobs, all due in the same minute.
    let seed = (now_epoch() + 20).div_ceil(60) * 60 + 30;
    let server_ids: Vec<String> = servers
        .iter()
        .filter_map(|s| s["serverId"].as_str().map(str::to_string))
        .take(args.jobs)
        .collect();
    let t = Instant::now();
    let mut creations = tokio::task::JoinSet::new();
    let ids = Arc::new(Mutex::new(server_ids.clone()));
    for _ in 0..8 {
        let (caller, ids) = (caller.clone(), ids.clone());
        creations.spawn(async move {
            let mut errors = Vec::new();
            loop {
                let Some(id) = ids.lock().expect("ids").pop() else {
                    return errors;
                };
                let body = json!({"serverId": id, "seedReplicationTime": seed, "frequency": 12,
                                  "licenseType": "BYOL", "numberOfRecentAmisToKeep": 0});
                if let Err(e) = caller.call("CreateReplicationJob", &body).await {
                    errors.push(e);
                }
            }
        });
    }
    let mut create_errors = Vec::new();
    while let Some(done) = creations.join_next().await {
        create_errors.extend(done?);
    }
    println!(
        "jobs: {} created in {:.1} s, {} refused{}; seed time {} ({} s from now)",
        server_ids.len() - create_errors.len(),
        t.elapsed().as_secs_f64(),
        create_errors.len(),
        create_errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        time::OffsetDateTime::from_unix_timestamp(seed as i64)?,
        seed.saturating_sub(now_epoch())
    );
    if !create_errors.is_empty() {
        failures.push(format!("{} jobs refused", create_errors.len()));
    }

    // 5. The storm.
    let stop = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(async move {
        agent
            .run(async {
                let _ = shutdown_rx.await;
            })
            .await
    });
    let replication = running
        .replication()
        .context("replication runs in tern serve")?
        .replication()
        .clone();
    let ticks: Arc<Mutex<Vec<Tick>>> = Arc::default();
    let tick_task = {
        let (stop, ticks) = (stop.clone(), ticks.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                every.tick().await;
                let t0 = Instant::now();
                match replication.tick().await {
                    Ok(r) => ticks.lock().expect("ticks").push((
                        now_epoch(),
                        t0.elapsed(),
                        r.runs_created.len(),
                        r.executions_started.len(),
                    )),
                    Err(e) => eprintln!("scheduler tick failed: {e}"),
                }
            }
        })
    };
    // Readers start with the storm's minute, so their figures are the storm's.
    while now_epoch() < seed {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    reset_peak();
    let storm_start = Instant::now();
    let servers_stats: Arc<Mutex<Stats>> = Arc::default();
    let jobs_stats: Arc<Mutex<Stats>> = Arc::default();
    let mut readers = Vec::new();
    for i in 0..args.readers {
        let (op, list, stats) = if i % 2 == 0 {
            ("GetServers", "serverList", servers_stats.clone())
        } else {
            (
                "GetReplicationJobs",
                "replicationJobList",
                jobs_stats.clone(),
            )
        };
        readers.push(tokio::spawn(reader(
            caller.clone(),
            op,
            list,
            stop.clone(),
            stats,
        )));
    }
    // The monitor: which jobs' runs completed (or failed), and when.
    let mut completed_at: BTreeMap<String, Duration> = BTreeMap::new();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut monitor_errors = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let jobs = match caller
            .all("GetReplicationJobs", "replicationJobList", 1000)
            .await
        {
            Ok(j) => j,
            Err(e) => {
                monitor_errors += 1;
                eprintln!("monitor: {e}");
                continue;
            }
        };
        let at = storm_start.elapsed();
        for j in &jobs {
            let id = j["replicationJobId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let runs = j["replicationRunList"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if runs.iter().any(|r| r["state"] == "COMPLETED") {
                completed_at.entry(id).or_insert(at);
            } else if let Some(r) = runs.iter().find(|r| r["state"] == "FAILED") {
                failed
                    .entry(id)
                    .or_insert_with(|| r["statusMessage"].as_str().unwrap_or("").to_string());
            } else if j["state"] == "FAILED" || j["state"] == "PAUSED_ON_FAILURE" {
                failed
                    .entry(id)
                    .or_insert_with(|| j["statusMessage"].as_str().unwrap_or("").to_string());
            }
        }
        let done = completed_at.len() + failed.len();
        eprintln!(
            "  {:>5.0} s: {} completed, {} failed of {}; load {}",
            at.as_secs_f64(),
            completed_at.len(),
            failed.len(),
            args.jobs,
            load_average()
        );
        if done >= server_ids.len() || Instant::now() > deadline {
            break;
        }
    }
    let storm_time = storm_start.elapsed();
    let storm_peak = proc_status("VmHWM:");
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await?;
    }
    tick_task.await?;
    let _ = shutdown_tx.send(());
    agent_task.await??;

    // 6. The figures.
    println!(
        "storm: {} of {} runs completed, {} failed, in {:.1} s from the seed minute; load {}",
        completed_at.len(),
        server_ids.len(),
        failed.len(),
        storm_time.as_secs_f64(),
        load_average()
    );
    let ticks = ticks.lock().expect("ticks").clone();
    let mut busy: Vec<Duration> = ticks
        .iter()
        .filter(|(at, ..)| *at >= seed)
        .map(|t| t.1)
        .collect();
    busy.sort();
    let creating: Vec<_> = ticks.iter().filter(|t| t.2 > 0).collect();
    println!(
        "scheduler tick (every 1 s): {} ticks during the storm, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        busy.len(),
        Stats::percentile(&busy, 0.5).as_secs_f64() * 1e3,
        Stats::percentile(&busy, 0.99).as_secs_f64() * 1e3,
        busy.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    for (at, took, created, started) in &creating {
        println!(
            "  tick at {}: {created} runs created, {started} executions started, {:.1} ms",
            time::OffsetDateTime::from_unix_timestamp(*at as i64)?.time(),
            took.as_secs_f64() * 1e3
        );
    }
    println!(
        "API during the storm ({PAGE} per page, {} readers):",
        args.readers
    );
    let p99_servers = servers_stats
        .lock()
        .expect("stats")
        .print("GetServers page");
    let p99_jobs = jobs_stats
        .lock()
        .expect("stats")
        .print("GetReplicationJobs page");
    for (name, stats) in [
        ("GetServers", &servers_stats),
        ("GetReplicationJobs", &jobs_stats),
    ] {
        let s = stats.lock().expect("stats");
        if s.errors > 0 {
            failures.push(format!("{name}: {} errors during the storm", s.errors));
        }
    }
    if monitor_errors > 0 {
        failures.push(format!("{monitor_errors} monitor listings failed"));
    }
    println!("runs completed per minute (by the monitor's 5 s listings):");
    let mut per_minute: BTreeMap<u64, usize> = BTreeMap::new();
    for at in completed_at.values() {
        *per_minute.entry(at.as_secs() / 60).or_default() += 1;
    }
    for (minute, n) in &per_minute {
        println!("  minute {:>2}: {n}", minute + 1);
    }
    if let Some(last) = completed_at.values().max() {
        println!(
            "  overall: {:.0} runs per minute ({} runs, last seen completed {:.0} s after the seed minute began)",
            completed_at.len() as f64 / last.as_secs_f64().max(1.0) * 60.0,
            completed_at.len(),
            last.as_secs_f64()
        );
    }
    println!(
        "peak RSS during the storm: {} (server, connector and clients in this process)",
        mib(storm_peak)
    );
    for (job, message) in failed.iter().take(5) {
        println!("  FAILED {job}: {message}");
    }
    if !failed.is_empty() {
        failures.push(format!("{} runs failed", failed.len()));
    }
    if completed_at.len() + failed.len() < server_ids.len() {
        failures.push(format!(
            "{} runs did not end within --max-minutes",
            server_ids.len() - completed_at.len() - failed.len()
        ));
    }

    // 7. Every run's image equals the source.
    let jobs = caller
        .all("GetReplicationJobs", "replicationJobList", 1000)
        .await
        .map_err(anyhow::Error::msg)?;
    let amis: Vec<(String, String)> = jobs
        .iter()
        .filter_map(|j| {
            Some((
                j["replicationJobId"].as_str()?.to_string(),
                j["latestAmiId"].as_str()?.to_string(),
            ))
        })
        .collect();
    let data_dir = dir.path().join("data");
    let t = Instant::now();
    let checked = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let catalog = ImageCatalog::open(&data_dir)?;
        let mut bad = Vec::new();
        for (job, ami) in &amis {
            if let Err(e) = verify_image(&catalog, ami, &source) {
                bad.push(format!("{job} {ami}: {e}"));
            }
        }
        Ok(bad)
    })
    .await??;
    let with_ami = jobs.iter().filter(|j| j["latestAmiId"].is_string()).count();
    println!(
        "verify: {with_ami} of {} jobs have an AMI; {} images read back equal to the source disk, {} differ ({:.1} s)",
        server_ids.len(),
        with_ami - checked.len(),
        checked.len(),
        t.elapsed().as_secs_f64()
    );
    for b in checked.iter().take(5) {
        println!("  {b}");
    }
    if with_ami != server_ids.len() || !checked.is_empty() {
        failures.push(format!(
            "{with_ami} AMIs of {} runs, {} differ from the source",
            server_ids.len(),
            checked.len()
        ));
    }
    let aim = Duration::from_millis(100);
    println!(
        "aim: no error, page p99 under 100 ms: GetServers {}, GetReplicationJobs {}",
        if p99_servers < aim { "met" } else { "MISSED" },
        if p99_jobs < aim { "met" } else { "MISSED" }
    );
    running.shutdown().await;
    if failures.is_empty() {
        println!("PASS: every run finished correctly");
        Ok(())
    } else {
        for f in &failures {
            println!("FAIL: {f}");
        }
        std::process::exit(1);
    }
}
