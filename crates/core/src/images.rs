//! The `Images` port: turn what a connector staged into snapshots, and snapshots into images.
//!
//! Shaped after what EC2 offers, so that the AWS adapter maps one call to one API family and the
//! local image service (`tern_local::images`) behaves the same way:
//!
//! | port | AWS | local |
//! |---|---|---|
//! | [`Images::start_import`] | ImportSnapshot of a stream-optimized VMDK in S3 | import into the block store |
//! | [`Images::start_apply_delta`] | StartSnapshot(ParentSnapshotId) + PutSnapshotBlock + CompleteSnapshot | child block map from the parent's |
//! | [`Images::delta_writes`], [`Images::write_delta_blocks`] | PutSnapshotBlock, one `WriteBlocks` Map iteration per range | none: the task writes its own blocks |
//! | [`Images::describe_task`] | DescribeImportSnapshotTasks / CompleteSnapshot + DescribeSnapshots | the task table |
//! | [`Images::register_image`] | RegisterImage | an image record |
//! | [`Images::deregister_image`], [`Images::delete_snapshot`] | DeregisterImage, DeleteSnapshot | records removed, unreferenced blocks freed |
//!
//! Both start calls return a task id at once and do the work in the background: an import takes
//! minutes to an hour, far longer than one Lambda invocation, so a state machine polls
//! [`Images::describe_task`] with backoff until the task is completed or failed. Both are
//! idempotent for the same staged object and parent, because the state machine's task that calls
//! them may run more than once.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where a connector uploaded a run's data: an object in the staging bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StagedObject {
    pub bucket: String,
    pub key: String,
}

impl std::fmt::Display for StagedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// A completed snapshot of one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `snap-` + 17 hex digits.
    pub snapshot_id: String,
    /// The snapshot a delta was applied onto; `None` for an imported seed.
    pub parent_snapshot_id: Option<String>,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Exact size of the disk in bytes (EC2 reports whole GiB; see [`Snapshot::volume_size_gib`]).
    pub volume_size_bytes: u64,
    /// Bytes of the disk that hold data, i.e. are not all zeros (EC2's
    /// `FullSnapshotSizeInBytes`).
    pub stored_bytes: u64,
}

impl Snapshot {
    /// The smallest volume, in GiB, that holds this snapshot: what EC2 calls its `VolumeSize`
    /// and the least a [`BlockDevice::volume_size`] over it may ask for.
    pub fn volume_size_gib(&self) -> u64 {
        self.volume_size_bytes.div_ceil(1 << 30).max(1)
    }
}

/// A slice of an apply-delta task's changed blocks: positions `first .. first + count` in the
/// delta's ascending list of changed blocks (not block numbers, so that every range holds the
/// same number of blocks to write however the changes are spread over the disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockRange {
    pub first: u64,
    pub count: u64,
}

impl BlockRange {
    /// `total` changed blocks cut into ranges of at most `per_range` (≥ 1) blocks, in order.
    pub fn split(total: u64, per_range: u64) -> Vec<BlockRange> {
        let per_range = per_range.max(1);
        (0..total.div_ceil(per_range))
            .map(|i| BlockRange {
                first: i * per_range,
                count: per_range.min(total - i * per_range),
            })
            .collect()
    }
}

/// Progress or outcome of an import or apply-delta task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TaskStatus {
    /// Queued or running. Bytes are those actually processed so far, so the percentage is true.
    Active {
        progress_percent: u8,
        bytes_done: u64,
        bytes_total: u64,
        message: String,
    },
    Completed {
        snapshot: Snapshot,
    },
    /// The task will not complete. `kind` says why in the terms Step Functions matches on
    /// ([`TaskFailure::error_type`]); `message` is for people and is surfaced verbatim.
    Failed {
        kind: TaskFailure,
        message: String,
    },
}

/// Why a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskFailure {
    /// The staged data is not what the call said it is (not a stream-optimized VMDK, a damaged
    /// delta, a delta that does not fit its parent). Retrying with the same data fails again.
    InvalidImage,
    /// The staged object (or the parent snapshot) disappeared before the task read it.
    NotFound,
    /// Anything else (I/O errors, a full disk). Starting the task again may succeed.
    Internal,
}

impl TaskFailure {
    /// The same name [`ImagesError::error_type`] gives the matching error.
    pub fn error_type(self) -> &'static str {
        match self {
            TaskFailure::InvalidImage => ImagesError::INVALID_IMAGE,
            TaskFailure::NotFound => ImagesError::NOT_FOUND,
            TaskFailure::Internal => ImagesError::INTERNAL,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskFailure::InvalidImage => "invalid_image",
            TaskFailure::NotFound => "not_found",
            TaskFailure::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            TaskFailure::InvalidImage,
            TaskFailure::NotFound,
            TaskFailure::Internal,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl TaskStatus {
    /// For a failed task, the error a caller raises so that Retry/Catch lists match it.
    pub fn failure(&self) -> Option<ImagesError> {
        match self {
            TaskStatus::Failed { kind, message } => Some(match kind {
                TaskFailure::InvalidImage => ImagesError::InvalidImage(message.clone()),
                TaskFailure::NotFound => ImagesError::NotFound(message.clone()),
                TaskFailure::Internal => ImagesError::internal(message.clone()),
            }),
            _ => None,
        }
    }
}

/// CPU architecture of an image (EC2 `Architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Architecture {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "arm64")]
    Arm64,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Architecture::X86_64, Architecture::Arm64]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// How an image boots (EC2 `BootMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BootMode {
    #[serde(rename = "legacy-bios")]
    LegacyBios,
    #[serde(rename = "uefi")]
    Uefi,
    #[serde(rename = "uefi-preferred")]
    UefiPreferred,
}

impl BootMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BootMode::LegacyBios => "legacy-bios",
            BootMode::Uefi => "uefi",
            BootMode::UefiPreferred => "uefi-preferred",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            BootMode::LegacyBios,
            BootMode::Uefi,
            BootMode::UefiPreferred,
        ]
        .into_iter()
        .find(|b| b.as_str() == s)
    }
}

/// One disk of an image (EC2 `BlockDeviceMapping` with an `Ebs` member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// e.g. `/dev/sda1` for the root disk, `/dev/sdb` for the next.
    pub device_name: String,
    pub snapshot_id: String,
    /// Size of the volume in GiB, as EC2's `VolumeSize`: at least the snapshot's
    /// [`Snapshot::volume_size_gib`].
    pub volume_size: u64,
    pub delete_on_termination: bool,
}

/// What [`Images::register_image`] needs (EC2 RegisterImage, HVM, EBS-backed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterImage {
    /// Unique among registered images; 3–128 characters of letters, digits and `()[] ./-'@_`
    /// (EC2's rule, so a name valid locally is valid on AWS).
    pub name: String,
    pub description: String,
    /// Root disk first: its device name becomes the image's root device name.
    pub block_devices: Vec<BlockDevice>,
    pub architecture: Architecture,
    pub boot_mode: BootMode,
    pub ena_support: bool,
}

/// A registered machine image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `ami-` + 17 hex digits.
    pub image_id: String,
    pub name: String,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub architecture: Architecture,
    pub boot_mode: BootMode,
    pub ena_support: bool,
    pub root_device_name: String,
    pub block_devices: Vec<BlockDevice>,
}

type Source = Box<dyn std::error::Error + Send + Sync>;

/// Everything an `Images` call can fail with. Messages are written for the person reading the
/// run's status; [`ImagesError::error_type`] is the stable name Step Functions matches.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// No such task, snapshot, image or staged object.
    #[error("{0}")]
    NotFound(String),
    /// The staged data is unusable; the message says what is wrong with it.
    #[error("{0}")]
    InvalidImage(String),
    /// The request itself is wrong: a staged key leaving the staging area, an image name
    /// taken by another image, a volume smaller than its snapshot.
    #[error("{0}")]
    InvalidParameter(String),
    /// The snapshot is still used by a registered image or by a task building on it.
    #[error("{0}")]
    InUse(String),
    /// Throttled or busy; the same call may succeed later.
    #[error("{message}")]
    Transient {
        message: String,
        #[source]
        source: Option<Source>,
    },
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Source>,
    },
}

impl ImagesError {
    pub const NOT_FOUND: &'static str = "Images.NotFound";
    pub const INVALID_IMAGE: &'static str = "Images.InvalidImage";
    pub const INVALID_PARAMETER: &'static str = "Images.InvalidParameter";
    pub const IN_USE: &'static str = "Images.InUse";
    pub const TRANSIENT: &'static str = "Images.Transient";
    pub const INTERNAL: &'static str = "Images.Internal";

    /// The fixed name Step Functions Retry/Catch `ErrorEquals` lists match.
    pub fn error_type(&self) -> &'static str {
        match self {
            ImagesError::NotFound(_) => Self::NOT_FOUND,
            ImagesError::InvalidImage(_) => Self::INVALID_IMAGE,
            ImagesError::InvalidParameter(_) => Self::INVALID_PARAMETER,
            ImagesError::InUse(_) => Self::IN_USE,
            ImagesError::Transient { .. } => Self::TRANSIENT,
            ImagesError::Internal { .. } => Self::INTERNAL,
        }
    }

    /// Whether the same call may succeed if made again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ImagesError::Transient { .. })
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ImagesError::Internal {
            message: message.into(),
            source: None,
        }
    }

    pub fn internal_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ImagesError::Internal {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn transient_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ImagesError::Transient {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// Snapshots and machine images (ARCHITECTURE.md, "Image").
#[async_trait]
pub trait Images: Send + Sync {
    /// Starts importing a stream-optimized VMDK (a seed run) as a new snapshot. Returns the task
    /// id; the same staged object always returns the same task, whatever its state.
    async fn start_import(
        &self,
        source: &StagedObject,
        description: &str,
    ) -> Result<String, ImagesError>;

    /// Starts building a new snapshot from `parent_snapshot_id` with a Tern delta object
    /// (`tern_disk::delta` format) applied: the changed blocks written, blocks that became zero
    /// cleared, the size taken from the delta. Idempotent for the same (parent, staged object).
    async fn start_apply_delta(
        &self,
        parent_snapshot_id: &str,
        source: &StagedObject,
        description: &str,
    ) -> Result<String, ImagesError>;

    /// The block ranges of an apply-delta task that the caller must write with
    /// [`Images::write_delta_blocks`] (one state machine Map iteration each) before the task
    /// can complete. Empty for a service that writes a task's blocks itself (the local one) and
    /// for import tasks.
    async fn delta_writes(&self, task_id: &str) -> Result<Vec<BlockRange>, ImagesError> {
        let _ = task_id;
        Ok(Vec::new())
    }

    /// Writes the blocks of one range returned by [`Images::delta_writes`]; returns how many
    /// were written. Safe to run again (a block written twice holds the same bytes). A service
    /// whose `delta_writes` is always empty is never asked.
    async fn write_delta_blocks(
        &self,
        task_id: &str,
        range: &BlockRange,
    ) -> Result<u64, ImagesError> {
        let _ = range;
        Err(ImagesError::InvalidParameter(format!(
            "task {task_id} has no block ranges to write: this image service writes a delta's blocks itself"
        )))
    }

    /// [`ImagesError::NotFound`] for an unknown task, and for a completed one whose snapshot
    /// has been deleted since. For a task with [`Images::delta_writes`], called only once every
    /// range is written: the first call seals the snapshot.
    async fn describe_task(&self, task_id: &str) -> Result<TaskStatus, ImagesError>;

    async fn describe_snapshot(&self, snapshot_id: &str) -> Result<Snapshot, ImagesError>;

    /// Registers an image over completed snapshots. Registering the same name over the same
    /// disks again returns the existing image, so a retried state returns the same AMI.
    async fn register_image(&self, request: &RegisterImage) -> Result<Image, ImagesError>;

    async fn describe_image(&self, image_id: &str) -> Result<Image, ImagesError>;

    /// Every registered image, oldest first.
    async fn list_images(&self) -> Result<Vec<Image>, ImagesError>;

    /// Removes the image record; its snapshots stay. Succeeds if the image is already gone.
    async fn deregister_image(&self, image_id: &str) -> Result<(), ImagesError>;

    /// Deletes a snapshot. Succeeds if it is already gone; refuses with
    /// [`ImagesError::InUse`] while a registered image uses it.
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), ImagesError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_are_distinct_and_stable() {
        let errors = [
            ImagesError::NotFound("x".into()),
            ImagesError::InvalidImage("x".into()),
            ImagesError::InvalidParameter("x".into()),
            ImagesError::InUse("x".into()),
            ImagesError::Transient {
                message: "x".into(),
                source: None,
            },
            ImagesError::internal("x"),
        ];
        let names: Vec<_> = errors.iter().map(ImagesError::error_type).collect();
        assert_eq!(
            names,
            [
                "Images.NotFound",
                "Images.InvalidImage",
                "Images.InvalidParameter",
                "Images.InUse",
                "Images.Transient",
                "Images.Internal"
            ]
        );
        assert!(errors[4].is_retryable() && !errors[5].is_retryable());
    }

    #[test]
    fn a_failed_task_raises_the_error_named_by_its_kind() {
        for kind in [
            TaskFailure::InvalidImage,
            TaskFailure::NotFound,
            TaskFailure::Internal,
        ] {
            let status = TaskStatus::Failed {
                kind,
                message: "staged object is not a VMDK".into(),
            };
            let err = status.failure().expect("a failed task has an error");
            assert_eq!(err.error_type(), kind.error_type());
            assert_eq!(err.to_string(), "staged object is not a VMDK");
            assert_eq!(TaskFailure::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn block_ranges_cover_every_changed_block_once() {
        let ranges = BlockRange::split(4_001, 2_000);
        assert_eq!(
            ranges,
            [
                BlockRange {
                    first: 0,
                    count: 2_000
                },
                BlockRange {
                    first: 2_000,
                    count: 2_000
                },
                BlockRange {
                    first: 4_000,
                    count: 1
                },
            ]
        );
        assert!(BlockRange::split(0, 2_000).is_empty());
        assert_eq!(
            BlockRange::split(3, 0).len(),
            3,
            "a zero size means one block each"
        );
    }

    #[test]
    fn volume_size_rounds_up_to_whole_gib() {
        let mut s = Snapshot {
            snapshot_id: "snap-0".into(),
            parent_snapshot_id: None,
            description: String::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            volume_size_bytes: 10 << 20,
            stored_bytes: 0,
        };
        assert_eq!(s.volume_size_gib(), 1);
        s.volume_size_bytes = (8 << 30) + 512;
        assert_eq!(s.volume_size_gib(), 9);
    }
}
