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

/// The work kinds this connector runs, named in PollWork: items of kinds a connector would skip
/// stay queued for one that runs them.
const RUNS: [WorkKind; 4] = [
    WorkKind::Inventory,
    WorkKind::Replicate,
    WorkKind::CommitRun,
    WorkKind::ForgetJob,
];

/// Upload slots held by [`Agent::occupy_upload_slots`]; dropped, they are free again.
pub struct SlotsHeld {
    _held: Vec<crate::work::InFlight>,
}

/// Inventory requests taken by one poll while every upload slot is busy.
const INVENTORY_WHILE_BUSY: usize = 2;

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
    /// Pages those VMs were sent in, and disk images opened to inspect them (a disk several
    /// VMs share is opened once).
    pub inventory_pages: usize,
    pub disks_inspected: usize,
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

/// What one inventory report sent (a resumed report: what this process sent of it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InventorySent {
    pub vms: usize,
    pub pages: usize,
    pub disks_inspected: usize,
}

/// Registration kept across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    connector_id: String,
}

const STATE_FILE: &str = "connector.json";
/// Where an inventory report stands (removed when its last page is taken).
const REPORT_FILE: &str = "inventory-report.json";
const UNSOLICITED: &str = "unsolicited";
/// A page is cut once its VMs' JSON reaches this size (the service keeps a page as one item of
/// at most ~390 KB, and a request body may be 6 MiB), or it holds [`PAGE_VMS`] VMs.
pub const PAGE_BYTES: usize = 192 * 1024;
pub const PAGE_VMS: usize = 500;

/// Progress of an inventory report, kept across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportState {
    /// The work item's requestId (`unsolicited` for a report nobody asked for).
    request_id: String,
    report_id: String,
    /// SHA-256 of the inventory file: a changed file starts a new report.
    inventory_sha256: String,
    /// The page to send next and the index of its first VM.
    next_page: u32,
    next_vm: usize,
}

/// One page on its way from the inspecting thread to the sender.
struct Page {
    number: u32,
    vms: Vec<tern_api::connector::InventoryVm>,
    /// Index of the first VM after this page.
    end_vm: usize,
    last: bool,
    bytes: usize,
}

fn new_report_id() -> String {
    format!("rep-{:016x}", rand::random::<u64>())
}

fn file_digest(path: &Path) -> Result<String, ConnectorError> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| ConnectorError::Inventory {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// A page the service did not take, named so that the catalog's status message says where.
fn page_error(err: ConnectorError, report_id: &str, page: u32) -> ConnectorError {
    match err {
        ConnectorError::Service {
            operation,
            status,
            code,
            message,
        } => ConnectorError::Service {
            operation,
            status,
            code,
            message: format!("page {page} of inventory report {report_id} refused: {message}"),
        },
        other => other,
    }
}

pub struct Agent {
    config: ConnectorConfig,
    client: ApiClient,
    connector_id: Option<String>,
    worker: Arc<Worker>,
    /// Fault injection: stop an inventory report after this many pages taken by the service.
    stop_inventory_after_pages: Option<u32>,
    /// Whether an inventory report left unfinished by an earlier process was looked for.
    resume_checked: std::sync::atomic::AtomicBool,
}

impl Agent {
    /// Resolves credentials and builds the client; makes no request yet.
    pub async fn new(config: ConnectorConfig) -> Result<Self, ConnectorError> {
        let credentials = config.api_credentials().await?;
        // Uploads are signed with the same credentials as the API calls unless [staging] names
        // others: `tern serve` accepts the connector keys on its staging store; S3 in AWS needs
        // IAM credentials (the API's `SmsEndpoint` takes Tern-issued keys, its `ApiEndpoint`
        // IAM ones: with `api_auth = "iam"` one identity serves both).
        let s3 = config.s3_client(config.staging_credentials(&credentials).await);
        let client = ApiClient::with_provider(
            &config.endpoint,
            &config.region,
            credentials,
            config.signing_name(),
            config.request_timeout(),
        )?;
        let worker = Arc::new(
            Worker::new(
                client.clone(),
                ReplicateContext {
                    s3,
                    state_dir: config.state_dir.clone(),
                    options: config.replicate_options(),
                },
            )
            .limit_uploads(config.max_concurrent_uploads)
            .serve_libvirt(config.libvirt.clone())
            .serve_vsphere(config.vsphere.clone()),
        );
        Ok(Self {
            config,
            client,
            connector_id: None,
            worker,
            stop_inventory_after_pages: None,
            resume_checked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Calls `observer` with every progress update of the replication runs this agent uploads
    /// (the CLI draws progress bars with it on a terminal).
    pub fn observe_progress(&self, observer: std::sync::Arc<crate::work::ProgressObserver>) {
        self.worker.observe(observer);
    }

    /// Fault injection for tests and drills: every inventory report stops, as a killed process
    /// would, after `pages` pages the service took (its state file says where to resume).
    pub fn stop_inventory_after_pages(&mut self, pages: u32) {
        self.stop_inventory_after_pages = Some(pages);
    }

    /// Fault injection for tests and drills: takes every upload slot (and the one extra item a
    /// poll may take) as that many long uploads would, until the returned guard is dropped.
    pub fn occupy_upload_slots(&self) -> SlotsHeld {
        SlotsHeld {
            _held: (0..=self.worker.max_uploads)
                .filter_map(|i| self.worker.claim(&format!("occupied-{i}")))
                .collect(),
        }
    }

    /// Replication items whose tasks are running now.
    pub fn work_in_flight(&self) -> usize {
        self.worker.in_flight()
    }

    pub fn connector_id(&self) -> Option<&str> {
        self.connector_id.as_deref()
    }

    /// The source's VMs, and a digest of them (a changed inventory starts a new report).
    async fn load_inventory(&self) -> Result<(Inventory, String), ConnectorError> {
        use sha2::Digest;
        if let Some(files) = &self.config.files {
            let manager_id = format!("files-{}", self.config.name);
            let digest = file_digest(&files.inventory)?;
            return Ok((Inventory::load(&files.inventory, &manager_id)?, digest));
        }
        let inventory = match self.config.vsphere.clone() {
            Some(source) => {
                let manager_id = format!("vsphere-{}", self.config.name);
                tokio::task::spawn_blocking(move || {
                    crate::vsphere::run::inventory(&source, &manager_id)
                })
                .await
                .map_err(|e| ConnectorError::Source(format!("listing the vSphere VMs: {e}")))??
            }
            None => self.load_libvirt_inventory().await?,
        };
        let listed = serde_json::to_vec(&inventory.vms).unwrap_or_default();
        Ok((inventory, hex::encode(sha2::Sha256::digest(&listed))))
    }

    #[cfg(feature = "libvirt")]
    async fn load_libvirt_inventory(&self) -> Result<Inventory, ConnectorError> {
        let Some(source) = self.config.libvirt.clone() else {
            return Err(ConnectorError::Source(
                "the connector config names no source".into(),
            ));
        };
        let manager_id = format!("libvirt-{}", self.config.name);
        tokio::task::spawn_blocking(move || crate::libvirt::run::inventory(&source, &manager_id))
            .await
            .map_err(|e| ConnectorError::Source(format!("listing the libvirt domains: {e}")))?
    }

    #[cfg(not(feature = "libvirt"))]
    async fn load_libvirt_inventory(&self) -> Result<Inventory, ConnectorError> {
        Err(ConnectorError::Source(
            "[libvirt] needs a connector built with the libvirt feature".into(),
        ))
    }

    /// Registers with the service, passing back the id kept in the state directory so that a
    /// restart stays the same connector, and stores the id the service answers.
    #[tracing::instrument(skip(self))]
    pub async fn register(&mut self) -> Result<String, ConnectorError> {
        let state_path = self.config.state_dir.join(STATE_FILE);
        let previous = read_state(&state_path)?;
        let (inventory, _) = self.load_inventory().await?;
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
        let resumed = self.resume_unfinished_report().await?;
        // Items beyond the free upload slots stay queued on the service (one more is taken,
        // and waits for a slot). With every slot taken, inventory requests are still asked
        // for: they are answered inside the poll and take no slot, so ImportServerCatalog is
        // not held up for as long as a seed takes.
        let room = (self.worker.max_uploads + 1).saturating_sub(self.worker.in_flight());
        let (kinds, max_results): (&[WorkKind], usize) = if room == 0 {
            (&[WorkKind::Inventory], INVENTORY_WHILE_BUSY)
        } else {
            (&RUNS, room)
        };
        let response: PollWorkResponse = self
            .client
            .call(
                op::POLL_WORK,
                &PollWorkRequest {
                    connector_id: connector_id.clone(),
                    max_results: Some(max_results as i64),
                    kinds: Some(kinds.iter().map(|k| k.as_str().to_string()).collect()),
                },
            )
            .await?;
        let mut report = CycleReport {
            connector_id,
            work_items: response.work_items.len(),
            ..CycleReport::default()
        };
        if let Some(item) = &resumed {
            self.handle(item, &mut report, tasks).await?;
        }
        for item in response
            .work_items
            .iter()
            .filter(|w| resumed.as_ref().is_none_or(|r| r.work_id != w.work_id))
        {
            self.handle(item, &mut report, tasks).await?;
        }
        Ok(report)
    }

    /// Once per process: an inventory report an earlier process left unfinished (killed in the
    /// middle) is answered again at once, resuming from its next page, instead of waiting for
    /// the service to hand its request out again when the lease runs out.
    async fn resume_unfinished_report(&self) -> Result<Option<WorkItem>, ConnectorError> {
        if self
            .resume_checked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(None);
        }
        let state = read_json::<ReportState>(&self.config.state_dir.join(REPORT_FILE))?;
        // An inventory work item's id is its request id.
        Ok(state
            .filter(|s| s.request_id != UNSOLICITED)
            .map(|s| WorkItem {
                work_id: s.request_id.clone(),
                kind: WorkKind::Inventory.as_str().to_string(),
                payload: serde_json::json!({ "requestId": s.request_id }),
            }))
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
                    Ok(sent) => {
                        report.inventories_reported += 1;
                        report.vms_reported += sent.vms;
                        report.inventory_pages += sent.pages;
                        report.disks_inspected += sent.disks_inspected;
                    }
                    Err(err @ (ConnectorError::Signing(_) | ConnectorError::Interrupted(_))) => {
                        return Err(err)
                    }
                    // The service may be unreachable; but a connection cut while a page was
                    // sent (an over-long body, a proxy) leaves the service up, and the catalog
                    // must not wait for an answer that will never come: say so if we can.
                    Err(err @ ConnectorError::Http { .. }) => {
                        tracing::warn!(work_id = %item.work_id, error = %err, "inventory request failed");
                        report.failed += 1;
                        if self
                            .report_error(Some(item.work_id.clone()), err.to_string())
                            .await
                            .is_err()
                        {
                            return Err(err);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(work_id = %item.work_id, error = %err, "inventory request failed");
                        report.failed += 1;
                        self.report_error(Some(item.work_id.clone()), err.to_string())
                            .await?;
                    }
                }
            }
            Some(kind @ (WorkKind::Replicate | WorkKind::CommitRun | WorkKind::ForgetJob)) => {
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
                    (WorkKind::ForgetJob, _, _) if item.forget_job().is_some() => {
                        let work = item.forget_job().expect("checked");
                        Box::pin(worker.forget(connector_id, work_id.clone(), work))
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

    /// Reports the whole inventory file, page by page; returns what was sent by this call.
    ///
    /// A thread reads the disks and cuts pages of at most [`PAGE_BYTES`] of VMs (or
    /// [`PAGE_VMS`] VMs), handing them over a one-slot channel, so about two pages of
    /// inspections are in memory whatever the inventory's size. After each page the service
    /// took, `STATE_DIR/inventory-report.json` records where the report stands: a connector
    /// restarted in the middle of a report answers the same request by resuming it from the
    /// next page (same `reportId`), as long as the inventory file did not change.
    pub async fn report_inventory(
        &self,
        request_id: Option<String>,
    ) -> Result<InventorySent, ConnectorError> {
        let connector_id = self.id()?;
        let (mut inventory, digest) = self.load_inventory().await?;
        let total = inventory.vms.len();
        let state_path = self.config.state_dir.join(REPORT_FILE);
        let wanted = request_id.clone().unwrap_or_else(|| UNSOLICITED.into());
        let resume = read_json::<ReportState>(&state_path)?.filter(|r| {
            r.request_id == wanted && r.inventory_sha256 == digest && r.next_vm <= total
        });
        let mut state = match resume {
            Some(r) => {
                tracing::info!(report_id = %r.report_id, page = r.next_page, vm = r.next_vm, "resuming the inventory report");
                r
            }
            None => ReportState {
                request_id: wanted,
                report_id: new_report_id(),
                inventory_sha256: digest,
                next_page: 1,
                next_vm: 0,
            },
        };

        // Pages are cut on a blocking thread: opening and inspecting disks is file I/O.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Page>(1);
        let first_vm = state.next_vm;
        let first_page = state.next_page;
        let producer = tokio::task::spawn_blocking(move || {
            let mut inspector = crate::inventory::Inspector::default();
            let mut page = Page {
                number: first_page,
                vms: Vec::new(),
                end_vm: first_vm,
                last: false,
                bytes: 0,
            };
            for index in first_vm..total {
                inventory.inspect_vm(index, &mut inspector);
                let vm = std::mem::take(&mut inventory.vms[index]);
                page.bytes += serde_json::to_vec(&vm).map_or(0, |b| b.len());
                page.vms.push(vm);
                page.end_vm = index + 1;
                page.last = index + 1 == total;
                if page.last || page.bytes >= PAGE_BYTES || page.vms.len() >= PAGE_VMS {
                    let next = Page {
                        number: page.number + 1,
                        vms: Vec::new(),
                        end_vm: index + 1,
                        last: false,
                        bytes: 0,
                    };
                    if tx
                        .blocking_send(std::mem::replace(&mut page, next))
                        .is_err()
                    {
                        return inspector.opened;
                    }
                }
            }
            if first_vm == total {
                // An empty inventory (or nothing left of it) is still one last page.
                page.last = true;
                let _ = tx.blocking_send(page);
            }
            inspector.opened
        });

        let mut sent = 0;
        let mut pages_sent = 0u32;
        let mut last: Option<ReportInventoryResponse> = None;
        while let Some(page) = rx.recv().await {
            let count = page.vms.len();
            let request = ReportInventoryRequest {
                connector_id: connector_id.clone(),
                request_id: request_id.clone(),
                report_id: Some(state.report_id.clone()),
                page: Some(page.number),
                last_page: page.last,
                vm_list: page.vms,
            };
            let response: Result<ReportInventoryResponse, _> = self
                .call_with_retries(op::REPORT_INVENTORY, &request)
                .await
                .map_err(|e| page_error(e, &state.report_id, page.number));
            let response = match response {
                Ok(r) => r,
                Err(err) => {
                    if matches!(err, ConnectorError::Service { .. }) {
                        // Refused: resending the same pages cannot help; the next request
                        // starts a new report.
                        remove_file(&state_path)?;
                    }
                    return Err(err);
                }
            };
            for rejected in &response.rejected_list {
                tracing::warn!(vm_id = %rejected.vm_id, reason = %rejected.message, "VM rejected by the catalog");
            }
            sent += count;
            state.next_page = page.number + 1;
            state.next_vm = page.end_vm;
            if page.last {
                remove_file(&state_path)?;
                last = Some(response);
            } else {
                write_json(&self.config.state_dir, REPORT_FILE, &state)?;
                pages_sent += 1;
                if self.stop_inventory_after_pages == Some(pages_sent) {
                    return Err(ConnectorError::Interrupted(format!(
                        "inventory report {} stopped after {pages_sent} page(s)",
                        state.report_id
                    )));
                }
            }
        }
        let opened = producer.await.map_err(|e| ConnectorError::Protocol {
            operation: op::REPORT_INVENTORY.into(),
            message: format!("inspecting the disks: {e}"),
        })?;
        let Some(response) = last else {
            return Err(ConnectorError::Protocol {
                operation: op::REPORT_INVENTORY.into(),
                message: "the inventory report ended before its last page".into(),
            });
        };
        tracing::info!(
            sent,
            pages = state.next_page - 1,
            disks_opened = opened,
            accepted = response.accepted_count,
            vanished = response.vanished_count,
            "inventory reported"
        );
        Ok(InventorySent {
            vms: sent,
            pages: pages_sent as usize + 1,
            disks_inspected: opened,
        })
    }

    /// One call, tried again after a transport failure (a lost connection, a timeout) up to
    /// three times with a growing pause; answers of the service are not retried here.
    async fn call_with_retries<I: Serialize, O: serde::de::DeserializeOwned>(
        &self,
        operation: &str,
        input: &I,
    ) -> Result<O, ConnectorError> {
        let mut pause = std::time::Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match self.client.call(operation, input).await {
                Err(err @ ConnectorError::Http { .. }) if attempt < 4 => {
                    tracing::warn!(error = %err, attempt, "request failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
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

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ConnectorError> {
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

/// Writes `DIR/NAME` atomically (temp file + rename).
fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), ConnectorError> {
    let err = |path: PathBuf| move |source| ConnectorError::State { path, source };
    std::fs::create_dir_all(dir).map_err(err(dir.to_owned()))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let bytes = serde_json::to_vec_pretty(value).expect("state serialises");
    std::fs::write(&tmp, bytes).map_err(err(tmp.clone()))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(err(dir.join(name)))?;
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), ConnectorError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ConnectorError::State {
            path: path.to_owned(),
            source,
        }),
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
