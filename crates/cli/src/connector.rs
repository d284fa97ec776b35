//! `tern connector run --config FILE [--once]`: the connector agent (see `crates/connector`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tern_connector::{Agent, ConnectorConfig};

#[derive(clap::Subcommand)]
pub enum ConnectorCommand {
    /// Register with the Tern API, heartbeat, poll for work and answer it (inventory requests,
    /// replication uploads in the background) until SIGINT/SIGTERM.
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
