//! Cold init of Tern's Lambda bootstraps, and what their zips weigh.
//!
//! Each bootstrap is started as Lambda starts one: a fresh process whose environment names a
//! Runtime API (`AWS_LAMBDA_RUNTIME_API`, served here on 127.0.0.1) and the function's settings.
//! Its init is over when it first asks the Runtime API for an invocation
//! (`GET /2018-06-01/runtime/invocation/next`): the time from spawning it to that request is
//! its cold init, as Lambda's `Init Duration` counts it (without the sandbox's own start and
//! the code's download, which this host does not have). Every bootstrap is measured `--runs`
//! times, beside a `lambda_runtime` function that sets up nothing (`lambda-floor`, the floor
//! the runtime itself costs). No AWS call is made at init: the settings name resources, the
//! SDK clients connect on first use.
//!
//! The zip size is the bootstrap deflated as a zip holds it (`--zip` adds the arm64 builds
//! `cargo lambda build --release --arm64` made, whose size is what Lambda loads).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use clap::Parser;
use tokio::sync::Notify;

#[derive(Parser)]
#[command(
    about = "Cold init of Lambda bootstraps against a local Runtime API, and their zip sizes"
)]
struct Args {
    /// Bootstraps to start, each as `name=PATH` (the name picks its settings: api, tasks,
    /// upload-complete, scheduler, event-publisher; anything else gets none).
    #[arg(required = true)]
    bootstraps: Vec<String>,
    /// The floor to compare with: a lambda_runtime function that sets up nothing.
    #[arg(long)]
    floor: Option<PathBuf>,
    /// Starts per bootstrap.
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Bootstraps built for Lambda (`name=PATH`) whose zip size to report.
    #[arg(long = "zip")]
    zips: Vec<String>,
}

/// What the Runtime API saw of the current start.
#[derive(Default)]
struct Seen {
    asked: Option<Instant>,
    init_error: Option<String>,
}

#[derive(Clone)]
struct Runtime {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

async fn next(State(rt): State<Runtime>) -> (HeaderMap, String) {
    {
        let mut seen = rt.seen.lock().unwrap();
        seen.asked.get_or_insert_with(Instant::now);
    }
    rt.changed.notify_waiters();
    // The bootstrap is killed before it would read an invocation; never answer.
    std::future::pending::<()>().await;
    (HeaderMap::new(), String::new())
}

async fn init_error(State(rt): State<Runtime>, body: String) -> &'static str {
    rt.seen.lock().unwrap().init_error = Some(body);
    rt.changed.notify_waiters();
    "{}"
}

/// The environment the stack gives each function (`template.yaml`), with values that need
/// no AWS call to be read.
fn environment(name: &str) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        ("AWS_SESSION_TOKEN", "bench"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench"),
    ];
    let tern = [
        ("TERN_TABLE_NAME", "tern"),
        ("TERN_ACCOUNT_ID", "123456789012"),
        ("TERN_STAGING_BUCKET", "tern-staging-123456789012"),
        (
            "TERN_STATE_MACHINE_ARN",
            "arn:aws:states:us-east-1:123456789012:stateMachine:tern-replication-run",
        ),
        ("TERN_VMIMPORT_ROLE_NAME", "tern-vmimport"),
        ("TERN_EVENT_BUS_NAME", "default"),
    ];
    match name {
        "api" => {
            env.extend(tern);
            env.push(("TERN_CONNECTOR_ROLE_NAME", "TernConnector"));
        }
        "tasks" => {
            env.extend(tern);
            env.push(("TERN_TASK_FUNCTION", "prepare"));
        }
        "upload-complete" | "scheduler" | "event-publisher" => env.extend(tern),
        _ => {}
    }
    env
}

/// One cold start of `path`: milliseconds to its first `next`, or why it did not get there.
async fn start_once(name: &str, path: &PathBuf) -> Result<f64, String> {
    let rt = Runtime {
        seen: Arc::default(),
        changed: Arc::new(Notify::new()),
    };
    let app = axum::Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(rt.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut cmd = tokio::process::Command::new(path);
    cmd.env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", format!("tern-{name}"))
        .envs(environment(name))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let wait = rt.changed.notified();
            {
                let seen = rt.seen.lock().unwrap();
                if let Some(at) = seen.asked {
                    return Ok(at.duration_since(started).as_secs_f64() * 1000.0);
                }
                if let Some(e) = &seen.init_error {
                    return Err(format!("init failed: {e}"));
                }
            }
            tokio::select! {
                _ = wait => {}
                status = child.wait() => {
                    let mut said = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use tokio::io::AsyncReadExt as _;
                        let _ = e.read_to_string(&mut said).await;
                    }
                    return Err(format!("exited during init ({:?}): {}", status.ok(), said.trim()));
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no request for an invocation within 20 s".into()));
    let _ = child.kill().await;
    server.abort();
    outcome
}

/// The bytes of `path` deflated (what a zip of it holds, headers aside).
fn deflated(path: &PathBuf) -> std::io::Result<(u64, u64)> {
    let bytes = std::fs::read(path)?;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&bytes)?;
    Ok((bytes.len() as u64, z.finish()?.len() as u64))
}

fn named(spec: &str) -> (String, PathBuf) {
    match spec.split_once('=') {
        Some((n, p)) => (n.to_string(), PathBuf::from(p)),
        None => {
            let p = PathBuf::from(spec);
            let n = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (n, p)
        }
    }
}

fn stats(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    (ms[0], ms[ms.len() / 2], ms[ms.len() - 1])
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let mut floor_median = None;
    if let Some(f) = &args.floor {
        let mut ms = Vec::new();
        for _ in 0..args.runs {
            ms.push(start_once("floor", f).await?);
        }
        let (min, med, max) = stats(ms);
        println!(
            "cold init  {:<16} min {min:6.1} ms  median {med:6.1} ms  max {max:6.1} ms  (lambda_runtime with nothing to set up)",
            "floor"
        );
        floor_median = Some(med);
    }
    for spec in &args.bootstraps {
        let (name, path) = named(spec);
        let mut ms = Vec::new();
        for _ in 0..args.runs {
            ms.push(
                start_once(&name, &path)
                    .await
                    .map_err(|e| format!("{name}: {e}"))?,
            );
        }
        let (min, med, max) = stats(ms);
        let ratio = floor_median
            .map(|f| format!("  {:.1}x the floor", med / f))
            .unwrap_or_default();
        println!(
            "cold init  {name:<16} min {min:6.1} ms  median {med:6.1} ms  max {max:6.1} ms  ({:.2}x the 30 ms aim){ratio}",
            med / 30.0
        );
    }
    for spec in &args.zips {
        let (name, path) = named(spec);
        let (size, zipped) = deflated(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        println!(
            "zip        {name:<16} bootstrap {:6.1} MiB  zipped {:5.1} MiB  ({:.2}x the 10 MB aim)",
            size as f64 / 1048576.0,
            zipped as f64 / 1048576.0,
            zipped as f64 / 10_000_000.0
        );
    }
    Ok(())
}
