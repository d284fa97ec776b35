//! Wire-compatibility tests: the `aws-sdk-sms` crate (and raw HTTP where no SDK would go) against
//! an in-process `tern serve` on an ephemeral port. Codes and shapes are those of the SMS spec
//! (`shared/spec/sms-api.md`).

mod app_launch;
mod apps;
mod catalog;
mod changed;
mod connectors;
mod delete;
mod hostile;
mod jobs;
#[cfg(feature = "libvirt")]
mod libvirt;
mod limits;
mod preflight;
mod raw;
mod replication;
mod runs;
mod s3;
mod vsphere;

use std::time::Duration;

use aws_sdk_sms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sms::types::ReplicationRunState;
use tern_acceptance::TestServer;
use tern_test_support::poll;

/// CreateReplicationJob for `server_id`: seeding now, every 12 hours, BYOL. Returns the job id.
pub async fn create_job(c: &aws_sdk_sms::Client, server_id: &str) -> String {
    c.create_replication_job()
        .server_id(server_id)
        .seed_replication_time(aws_smithy_types::DateTime::from_secs(
            tern_acceptance::now_secs(),
        ))
        .frequency(12)
        .license_type(aws_sdk_sms::types::LicenseType::Byol)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_string()
}

/// Ticks the server and polls the connector until the run (`run_id`, else the job's first) is
/// over; panics unless it completed.
pub async fn run_to_end(
    server: &TestServer,
    agent: &mut tern_connector::Agent,
    job_id: &str,
    run_id: Option<&str>,
) -> aws_sdk_sms::types::ReplicationRun {
    let done = run_over(server, agent, job_id, run_id).await;
    assert_eq!(
        done.state(),
        Some(&ReplicationRunState::Completed),
        "{done:?}"
    );
    done
}

/// Ticks the server and polls the connector until the run (`run_id`, else the job's first)
/// completed or failed.
pub async fn run_over(
    server: &TestServer,
    agent: &mut tern_connector::Agent,
    job_id: &str,
    run_id: Option<&str>,
) -> aws_sdk_sms::types::ReplicationRun {
    poll::until_async(
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            server.tick().await;
            agent.poll_once().await.unwrap();
            let runs = server
                .client
                .get_replication_runs()
                .replication_job_id(job_id)
                .send()
                .await
                .unwrap();
            runs.replication_run_list()
                .iter()
                .find(|r| run_id.is_none_or(|id| r.replication_run_id() == Some(id)))
                .filter(|r| {
                    matches!(
                        r.state(),
                        Some(ReplicationRunState::Completed | ReplicationRunState::Failed)
                    )
                })
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|| panic!("run of {job_id} not done in 120 s"))
}

/// The error code of a failed SDK call (panics on success, naming what was expected).
pub fn code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    result: Result<T, SdkError<E, R>>,
) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("no error code in {e:?}"))
            .to_owned(),
    }
}

/// The error code and message of a failed SDK call.
pub fn code_and_message<
    T: std::fmt::Debug,
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
>(
    result: Result<T, SdkError<E, R>>,
) -> (String, String) {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => (
            e.code()
                .unwrap_or_else(|| panic!("no error code in {e:?}"))
                .to_owned(),
            e.message().unwrap_or_default().to_owned(),
        ),
    }
}

/// StartOnDemandReplicationRun for `job_id`; returns the run id.
pub async fn start_run(c: &aws_sdk_sms::Client, job_id: &str) -> String {
    c.start_on_demand_replication_run()
        .replication_job_id(job_id)
        .send()
        .await
        .unwrap()
        .replication_run_id()
        .unwrap()
        .to_string()
}

/// Files under `dir` whose name ends in `suffix`.
pub fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                found.push(p);
            }
        }
    }
    found
}

/// Checks that the AMI `run` made holds `want` (`what`, for the message) byte for byte.
pub fn assert_image(
    server: &TestServer,
    what: &str,
    run: &aws_sdk_sms::types::ReplicationRun,
    want: &[u8],
) {
    let ami = run.ami_id().expect("the run made an AMI");
    let got = replication::image_disk(server, ami);
    assert_eq!(got.len(), want.len(), "{ami}: disk size");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{ami} differs from {what} at the run's point in time at byte {at}");
    }
}

/// A connector agent for `server` whose config has the source section `source_toml`
/// (registered already); returns it with its config file (the state directory is beside it).
pub async fn source_agent(
    server: &TestServer,
    name: &str,
    source_toml: &str,
) -> (tern_connector::Agent, std::path::PathBuf) {
    let config = server.write_connector_source(name, source_toml);
    let mut agent = tern_connector::Agent::new(
        tern_connector::ConnectorConfig::load(&config)
            .unwrap_or_else(|e| panic!("the {name} config loads: {e}")),
    )
    .await
    .unwrap();
    agent.run_once().await.unwrap();
    (agent, config)
}

/// ImportServerCatalog answered by `agent`; the catalog's only server.
pub async fn only_server(
    server: &TestServer,
    agent: &mut tern_connector::Agent,
) -> aws_sdk_sms::types::Server {
    let c = &server.client;
    c.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();
    let servers = c.get_servers().send().await.unwrap();
    let list = servers.server_list();
    assert_eq!(list.len(), 1, "{list:?}");
    list[0].clone()
}

/// DeleteReplicationJob, then one poll of `agent`, which must forget the job.
pub async fn delete_and_forget(
    server: &TestServer,
    agent: &mut tern_connector::Agent,
    job_id: &str,
) {
    server
        .client
        .delete_replication_job()
        .replication_job_id(job_id)
        .send()
        .await
        .unwrap();
    let report = agent.poll_once().await.unwrap();
    assert_eq!(report.replication.jobs_forgotten, 1, "{report:?}");
}
