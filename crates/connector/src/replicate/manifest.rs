//! The run manifest, written with one PutObject after every disk object of the run is
//! complete, under the key the work item's [`StagingLocation`](tern_api::connector::StagingLocation)
//! gives (`<prefix>/<jobId>/<runId>/manifest.json`; the disks' keys come from it too). Its arrival is the "upload complete" signal,
//! so it lists everything the import side needs and nothing it has to discover.
//!
//! ```json
//! {
//!   "formatVersion": 1,
//!   "jobId": "sms-job-…", "runId": "sms-run-…", "serverId": "s-…",
//!   "disks": [{
//!     "index": 0,
//!     "source": "file /srv/images/web01.qcow2",
//!     "sourceFormat": "qcow2", "sourceVariant": "v3",
//!     "virtualSize": 10737418240,
//!     "kind": "seed-vmdk",
//!     "key": "runs/sms-job-…/sms-run-…/disk-0.vmdk",
//!     "size": 1234567, "sha256": "…hex…",
//!     "partSize": 26214400, "parts": 1,
//!     "bytesUploaded": 1234567
//!   }, {
//!     "index": 1, "kind": "delta", "baseRunId": "sms-run-…",
//!     "blockSize": 524288, "changedBlocks": 12, "zeroBlocks": 2, "dataBytes": 5242880,
//!     …
//!   }]
//! }
//! ```

use serde::{Deserialize, Serialize};

/// Version of the manifest layout; readers refuse versions they do not know.
pub const FORMAT_VERSION: u32 = 1;

/// What a disk's object holds; the control plane's own definition, so that both sides read
/// the same names.
pub use tern_api::connector::ObjectKind;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    pub job_id: String,
    pub run_id: String,
    pub server_id: String,
    pub disks: Vec<DiskManifest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskManifest {
    /// Position of the disk in the VM (0 is the boot disk).
    pub index: usize,
    /// Where the connector read the disk from, for people.
    pub source: String,
    /// The container format read (`raw`, `qcow2`, `vmdk`, `vhd`, `vhdx`) and its variant.
    pub source_format: String,
    pub source_variant: String,
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    pub kind: ObjectKind,
    /// The object's key in the staging bucket.
    pub key: String,
    /// The object's size in bytes and the SHA-256 of all of its bytes (hex).
    pub size: u64,
    pub sha256: String,
    pub part_size: u64,
    pub parts: u32,
    /// Bytes put on the wire for this object over every attempt of the run, parts sent again
    /// after a failure included (so it can exceed `size`; parts kept from an interrupted
    /// attempt are counted once, when they were sent).
    pub bytes_uploaded: u64,
    /// Deltas only: the run whose image the delta applies onto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_run_id: Option<String>,
    /// Deltas only: block size, changed blocks (all of them, including those that became
    /// zero), blocks that became zero (no data stored, must be written as zeros), and bytes of
    /// block data stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_blocks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_blocks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes: Option<u64>,
}
