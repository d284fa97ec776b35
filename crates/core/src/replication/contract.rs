//! The contract between `statemachines/replication-run.asl.json` and the task functions: the
//! functions' names, the error names the state machine's Retry/Catch lists match, and one
//! input and one output type per task state.
//!
//! Each input type is what the state's `Parameters` build from the state's input; each output
//! is what its `ResultPath` puts back. A test walks the state machine's data flow with these
//! types, so a renamed member on either side fails it. The AWS task handlers take and return
//! exactly these types.
//!
//! | state | function | input | output (ResultPath) |
//! |---|---|---|---|
//! | (execution) | — | [`RunInput`] | — |
//! | Prepare | [`functions::PREPARE`] | [`PrepareInput`] | [`PrepareOutput`] (`$.run`) |
//! | WaitForUpload | [`functions::WAIT_FOR_UPLOAD`] | [`WaitForUploadInput`] | [`WaitForUploadOutput`]; the task's result is the [`Manifest`] sent with its token (`$.upload`) |
//! | Import / ApplyDelta | [`functions::IMPORT`] / [`functions::APPLY_DELTA`] | [`ImportInput`] | [`ImportOutput`] (`$.started`) |
//! | WriteBlocks (Map over `$.started.writes`) | [`functions::WRITE_BLOCKS`] per item | [`WriteBlocksInput`] | [`WriteBlocksOutput`] (discarded) |
//! | WaitForSnapshots | [`functions::CHECK_SNAPSHOTS`] | [`CheckSnapshotsInput`] | [`CheckSnapshotsOutput`] (`$.snapshots`) |
//! | RegisterImage | [`functions::REGISTER_IMAGE`] | [`RegisterImageInput`] | [`Image`] (`$.image`) |
//! | Retain | [`functions::RETAIN`] | [`RetainInput`] | [`RetainOutput`] (`$.retained`) |
//! | Complete | [`functions::COMPLETE`] | [`CompleteInput`] | [`CompleteOutput`] (`$.completed`) |
//! | RecordFailure | [`functions::RECORD_FAILURE`] | [`RecordFailureInput`] | [`RecordFailureOutput`] (`$.failure`) |

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::manifest::{InvalidManifest, Manifest};
use crate::error::DomainError;
use crate::images::ImagesError;
use crate::staging::StagingError;
use crate::workflows::WorkflowError;

pub use super::manifest::ManifestDisk;

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
    /// The task's input does not have the shape of its contract type (the state machine and
    /// the function disagree, or the function name is unknown).
    pub const INVALID_INPUT: &str = "Tern.InvalidInput";
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
        INVALID_INPUT,
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
    pub const WRITE_BLOCKS: &str = "write-blocks";
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
        ("WriteBlocksFunctionArn", WRITE_BLOCKS),
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

pub type TaskResult<T> = std::result::Result<T, TaskError>;

impl From<DomainError> for TaskError {
    fn from(e: DomainError) -> Self {
        match e {
            // The image service's own names, so the ASL's Retry/Catch match the same error
            // whether a task called the port directly or through a use case.
            DomainError::Images(e) => e.into(),
            DomainError::Staging(e) => e.into(),
            DomainError::Workflows(e) => e.into(),
            e if e.is_transient() => TaskError::new(task_errors::TRANSIENT, e.to_string()),
            DomainError::JobNotFound(_) | DomainError::OperationNotPermitted(_) => {
                TaskError::new(task_errors::RUN_NOT_ACTIVE, e.to_string())
            }
            e => TaskError::new(task_errors::INTERNAL, e.to_string()),
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

impl From<InvalidManifest> for TaskError {
    fn from(e: InvalidManifest) -> Self {
        TaskError::new(task_errors::INVALID_MANIFEST, e.0)
    }
}

/// A task's input: deserialized from what the state machine passes, then checked for the
/// members that must not be empty.
pub trait TaskInput: DeserializeOwned {
    /// (member name, value) of every member that must be a non-empty string.
    fn required(&self) -> Vec<(&'static str, &str)>;

    /// The typed input, or `Tern.InvalidInput` naming what is wrong.
    fn from_value(input: &Value) -> TaskResult<Self> {
        let typed = Self::deserialize(input).map_err(|e| {
            TaskError::new(
                task_errors::INVALID_INPUT,
                format!("task input is malformed: {e}"),
            )
        })?;
        if let Some((name, _)) = typed.required().into_iter().find(|(_, v)| v.is_empty()) {
            return Err(TaskError::new(
                task_errors::INVALID_INPUT,
                format!("task input member {name} is empty"),
            ));
        }
        Ok(typed)
    }
}

macro_rules! run_input {
    ($($ty:ty),*) => {$(
        impl TaskInput for $ty {
            fn required(&self) -> Vec<(&'static str, &str)> {
                vec![("jobId", &self.job_id), ("runId", &self.run_id)]
            }
        }
    )*};
}

/// The input of an execution: the run it replicates (the execution's name is the run id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInput {
    pub job_id: String,
    pub run_id: String,
}

/// Prepare: `{jobId, runId}`.
pub type PrepareInput = RunInput;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareOutput {
    /// SeedOrIncremental chooses Import or ApplyDelta on it.
    pub seed: bool,
    pub staging_bucket: String,
    /// The run's own prefix (`<prefix>/<jobId>/<runId>/`).
    pub staging_prefix: String,
    /// WaitForUpload's HeartbeatSecondsPath.
    pub upload_heartbeat_seconds: u64,
    /// WaitForUpload's TimeoutSecondsPath.
    pub upload_timeout_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitForUploadInput {
    pub job_id: String,
    pub run_id: String,
    /// The token the upload-complete handler answers with the manifest.
    pub task_token: String,
}

impl TaskInput for WaitForUploadInput {
    fn required(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("jobId", &self.job_id),
            ("runId", &self.run_id),
            ("taskToken", &self.task_token),
        ]
    }
}

/// WaitForUpload's function answers at once with nothing; the state's result is the
/// [`Manifest`] the upload-complete handler sends with the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitForUploadOutput {}

/// Import and ApplyDelta: the manifest is WaitForUpload's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportInput {
    pub job_id: String,
    pub run_id: String,
    pub manifest: Manifest,
}

pub type ApplyDeltaInput = ImportInput;

/// One disk's snapshot task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotTask {
    pub index: usize,
    pub task_id: String,
}

/// One range of one disk's changed blocks, for one iteration of the WriteBlocks Map state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockWrite {
    /// The disk's index in the manifest.
    pub index: usize,
    pub task_id: String,
    pub first: u64,
    pub count: u64,
}

/// The snapshot tasks started, one per disk of the manifest, and the block ranges the
/// WriteBlocks Map state writes before WaitForSnapshots (empty where the image service writes
/// the blocks itself, and for imports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportOutput {
    pub tasks: Vec<SnapshotTask>,
    pub writes: Vec<BlockWrite>,
}

pub type ApplyDeltaOutput = ImportOutput;

/// One WriteBlocks iteration: the run (so that a deleted job stops writing) and the item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteBlocksInput {
    pub job_id: String,
    pub run_id: String,
    pub write: BlockWrite,
}

impl TaskInput for WriteBlocksInput {
    fn required(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("jobId", &self.job_id),
            ("runId", &self.run_id),
            ("write.taskId", &self.write.task_id),
        ]
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteBlocksOutput {
    pub blocks_written: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckSnapshotsInput {
    pub job_id: String,
    pub run_id: String,
    pub tasks: Vec<SnapshotTask>,
}

/// One disk's finished snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    pub index: usize,
    pub snapshot_id: String,
    /// GiB, as RegisterImage's block devices take it.
    pub volume_size: u64,
}

/// The run's snapshots in disk order (a JSON array).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckSnapshotsOutput {
    pub snapshots: Vec<SnapshotRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterImageInput {
    pub job_id: String,
    pub run_id: String,
    pub snapshots: Vec<SnapshotRef>,
}

/// The image RegisterImage made (its output, and the `image` of Retain and Complete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub image_id: String,
    /// Root disk first.
    pub snapshot_ids: Vec<String>,
}

pub type RegisterImageOutput = Image;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetainInput {
    pub job_id: String,
    pub run_id: String,
    pub image: Image,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetainOutput {
    /// The images retired, oldest first.
    pub deregistered: Vec<String>,
}

pub type CompleteInput = RetainInput;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteOutput {
    pub image_id: String,
}

/// What a Catch puts at its ResultPath: the error name and its cause (for a Lambda error, a
/// JSON document with `errorMessage` and `errorType`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaughtError {
    #[serde(rename = "Error", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(rename = "Cause", default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordFailureInput {
    pub job_id: String,
    pub run_id: String,
    #[serde(default)]
    pub error: CaughtError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordFailureOutput {
    /// False when there was nothing left to fail (the job was deleted, or the run had ended).
    pub recorded: bool,
    /// The run's statusMessage, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

run_input!(
    RunInput,
    ImportInput,
    CheckSnapshotsInput,
    RegisterImageInput,
    RetainInput,
    RecordFailureInput
);

#[cfg(test)]
mod tests;
