//! `tern connector run --config FILE [--once]`: the connector agent (see `crates/connector`).

use std::path::PathBuf;
use std::process::ExitCode;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tern_connector::replicate::{Progress, Stage};
use tern_connector::work::ProgressObserver;
use tern_connector::{Agent, ConnectorConfig};

#[derive(clap::Subcommand)]
pub enum ConnectorCommand {
    /// Register with the Tern API, heartbeat, poll for work and answer it (inventory requests,
    /// replication uploads in the background) until SIGINT/SIGTERM.
    ///
    /// The config names one source: `[files]` (an inventory file listing VMs and their disk
    /// images or OVA archives), `[libvirt]` (the running domains of a libvirt URI, read
    /// through a backup with a checkpoint per run; needs a build with `--features libvirt`) or
    /// `[vsphere]` (the VMs of a vCenter, read from a snapshot per run, changed blocks from
    /// vSphere's change tracking where it is on).
    ///
    /// The API: `tern serve`'s URL with the connector keys it writes; or the AWS stack's
    /// `SmsEndpoint` with a key from `tern keys issue --role connector`; or its `ApiEndpoint`
    /// with `api_auth = "iam"` as a session of the connector role (`ConnectorRoleName`), whose
    /// credentials then sign the uploads too.
    /// See crates/connector/README.md for every setting.
    Run {
        /// Connector config file (TOML, or JSON when named *.json).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Register, heartbeat and answer one poll's work (waiting for the replication work it
        /// started), print a JSON summary, then exit.
        #[arg(long)]
        once: bool,
    },
}

pub fn run(cmd: ConnectorCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConnectorCommand::Run { config, once } => {
            init_tracing();
            let config = ConnectorConfig::load(&config)?;
            // Several threads: replication tasks hash and send parts while the agent's loop
            // heartbeats and polls, and a busy upload must not delay a heartbeat.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let mut agent = Agent::new(config).await?;
                if std::io::stderr().is_terminal() {
                    agent.observe_progress(progress_bars());
                }
                if once {
                    let report = agent.run_once().await?;
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    agent.run(shutdown_signal()).await?;
                }
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

/// One bar per replication run being uploaded, on stderr (only used on a terminal).
fn progress_bars() -> Arc<ProgressObserver> {
    let bars = MultiProgress::new();
    let runs: Mutex<HashMap<String, ProgressBar>> = Mutex::default();
    Arc::new(move |run_id: &str, p: &Progress| {
        let mut runs = runs.lock().unwrap_or_else(|e| e.into_inner());
        let bar = runs.entry(run_id.to_string()).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new(100));
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:40}] {pos}% {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(run_id.to_string());
            bar
        });
        bar.set_position(p.percent.clamp(0.0, 100.0) as u64);
        let stage = match p.stage {
            Stage::Preparing => "preparing",
            Stage::Uploading => "uploading",
            Stage::Completed => "uploaded",
        };
        bar.set_message(format!(
            "{stage}, {:.1} MiB in the bucket",
            p.bytes_done as f64 / (1 << 20) as f64
        ));
        if p.stage == Stage::Completed {
            bar.finish();
        }
    })
}

/// Logs go to stderr (stdout carries `--once`'s JSON); RUST_LOG overrides the level.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
