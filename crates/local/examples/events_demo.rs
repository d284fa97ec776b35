//! Publishes a job's life as events on the local bus and prints what subscribers see.
//!
//! ```sh
//! cargo run -p tern-local --example events_demo -- [RULES.toml] [DATA_DIR]
//! ```
//!
//! Without a rules file nothing is delivered anywhere; the printed stream is the subscriber's.

use std::path::PathBuf;
use std::sync::Arc;

use tern_core::events::{EventBus, EventOrigin, JobEventState, JobStateChange};
use tern_local::bus::{BusConfig, LocalBus};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rules = args.next().map(PathBuf::from);
    let data_dir = PathBuf::from(args.next().unwrap_or_else(|| "./tern-data".into()));
    let config = match &rules {
        Some(path) => BusConfig::load(path, &data_dir)?,
        None => BusConfig::new(&data_dir),
    };
    let local = LocalBus::new(config)?;
    let mut stream = local.subscribe();
    let printer = tokio::spawn(async move {
        while let Ok(event) = stream.recv().await {
            println!("{}", serde_json::to_string(&event).unwrap_or_default());
        }
    });

    let bus: Arc<dyn EventBus> = Arc::new(local.clone());
    let origin = EventOrigin::new("us-east-1", "123456789012");
    let job = "sms-job-0123456789abcdef0";
    let run = "sms-run-0123456789abcdef0";
    let life = [
        JobStateChange::new(JobEventState::Pending, job),
        JobStateChange::new(JobEventState::Active, job)
            .with_run(run)
            .with_stage("Upload"),
        JobStateChange::new(JobEventState::Completed, job)
            .with_run(run)
            .with_ami("ami-0123456789abcdef0"),
        JobStateChange::new(JobEventState::Deleted, job),
    ];
    let now = time::OffsetDateTime::now_utc();
    let events: Vec<_> = life
        .into_iter()
        .enumerate()
        .map(|(version, change)| change.into_event(&origin, now, &version.to_string()))
        .collect();
    let outcome = bus.publish(&events).await?;
    outcome.into_result()?;
    local.flush().await;
    drop(bus);
    drop(local);
    printer.await?;
    eprintln!(
        "dead letters, if any: {}",
        data_dir.join("events-dead-letter.ndjson").display()
    );
    Ok(())
}
