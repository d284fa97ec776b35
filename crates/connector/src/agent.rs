//! The agent loop: register, heartbeat, poll for work, answer it.
//!
//! Inventory requests are answered inside the poll. Replication work (`REPLICATE`,
//! `COMMIT_RUN`) runs in background tasks ([`crate::work`]), so heartbeats and polls go on
//! while a long upload runs; an item PollWork hands out again while its task still runs is
//! skipped.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tern_api::connector::{
    op, ConnectorCapability, PollWorkRequest, PollWorkResponse, RegisterConnectorRequest,
    RegisterConnectorResponse, ReportErrorRequest, ReportErrorResponse, ReportInventoryRequest,
    ReportInventoryResponse, SendHeartbeatRequest, SendHeartbeatResponse, VmManagerType, WorkItem,
    WorkKind,
};
use tokio::task::JoinSet;
use tokio::time::{interval, MissedTickBehavior};

use crate::replicate::ReplicateContext;
use crate::work::{WorkCounts, WorkOutcome, Worker};
use crate::{ApiClient, ConnectorConfig, ConnectorError, Inventory};

/// What one poll cycle did; `--once` prints it, tests check it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CycleReport {
    pub connector_id: String,
    /// Work items received.
    pub work_items: usize,
    /// Inventory requests answered, and the VMs reported for them.
    pub inventories_reported: usize,
    pub vms_reported: usize,
    /// Work items that failed (and were reported with ReportError).
    pub failed: usize,
    /// Work items of kinds this connector does not know (left alone).
    pub skipped: usize,
    /// Replication items (REPLICATE and COMMIT_RUN) started by this poll.
    pub replication_items_started: usize,
    /// Items handed out again while their task still runs (left to that task).
    pub already_in_flight: usize,
    /// How the replication items that finished went (`--once` waits for those it started).
    #[serde(flatten)]
    pub replication: WorkCounts,
}

/// Registration kept across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    connector_id: String,
}

const STATE_FILE: &str = "connector.json";

pub struct Agent {
    config: ConnectorConfig,
    client: ApiClient,
    connector_id: Option<String>,
    worker: Arc<Worker>,
}

impl Agent {
    /// Resolves credentials and builds the client; makes no request yet.
    pub async fn new(config: ConnectorConfig) -> Result<Self, ConnectorError> {
        let credentials = config.resolve_credentials().await?;
        // Uploads are signed with the same keys as the API calls: `tern serve` accepts the
        // connector keys on its staging store, and one identity is simpler to grant on S3.
        let s3 = config.s3_client(credentials.clone());
        let client = ApiClient::new(
            &config.endpoint,
            &config.region,
            credentials,
            config.request_timeout(),
        )?;
        let worker = Arc::new(Worker::new(
            client.clone(),
            ReplicateContext {
                s3,
                state_dir: config.state_dir.clone(),
                options: config.replicate_options(),
            },
        ));
        Ok(Self {
            config,
            client,
            connector_id: None,
            worker,
        })
    }

    /// Replication items whose tasks are running now.
    pub fn work_in_flight(&self) -> usize {
        self.worker.in_flight()
    }

    pub fn connector_id(&self) -> Option<&str> {
        self.connector_id.as_deref()
    }

    fn default_manager_id(&self) -> String {
        format!("files-{}", self.config.name)
    }

    fn load_inventory(&self) -> Result<Inventory, ConnectorError> {
        Inventory::load(&self.config.files.inventory, &self.default_manager_id())
    }

    /// Registers with the service, passing back the id kept in the state directory so that a
    /// restart stays the same connector, and stores the id the service answers.
    #[tracing::instrument(skip(self))]
    pub async fn register(&mut self) -> Result<String, ConnectorError> {
        let state_path = self.config.state_dir.join(STATE_FILE);
        let previous = read_state(&state_path)?;
        let inventory = self.load_inventory()?;
        let request = RegisterConnectorRequest {
            connector_id: previous.map(|s| s.connector_id),
            name: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            vm_manager_name: inventory.vm_manager_name.clone(),
            vm_manager_type: inventory.vm_manager_type,
            vm_manager_id: inventory.vm_manager_id.clone(),
            ip_address: local_ip_towards(self.client.url()).await,
            mac_address: None,
            capability_list: inventory
                .vm_manager_type
                .map(capability_of)
                .into_iter()
                .collect(),
        };
        let response: RegisterConnectorResponse =
            self.client.call(op::REGISTER_CONNECTOR, &request).await?;
        write_state(
            &self.config.state_dir,
            &State {
                connector_id: response.connector_id.clone(),
            },
        )?;
        tracing::info!(connector_id = %response.connector_id, "registered");
        self.connector_id = Some(response.connector_id.clone());
        Ok(response.connector_id)
    }

    fn id(&self) -> Result<String, ConnectorError> {
        self.connector_id
            .clone()
            .ok_or_else(|| ConnectorError::Protocol {
                operation: "agent".into(),
                message: "not registered yet".into(),
            })
    }

    pub async fn heartbeat(&self) -> Result<(), ConnectorError> {
        let request = SendHeartbeatRequest {
            connector_id: self.id()?,
        };
        let _: SendHeartbeatResponse = self.client.call(op::SEND_HEARTBEAT, &request).await?;
        tracing::debug!("heartbeat sent");
        Ok(())
    }

    /// Polls once and answers every work item received, waiting for the replication work it
    /// started to finish.
    pub async fn poll_once(&self) -> Result<CycleReport, ConnectorError> {
        let mut tasks = JoinSet::new();
        let mut report = self.poll_into(&mut tasks).await?;
        while let Some(done) = tasks.join_next().await {
            record(&mut report.replication, done);
        }
        Ok(report)
    }

    /// Polls once: answers inventory requests, and starts a task in `tasks` for each
    /// replication item that is not already running.
    async fn poll_into(
        &self,
        tasks: &mut JoinSet<WorkOutcome>,
    ) -> Result<CycleReport, ConnectorError> {
        let connector_id = self.id()?;
        let response: PollWorkResponse = self
            .client
            .call(
                op::POLL_WORK,
                &PollWorkRequest {
                    connector_id: connector_id.clone(),
                    max_results: None,
                },
            )
            .await?;
        let mut report = CycleReport {
            connector_id,
            work_items: response.work_items.len(),
            ..CycleReport::default()
        };
        for item in &response.work_items {
            self.handle(item, &mut report, tasks).await?;
        }
        Ok(report)
    }

    /// Answers one work item. A failure of the item itself (e.g. an unreadable inventory file)
    /// is reported to the service with ReportError; only a failure to talk to the service is
    /// returned.
    async fn handle(
        &self,
        item: &WorkItem,
        report: &mut CycleReport,
        tasks: &mut JoinSet<WorkOutcome>,
    ) -> Result<(), ConnectorError> {
        match item.known_kind() {
            Some(WorkKind::Inventory) => {
                let result = match item.inventory() {
                    Some(work) => self.report_inventory(Some(work.request_id)).await,
                    None => Err(ConnectorError::Protocol {
                        operation: op::POLL_WORK.into(),
                        message: format!("INVENTORY work item {} has no requestId", item.work_id),
                    }),
                };
                match result {
                    Ok(vms) => {
                        report.inventories_reported += 1;
                        report.vms_reported += vms;
                    }
                    Err(err @ (ConnectorError::Http { .. } | ConnectorError::Signing(_))) => {
                        return Err(err)
                    }
                    Err(err) => {
                        tracing::warn!(work_id = %item.work_id, error = %err, "inventory request failed");
                        report.failed += 1;
                        self.report_error(Some(item.work_id.clone()), err.to_string())
                            .await?;
                    }
                }
            }
            Some(kind @ (WorkKind::Replicate | WorkKind::CommitRun)) => {
                let connector_id = self.id()?;
                let work_id = item.work_id.clone();
                let worker = self.worker.clone();
                let task: std::pin::Pin<Box<dyn Future<Output = WorkOutcome> + Send>> = match (
                    kind,
                    item.replication(),
                    item.commit_run(),
                ) {
                    (WorkKind::Replicate, Some(work), _) => {
                        Box::pin(worker.replicate(connector_id, work_id.clone(), work))
                    }
                    (WorkKind::CommitRun, _, Some(work)) => {
                        Box::pin(worker.commit(connector_id, work_id.clone(), work))
                    }
                    _ => {
                        tracing::warn!(work_id, kind = %item.kind, "malformed work item");
                        report.failed += 1;
                        let message = format!(
                                "{} work item {work_id} has a payload this connector (version {}) cannot read: {}; upgrade the connector to the control plane's version",
                                item.kind,
                                env!("CARGO_PKG_VERSION"),
                                item.payload
                            );
                        self.report_error(Some(work_id), message).await?;
                        return Ok(());
                    }
                };
                let Some(claim) = self.worker.claim(&work_id) else {
                    tracing::debug!(work_id, "work item already running; skipped");
                    report.already_in_flight += 1;
                    return Ok(());
                };
                report.replication_items_started += 1;
                tasks.spawn(async move {
                    // Released when the task ends, or is dropped with an aborted task.
                    let _claim = claim;
                    task.await
                });
            }
            None => {
                tracing::warn!(work_id = %item.work_id, kind = %item.kind, "skipping work of a kind this connector does not know");
                report.skipped += 1;
            }
        }
        Ok(())
    }

    /// Reports the whole inventory file; returns how many VMs were sent.
    pub async fn report_inventory(
        &self,
        request_id: Option<String>,
    ) -> Result<usize, ConnectorError> {
        let mut inventory = self.load_inventory()?;
        // Opening and inspecting disks is blocking file I/O: off the async threads, so that
        // running uploads and the heartbeat are not held up.
        let inventory = tokio::task::spawn_blocking(move || {
            inventory.inspect();
            inventory
        })
        .await
        .map_err(|e| ConnectorError::Protocol {
            operation: op::REPORT_INVENTORY.into(),
            message: format!("inspecting the disks: {e}"),
        })?;
        let count = inventory.vms.len();
        let request = ReportInventoryRequest {
            connector_id: self.id()?,
            request_id,
            vm_list: inventory.vms,
        };
        let response: ReportInventoryResponse =
            self.client.call(op::REPORT_INVENTORY, &request).await?;
        for rejected in &response.rejected_list {
            tracing::warn!(vm_id = %rejected.vm_id, reason = %rejected.message, "VM rejected by the catalog");
        }
        tracing::info!(
            sent = count,
            accepted = response.accepted_count,
            vanished = response.vanished_count,
            "inventory reported"
        );
        Ok(count)
    }

    pub async fn report_error(
        &self,
        work_id: Option<String>,
        message: String,
    ) -> Result<(), ConnectorError> {
        let request = ReportErrorRequest {
            connector_id: self.id()?,
            work_id,
            message,
        };
        let _: ReportErrorResponse = self.client.call(op::REPORT_ERROR, &request).await?;
        Ok(())
    }

    /// Register, heartbeat, one poll cycle (waiting for the replication work it started): for
    /// scripts and tests.
    pub async fn run_once(&mut self) -> Result<CycleReport, ConnectorError> {
        self.register().await?;
        self.heartbeat().await?;
        self.poll_once().await
    }

    /// Runs until `shutdown` completes: registers (retrying while the service is unreachable),
    /// then heartbeats and polls on their intervals. Errors of one cycle are logged and the next
    /// cycle tries again; a request in flight when `shutdown` fires is abandoned.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), ConnectorError> {
        tokio::pin!(shutdown);
        let mut retry = self.config.poll_interval();
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                result = self.register() => match result {
                    Ok(_) => break,
                    // Unreachable or failing service: worth another try later.
                    Err(err @ (ConnectorError::Http { .. } | ConnectorError::Service { status: 500.., .. })) => {
                        tracing::warn!(error = %err, retry_in = ?retry, "cannot reach the service; retrying");
                    }
                    // Refused credentials, a bad inventory file: retrying will not help.
                    Err(err) => return Err(err),
                }
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(std::time::Duration::from_secs(300));
        }
        let mut heartbeat = interval(self.config.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut poll = interval(self.config.poll_interval());
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Replication tasks: they run on their own while this loop heartbeats and polls.
        // Dropping the set at shutdown aborts them; their uploads resume on the next run.
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!(abandoned = tasks.len(), "shutting down");
                    return Ok(());
                }
                _ = heartbeat.tick() => {
                    if let Err(err) = self.heartbeat().await {
                        tracing::warn!(error = %err, "heartbeat failed");
                    }
                }
                _ = poll.tick() => {
                    match self.poll_into(&mut tasks).await {
                        Ok(report) if report.work_items > 0 => tracing::info!(?report, "work answered"),
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "polling for work failed"),
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let mut counts = WorkCounts::default();
                    record(&mut counts, done);
                    tracing::debug!(?counts, "replication work finished");
                }
            }
        }
    }
}

fn record(counts: &mut WorkCounts, done: Result<WorkOutcome, tokio::task::JoinError>) {
    match done {
        Ok(outcome) => counts.record(outcome),
        // A panic in a task is a bug; the item comes back after its lease.
        Err(e) => {
            tracing::error!(error = %e, "replication task failed");
            counts.replications_failed += 1;
        }
    }
}

fn capability_of(kind: VmManagerType) -> ConnectorCapability {
    match kind {
        VmManagerType::Vsphere => ConnectorCapability::Vsphere,
        VmManagerType::Scvmm => ConnectorCapability::Scvmm,
        VmManagerType::HypervManager => ConnectorCapability::HypervManager,
    }
}

fn read_state(path: &Path) -> Result<Option<State>, ConnectorError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ConnectorError::State {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConnectorError::State {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the state file atomically (temp file + rename), so a crash never leaves half a file.
fn write_state(dir: &Path, state: &State) -> Result<(), ConnectorError> {
    let err = |path: PathBuf| move |source| ConnectorError::State { path, source };
    std::fs::create_dir_all(dir).map_err(err(dir.to_owned()))?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
    std::fs::write(&tmp, bytes).map_err(err(tmp.clone()))?;
    std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(err(dir.join(STATE_FILE)))?;
    Ok(())
}

/// The local address this host uses to reach the endpoint (reported as the connector's
/// `ipAddress`). A UDP "connect" only picks a route; nothing is sent.
async fn local_ip_towards(url: &str) -> Option<String> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    let target = if authority.contains(':') {
        authority.to_owned()
    } else if url.starts_with("https") {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    };
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
    socket.connect(target).await.ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("nested/state");
        assert!(read_state(&state_dir.join(STATE_FILE)).unwrap().is_none());
        write_state(
            &state_dir,
            &State {
                connector_id: "c-0123".into(),
            },
        )
        .unwrap();
        let back = read_state(&state_dir.join(STATE_FILE)).unwrap().unwrap();
        assert_eq!(back.connector_id, "c-0123");
        assert!(!state_dir.join("connector.json.tmp").exists());
        std::fs::write(state_dir.join(STATE_FILE), b"garbage").unwrap();
        let err = read_state(&state_dir.join(STATE_FILE))
            .unwrap_err()
            .to_string();
        assert!(err.contains("connector.json"), "{err}");
    }

    #[tokio::test]
    async fn local_ip_for_loopback_endpoint() {
        assert_eq!(
            local_ip_towards("http://127.0.0.1:8080/").await.as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(local_ip_towards("not a url").await, None);
    }
}
