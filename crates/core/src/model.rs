//! Stored entities. Each carries every member of its SMS shape (spec §4) plus the few fields Tern
//! needs internally (marked "Tern:"). They are the JSON bodies of store items; the API crate
//! converts them to wire shapes and drops the internal fields. Timestamps are stored as RFC 3339
//! strings (readable in the store, full precision).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::enums::*;

/// A registered connector (SMS `Connector`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connector {
    pub connector_id: String,
    pub version: String,
    pub capability_list: Vec<ConnectorCapability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_manager_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_manager_type: Option<VmManagerType>,
    pub vm_manager_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub associated_on: OffsetDateTime,
    /// Tern: the name it registered with.
    pub name: String,
    /// Tern: last heartbeat (or registration); decides HEALTHY/UNHEALTHY.
    #[serde(with = "time::serde::rfc3339")]
    pub last_heartbeat_on: OffsetDateTime,
    /// Tern: the last error the connector reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Tern: set once DisassociateConnector ran.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub disassociated_on: Option<OffsetDateTime>,
}

impl Connector {
    /// HEALTHY while the last heartbeat is at most `unhealthy_after` old.
    pub fn status(
        &self,
        now: OffsetDateTime,
        unhealthy_after: std::time::Duration,
    ) -> ConnectorStatus {
        if self.disassociated_on.is_none() && now - self.last_heartbeat_on <= unhealthy_after {
            ConnectorStatus::Healthy
        } else {
            ConnectorStatus::Unhealthy
        }
    }
}

/// SMS `VmServerAddress`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmServerAddress {
    pub vm_manager_id: String,
    pub vm_id: String,
}

/// SMS `VmServer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmServer {
    pub vm_server_address: VmServerAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_manager_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_manager_type: Option<VmManagerType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_path: Option<String>,
}

/// One disk of a catalog server, as the connector reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// A catalog server (SMS `Server`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub server_id: String,
    pub server_type: ServerType,
    pub vm_server: VmServer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_job_terminated: Option<bool>,
    /// Tern: the connector that reported it last (and serves its replication).
    pub connector_id: String,
    /// Tern: catalog generation it belongs to (see `keys`).
    pub generation: u64,
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<OsType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection: Option<Value>,
    /// Tern: the application the connector's configuration puts the VM in (ImportAppCatalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// Tern: the import rules' findings (refusals and warnings) as of the last inventory
    /// report; GetServers and CreateReplicationJob evaluate them again with the current limits
    /// (see `service::preflight`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preflight: Vec<crate::service::preflight::Finding>,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen_on: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_on: OffsetDateTime,
    /// Tern: set when the connector's latest inventory no longer lists the VM; cleared when it
    /// reappears. Such a server stays in the catalog but cannot get a new replication job.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub vanished_on: Option<OffsetDateTime>,
}

impl Server {
    /// The server's job exists and is not terminated.
    pub fn has_live_job(&self) -> bool {
        self.replication_job_id.is_some() && self.replication_job_terminated != Some(true)
    }
}

/// SMS `ReplicationRunStageDetails`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_progress: Option<String>,
}

/// A replication run (SMS `ReplicationRun`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationRun {
    pub replication_run_id: String,
    pub state: ReplicationRunState,
    #[serde(rename = "type")]
    pub run_type: ReplicationRunType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_details: Option<StageDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub scheduled_start_time: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub completed_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// Tern: position in the job's run list (1 = first run); part of the run's key.
    pub seq: u64,
    /// Tern: where the run's workflow is (see `crate::replication`).
    #[serde(default, skip_serializing_if = "RunWorkflow::is_empty")]
    pub workflow: RunWorkflow,
}

/// Tern: a run's progress through the replication-run state machine, as far as the handlers
/// that meet outside it (upload complete, connector progress, the scheduler) need to know.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunWorkflow {
    /// The execution was started (its name is the run id).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub execution_started: bool,
    /// Whether this run uploads full disks (seed) or deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<bool>,
    /// The token WaitForUpload parks on; upload-complete and progress reports answer it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_token: Option<String>,
    /// The manifest, once its arrival in staging was seen (first notification wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Value>,
    /// The manifest was handed to the waiting task (a lost hand-over is redone by the
    /// scheduler's tick).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upload_signalled: bool,
    /// Snapshot ids the run produced, root disk first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot_ids: Vec<String>,
    /// Image tasks started for the run (Import / ApplyDelta), so that a deleted job's
    /// unfinished run can have their snapshots removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot_tasks: Vec<String>,
    /// What the connector said besides its progress (e.g. why a disk's changes were found by
    /// reading it whole); repeated in the run's final status message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl RunWorkflow {
    pub fn is_empty(&self) -> bool {
        *self == RunWorkflow::default()
    }
}

/// Tern: an image a job produced and still keeps (retention works on these, oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobImage {
    pub ami_id: String,
    pub run_id: String,
    pub snapshot_ids: Vec<String>,
}

/// Reference from a job to its run in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRef {
    pub replication_run_id: String,
    pub seq: u64,
}

/// A replication job (SMS `ReplicationJob`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationJob {
    pub replication_job_id: String,
    pub server_id: String,
    pub server_type: ServerType,
    pub vm_server: VmServer,
    #[serde(with = "time::serde::rfc3339")]
    pub seed_replication_time: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<u32>,
    pub run_once: bool,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_replication_run_start_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_type: Option<LicenseType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ami_id: Option<String>,
    pub state: ReplicationJobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub number_of_recent_amis_to_keep: u32,
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// The most recent runs (at most `limits.runs_embedded_in_job`), newest last; the full list
    /// lives in the run partition.
    pub replication_run_list: Vec<ReplicationRun>,
    /// Tern: the server's OS when the job was created (license rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<OsType>,
    /// Tern: the connector serving the job.
    pub connector_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_on: OffsetDateTime,
    /// Tern: runs created so far; the next run gets `run_count + 1` as its `seq`.
    pub run_count: u64,
    /// Tern: the run in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_run: Option<RunRef>,
    /// Tern: start times (unix seconds) of on-demand runs inside the current limit window.
    #[serde(default)]
    pub on_demand_run_times: Vec<i64>,
    /// Tern: failed runs since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Tern: snapshots of the last successful run, root disk first: the parents of the next
    /// incremental run. Empty until the seed run completes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latest_snapshot_ids: Vec<String>,
    /// Tern: the run whose snapshots are `latest_snapshot_ids` (the connector's block maps must
    /// be from the same run for a delta to apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_run_id: Option<String>,
    /// Tern: images the job produced and still keeps, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<JobImage>,
    /// Tern: when the job became PAUSED_ON_FAILURE (it is deleted `paused_job_lifetime` later).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub paused_on: Option<OffsetDateTime>,
    /// Tern: when the job's first run started (its seed run, scheduled or on demand). The
    /// job's lifetime (`limits.max_replication_lifetime`, R13: "from its first replication")
    /// counts from here, not from `seedReplicationTime`, which may lie years in the past.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub first_run_on: Option<OffsetDateTime>,
    /// Tern: when DeleteReplicationJob (or the scheduler) deleted the job; it is listed as
    /// DELETED for `deleted_job_retention` from then.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub deleted_on: Option<OffsetDateTime>,
}

impl ReplicationJob {
    /// When the job's lifetime started: its first run, or for a job stored before Tern
    /// recorded that, the later of its creation and its seed time once it has run.
    pub fn lifetime_start(&self) -> Option<OffsetDateTime> {
        self.first_run_on.or_else(|| {
            (self.run_count > 0).then(|| self.created_on.max(self.seed_replication_time))
        })
    }
}

/// One inventory request the catalog waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingImport {
    pub work_id: String,
    pub connector_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub queued_on: OffsetDateTime,
}

/// The server catalog's own state (one item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    /// Servers of the current catalog live in partition `SERVER#<generation>`.
    pub generation: u64,
    /// At least one inventory report was applied in this generation.
    pub imported: bool,
    /// This generation started with DeleteServerCatalog.
    pub deleted: bool,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_modified_on: Option<OffsetDateTime>,
    pub pending: Vec<PendingImport>,
    /// Imports that failed since the connector's last applied report: what GetServers shows
    /// as the catalog's status message (and EXPIRED while nothing was imported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ImportFailure>,
}

/// An inventory request a connector could not answer (it said why with ReportError).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportFailure {
    pub connector_id: String,
    pub work_id: String,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_on: OffsetDateTime,
}

impl Catalog {
    /// `ServerCatalogStatus` as of `now`: IMPORTING while an inventory request younger than
    /// `timeout` is unanswered; else, when an import failed (a connector reported an error, or
    /// did not answer within `timeout`), EXPIRED if nothing was imported in this generation and
    /// AVAILABLE (the previous inventory stands) otherwise; else AVAILABLE once imported, else
    /// DELETED or NOT_IMPORTED. [`Catalog::status_message`] says why.
    pub fn status(&self, now: OffsetDateTime, timeout: std::time::Duration) -> ServerCatalogStatus {
        let failed =
            !self.failures.is_empty() || self.pending.iter().any(|p| now - p.queued_on > timeout);
        if self.pending.iter().any(|p| now - p.queued_on <= timeout) {
            ServerCatalogStatus::Importing
        } else if self.imported {
            ServerCatalogStatus::Available
        } else if failed {
            ServerCatalogStatus::Expired
        } else if self.deleted {
            ServerCatalogStatus::Deleted
        } else {
            ServerCatalogStatus::NotImported
        }
    }

    /// Why the last import failed, one clause per connector, or `None`.
    pub fn status_message(
        &self,
        now: OffsetDateTime,
        timeout: std::time::Duration,
    ) -> Option<String> {
        let mut parts: Vec<String> = self
            .failures
            .iter()
            .map(|f| format!("import failed: connector {}: {}", f.connector_id, f.message))
            .collect();
        for p in self.pending.iter().filter(|p| now - p.queued_on > timeout) {
            parts.push(format!(
                "import failed: connector {} did not answer inventory request {} within {}s; check that it is running (tern connector run) and call ImportServerCatalog again",
                p.connector_id,
                p.work_id,
                timeout.as_secs()
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A work item queued for a connector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Work {
    pub work_id: String,
    pub connector_id: String,
    pub kind: WorkKind,
    pub payload: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub queued_on: OffsetDateTime,
    /// Handed out by PollWork at this time; handed out again once `work_lease` has passed.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub leased_on: Option<OffsetDateTime>,
}

/// Tern: what is left to undo of a run whose job was deleted while the run was in progress,
/// or of a run that failed (`TEARDOWN/<jobId>#<runId>`). Written in the transaction that
/// deletes the job or fails the run, and removed once every step is done, so a crash in
/// between leaves the record for the scheduler's sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Teardown {
    pub job_id: String,
    pub run_id: String,
    /// The connector the run's work item was queued for.
    pub connector_id: String,
    /// Image tasks the run started; their snapshots are deleted once the tasks end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot_tasks: Vec<String>,
    /// When the job was deleted, or the run failed.
    #[serde(with = "time::serde::rfc3339")]
    pub deleted_on: OffsetDateTime,
    /// The run failed (its job stays): its execution ends by itself and is not stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_failed: bool,
}
