//! The [`Images`] port on EC2 and the EBS direct APIs.
//!
//! * A seed disk (a stream-optimized VMDK in staging) is imported with EC2 `ImportSnapshot`
//!   running as the `vmimport` service role; [`Images::describe_task`] reads
//!   `DescribeImportSnapshotTasks` ([`import`]). With [`SeedMethod::EbsDirect`] it is written
//!   through EBS direct instead, by the same WriteBlocks Map as a delta ([`seed`]).
//! * A delta (Tern's `TERNDLTA` object) becomes a child snapshot through EBS direct
//!   ([`delta`]): `StartSnapshot` with the parent, then the state machine's WriteBlocks Map
//!   writes ranges of about 2,000 blocks, one Lambda invocation each
//!   (`PutSnapshotBlock`, 32 in flight), and WaitForSnapshots' first
//!   [`Images::describe_task`] seals the snapshot with `CompleteSnapshot` (changed-block count
//!   and LINEAR checksum).
//! * Images are registered, listed (by Tern's tag), described and removed with EC2 ([`ami`]).
//!
//! Task ids say which kind they are: an import is EC2's `import-snap-…` id; a delta task is
//! `ebs-delta/<snapshot id>/<bucket>/<key>` (a seed through EBS direct `ebs-seed/…`), so that a WriteBlocks iteration finds its staged
//! object and snapshot without a lookup (EC2's describe calls are eventually consistent, and
//! an iteration may start within a second of `StartSnapshot`).

mod ami;
mod delta;
mod import;
mod seed;
mod vmdk;

use async_trait::async_trait;
use aws_smithy_types::DateTime;
use sha2::{Digest, Sha256};
use tern_core::images::{
    BlockRange, Image, Images, ImagesError, RegisterImage, Snapshot, StagedObject, TaskStatus,
};
use time::OffsetDateTime;

use crate::sdk::Failure;

/// EBS direct's only block size; Tern's block maps and deltas use the same.
pub const EBS_BLOCK_SIZE: u32 = 512 * 1024;

/// Tag keys Tern puts on what it creates.
pub mod tags {
    /// On images and snapshots: which Tern deployment made it (`list_images` filters on it).
    pub const MANAGED_BY: &str = "tern:managed-by";
    /// On a delta snapshot: the staged object it was built from (`s3://bucket/key`).
    pub const SOURCE: &str = "tern:source";
    /// On a delta snapshot: the idempotency token of its `StartSnapshot`.
    pub const CLIENT_TOKEN: &str = "tern:client-token";
    /// On a delta snapshot: how many blocks the delta changes.
    pub const CHANGED_BLOCKS: &str = "tern:changed-blocks";
    /// On a delta snapshot: the parent it was started from (EC2 does not report it).
    pub const PARENT: &str = "tern:parent-snapshot";
    /// On a delta snapshot: the exact disk size in bytes (EC2 reports whole GiB).
    pub const DISK_SIZE: &str = "tern:disk-size-bytes";
    /// On a delta snapshot: `CompleteSnapshot` was accepted, so later polls only wait.
    pub const SEALED: &str = "tern:sealed";
}

/// How a seed (a run's full disk, staged as a stream-optimized VMDK) becomes a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeedMethod {
    /// EC2 `ImportSnapshot` of the staged VMDK, run by VM Import as the vmimport role.
    #[default]
    ImportSnapshot,
    /// EBS direct: `StartSnapshot` without a parent, the VMDK's non-zero blocks written by the
    /// WriteBlocks Map ([`seed`]), sealed like a delta. No VM Import, minutes faster, and it
    /// works where VM Import is not offered.
    EbsDirect,
}

impl SeedMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SeedMethod::ImportSnapshot => "import-snapshot",
            SeedMethod::EbsDirect => "ebs-direct",
        }
    }

    /// `import-snapshot` or `ebs-direct` (the stack parameter's values).
    pub fn parse(s: &str) -> Option<Self> {
        [SeedMethod::ImportSnapshot, SeedMethod::EbsDirect]
            .into_iter()
            .find(|m| m.as_str() == s.trim())
    }
}

/// How the adapter runs; [`Ec2ImagesSettings::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2ImagesSettings {
    /// The VM Import service role `ImportSnapshot` runs as (its name, not its ARN).
    pub vmimport_role: String,
    /// Value of the [`tags::MANAGED_BY`] tag: tells this deployment's images from others'.
    pub managed_by: String,
    /// Changed blocks per WriteBlocks iteration: 2,000 blocks of 512 KiB are 1 GiB, about
    /// 2 s of EBS's 1,000 blocks/s per snapshot and well inside a Lambda's time.
    pub blocks_per_range: u64,
    /// `PutSnapshotBlock` calls in flight within one iteration.
    pub writes_in_flight: usize,
    /// How seeds become snapshots (default ImportSnapshot).
    pub seed_method: SeedMethod,
}

impl Ec2ImagesSettings {
    pub fn new(vmimport_role: impl Into<String>, managed_by: impl Into<String>) -> Self {
        Ec2ImagesSettings {
            vmimport_role: vmimport_role.into(),
            managed_by: managed_by.into(),
            blocks_per_range: 2_000,
            writes_in_flight: 32,
            seed_method: SeedMethod::default(),
        }
    }
}

/// EC2 + EBS direct + S3 (the staged deltas are read with ranged GETs).
#[derive(Debug, Clone)]
pub struct Ec2Images {
    ec2: aws_sdk_ec2::Client,
    ebs: aws_sdk_ebs::Client,
    s3: aws_sdk_s3::Client,
    settings: Ec2ImagesSettings,
}

impl Ec2Images {
    pub fn new(
        ec2: aws_sdk_ec2::Client,
        ebs: aws_sdk_ebs::Client,
        s3: aws_sdk_s3::Client,
        settings: Ec2ImagesSettings,
    ) -> Self {
        Ec2Images {
            ec2,
            ebs,
            s3,
            settings,
        }
    }
}

/// A task id, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TaskId {
    Import(String),
    Delta {
        snapshot_id: String,
        source: StagedObject,
    },
    /// A seed written through EBS direct.
    Seed {
        snapshot_id: String,
        source: StagedObject,
    },
}

const DELTA_PREFIX: &str = "ebs-delta/";
const SEED_PREFIX: &str = "ebs-seed/";

impl TaskId {
    fn delta(snapshot_id: &str, source: &StagedObject) -> String {
        format!(
            "{DELTA_PREFIX}{snapshot_id}/{}/{}",
            source.bucket, source.key
        )
    }

    fn seed(snapshot_id: &str, source: &StagedObject) -> String {
        format!(
            "{SEED_PREFIX}{snapshot_id}/{}/{}",
            source.bucket, source.key
        )
    }

    fn parse(id: &str) -> Result<TaskId, ImagesError> {
        let written = |rest: &str| {
            let mut parts = rest.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(snap), Some(bucket), Some(key))
                    if snap.starts_with("snap-") && !bucket.is_empty() && !key.is_empty() =>
                {
                    Some((
                        snap.to_string(),
                        StagedObject {
                            bucket: bucket.to_string(),
                            key: key.to_string(),
                        },
                    ))
                }
                _ => None,
            }
        };
        if let Some(rest) = id.strip_prefix(DELTA_PREFIX) {
            if let Some((snapshot_id, source)) = written(rest) {
                return Ok(TaskId::Delta {
                    snapshot_id,
                    source,
                });
            }
        } else if let Some(rest) = id.strip_prefix(SEED_PREFIX) {
            if let Some((snapshot_id, source)) = written(rest) {
                return Ok(TaskId::Seed {
                    snapshot_id,
                    source,
                });
            }
        } else if id.starts_with("import-snap-") {
            return Ok(TaskId::Import(id.to_string()));
        }
        Err(ImagesError::NotFound(format!("no snapshot task {id}")))
    }
}

/// An idempotency token for a call about `parts`: the same staged object (and parent) always
/// gives the same token, within EC2's 64-character limit.
fn client_token(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let hex: String = digest[..24].iter().map(|b| format!("{b:02x}")).collect();
    format!("tern-{hex}")
}

/// An SDK failure as the port's error: transient first, then `not_found` codes, else internal.
fn images_error(f: Failure, not_found: &[&str]) -> ImagesError {
    let code = f.code.as_deref().unwrap_or_default();
    if f.transient {
        ImagesError::Transient {
            message: f.message,
            source: None,
        }
    } else if not_found.contains(&code) || code.ends_with(".NotFound") {
        ImagesError::NotFound(f.message)
    } else {
        ImagesError::internal(f.message)
    }
}

fn to_time(t: Option<&DateTime>) -> OffsetDateTime {
    t.and_then(|t| OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[async_trait]
impl Images for Ec2Images {
    async fn start_import(
        &self,
        source: &StagedObject,
        description: &str,
    ) -> Result<String, ImagesError> {
        match self.settings.seed_method {
            SeedMethod::ImportSnapshot => self.import_snapshot(source, description).await,
            SeedMethod::EbsDirect => self.start_seed_snapshot(source, description).await,
        }
    }

    async fn start_apply_delta(
        &self,
        parent_snapshot_id: &str,
        source: &StagedObject,
        description: &str,
    ) -> Result<String, ImagesError> {
        self.start_delta_snapshot(parent_snapshot_id, source, description)
            .await
    }

    async fn delta_writes(&self, task_id: &str) -> Result<Vec<BlockRange>, ImagesError> {
        match TaskId::parse(task_id)? {
            TaskId::Import(_) => Ok(Vec::new()),
            TaskId::Delta { source, .. } => {
                let count = self.delta_footer(&source).await?.count;
                Ok(BlockRange::split(count, self.settings.blocks_per_range))
            }
            TaskId::Seed { source, .. } => {
                let layout = self.seed_layout(&source).await?;
                Ok(self.seed_ranges(&layout))
            }
        }
    }

    async fn write_delta_blocks(
        &self,
        task_id: &str,
        range: &BlockRange,
    ) -> Result<u64, ImagesError> {
        match TaskId::parse(task_id)? {
            TaskId::Import(id) => Err(ImagesError::InvalidParameter(format!(
                "task {id} is an import: it has no blocks to write"
            ))),
            TaskId::Delta {
                snapshot_id,
                source,
            } => self.write_range(&snapshot_id, &source, range).await,
            TaskId::Seed {
                snapshot_id,
                source,
            } => self.write_seed_range(&snapshot_id, &source, range).await,
        }
    }

    async fn describe_task(&self, task_id: &str) -> Result<TaskStatus, ImagesError> {
        match TaskId::parse(task_id)? {
            TaskId::Import(id) => self.describe_import(&id).await,
            TaskId::Delta {
                snapshot_id,
                source,
            } => self.describe_written(&snapshot_id, &source, false).await,
            TaskId::Seed {
                snapshot_id,
                source,
            } => self.describe_written(&snapshot_id, &source, true).await,
        }
    }

    async fn describe_snapshot(&self, snapshot_id: &str) -> Result<Snapshot, ImagesError> {
        self.snapshot(snapshot_id).await.map(|(s, _)| s)
    }

    async fn register_image(&self, request: &RegisterImage) -> Result<Image, ImagesError> {
        self.register(request).await
    }

    async fn describe_image(&self, image_id: &str) -> Result<Image, ImagesError> {
        self.image(image_id).await
    }

    async fn list_images(&self) -> Result<Vec<Image>, ImagesError> {
        self.tagged_images().await
    }

    async fn deregister_image(&self, image_id: &str) -> Result<(), ImagesError> {
        self.deregister(image_id).await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), ImagesError> {
        self.remove_snapshot(snapshot_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip_and_unknown_ones_are_not_found() {
        let source = StagedObject {
            bucket: "staging".into(),
            key: "runs/sms-job-1/sms-run-2/disk-0.delta".into(),
        };
        let id = TaskId::delta("snap-0123456789abcdef0", &source);
        assert_eq!(
            TaskId::parse(&id).unwrap(),
            TaskId::Delta {
                snapshot_id: "snap-0123456789abcdef0".into(),
                source: source.clone()
            }
        );
        let seed = TaskId::seed("snap-0123456789abcdef0", &source);
        assert!(seed.starts_with("ebs-seed/"), "{seed}");
        assert_eq!(
            TaskId::parse(&seed).unwrap(),
            TaskId::Seed {
                snapshot_id: "snap-0123456789abcdef0".into(),
                source: source.clone()
            }
        );
        assert_eq!(
            TaskId::parse("import-snap-1234").unwrap(),
            TaskId::Import("import-snap-1234".into())
        );
        for bad in [
            "",
            "task-1",
            "ebs-delta/snap-1/bucket",
            "ebs-delta/vol-1/b/k",
            "ebs-seed/snap-1/bucket",
        ] {
            assert!(
                matches!(TaskId::parse(bad), Err(ImagesError::NotFound(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn client_tokens_are_stable_distinct_and_short() {
        let a = client_token(&["import", "staging", "runs/a"]);
        assert_eq!(a, client_token(&["import", "staging", "runs/a"]));
        assert_ne!(a, client_token(&["import", "staging", "runs/b"]));
        // The separator keeps ("ab", "c") from meaning ("a", "bc").
        assert_ne!(client_token(&["ab", "c"]), client_token(&["a", "bc"]));
        assert!(a.len() <= 64, "{a}");
    }
}
