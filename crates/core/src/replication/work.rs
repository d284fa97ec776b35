//! Payloads of the work items a connector polls for its part of a run (the connector API
//! carries them as they are; `tern-api` re-exports them as its wire shapes).

use serde::{Deserialize, Serialize};

use super::staging::StagingLocation;

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
    /// Where the run's objects go; its methods give every key (see [`super::staging`]).
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

/// Payload of a `COMMIT_RUN` work item: the run succeeded, keep its block maps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitRunWork {
    pub job_id: String,
    pub run_id: String,
}

/// Payload of a `FORGET_JOB` work item: the job was deleted, so what the connector keeps for it
/// on the source VM (dirty bitmaps in qcow2 images, libvirt checkpoints) and in its state
/// directory (block maps, upload records) is to go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForgetJobWork {
    pub job_id: String,
    pub vm_id: String,
    /// The server's disks as the connector reported them (none when the server left the
    /// catalog: then only the state directory is cleared).
    #[serde(default)]
    pub disks: Vec<WorkDisk>,
}

/// The id of a deleted job's `FORGET_JOB` item.
pub fn forget_work_id(job_id: &str) -> String {
    format!("work-forget-{job_id}")
}

/// The id of a run's `REPLICATE` item (one per run, so queueing it again changes nothing).
pub fn replicate_work_id(run_id: &str) -> String {
    format!("work-{run_id}")
}

/// The id of a run's `COMMIT_RUN` item.
pub fn commit_work_id(run_id: &str) -> String {
    format!("work-commit-{run_id}")
}
