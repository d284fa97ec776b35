//! api-bench: throughput and latency of `tern serve` next to an HTTP endpoint that does no work,
//! measured in the same process, the same run, with the same signed clients.
//!
//! ```text
//! cargo run --release -p tern-acceptance --bin api-bench -- [--jobs 10000] [--requests 10000]
//!     [--concurrency 16] [--max-seconds 120]
//! ```
//!
//! Phases: (setup) a connector reports an inventory of `--jobs` VMs and the catalog is imported;
//! (1) the empty endpoint answers `--requests` signed POSTs; (2) CreateReplicationJob once per
//! catalog server (`--jobs` requests, so the store ends with that many jobs); (3)
//! GetReplicationJobs, one default page, `--requests` times over those jobs. Each operation runs
//! in `--rounds` rounds (default 5), each right after its own empty-endpoint phase, and the
//! ratio printed is the median of the rounds' ratios: the machine's load moves the empty
//! endpoint's rate a lot between phases, which a single pairing turns into noise. Every phase stops
//! early after `--max-seconds`. Loopback only; the server keeps its data in a temporary directory
//! (SQLite), deleted at exit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use aws_sdk_sms::config::Credentials;
use tern_acceptance::{sms_target, Config, REGION};
use tern_connector::{Agent, ConnectorConfig};

struct Args {
    jobs: usize,
    requests: usize,
    concurrency: usize,
    max_time: Duration,
    rounds: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        jobs: 10_000,
        requests: 10_000,
        concurrency: 16,
        max_time: Duration::from_secs(120),
        rounds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<usize> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            let n: usize = v
                .parse()
                .with_context(|| format!("{name} {v:?} is not a number"))?;
            if n == 0 {
                bail!("{name} must be at least 1");
            }
            Ok(n)
        };
        match flag.as_str() {
            "--jobs" => args.jobs = value("--jobs")?,
            "--requests" => args.requests = value("--requests")?,
            "--concurrency" => args.concurrency = value("--concurrency")?,
            "--rounds" => args.rounds = value("--rounds")?,
            "--max-seconds" => args.max_time = Duration::from_secs(value("--max-seconds")? as u64),
            "-h" | "--help" => {
                println!("usage: api-bench [--jobs N] [--requests N] [--concurrency N] [--rounds N] [--max-seconds N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(args)
}

/// What one phase measured.
struct Stats {
    name: &'static str,
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Stats {
    fn ok(&self) -> usize {
        self.latencies.len()
    }
    fn rps(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i]
    }
    fn print(&self) {
        println!(
            "{:<34} {:>8} ok {:>6} err {:>10.0} req/s   p50 {:>8.3} ms   p99 {:>8.3} ms",
            self.name,
            self.ok(),
            self.errors,
            self.rps(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
        );
        if let Some(e) = &self.first_error {
            println!("    first error: {e}");
        }
    }
}

/// How the clients load a server: who signs, how many at once, for how long at most.
struct Load {
    credentials: Credentials,
    concurrency: usize,
    max_time: Duration,
}

type Body = Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync>;

/// Sends `total` signed POSTs with `load.concurrency` workers; `body(i)` is the i-th body.
async fn drive(
    name: &'static str,
    url: &str,
    target: &str,
    load: &Load,
    total: usize,
    body: Body,
) -> Stats {
    let Load {
        credentials,
        concurrency,
        max_time,
    } = load;
    let (concurrency, max_time) = (*concurrency, *max_time);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("http client");
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new((0usize, None::<String>)));
    let started = Instant::now();
    let deadline = started + max_time;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, next, errors, body) = (http.clone(), next.clone(), errors.clone(), body.clone());
        let (url, target, credentials) = (url.to_owned(), target.to_owned(), credentials.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() > deadline {
                    break;
                }
                let payload = body(i);
                let t0 = Instant::now();
                let headers = [
                    ("content-type", tern_api::CONTENT_TYPE),
                    ("x-amz-target", target.as_str()),
                ];
                let signed = tern_connector::signing::sign_post(
                    &credentials,
                    REGION,
                    &url,
                    &headers,
                    &payload,
                    SystemTime::now(),
                )
                .expect("signing");
                let mut request = http.post(&url).body(payload);
                for (n, v) in headers {
                    request = request.header(n, v);
                }
                for (n, v) in &signed {
                    request = request.header(n.as_str(), v.as_str());
                }
                let outcome = match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        Err(format!("HTTP {status}: {text}"))
                    }
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => latencies.push(t0.elapsed()),
                    Err(e) => {
                        let mut guard = errors.lock().expect("errors lock");
                        guard.0 += 1;
                        guard.1.get_or_insert(e);
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for w in workers {
        latencies.extend(w.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let (errors, first_error) = errors.lock().expect("errors lock").clone();
    Stats {
        name,
        latencies,
        errors,
        first_error,
        elapsed,
    }
}

/// An axum endpoint that does no work: any request gets `200 {}`.
async fn start_empty_endpoint() -> anyhow::Result<String> {
    let app = axum::Router::new().fallback(|| async {
        (
            [(axum::http::header::CONTENT_TYPE, tern_api::CONTENT_TYPE)],
            "{}",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/"))
}

fn inventory(count: usize) -> String {
    let mut s = String::from("vm_manager_id = \"vc-bench\"\nvm_manager_type = \"VSPHERE\"\n");
    for i in 0..count {
        s.push_str(&format!(
            "[[vms]]\nid = \"vm-{i}\"\nname = \"vm{i}\"\nos_type = \"LINUX\"\ndisks = [\"/images/vm{i}.qcow2\"]\n"
        ));
    }
    s
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.limits.max_active_jobs = u32::try_from(args.jobs + 1).context("--jobs too large")?;
    let mut serve = tern_local::ServeConfig::new(dir.path().join("data"), "127.0.0.1:0".parse()?);
    serve.region = REGION.into();
    serve.config = config;
    let running = tern_local::start(serve)
        .await
        .context("starting tern serve")?;
    let tern_url = format!("{}/", running.endpoint());
    let admin = Credentials::new(
        &running.admin().access_key_id,
        &running.admin().secret_access_key,
        None,
        None,
        "bench",
    );
    let empty_url = start_empty_endpoint().await?;
    println!(
        "api-bench: {} jobs, {} requests per read phase, {} concurrent clients, {} cores",
        args.jobs,
        args.requests,
        args.concurrency,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // Setup: a catalog of `jobs` servers, through the connector path.
    let t0 = Instant::now();
    let inv = dir.path().join("inventory.toml");
    std::fs::write(&inv, inventory(args.jobs))?;
    let conf = dir.path().join("connector.toml");
    std::fs::write(
        &conf,
        format!(
            "endpoint = {:?}\nregion = {REGION:?}\nprofile = \"connector\"\ncredentials_file = {:?}\nstate_dir = \"state\"\nrequest_timeout_secs = 600\n[files]\ninventory = \"inventory.toml\"\n",
            running.endpoint(),
            running.credentials_file().display().to_string()
        ),
    )?;
    let mut agent = Agent::new(ConnectorConfig::load(&conf)?).await?;
    agent.run_once().await?;
    let sms = tern_acceptance::sms_client(&running.endpoint(), admin.clone());
    sms.import_server_catalog().send().await?;
    let report = agent.poll_once().await?;
    let servers: Vec<_> = sms
        .get_servers()
        .max_results(1000)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await?;
    let server_ids: Arc<Vec<String>> = Arc::new(
        servers
            .iter()
            .filter_map(|s| s.server_id().map(str::to_owned))
            .collect(),
    );
    println!(
        "setup: {} VMs reported, {} servers in the catalog, {:.1} s",
        report.vms_reported,
        server_ids.len(),
        t0.elapsed().as_secs_f64()
    );
    if server_ids.len() < args.jobs {
        bail!(
            "the catalog holds {} servers, {} needed",
            server_ids.len(),
            args.jobs
        );
    }

    let load = Load {
        credentials: admin.clone(),
        concurrency: args.concurrency,
        max_time: args.max_time,
    };
    let empty_body: Body = Arc::new(|_| b"{}".to_vec());
    // Warm-up: connections, allocator, SQLite page cache.
    let _ = drive("warm-up", &empty_url, "x", &load, 500, empty_body.clone()).await;
    let _ = drive(
        "warm-up",
        &tern_url,
        &sms_target("GetConnectors"),
        &load,
        500,
        empty_body.clone(),
    )
    .await;

    // The empty endpoint's rate swings with whatever else the machine runs, so each operation is
    // measured in rounds, each round right after its own empty-endpoint phase, and the ratio is
    // the median of the rounds' ratios.
    let rounds = args.rounds;
    let list_target = sms_target("GetReplicationJobs");
    let empty_phase = || {
        drive(
            "empty endpoint",
            &empty_url,
            &list_target,
            &load,
            (args.requests / rounds).max(1),
            empty_body.clone(),
        )
    };
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let mut create_rounds = Vec::new();
    let per_round = args.jobs.div_ceil(rounds);
    for r in 0..rounds {
        let chunk: Arc<Vec<String>> = Arc::new(
            server_ids
                .iter()
                .skip(r * per_round)
                .take(per_round)
                .cloned()
                .collect(),
        );
        if chunk.is_empty() {
            break;
        }
        let empty = empty_phase().await;
        let ids = chunk.clone();
        let create = drive(
            "CreateReplicationJob",
            &tern_url,
            &sms_target("CreateReplicationJob"),
            &load,
            chunk.len(),
            Arc::new(move |i| {
                serde_json::to_vec(&serde_json::json!({
                    "serverId": ids[i], "seedReplicationTime": seed, "frequency": 12, "licenseType": "BYOL"
                }))
                .expect("json")
            }),
        )
        .await;
        create_rounds.push((empty, create));
    }
    let jobs_now = sms
        .get_replication_jobs()
        .max_results(1000)
        .into_paginator()
        .items()
        .send()
        .collect::<Vec<_>>()
        .await
        .len();
    let mut get_rounds = Vec::new();
    for _ in 0..rounds {
        let empty = empty_phase().await;
        let get = drive(
            "GetReplicationJobs (one page)",
            &tern_url,
            &sms_target("GetReplicationJobs"),
            &load,
            (args.requests / rounds).max(1),
            empty_body.clone(),
        )
        .await;
        get_rounds.push((empty, get));
    }

    println!("jobs in the store during GetReplicationJobs: {jobs_now}");
    let report = |label: &str, target: f64, pairs: &[(Stats, Stats)]| {
        println!();
        let mut ratios = Vec::new();
        for (i, (empty, op)) in pairs.iter().enumerate() {
            println!("round {}:", i + 1);
            empty.print();
            op.print();
            ratios.push(100.0 * op.rps() / empty.rps());
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        println!(
            "{label}: median {median:.1}% of the empty endpoint over {} rounds (min {:.1}%, max {:.1}%; target >= {target}%)",
            ratios.len(),
            ratios[0],
            ratios[ratios.len() - 1]
        );
    };
    report("CreateReplicationJob", 25.0, &create_rounds);
    report("GetReplicationJobs", 40.0, &get_rounds);
    running.shutdown().await;
    Ok(())
}
