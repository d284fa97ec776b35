//! Replication runs: what the tasks of `statemachines/replication-run.asl.json` do, what happens
//! when a run's manifest arrives in staging, what connector progress reports change, and the
//! scheduler's tick.
//!
//! ```text
//!  tick ──► run PENDING ──► Prepare ──► WaitForUpload ══ token ══╗   connector: poll work,
//!                          (ACTIVE,      (parks)                 ║   upload, manifest last
//!                           work queued)                         ║
//!  upload_complete(manifest) ════════════════════════════════════╝ ──► Import | ApplyDelta
//!     ──► WaitForSnapshots ──► RegisterImage ──► Retain ──► Complete (COMPLETED, AMI)
//!  any failure ──► RecordFailure (FAILED; job FAILING, PAUSED_ON_FAILURE or FAILED)
//! ```
//!
//! Every handler is idempotent: a task re-invoked after a crash, or a notification delivered
//! twice, finds its effect already recorded (run state, run workflow fields, deterministic work
//! ids, images registered by name) and changes nothing twice. Task failures carry the fixed
//! names of [`task_errors`], which the state machine's Retry/Catch lists match; a test checks
//! that every name the state machine mentions is one of them.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::outbox::StateChange;
use super::{put, retrying, RunUpdate, Service, Versioned};
use crate::enums::{ReplicationJobState, ReplicationRunState, ReplicationRunType, WorkKind};
use crate::error::DomainError;
use crate::images::{
    Architecture, BlockDevice, BootMode, Images, ImagesError, RegisterImage, StagedObject,
    TaskStatus,
};
use crate::keys;
use crate::model::{JobImage, ReplicationJob, ReplicationRun, RunRef, StageDetails, Work};
use crate::staging::{Staging, StagingError};
use crate::states::{accepts_runs, run_in_progress, RunEvent};
use crate::store::{Expect, StoreError, Write};
use crate::workflows::{WorkflowError, Workflows, REPLICATION_RUN};

/// The error names tasks fail with (besides the `Images.*` names of [`ImagesError`]).
pub mod task_errors {
    /// Throttling, lost write races, an unreachable dependency: retrying may succeed.
    pub const TRANSIENT: &str = "Tern.Transient";
    /// The run is no longer its job's run in progress (the job was deleted meanwhile).
    pub const RUN_NOT_ACTIVE: &str = "Tern.RunNotActive";
    /// The manifest the connector wrote is unusable.
    pub const INVALID_MANIFEST: &str = "Tern.InvalidManifest";
    /// The connector reported that it could not upload the run.
    pub const UPLOAD_FAILED: &str = "Tern.UploadFailed";
    /// Snapshot tasks are still running; WaitForSnapshots retries with backoff.
    pub const SNAPSHOTS_PENDING: &str = "Tern.SnapshotsPending";
    /// A bug or a damaged store; the run fails.
    pub const INTERNAL: &str = "Tern.Internal";
    /// The state machine's own terminal error.
    pub const RUN_FAILED: &str = "Tern.RunFailed";

    /// Every name above.
    pub const ALL: &[&str] = &[
        TRANSIENT,
        RUN_NOT_ACTIVE,
        INVALID_MANIFEST,
        UPLOAD_FAILED,
        SNAPSHOTS_PENDING,
        INTERNAL,
        RUN_FAILED,
    ];
}

/// The task functions of the replication-run state machine, by the names its
/// `${…FunctionArn}` substitutions resolve to.
pub mod functions {
    pub const PREPARE: &str = "prepare";
    pub const WAIT_FOR_UPLOAD: &str = "wait-for-upload";
    pub const IMPORT: &str = "import";
    pub const APPLY_DELTA: &str = "apply-delta";
    pub const CHECK_SNAPSHOTS: &str = "check-snapshots";
    pub const REGISTER_IMAGE: &str = "register-image";
    pub const RETAIN: &str = "retain";
    pub const COMPLETE: &str = "complete";
    pub const RECORD_FAILURE: &str = "record-failure";

    /// (substitution name in the ASL file, function name).
    pub const SUBSTITUTIONS: &[(&str, &str)] = &[
        ("PrepareFunctionArn", PREPARE),
        ("WaitForUploadFunctionArn", WAIT_FOR_UPLOAD),
        ("ImportFunctionArn", IMPORT),
        ("ApplyDeltaFunctionArn", APPLY_DELTA),
        ("CheckSnapshotsFunctionArn", CHECK_SNAPSHOTS),
        ("RegisterImageFunctionArn", REGISTER_IMAGE),
        ("RetainFunctionArn", RETAIN),
        ("CompleteFunctionArn", COMPLETE),
        ("RecordFailureFunctionArn", RECORD_FAILURE),
    ];
}

/// A task's failure: `error` is matched by the state machine's Retry/Catch lists, `cause` is
/// for people (it ends up in the run's statusMessage).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {cause}")]
pub struct TaskError {
    pub error: String,
    pub cause: String,
}

impl TaskError {
    pub fn new(error: &str, cause: impl Into<String>) -> Self {
        TaskError {
            error: error.to_string(),
            cause: cause.into(),
        }
    }
}

impl From<DomainError> for TaskError {
    fn from(e: DomainError) -> Self {
        match &e {
            DomainError::Contention(_)
            | DomainError::Store(StoreError::Throttled(_) | StoreError::Unavailable { .. })
            | DomainError::Store(StoreError::ConditionFailed { .. }) => {
                TaskError::new(task_errors::TRANSIENT, e.to_string())
            }
            DomainError::JobNotFound(_) | DomainError::OperationNotPermitted(_) => {
                TaskError::new(task_errors::RUN_NOT_ACTIVE, e.to_string())
            }
            _ => TaskError::new(task_errors::INTERNAL, e.to_string()),
        }
    }
}

impl From<ImagesError> for TaskError {
    fn from(e: ImagesError) -> Self {
        TaskError::new(e.error_type(), e.to_string())
    }
}

impl From<StagingError> for TaskError {
    fn from(e: StagingError) -> Self {
        match e {
            StagingError::Transient { .. } => TaskError::new(task_errors::TRANSIENT, e.to_string()),
            StagingError::NotFound(_) | StagingError::TooLarge(_) => {
                TaskError::new(task_errors::INVALID_MANIFEST, e.to_string())
            }
            StagingError::Internal { .. } => TaskError::new(task_errors::INTERNAL, e.to_string()),
        }
    }
}

impl From<WorkflowError> for TaskError {
    fn from(e: WorkflowError) -> Self {
        match e {
            WorkflowError::Transient { .. } => {
                TaskError::new(task_errors::TRANSIENT, e.to_string())
            }
            _ => TaskError::new(task_errors::INTERNAL, e.to_string()),
        }
    }
}

type TaskResult<T = Value> = std::result::Result<T, TaskError>;

/// Tunables of replication (typed config, read once).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationSettings {
    /// The staging bucket connectors upload into.
    pub staging_bucket: String,
    /// Key prefix of every run's objects: `<prefix>/<jobId>/<runId>/…`.
    pub staging_prefix: String,
    /// WaitForUpload fails with States.HeartbeatTimeout when the connector reports no progress
    /// for this long.
    pub upload_heartbeat: Duration,
    /// WaitForUpload fails with States.Timeout after this long in all.
    pub upload_timeout: Duration,
    /// Largest manifest read.
    pub max_manifest_bytes: u64,
    /// A job PAUSED_ON_FAILURE is deleted after this long (SMS: 4 days).
    pub paused_job_lifetime: Duration,
    /// Delete a run's staged objects once its image is registered.
    pub delete_staged_after_import: bool,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            staging_bucket: "tern-staging".into(),
            staging_prefix: "runs".into(),
            upload_heartbeat: Duration::from_secs(15 * 60),
            upload_timeout: Duration::from_secs(7 * 24 * 3600),
            max_manifest_bytes: 1 << 20,
            paused_job_lifetime: Duration::from_secs(4 * 24 * 3600),
            delete_staged_after_import: true,
        }
    }
}

/// What a connector is asked to do for a run (payload of a `REPLICATE` work item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationWork {
    pub job_id: String,
    pub run_id: String,
    pub server_id: String,
    pub vm_id: String,
    /// The server's disks as the connector reported them, root disk first.
    pub disks: Vec<WorkDisk>,
    pub staging: StagingLocation,
    /// Upload full disks (stream-optimized VMDK) rather than deltas.
    pub seed: bool,
    /// The run whose snapshots the deltas will be applied onto; the connector's block maps must
    /// be from that run, else it uploads that disk in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkDisk {
    pub index: usize,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagingLocation {
    pub bucket: String,
    /// Every object of the run goes under `<prefix>/<jobId>/<runId>/`; the manifest is
    /// `<prefix>/<jobId>/<runId>/manifest.json` and is written last.
    pub prefix: String,
}

/// Payload of a `COMMIT_RUN` work item: the run succeeded, keep its block maps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitRunWork {
    pub job_id: String,
    pub run_id: String,
}

/// The parts of a run's manifest the control plane relies on (the connector writes more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub job_id: String,
    pub run_id: String,
    pub disks: Vec<ManifestDisk>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDisk {
    pub index: usize,
    /// `seed-vmdk` (a stream-optimized VMDK of the whole disk) or `delta` (a Tern delta).
    pub kind: String,
    /// The object's key in the staging bucket.
    #[serde(rename = "key")]
    pub object_key: String,
    #[serde(default, rename = "size")]
    pub object_size: u64,
    #[serde(default)]
    pub virtual_size: u64,
    /// Deltas: the run whose image the delta applies onto.
    #[serde(default)]
    pub base_run_id: Option<String>,
}

pub const KIND_SEED: &str = "seed-vmdk";
pub const KIND_DELTA: &str = "delta";

/// A connector's progress report for a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    pub work_id: String,
    pub stage: String,
    pub percent: u8,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// What [`Replication::upload_complete`] made of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The manifest was recorded (and handed to the waiting task if it was already waiting).
    Accepted,
    /// The manifest was already recorded: a repeated notification.
    Duplicate,
    /// Not a manifest, or of a run that is no longer in progress.
    Ignored(String),
    /// The manifest is unusable; the run was failed with this message.
    Rejected(String),
}

/// What one tick of the scheduler did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub runs_created: Vec<String>,
    pub runs_missed: Vec<String>,
    pub executions_started: Vec<String>,
    pub jobs_ended: Vec<String>,
    pub uploads_resignalled: usize,
}

/// Announces outbox state changes (the event bus adapter lives outside the domain).
#[async_trait::async_trait]
pub trait Announcer: Send + Sync {
    /// Publishes the changes; returns the ids of those accepted (the others stay in the outbox
    /// and are tried again).
    async fn announce(&self, changes: &[StateChange]) -> Vec<String>;
}

/// The replication use cases, over the domain [`Service`] and the ports they drive.
#[derive(Clone)]
pub struct Replication {
    service: Service,
    images: Arc<dyn Images>,
    workflows: Arc<dyn Workflows>,
    staging: Arc<dyn Staging>,
    announcer: Arc<dyn Announcer>,
    settings: ReplicationSettings,
    /// One outbox publication at a time in this process, so that concurrent tasks and ticks do
    /// not announce the same change twice (across processes the event id tells repeats apart).
    publishing: Arc<futures::lock::Mutex<()>>,
}

/// Sizes as SMS status messages show them ("3.1 GiB"), in MiB below a GiB so that small disks
/// do not read "0.0 GiB".
fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn str_member<'a>(input: &'a Value, name: &str) -> TaskResult<&'a str> {
    input
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            TaskError::new(
                task_errors::INTERNAL,
                format!("task input has no string member {name}"),
            )
        })
}

fn member<T: serde::de::DeserializeOwned>(input: &Value, name: &str) -> TaskResult<T> {
    let v = input.get(name).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v).map_err(|e| {
        TaskError::new(
            task_errors::INTERNAL,
            format!("task input member {name} is malformed: {e}"),
        )
    })
}

/// Device names of an image's disks: root first (`/dev/sda1`), then `/dev/sdb`, `/dev/sdc`, …
fn device_name(index: usize) -> String {
    if index == 0 {
        "/dev/sda1".into()
    } else {
        format!("/dev/sd{}", (b'a' + (index as u8 % 26)) as char)
    }
}

impl Replication {
    pub fn new(
        service: Service,
        images: Arc<dyn Images>,
        workflows: Arc<dyn Workflows>,
        staging: Arc<dyn Staging>,
        announcer: Arc<dyn Announcer>,
        settings: ReplicationSettings,
    ) -> Self {
        Self {
            service,
            images,
            workflows,
            staging,
            announcer,
            settings,
            publishing: Arc::default(),
        }
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn settings(&self) -> &ReplicationSettings {
        &self.settings
    }

    /// Runs one task function of the state machine (see [`functions`]).
    #[tracing::instrument(name = "replication_task", skip(self, input))]
    pub async fn handle_task(&self, function: &str, input: &Value) -> TaskResult {
        let out = match function {
            functions::PREPARE => self.prepare(input).await,
            functions::WAIT_FOR_UPLOAD => self.wait_for_upload(input).await,
            functions::IMPORT | functions::APPLY_DELTA => self.start_snapshots(input).await,
            functions::CHECK_SNAPSHOTS => self.check_snapshots(input).await,
            functions::REGISTER_IMAGE => self.register_image(input).await,
            functions::RETAIN => self.retain(input).await,
            functions::COMPLETE => self.complete(input).await,
            functions::RECORD_FAILURE => self.record_failure(input).await,
            other => Err(TaskError::new(
                task_errors::INTERNAL,
                format!("no replication task function {other}"),
            )),
        };
        // Announce what the task changed without waiting for the next tick.
        self.publish_outbox().await;
        if let Err(e) = &out {
            if e.error != task_errors::SNAPSHOTS_PENDING {
                tracing::warn!(function, error = %e.error, cause = %e.cause, "replication task failed");
            }
        }
        out
    }

    fn staging_prefix(&self, job_id: &str, run_id: &str) -> String {
        format!("{}/{job_id}/{run_id}/", self.settings.staging_prefix)
    }

    /// The job and its run `run_id`, which must be the job's run in progress.
    async fn active_run(
        &self,
        job_id: &str,
        run_id: &str,
    ) -> Result<(Versioned<ReplicationJob>, Versioned<ReplicationRun>), DomainError> {
        let job = self
            .service
            .live_job(job_id, DomainError::JobNotFound)
            .await?;
        let active = job
            .value
            .active_run
            .clone()
            .filter(|a| a.replication_run_id == run_id)
            .ok_or_else(|| {
                DomainError::OperationNotPermitted(format!(
                    "run {run_id} is not the run in progress of replication job {job_id}"
                ))
            })?;
        let key = keys::run(job_id, active.seq);
        let run = self
            .service
            .read::<ReplicationRun>(&key)
            .await?
            .ok_or_else(|| DomainError::Corrupt {
                key: format!("{}/{}", key.pk, key.sk),
                message: "missing run".into(),
            })?;
        Ok((job, run))
    }

    /// Changes the run in progress (and, when it says so, the job's copy of it) in one
    /// conditional transaction, retried on lost races. `f` returns whether the wire-visible
    /// part of the run changed (then the job's embedded copy is rewritten too), or an error
    /// that stops without writing.
    async fn update_run<F>(
        &self,
        job_id: &str,
        run_id: &str,
        mut f: F,
    ) -> Result<ReplicationRun, DomainError>
    where
        F: FnMut(&mut ReplicationRun) -> Result<Option<bool>, DomainError>,
    {
        let svc = &self.service;
        retrying!(svc, run_id, async {
            let (job, run) = self.active_run(job_id, run_id).await?;
            let mut r = run.value.clone();
            let Some(visible) = f(&mut r)? else {
                return Ok(r);
            };
            let mut writes = vec![put(keys::run(job_id, r.seq), &r, run.expect())?];
            if visible {
                let mut j = job.value.clone();
                Service::embed_run(&mut j, &r, svc.config.limits.runs_embedded_in_job as usize);
                writes.push(put(keys::job(job_id), &j, job.expect())?);
            }
            svc.store.transact(writes).await?;
            Ok(r)
        })
    }

    /// Sets a run's stage and status message (what GetReplicationRuns shows).
    async fn set_stage(
        &self,
        job_id: &str,
        run_id: &str,
        stage: &str,
        progress: Option<String>,
        message: String,
    ) -> Result<(), DomainError> {
        self.update_run(job_id, run_id, |r| {
            let details = StageDetails {
                stage: Some(stage.to_string()),
                stage_progress: progress.clone(),
            };
            if r.stage_details.as_ref() == Some(&details)
                && r.status_message.as_deref() == Some(&message)
            {
                return Ok(None);
            }
            r.stage_details = Some(details);
            r.status_message = Some(message.clone());
            Ok(Some(true))
        })
        .await
        .map(drop)
    }

    // ---- state machine tasks ---------------------------------------------------------------

    /// Prepare: the run becomes ACTIVE, seed or incremental is decided, and the connector gets
    /// its work item (one per run: the item's id is derived from the run id).
    async fn prepare(&self, input: &Value) -> TaskResult {
        let job_id = str_member(input, "jobId")?;
        let run_id = str_member(input, "runId")?;
        let (job, run) = self.active_run(job_id, run_id).await?;
        let j = &job.value;
        if run.value.state == ReplicationRunState::Pending {
            self.service
                .record_run(
                    job_id,
                    run_id,
                    RunUpdate {
                        event: RunEvent::Start,
                        stage_details: Some(StageDetails {
                            stage: Some("Preparing".into()),
                            stage_progress: Some("0%".into()),
                        }),
                        status_message: Some("Preparing".into()),
                        ami_id: None,
                        snapshot_ids: Vec::new(),
                    },
                )
                .await?;
        }
        let (_, server) = self.service.current_server(&j.server_id).await?;
        let server = server.ok_or_else(|| {
            TaskError::new(
                task_errors::RUN_NOT_ACTIVE,
                format!("server {} is no longer in the catalog", j.server_id),
            )
        })?;
        let disks: Vec<WorkDisk> = server
            .value
            .disks
            .iter()
            .enumerate()
            .map(|(index, d)| WorkDisk {
                index,
                path: d.path.clone(),
                format: d.format.clone(),
            })
            .collect();
        if disks.is_empty() {
            return Err(TaskError::new(
                task_errors::INVALID_MANIFEST,
                format!(
                    "server {} has no disks in the catalog; re-import the catalog",
                    j.server_id
                ),
            ));
        }
        // A seed when there is nothing to build on, or the server's disks changed in number.
        let seed = j.latest_snapshot_ids.len() != disks.len();
        let work = ReplicationWork {
            job_id: job_id.to_string(),
            run_id: run_id.to_string(),
            server_id: j.server_id.clone(),
            vm_id: server.value.vm_server.vm_server_address.vm_id.clone(),
            disks,
            staging: StagingLocation {
                bucket: self.settings.staging_bucket.clone(),
                prefix: self.settings.staging_prefix.clone(),
            },
            seed,
            parent_run_id: (!seed).then(|| j.latest_run_id.clone()).flatten(),
        };
        self.queue_work(
            &j.connector_id,
            &format!("work-{run_id}"),
            WorkKind::Replicate,
            &work,
        )
        .await?;
        self.update_run(job_id, run_id, |r| {
            if r.workflow.seed == Some(seed) {
                return Ok(None);
            }
            r.workflow.seed = Some(seed);
            Ok(Some(false))
        })
        .await?;
        Ok(json!({
            "seed": seed,
            "stagingBucket": work.staging.bucket,
            "stagingPrefix": self.staging_prefix(job_id, run_id),
            "uploadHeartbeatSeconds": self.settings.upload_heartbeat.as_secs(),
            "uploadTimeoutSeconds": self.settings.upload_timeout.as_secs(),
        }))
    }

    /// Queues a work item with a fixed id; an item already queued under that id is left alone.
    async fn queue_work<T: Serialize>(
        &self,
        connector_id: &str,
        work_id: &str,
        kind: WorkKind,
        payload: &T,
    ) -> Result<(), DomainError> {
        let work = Work {
            work_id: work_id.to_string(),
            connector_id: connector_id.to_string(),
            kind,
            payload: serde_json::to_value(payload).map_err(|e| DomainError::Corrupt {
                key: work_id.to_string(),
                message: e.to_string(),
            })?,
            queued_on: self.service.now(),
            leased_on: None,
        };
        match self
            .service
            .store
            .write(put(
                keys::work(connector_id, work_id),
                &work,
                Expect::Absent,
            )?)
            .await
        {
            Ok(()) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// WaitForUpload: keeps the task token on the run. If the manifest already arrived (a fast
    /// connector), the task is answered at once.
    async fn wait_for_upload(&self, input: &Value) -> TaskResult {
        let job_id = str_member(input, "jobId")?;
        let run_id = str_member(input, "runId")?;
        let token = str_member(input, "taskToken")?;
        let run = self
            .update_run(job_id, run_id, |r| {
                if r.workflow.upload_token.as_deref() == Some(token) {
                    return Ok(None);
                }
                r.workflow.upload_token = Some(token.to_string());
                r.workflow.upload_signalled = false;
                if r.workflow.manifest.is_none() {
                    r.stage_details = Some(StageDetails {
                        stage: Some("Uploading".into()),
                        stage_progress: Some("0%".into()),
                    });
                    r.status_message = Some("Waiting for the connector to upload".into());
                }
                Ok(Some(true))
            })
            .await?;
        if run.workflow.manifest.is_some() {
            self.signal_upload(job_id, run_id).await?;
        }
        Ok(json!({}))
    }

    /// Hands the recorded manifest to the parked WaitForUpload task, once.
    async fn signal_upload(&self, job_id: &str, run_id: &str) -> Result<(), DomainError> {
        let (_, run) = self.active_run(job_id, run_id).await?;
        let w = &run.value.workflow;
        let (Some(token), Some(manifest)) = (&w.upload_token, &w.manifest) else {
            return Ok(());
        };
        if w.upload_signalled {
            return Ok(());
        }
        match self.workflows.send_task_success(token, manifest).await {
            Ok(()) | Err(WorkflowError::TaskGone(_)) => {}
            Err(e) => {
                // The tick tries again.
                tracing::warn!(job_id, run_id, error = %e, "could not hand the manifest to the run");
                return Ok(());
            }
        }
        let token = token.clone();
        self.update_run(job_id, run_id, |r| {
            if r.workflow.upload_token.as_deref() != Some(&token) || r.workflow.upload_signalled {
                return Ok(None);
            }
            r.workflow.upload_signalled = true;
            Ok(Some(false))
        })
        .await?;
        Ok(())
    }

    /// Import / ApplyDelta: starts one snapshot task per disk of the manifest. A seed disk is
    /// imported; a delta disk is applied onto the same disk's snapshot of the previous run.
    async fn start_snapshots(&self, input: &Value) -> TaskResult {
        let job_id = str_member(input, "jobId")?;
        let run_id = str_member(input, "runId")?;
        let manifest: Manifest = member(input, "manifest")?;
        let (job, _) = self.active_run(job_id, run_id).await?;
        let mut tasks = Vec::new();
        for disk in &manifest.disks {
            let source = StagedObject {
                bucket: self.settings.staging_bucket.clone(),
                key: disk.object_key.clone(),
            };
            let description = format!(
                "disk {} of server {} (replication job {job_id}, run {run_id})",
                disk.index, job.value.server_id
            );
            let task_id = match disk.kind.as_str() {
                KIND_SEED => self.images.start_import(&source, &description).await?,
                KIND_DELTA => {
                    if disk.base_run_id.is_some() && disk.base_run_id != job.value.latest_run_id {
                        return Err(TaskError::new(
                            task_errors::INVALID_MANIFEST,
                            format!(
                                "disk {}'s delta applies onto run {}, but the job's latest image is from run {}; the connector must upload that disk in full",
                                disk.index,
                                disk.base_run_id.as_deref().unwrap_or("?"),
                                job.value.latest_run_id.as_deref().unwrap_or("(none)")
                            ),
                        ));
                    }
                    let parent = job.value.latest_snapshot_ids.get(disk.index).ok_or_else(|| {
                        TaskError::new(
                            task_errors::INVALID_MANIFEST,
                            format!(
                                "the manifest has a delta for disk {} but the job has no snapshot of that disk to apply it to",
                                disk.index
                            ),
                        )
                    })?;
                    self.images
                        .start_apply_delta(parent, &source, &description)
                        .await?
                }
                other => {
                    return Err(TaskError::new(
                        task_errors::INVALID_MANIFEST,
                        format!("disk {} has unknown kind {other:?}", disk.index),
                    ))
                }
            };
            tasks.push(json!({ "index": disk.index, "taskId": task_id }));
        }
        self.set_stage(
            job_id,
            run_id,
            "Converting",
            Some("0%".into()),
            "Converting 0%".into(),
        )
        .await?;
        Ok(Value::Array(tasks))
    }

    /// WaitForSnapshots: fails with `Tern.SnapshotsPending` while any task runs (the state
    /// machine retries with backoff), with the image error of a failed task, else returns the
    /// snapshots in disk order.
    async fn check_snapshots(&self, input: &Value) -> TaskResult {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Task {
            index: usize,
            task_id: String,
        }
        let job_id = str_member(input, "jobId")?;
        let run_id = str_member(input, "runId")?;
        let mut tasks: Vec<Task> = member(input, "tasks")?;
        tasks.sort_by_key(|t| t.index);
        let (mut done, mut total) = (0u64, 0u64);
        let mut pending = 0;
        let mut snapshots = Vec::new();
        for t in &tasks {
            match self.images.describe_task(&t.task_id).await? {
                TaskStatus::Active {
                    bytes_done,
                    bytes_total,
                    ..
                } => {
                    pending += 1;
                    done += bytes_done;
                    total += bytes_total;
                }
                TaskStatus::Completed { snapshot } => {
                    done += snapshot.volume_size_bytes;
                    total += snapshot.volume_size_bytes;
                    snapshots.push(json!({
                        "index": t.index,
                        "snapshotId": snapshot.snapshot_id,
                        "volumeSize": snapshot.volume_size_gib(),
                    }));
                }
                TaskStatus::Failed { kind, message } => {
                    return Err(TaskError::new(
                        kind.error_type(),
                        format!("disk {}: {message}", t.index),
                    ));
                }
            }
        }
        if pending > 0 {
            let percent = (done * 100).checked_div(total).unwrap_or(0);
            self.set_stage(
                job_id,
                run_id,
                "Converting",
                Some(format!("{percent}%")),
                format!("Converting {percent}% ({} of {})", gib(done), gib(total)),
            )
            .await?;
            return Err(TaskError::new(
                task_errors::SNAPSHOTS_PENDING,
                format!(
                    "{pending} of {} snapshot task(s) still running",
                    tasks.len()
                ),
            ));
        }
        Ok(Value::Array(snapshots))
    }

    /// RegisterImage: one AMI over the run's snapshots, root disk first, DeleteOnTermination
    /// false (SMS's rule). The name is derived from the run, so a retried registration finds
    /// the image it already made.
    async fn register_image(&self, input: &Value) -> TaskResult {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Snap {
            index: usize,
            snapshot_id: String,
            volume_size: u64,
        }
        let job_id = str_member(input, "jobId")?;
        let run_id = str_member(input, "runId")?;
        let mut snaps: Vec<Snap> = member(input, "snapshots")?;
        snaps.sort_by_key(|s| s.index);
        let (job, _) = self.active_run(job_id, run_id).await?;
        let (_, server) = self.service.current_server(&job.value.server_id).await?;
        let uefi = server
            .as_ref()
            .and_then(|s| s.value.inspection.as_ref())
            .and_then(|i| {
                i.pointer("/disks/0/efi_system_partition")
                    .or(i.get("efiSystemPartition"))
            })
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let request = RegisterImage {
            name: format!("tern-{job_id}-{run_id}"),
            description: format!(
                "Tern replication job {job_id}, run {run_id}, server {}",
                job.value.server_id
            ),
            block_devices: snaps
                .iter()
                .map(|s| BlockDevice {
                    device_name: device_name(s.index),
                    snapshot_id: s.snapshot_id.clone(),
                    volume_size: s.volume_size,
                    delete_on_termination: false,
                })
                .collect(),
            architecture: Architecture::X86_64,
            boot_mode: if uefi {
                BootMode::Uefi
            } else {
                BootMode::LegacyBios
            },
            ena_support: true,
        };
        let image = self.images.register_image(&request).await?;
        Ok(json!({
            "imageId": image.image_id,
            "snapshotIds": snaps.iter().map(|s| s.snapshot_id.clone()).collect::<Vec<_>>(),
        }))
    }

    /// Retain: the job keeps its newest `numberOfRecentAmisToKeep` images (0 keeps all); older
    /// ones are deregistered and their snapshots deleted *before* the job's list is shortened,
    /// so a crash in between only repeats idempotent deletions.
    async fn retain(&self, input: &Value) -> TaskResult {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct NewImage {
            image_id: String,
            snapshot_ids: Vec<String>,
        }
        let job_id = str_member(input, "jobId")?;
        let run_id = str_member(input, "runId")?;
        let new: NewImage = member(input, "image")?;
        let svc = &self.service;
        let retired = retrying!(svc, job_id, async {
            let (job, _) = self.active_run(job_id, run_id).await?;
            let mut j = job.value.clone();
            if !j.images.iter().any(|i| i.ami_id == new.image_id) {
                j.images.push(JobImage {
                    ami_id: new.image_id.clone(),
                    run_id: run_id.to_string(),
                    snapshot_ids: new.snapshot_ids.clone(),
                });
            }
            let keep = j.number_of_recent_amis_to_keep as usize;
            let excess = if keep == 0 {
                0
            } else {
                j.images.len().saturating_sub(keep)
            };
            let retired: Vec<JobImage> = j.images.drain(..excess).collect();
            for image in &retired {
                self.delete_image(image).await?;
            }
            if j != job.value {
                svc.store
                    .write(put(keys::job(job_id), &j, job.expect())?)
                    .await?;
            }
            Ok(retired)
        })?;
        if !retired.is_empty() {
            tracing::info!(job_id, retired = ?retired.iter().map(|i| &i.ami_id).collect::<Vec<_>>(), "retired old images");
        }
        Ok(json!({
            "deregistered": retired.iter().map(|i| i.ami_id.clone()).collect::<Vec<_>>(),
        }))
    }

    async fn delete_image(&self, image: &JobImage) -> Result<(), DomainError> {
        let fail = |e: ImagesError| {
            DomainError::Store(StoreError::Unavailable {
                message: format!("retiring image {}: {e}", image.ami_id),
                source: None,
            })
        };
        self.images
            .deregister_image(&image.ami_id)
            .await
            .map_err(fail)?;
        for snap in &image.snapshot_ids {
            match self.images.delete_snapshot(snap).await {
                Ok(()) | Err(ImagesError::NotFound(_)) => {}
                Err(ImagesError::InUse(m)) => {
                    tracing::warn!(snapshot_id = %snap, reason = %m, "snapshot still in use; kept")
                }
                Err(e) => return Err(fail(e)),
            }
        }
        Ok(())
    }

    /// Complete: the run is COMPLETED with its AMI; its snapshots become the parents of the
    /// next incremental run; the connector is told to keep this run's block maps.
    async fn complete(&self, input: &Value) -> TaskResult {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Done {
            image_id: String,
            snapshot_ids: Vec<String>,
        }
        let job_id = str_member(input, "jobId")?;
        let run_id = str_member(input, "runId")?;
        let done: Done = member(input, "image")?;
        let run = match self.active_run(job_id, run_id).await {
            Ok((_, run)) => Some(run),
            Err(DomainError::OperationNotPermitted(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(run) = run {
            if run.value.state == ReplicationRunState::Active {
                self.service
                    .record_run(
                        job_id,
                        run_id,
                        RunUpdate {
                            event: RunEvent::Complete,
                            stage_details: Some(StageDetails {
                                stage: Some("Completed".into()),
                                stage_progress: Some("100%".into()),
                            }),
                            status_message: Some(format!("Completed: {}", done.image_id)),
                            ami_id: Some(done.image_id.clone()),
                            snapshot_ids: done.snapshot_ids.clone(),
                        },
                    )
                    .await?;
            }
        } else {
            // Already recorded by an earlier attempt (the run is no longer in progress): only
            // a completion of this very run with this image counts as done.
            let job = self.service.get_job(job_id).await?;
            if job.latest_ami_id.as_deref() != Some(&done.image_id) {
                return Err(TaskError::new(
                    task_errors::RUN_NOT_ACTIVE,
                    format!("run {run_id} of replication job {job_id} is no longer in progress"),
                ));
            }
        }
        let job = self.service.get_job(job_id).await?;
        self.queue_work(
            &job.connector_id,
            &format!("work-commit-{run_id}"),
            WorkKind::CommitRun,
            &CommitRunWork {
                job_id: job_id.to_string(),
                run_id: run_id.to_string(),
            },
        )
        .await?;
        if self.settings.delete_staged_after_import {
            let prefix = self.staging_prefix(job_id, run_id);
            if let Err(e) = self
                .staging
                .delete_prefix(&self.settings.staging_bucket, &prefix)
                .await
            {
                tracing::warn!(job_id, run_id, error = %e, "could not delete the run's staged objects");
            }
        }
        Ok(json!({ "imageId": done.image_id }))
    }

    /// RecordFailure: the run is FAILED with a message that says why and how many retries the
    /// job has left; the job becomes FAILING, PAUSED_ON_FAILURE (after the last retry) or
    /// FAILED (a runOnce job).
    async fn record_failure(&self, input: &Value) -> TaskResult {
        let job_id = str_member(input, "jobId")?;
        let run_id = str_member(input, "runId")?;
        let error = input.get("error").cloned().unwrap_or(Value::Null);
        let name = error
            .get("Error")
            .and_then(Value::as_str)
            .unwrap_or("States.TaskFailed");
        let cause = error.get("Cause").and_then(Value::as_str).unwrap_or("");
        // Lambda errors arrive as {"errorMessage", "errorType"} JSON in Cause.
        let cause = serde_json::from_str::<Value>(cause)
            .ok()
            .and_then(|v| {
                v.get("errorMessage")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_else(|| cause.to_string());
        let reason = match name {
            "States.HeartbeatTimeout" => "the connector stopped reporting progress".to_string(),
            "States.Timeout" => "the run took longer than allowed".to_string(),
            _ if cause.is_empty() => name.to_string(),
            _ => cause,
        };
        let (job, run) = match self.active_run(job_id, run_id).await {
            Ok(found) => found,
            // Deleted or already recorded: nothing left to fail.
            Err(DomainError::OperationNotPermitted(_) | DomainError::JobNotFound(_)) => {
                return Ok(json!({ "recorded": false }))
            }
            Err(e) => return Err(e.into()),
        };
        if !run_in_progress(run.value.state) {
            return Ok(json!({ "recorded": false }));
        }
        let j = &job.value;
        let max = self.service.config.limits.max_consecutive_run_failures;
        let left = max.saturating_sub(j.consecutive_failures + 1);
        let then = if j.run_once { "failed" } else { "paused" };
        let message = format!(
            "Run failed: {reason}. {left} re-try run(s) remaining before the job will be {then}"
        );
        self.service
            .record_run(
                job_id,
                run_id,
                RunUpdate {
                    event: RunEvent::Fail,
                    stage_details: Some(StageDetails {
                        stage: Some("Failed".into()),
                        stage_progress: run
                            .value
                            .stage_details
                            .as_ref()
                            .and_then(|d| d.stage_progress.clone()),
                    }),
                    status_message: Some(message.clone()),
                    ami_id: None,
                    snapshot_ids: Vec::new(),
                },
            )
            .await?;
        // The connector need not keep working on it.
        let _ = self
            .service
            .store
            .write(Write::Delete {
                key: keys::work(&j.connector_id, &format!("work-{run_id}")),
                expect: Expect::Any,
            })
            .await;
        Ok(json!({ "recorded": true, "message": message }))
    }

    // ---- outside the state machine ---------------------------------------------------------

    /// An object arrived in staging. Only `<prefix>/<job>/<run>/manifest.json` matters: the
    /// first notification records the manifest and answers the waiting task; repeats change
    /// nothing.
    #[tracing::instrument(name = "upload_complete", skip(self))]
    pub async fn upload_complete(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<UploadOutcome, TaskError> {
        let rest = key
            .strip_prefix(&format!("{}/", self.settings.staging_prefix))
            .filter(|_| bucket == self.settings.staging_bucket);
        let parts: Vec<&str> = rest.map(|r| r.split('/').collect()).unwrap_or_default();
        let [job_id, run_id, "manifest.json"] = parts[..] else {
            return Ok(UploadOutcome::Ignored(format!(
                "{bucket}/{key} is not a run manifest"
            )));
        };
        let run = match self.active_run(job_id, run_id).await {
            Ok((_, run)) => run,
            Err(DomainError::OperationNotPermitted(m) | DomainError::JobNotFound(m)) => {
                return Ok(UploadOutcome::Ignored(m))
            }
            Err(e) => return Err(e.into()),
        };
        if run.value.workflow.manifest.is_some() {
            return Ok(UploadOutcome::Duplicate);
        }
        let object = StagedObject {
            bucket: bucket.to_string(),
            key: key.to_string(),
        };
        let checked = match self.read_manifest(&object, job_id, run_id).await {
            Ok(m) => Ok(m),
            Err(e) if e.error == task_errors::INVALID_MANIFEST => Err(e.cause),
            Err(e) => return Err(e),
        };
        match checked {
            Ok(manifest) => {
                let mut first = false;
                self.update_run(job_id, run_id, |r| {
                    if r.workflow.manifest.is_some() {
                        return Ok(None);
                    }
                    first = true;
                    r.workflow.manifest = Some(manifest.clone());
                    r.stage_details = Some(StageDetails {
                        stage: Some("Uploading".into()),
                        stage_progress: Some("100%".into()),
                    });
                    r.status_message = Some("Uploaded; waiting to convert".into());
                    Ok(Some(true))
                })
                .await?;
                // `first` is set by whichever attempt committed; a racing duplicate sees the
                // manifest and does nothing.
                if !first {
                    return Ok(UploadOutcome::Duplicate);
                }
                self.signal_upload(job_id, run_id).await?;
                Ok(UploadOutcome::Accepted)
            }
            Err(message) => {
                if let Some(token) = &run.value.workflow.upload_token {
                    match self
                        .workflows
                        .send_task_failure(token, task_errors::INVALID_MANIFEST, &message)
                        .await
                    {
                        Ok(()) | Err(WorkflowError::TaskGone(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(UploadOutcome::Rejected(message))
            }
        }
    }

    /// Reads and checks a manifest: it names this run, lists every disk once, root first, and
    /// each object it lists exists in staging.
    async fn read_manifest(
        &self,
        object: &StagedObject,
        job_id: &str,
        run_id: &str,
    ) -> TaskResult<Value> {
        let bad = |m: String| TaskError::new(task_errors::INVALID_MANIFEST, m);
        let bytes = self
            .staging
            .get_object(object, self.settings.max_manifest_bytes)
            .await?;
        let raw: Value = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("manifest {object} is not JSON: {e}")))?;
        let m: Manifest = serde_json::from_value(raw.clone())
            .map_err(|e| bad(format!("manifest {object} is malformed: {e}")))?;
        if m.job_id != job_id || m.run_id != run_id {
            return Err(bad(format!(
                "manifest {object} names job {} run {}, not job {job_id} run {run_id}",
                m.job_id, m.run_id
            )));
        }
        if m.disks.is_empty() {
            return Err(bad(format!("manifest {object} lists no disks")));
        }
        let prefix = self.staging_prefix(job_id, run_id);
        for (i, d) in m.disks.iter().enumerate() {
            if d.index != i {
                return Err(bad(format!(
                    "manifest {object}: disk {i} is listed as index {}",
                    d.index
                )));
            }
            if !d.object_key.starts_with(&prefix) {
                return Err(bad(format!(
                    "manifest {object}: disk {i}'s object {} is outside the run's prefix {prefix}",
                    d.object_key
                )));
            }
            let staged = StagedObject {
                bucket: object.bucket.clone(),
                key: d.object_key.clone(),
            };
            if self.staging.object_size(&staged).await?.is_none() {
                return Err(bad(format!(
                    "manifest {object}: disk {i}'s object {staged} was not uploaded"
                )));
            }
        }
        Ok(raw)
    }

    /// A connector reports progress on a `REPLICATE` work item: the run's stage and message
    /// change and the waiting task gets a heartbeat.
    pub async fn report_progress(
        &self,
        connector_id: &str,
        progress: Progress,
    ) -> Result<(), DomainError> {
        let work = self.replicate_work(connector_id, &progress.work_id).await?;
        self.renew_lease(connector_id, &progress.work_id).await?;
        let percent = progress.percent.min(100);
        let message = format!(
            "{} {percent}% ({} of {})",
            progress.stage,
            gib(progress.bytes_done),
            gib(progress.bytes_total)
        );
        let run = self
            .update_run(&work.job_id, &work.run_id, |r| {
                if r.workflow.manifest.is_some() {
                    // Late report after the upload completed: keep the later stages.
                    return Ok(None);
                }
                r.stage_details = Some(StageDetails {
                    stage: Some(progress.stage.clone()),
                    stage_progress: Some(format!("{percent}%")),
                });
                r.status_message = Some(message.clone());
                Ok(Some(true))
            })
            .await?;
        if let Some(token) = &run.workflow.upload_token {
            match self.workflows.send_task_heartbeat(token).await {
                Ok(()) | Err(WorkflowError::TaskGone(_)) => {}
                Err(e) => tracing::warn!(error = %e, "could not send the upload heartbeat"),
            }
        }
        Ok(())
    }

    /// A connector could not do a `REPLICATE` work item: the run fails with its message.
    pub async fn work_failed(
        &self,
        connector_id: &str,
        work_id: &str,
        message: &str,
    ) -> Result<(), DomainError> {
        let Ok(work) = self.replicate_work(connector_id, work_id).await else {
            return Ok(());
        };
        let (_, run) = match self.active_run(&work.job_id, &work.run_id).await {
            Ok(found) => found,
            Err(DomainError::OperationNotPermitted(_) | DomainError::JobNotFound(_)) => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        if let Some(token) = &run.value.workflow.upload_token {
            match self
                .workflows
                .send_task_failure(token, task_errors::UPLOAD_FAILED, message)
                .await
            {
                Ok(()) | Err(WorkflowError::TaskGone(_)) => {}
                Err(e) => {
                    return Err(DomainError::Store(StoreError::Unavailable {
                        message: e.to_string(),
                        source: None,
                    }))
                }
            }
        }
        Ok(())
    }

    /// A connector still reporting progress is still working on the item: its lease starts
    /// again, so PollWork does not hand a long upload out a second time while it runs. A lost
    /// race (a poll or another report wrote the item meanwhile) leaves the lease as fresh as
    /// that write made it, so it is not retried.
    async fn renew_lease(&self, connector_id: &str, work_id: &str) -> Result<(), DomainError> {
        let key = keys::work(connector_id, work_id);
        let Some(current) = self.service.read::<Work>(&key).await? else {
            return Ok(());
        };
        let mut work = current.value.clone();
        work.leased_on = Some(self.service.now());
        match self
            .service
            .store
            .write(put(key, &work, current.expect())?)
            .await
        {
            Ok(()) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn replicate_work(
        &self,
        connector_id: &str,
        work_id: &str,
    ) -> Result<ReplicationWork, DomainError> {
        let work = self
            .service
            .read::<Work>(&keys::work(connector_id, work_id))
            .await?
            .ok_or_else(|| {
                DomainError::InvalidParameter(format!(
                    "connector {connector_id} has no work item {work_id}"
                ))
            })?;
        if work.value.kind != WorkKind::Replicate {
            return Err(DomainError::InvalidParameter(format!(
                "work item {work_id} is not replication work"
            )));
        }
        serde_json::from_value(work.value.payload).map_err(|e| DomainError::Corrupt {
            key: work_id.to_string(),
            message: e.to_string(),
        })
    }

    // ---- scheduler -------------------------------------------------------------------------

    /// One pass of the scheduler: due runs are created (or recorded MISSED while a run is still
    /// going), pending runs get their execution, ended and long-paused jobs are deleted, lost
    /// manifest hand-overs are redone and the outbox is published. Safe to run from several
    /// places at once: every step is conditional or idempotent.
    pub async fn tick(&self) -> Result<TickReport, DomainError> {
        let mut report = TickReport::default();
        let now = self.service.now();
        let limits = self.service.config.limits.clone();
        let jobs = self.service.list_all::<ReplicationJob>(keys::JOB).await?;
        // Runs in progress after scheduling, to drive below: one listing serves both passes.
        let mut in_progress: Vec<(String, RunRef)> = Vec::new();
        for job in jobs {
            let j = &job.value;
            let id = j.replication_job_id.clone();
            let mut active = j.active_run.clone();
            let outcome: Result<(), DomainError> = async {
                if j.state == ReplicationJobState::PausedOnFailure {
                    if j.paused_on
                        .is_some_and(|t| now - t >= self.settings.paused_job_lifetime)
                    {
                        self.service.delete_job(&id).await?;
                        report.jobs_ended.push(id.clone());
                        active = None;
                    }
                    return Ok(());
                }
                if !accepts_runs(j.state) {
                    return Ok(());
                }
                if now - j.seed_replication_time >= limits.max_replication_lifetime
                    && j.active_run.is_none()
                {
                    self.service.delete_job(&id).await?;
                    report.jobs_ended.push(id.clone());
                    return Ok(());
                }
                if j.next_replication_run_start_time.is_some_and(|t| t <= now) {
                    match self.schedule_run(&id, now).await? {
                        Some((run, true)) => {
                            report.runs_created.push(run.replication_run_id.clone());
                            active = Some(run);
                        }
                        Some((run, false)) => report.runs_missed.push(run.replication_run_id),
                        None => {}
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = outcome {
                tracing::warn!(job_id = %id, error = %e, "scheduler could not handle job");
            }
            if let Some(run) = active {
                in_progress.push((id, run));
            }
        }
        // Runs waiting for their execution, and manifests not yet handed over.
        for (job_id, run) in in_progress {
            if let Err(e) = self.drive_run(&job_id, &run, &mut report).await {
                tracing::warn!(job_id = %job_id, error = %e, "scheduler could not drive run");
            }
        }
        self.publish_outbox().await;
        Ok(report)
    }

    async fn drive_run(
        &self,
        job_id: &str,
        active: &RunRef,
        report: &mut TickReport,
    ) -> Result<(), DomainError> {
        let run_id = &active.replication_run_id;
        let Some(run) = self
            .service
            .read::<ReplicationRun>(&keys::run(job_id, active.seq))
            .await?
        else {
            return Ok(());
        };
        let w = &run.value.workflow;
        if !w.execution_started {
            let input = json!({ "jobId": job_id, "runId": run_id });
            match self
                .workflows
                .start_execution(REPLICATION_RUN, run_id, &input)
                .await
            {
                Ok(_) | Err(WorkflowError::AlreadyExists(_)) => {}
                Err(e) => {
                    return Err(DomainError::Store(StoreError::Unavailable {
                        message: format!("starting the workflow of run {run_id}: {e}"),
                        source: None,
                    }))
                }
            }
            self.update_run(job_id, run_id, |r| {
                if r.workflow.execution_started {
                    return Ok(None);
                }
                r.workflow.execution_started = true;
                Ok(Some(false))
            })
            .await?;
            report.executions_started.push(run_id.clone());
        } else if w.manifest.is_some() && w.upload_token.is_some() && !w.upload_signalled {
            self.signal_upload(job_id, run_id).await?;
            report.uploads_resignalled += 1;
        } else if w.upload_token.is_some() && w.manifest.is_none() {
            // A notification lost to a crash or a slow listener: look for the manifest itself.
            let manifest = StagedObject {
                bucket: self.settings.staging_bucket.clone(),
                key: format!("{}manifest.json", self.staging_prefix(job_id, run_id)),
            };
            if matches!(self.staging.object_size(&manifest).await, Ok(Some(_))) {
                match self.upload_complete(&manifest.bucket, &manifest.key).await {
                    Ok(UploadOutcome::Accepted) => report.uploads_resignalled += 1,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(job_id, run_id, error = %e, "could not take the run's manifest")
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates the job's scheduled run when it is due: a new AUTOMATIC run, or a MISSED one
    /// when a run is still in progress (SMS skips the interval). Advances the next start time by
    /// whole intervals past `now`. Returns the run id and whether it will run.
    async fn schedule_run(
        &self,
        job_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<(RunRef, bool)>, DomainError> {
        let svc = &self.service;
        let run_id = svc.ids.new_id(crate::IdKind::ReplicationRun);
        retrying!(svc, job_id, async {
            let job = svc.live_job(job_id, DomainError::JobNotFound).await?;
            let mut j = job.value.clone();
            let Some(due) = j.next_replication_run_start_time.filter(|t| *t <= now) else {
                return Ok(None);
            };
            if !accepts_runs(j.state) {
                return Ok(None);
            }
            let runs = j.active_run.is_none();
            let seq = j.run_count + 1;
            let run = ReplicationRun {
                replication_run_id: run_id.clone(),
                state: if runs {
                    ReplicationRunState::Pending
                } else {
                    ReplicationRunState::Missed
                },
                run_type: ReplicationRunType::Automatic,
                stage_details: None,
                status_message: (!runs).then(|| {
                    "Missed: the previous run was still in progress; moved to the next interval"
                        .to_string()
                }),
                ami_id: None,
                scheduled_start_time: Some(due),
                completed_time: (!runs).then_some(now),
                description: None,
                encrypted: Some(j.encrypted),
                kms_key_id: j.kms_key_id.clone(),
                seq,
                workflow: Default::default(),
            };
            j.run_count = seq;
            if runs {
                j.active_run = Some(RunRef {
                    replication_run_id: run_id.clone(),
                    seq,
                });
            }
            j.next_replication_run_start_time = match (j.run_once, j.frequency) {
                (false, Some(hours)) if hours > 0 => {
                    let step = time::Duration::hours(i64::from(hours));
                    let mut next = due + step;
                    while next <= now {
                        next += step;
                    }
                    Some(next)
                }
                _ => None,
            };
            Service::embed_run(
                &mut j,
                &run,
                svc.config.limits.runs_embedded_in_job as usize,
            );
            let mut writes = vec![
                put(keys::run(job_id, seq), &run, Expect::Absent)?,
                put(keys::job(job_id), &j, job.expect())?,
            ];
            if let Some(c) = StateChange::of_run(job_id, &j.server_id, &run, now) {
                writes.push(c.write()?);
            }
            svc.store.transact(writes).await?;
            tracing::info!(job_id, run_id = %run_id, runs, "scheduled run");
            Ok(Some((
                RunRef {
                    replication_run_id: run_id.clone(),
                    seq,
                },
                runs,
            )))
        })
    }

    /// Publishes the outbox and deletes what the bus accepted. Failures stay for the next try.
    pub async fn publish_outbox(&self) {
        let _one_at_a_time = self.publishing.lock().await;
        let pending = match self.service.list_all::<StateChange>(keys::OUTBOX).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the event outbox");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        let mut changes: Vec<StateChange> = pending.iter().map(|p| p.value.clone()).collect();
        changes.sort_by_key(|c| c.time);
        let accepted = self.announcer.announce(&changes).await;
        for p in pending.iter().filter(|p| accepted.contains(&p.value.id)) {
            let _ = self
                .service
                .store
                .write(Write::Delete {
                    key: keys::outbox(&p.value.id),
                    expect: p.expect(),
                })
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASL: &str = include_str!("../../../../statemachines/replication-run.asl.json");

    fn error_names(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "ErrorEquals" {
                        out.extend(
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|e| e.as_str().map(String::from)),
                        );
                    } else if k == "Error" {
                        out.extend(v.as_str().map(String::from));
                    } else {
                        error_names(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| error_names(v, out)),
            _ => {}
        }
    }

    /// Every error name the state machine matches or raises (other than the States.* names
    /// the runtime produces) is one a task of ours can fail with: a typo in the ASL would
    /// otherwise silently never match.
    #[test]
    fn every_error_name_in_the_state_machine_is_produced_by_a_task() {
        let asl: Value = serde_json::from_str(ASL).expect("the state machine is JSON");
        let mut names = Vec::new();
        error_names(&asl, &mut names);
        assert!(names.len() > 10, "found {names:?}");
        let images = [
            ImagesError::NOT_FOUND,
            ImagesError::INVALID_IMAGE,
            ImagesError::INVALID_PARAMETER,
            ImagesError::IN_USE,
            ImagesError::TRANSIENT,
            ImagesError::INTERNAL,
        ];
        for name in names.iter().filter(|n| !n.starts_with("States.")) {
            assert!(
                task_errors::ALL.contains(&name.as_str()) || images.contains(&name.as_str()),
                "{name} appears in replication-run.asl.json but no task produces it"
            );
        }
    }

    /// Each `${…FunctionArn}` of the state machine names a function `handle_task` knows, and
    /// every function is used.
    #[test]
    fn substitutions_and_functions_match_the_state_machine() {
        let mut used = Vec::new();
        let mut rest = ASL;
        while let Some(start) = rest.find("${") {
            let end = rest[start..].find('}').expect("closed substitution") + start;
            used.push(&rest[start + 2..end]);
            rest = &rest[end..];
        }
        used.sort();
        used.dedup();
        let mut known: Vec<&str> = functions::SUBSTITUTIONS.iter().map(|(n, _)| *n).collect();
        known.sort();
        assert_eq!(used, known);
    }

    #[test]
    fn task_errors_from_domain_errors_keep_their_meaning() {
        let e: TaskError = DomainError::Contention("job".into()).into();
        assert_eq!(e.error, task_errors::TRANSIENT);
        let e: TaskError = DomainError::JobNotFound("gone".into()).into();
        assert_eq!(e.error, task_errors::RUN_NOT_ACTIVE);
        let e: TaskError = ImagesError::InvalidImage("not a vmdk".into()).into();
        assert_eq!(
            (e.error.as_str(), e.cause.as_str()),
            ("Images.InvalidImage", "not a vmdk")
        );
    }

    #[test]
    fn sizes_read_like_sms_status_messages() {
        assert_eq!(gib(3_328_599_654), "3.1 GiB");
        assert_eq!(gib(48 << 20), "48.0 MiB");
        assert_eq!(gib(0), "0.0 MiB");
    }

    #[test]
    fn device_names_put_the_root_disk_first() {
        assert_eq!(device_name(0), "/dev/sda1");
        assert_eq!(device_name(1), "/dev/sdb");
        assert_eq!(device_name(2), "/dev/sdc");
    }
}
