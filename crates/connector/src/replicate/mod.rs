//! Replication runs: read each disk of a server, upload what the run needs to the staging
//! bucket, and write the run's manifest last.
//!
//! * A **seed** (the job's first run, no kept block map, or `seed: true`) uploads the whole disk
//!   as a stream-optimized VMDK, streamed straight into an S3 multipart upload.
//! * An **incremental** run uploads a `TERNDLTA` delta of the blocks changed since the block map
//!   of the last *confirmed* run.
//! * Each run's new block maps stay pending until the control plane confirms the run
//!   ([`commit_run`]); a failed run leaves the kept maps alone, so the next delta is still
//!   relative to the last image that exists.
//! * Uploads resume after a crash or a network cut: the object writers are deterministic, so a
//!   rerun regenerates the stream and skips the parts S3 already has, after checking that
//!   their bytes are the same.
//!
//! See `README.md` in this crate for the state directory, the manifest and the options.

pub mod manifest;
pub mod prepared;
mod produce;
mod state;
pub(crate) mod stream;
mod upload;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_disk::blockmap::{BlockMap, BLOCK_SIZE};
use tern_disk::{DiskError, Format, OpenOptions, VirtualDisk};
use tokio::sync::mpsc;

use crate::changed::{self, ChangedBlocks, Changes};
use crate::ova::{self, OvaError};
pub use manifest::{DiskManifest, Manifest, ObjectKind};
pub use prepared::{PreparedObject, PreparedRun};
pub(crate) use produce::take_map;
use produce::{prepare_changes, produce, SourceRead};
use state::JobState;
pub(crate) use state::{read_json, write_atomic};
use stream::LimitExceeded;
use upload::{Limiter, PartCounts, Target};

/// S3's smallest part (except the last) and largest part.
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3 allows 10,000 parts; sizing for 9,000 leaves room for a regenerated stream that came out
/// slightly larger than the estimate.
const PART_BUDGET: u64 = 9_000;

/// One replication run of one server, as the control plane hands it to the connector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicationWork {
    pub job_id: String,
    pub run_id: String,
    pub server_id: String,
    /// The server's disks, boot disk first.
    pub disks: Vec<DiskSource>,
    pub staging: Staging,
    /// Upload every disk in full even when a block map of an earlier run is kept.
    #[serde(default)]
    pub seed: bool,
}

/// Where run objects go: the control plane's own type, whose methods give every key of a run
/// (`s3://<bucket>/<prefix>/<job_id>/<run_id>/…`), so the connector writes exactly where the
/// upload-complete handler looks.
pub use tern_api::connector::StagingLocation as Staging;

/// Where to read one disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum DiskSource {
    /// A disk image file (raw, qcow2, VMDK, VHD, VHDX; detected from content unless stated).
    #[serde(rename_all = "camelCase")]
    File {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<Format>,
        /// qcow2 backing files, nearest first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        backing_chain: Vec<PathBuf>,
    },
    /// The `disk`-th disk (in DiskSection order, from 0) of an OVA archive, read in place.
    #[serde(rename_all = "camelCase")]
    Ova { path: PathBuf, disk: usize },
    /// Disk `target` (`vda`) of libvirt domain `domain`: read with the domain's other disks
    /// through a backup ([`crate::libvirt`]), which turns them into [`DiskSource::Prepared`].
    #[serde(rename_all = "camelCase")]
    Libvirt { domain: String, target: String },
    /// The disk with device key `key` of vSphere VM `vm` (`vm-42`): read with the VM's other
    /// disks from a snapshot ([`crate::vsphere`]), which turns them into [`DiskSource::Prepared`].
    #[serde(rename_all = "camelCase")]
    Vsphere { vm: String, key: i32 },
    /// An object made before the upload ([`prepared`]): uploaded as it is.
    Prepared(Box<PreparedObject>),
}

impl DiskSource {
    fn describe(&self) -> String {
        match self {
            DiskSource::File { path, .. } => format!("file {}", path.display()),
            DiskSource::Ova { path, disk } => format!("ova {} disk {disk}", path.display()),
            DiskSource::Libvirt { domain, target } => format!("libvirt {domain}/{target}"),
            DiskSource::Vsphere { vm, key } => format!("vsphere {vm} disk {key}"),
            DiskSource::Prepared(p) => p.what.clone(),
        }
    }
}

/// The one hypervisor VM (`what`: "libvirt domain") whose disks `disks` are, as `owner` names
/// a disk's VM; `None` when no disk is one; an error when the disks mix VMs or kinds.
pub(crate) fn one_owner<'a>(
    disks: &'a [DiskSource],
    what: &str,
    owner: impl Fn(&'a DiskSource) -> Option<&'a String>,
) -> Result<Option<String>, ReplicateError> {
    let names: Vec<Option<&String>> = disks.iter().map(owner).collect();
    match names.first() {
        None | Some(None) if names.iter().all(Option::is_none) => Ok(None),
        Some(Some(first)) if names.iter().all(|n| n == &Some(*first)) => Ok(Some((*first).clone())),
        _ => Err(ReplicateError::InvalidWork(format!(
            "a server's disks must all be disks of one {what}, or none; re-import the server catalog"
        ))),
    }
}

/// Retry policy for S3 calls: exponential backoff with full jitter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicateOptions {
    /// Multipart part size in bytes (5 MiB to 5 GiB). Raised automatically for disks so large
    /// that the object would need more than 9,000 parts.
    pub part_size: u64,
    /// Average upload rate cap in bytes per second; `None` for no cap.
    pub bandwidth_limit: Option<u64>,
    /// Largest delta object an incremental run may upload.
    pub max_delta_bytes: u64,
    pub retry: RetryPolicy,
    /// Fault injection for tests and drills: fail the run with [`ReplicateError::Interrupted`]
    /// after this many parts were sent by this call, as if the process had been killed.
    pub fail_after_parts: Option<u64>,
    /// How incremental runs find changed blocks (the source's `changed_blocks`).
    pub changed_blocks: ChangedBlocks,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            part_size: 25 << 20,
            bandwidth_limit: None,
            max_delta_bytes: 1 << 40,
            retry: RetryPolicy::default(),
            fail_after_parts: None,
            changed_blocks: ChangedBlocks::default(),
        }
    }
}

/// What a run needs besides the work item.
#[derive(Clone, Debug)]
pub struct ReplicateContext {
    pub s3: aws_sdk_s3::Client,
    /// The connector's state directory (see the module docs for what goes in `jobs/`).
    pub state_dir: PathBuf,
    pub options: ReplicateOptions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    Preparing,
    Uploading,
    Completed,
}

/// A progress report. `bytes_done` counts object bytes S3 holds for this run (parts sent now
/// and parts kept from an interrupted attempt). `percent` is the share of the server's virtual
/// disk bytes whose data is in the bucket: object sizes are only known once a disk's stream has
/// been generated, so the disks' sizes are the only true denominator during the upload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub stage: Stage,
    /// The disk being uploaded, during `Uploading`.
    pub disk: Option<usize>,
    pub percent: f64,
    pub bytes_done: u64,
    /// Total object bytes of the run, once every disk's object is complete.
    pub bytes_total: Option<u64>,
    /// Virtual bytes of all the server's disks (0 until the disks are opened): the
    /// denominator of `percent`.
    pub virtual_total: u64,
    /// What the run's status message should also say: why a disk's changes are found by
    /// reading it whole, when the bitmap could not be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Progress {
    /// A `Preparing` report (before any byte is uploaded), saying `note`.
    pub fn preparing(note: Option<String>) -> Progress {
        Progress {
            stage: Stage::Preparing,
            disk: None,
            percent: 0.0,
            bytes_done: 0,
            bytes_total: None,
            virtual_total: 0,
            note,
        }
    }
}

/// Refuses work for a run that is already confirmed (its maps are the kept ones): redoing it
/// would make a second image of the same run.
pub(crate) fn ensure_uncommitted(
    state_dir: &Path,
    work: &ReplicationWork,
) -> Result<(), ReplicateError> {
    if committed_run(state_dir, &work.job_id)?.as_deref() == Some(work.run_id.as_str()) {
        return Err(ReplicateError::AlreadyCommitted {
            job_id: work.job_id.clone(),
            run_id: work.run_id.clone(),
        });
    }
    Ok(())
}

/// What one disk's upload did in this call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskOutcome {
    pub index: usize,
    pub parts_sent: u64,
    pub parts_skipped: u64,
    pub bytes_sent: u64,
    pub bytes_skipped: u64,
    /// How the disk's changes were found, and why the bitmap was not used when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
    /// Bytes of the virtual disk read from the source in this call.
    #[serde(default)]
    pub source_bytes_read: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOutcome {
    pub manifest_key: String,
    pub manifest: Manifest,
    pub disks: Vec<DiskOutcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("invalid replication work: {0}")]
    InvalidWork(String),
    #[error("invalid replication options: {0}")]
    InvalidOptions(String),
    #[error("disk {index} ({what}): {source}")]
    Disk {
        index: usize,
        what: String,
        #[source]
        source: DiskError,
    },
    #[error("disk {index}: {source}")]
    Ova {
        index: usize,
        #[source]
        source: OvaError,
    },
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is damaged: {detail}")]
    StateCorrupt { path: PathBuf, detail: String },
    #[error("S3 {operation} failed: {message}")]
    S3 {
        operation: &'static str,
        /// The S3 error code (`AccessDenied`, `SlowDown`, …) when S3 answered with one.
        code: Option<String>,
        retryable: bool,
        message: String,
    },
    #[error(
        "disk {index}: the delta is larger than max_delta_bytes ({limit} bytes): too much of the \
         disk changed for an incremental run. Start a new seed (recreate the replication job, or \
         send the work with seed = true) or raise max_delta_bytes"
    )]
    DeltaTooLarge { index: usize, limit: u64 },
    #[error(
        "interrupted after sending {parts_sent} parts (fail_after_parts); run again to resume"
    )]
    Interrupted { parts_sent: u64 },
    #[error("run {run_id} of job {job_id} has no uploaded, unconfirmed block maps to commit")]
    UnknownRun { job_id: String, run_id: String },
    #[error("run {run_id} of job {job_id} was already confirmed; a new run needs a new run id")]
    AlreadyCommitted { job_id: String, run_id: String },
    #[error(
        "disk {index}: changed_blocks = \"bitmap\" but the dirty bitmap cannot be used: {reason}"
    )]
    ChangedBlocks { index: usize, reason: String },
    /// The hypervisor could not give the run's point in time (the message names the VM and
    /// what to do).
    #[error("{0}")]
    Hypervisor(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ReplicateError {
    /// True for failures that a later attempt may not meet (network, throttling, 5xx).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ReplicateError::S3 {
                retryable: true,
                ..
            }
        )
    }
}

/// Ids become folder names in the state directory and parts of S3 keys.
fn check_id(what: &str, id: &str) -> Result<(), ReplicateError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ReplicateError::InvalidWork(format!(
            "{what} {id:?} must be 1-128 characters of A-Z, a-z, 0-9, '-', '_' and '.'"
        )))
    }
}

fn check(work: &ReplicationWork, opts: &ReplicateOptions) -> Result<(), ReplicateError> {
    check_id("jobId", &work.job_id)?;
    check_id("runId", &work.run_id)?;
    check_id("serverId", &work.server_id)?;
    if work.disks.is_empty() {
        return Err(ReplicateError::InvalidWork(
            "the work lists no disks".into(),
        ));
    }
    if work.staging.bucket.is_empty() {
        return Err(ReplicateError::InvalidWork(
            "staging.bucket is empty".into(),
        ));
    }
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&opts.part_size) {
        return Err(ReplicateError::InvalidOptions(format!(
            "part_size {} is outside S3's 5 MiB to 5 GiB",
            opts.part_size
        )));
    }
    if opts.retry.max_attempts == 0 {
        return Err(ReplicateError::InvalidOptions(
            "retry.max_attempts must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Part size for an object of a disk of `virtual_size` bytes: the configured one, raised so the
/// object fits in [`PART_BUDGET`] parts. Neither object is much larger than the disk: stored
/// VMDK grains add 512 bytes per 64 KiB, a delta 56 bytes per 512 KiB block.
fn part_size_for(configured: u64, virtual_size: u64) -> u64 {
    let bound = virtual_size + virtual_size / 64 + (64 << 20);
    let needed = bound.div_ceil(PART_BUDGET).next_multiple_of(1 << 20);
    configured.max(needed).min(MAX_PART_SIZE)
}

struct OpenedDisk {
    read: Read,
    what: String,
}

/// How a disk's object is made: read from the disk, or already made.
enum Read {
    Disk(Arc<dyn VirtualDisk>),
    Prepared(Arc<PreparedObject>),
}

impl OpenedDisk {
    fn size(&self) -> u64 {
        match &self.read {
            Read::Disk(d) => d.size(),
            Read::Prepared(p) => p.virtual_size,
        }
    }

    /// The manifest's `sourceFormat` and `sourceVariant`.
    fn format(&self) -> (String, String) {
        match &self.read {
            Read::Disk(d) => (d.format().name().to_string(), d.variant()),
            Read::Prepared(p) => (p.source_format.clone(), p.source_variant.clone()),
        }
    }
}

fn open_source(index: usize, src: &DiskSource) -> Result<OpenedDisk, ReplicateError> {
    let what = src.describe();
    let disk_err = |source| ReplicateError::Disk {
        index,
        what: what.clone(),
        source,
    };
    let disk = match src {
        DiskSource::File {
            path,
            format,
            backing_chain,
        } => tern_disk::open(
            path,
            &OpenOptions {
                format: *format,
                backing_chain: backing_chain.clone(),
            },
        )
        .map_err(disk_err)?,
        DiskSource::Ova { path, disk } => {
            let vm = ova::read(path).map_err(|source| ReplicateError::Ova { index, source })?;
            let d = vm.disks.get(*disk).ok_or_else(|| {
                ReplicateError::InvalidWork(format!(
                    "disk {index}: {} has {} disks, there is no disk {disk}",
                    path.display(),
                    vm.disks.len()
                ))
            })?;
            ova::open_disk(path, d).map_err(disk_err)?
        }
        DiskSource::Libvirt { domain, .. } => {
            return Err(ReplicateError::InvalidWork(format!(
                "disk {index} is a disk of libvirt domain {domain}, which this connector does not serve: run a connector built with the libvirt feature whose [libvirt] uri names the domain's host"
            )))
        }
        DiskSource::Vsphere { vm, .. } => {
            return Err(ReplicateError::InvalidWork(format!(
                "disk {index} is a disk of vSphere VM {vm}, which this connector does not serve: run a connector whose [vsphere] url names the VM's vCenter"
            )))
        }
        // Its file is read when its upload starts (a disk whose upload completed needs none).
        DiskSource::Prepared(p) => {
            return Ok(OpenedDisk {
                read: Read::Prepared(Arc::new((**p).clone())),
                what,
            });
        }
    };
    Ok(OpenedDisk {
        read: Read::Disk(Arc::from(disk)),
        what,
    })
}

/// Opens one disk source the way a run reads it (for inspection).
pub fn open_disk(src: &DiskSource) -> Result<Arc<dyn VirtualDisk>, ReplicateError> {
    match open_source(0, src)?.read {
        Read::Disk(d) => Ok(d),
        Read::Prepared(p) => Err(ReplicateError::InvalidWork(format!(
            "{} is a run object, not a disk",
            p.object.display()
        ))),
    }
}

/// Runs one replication run: uploads every disk's object, then the manifest. Calling it again
/// for the same run resumes where the last call stopped.
#[tracing::instrument(skip_all, fields(job = %work.job_id, run = %work.run_id))]
pub async fn run(
    work: &ReplicationWork,
    ctx: &ReplicateContext,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<RunOutcome, ReplicateError> {
    check(work, &ctx.options)?;
    let state = JobState::new(&ctx.state_dir, &work.job_id);
    ensure_uncommitted(&ctx.state_dir, work)?;
    progress(Progress::preparing(None));
    // Every source is opened before anything is uploaded, so a missing or unreadable disk
    // fails the run at once instead of after the disks before it.
    let disks = work
        .disks
        .iter()
        .enumerate()
        .map(|(i, s)| open_source(i, s))
        .collect::<Result<Vec<_>, _>>()?;
    let virtual_total: u64 = disks.iter().map(|d| d.size()).sum();
    let total_virtual = virtual_total.max(1);

    let limiter = Mutex::new(Limiter::new(ctx.options.bandwidth_limit));
    // Fallback reasons, carried by every later report so the run's status message shows them.
    let notes = std::sync::Mutex::new(Vec::<String>::new());
    let note_now = || {
        let n = notes.lock().unwrap_or_else(|p| p.into_inner());
        (!n.is_empty()).then(|| n.join("; "))
    };
    let mut entries = Vec::new();
    let mut outcomes = Vec::new();
    let (mut bytes_before, mut virtual_before, mut sent_before) = (0u64, 0u64, 0u64);
    for (index, opened) in disks.iter().enumerate() {
        let t = Target {
            s3: &ctx.s3,
            bucket: &work.staging.bucket,
            state: &state,
            run_id: &work.run_id,
            disk: index,
            retry: &ctx.options.retry,
        };
        let fail_after = ctx
            .options
            .fail_after_parts
            .map(|n| n.saturating_sub(sent_before));
        let mut report = |done: u64, virtual_done: u64| {
            progress(Progress {
                stage: Stage::Uploading,
                disk: Some(index),
                percent: 100.0 * (virtual_before + virtual_done) as f64 / total_virtual as f64,
                bytes_done: bytes_before + done,
                bytes_total: None,
                virtual_total,
                note: note_now(),
            })
        };
        let mut add_note = |n: String| {
            notes.lock().unwrap_or_else(|p| p.into_inner()).push(n);
        };
        let (entry, counts, read) = upload_disk(
            work,
            ctx,
            &t,
            opened,
            &limiter,
            fail_after,
            &mut report,
            &mut add_note,
        )
        .await?;
        sent_before += counts.sent;
        bytes_before += entry.size;
        virtual_before += entry.virtual_size;
        outcomes.push(DiskOutcome {
            index,
            parts_sent: counts.sent,
            parts_skipped: counts.skipped,
            bytes_sent: counts.bytes_sent,
            bytes_skipped: counts.bytes_skipped,
            changes: Some(read.changes),
            source_bytes_read: read.bytes,
        });
        entries.push(entry);
    }

    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        job_id: work.job_id.clone(),
        run_id: work.run_id.clone(),
        server_id: work.server_id.clone(),
        disks: entries,
    };
    let manifest_key = work.staging.manifest_key(&work.job_id, &work.run_id);
    let body = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
    let t = Target {
        s3: &ctx.s3,
        bucket: &work.staging.bucket,
        state: &state,
        run_id: &work.run_id,
        disk: 0,
        retry: &ctx.options.retry,
    };
    upload::put(&t, &manifest_key, body.clone()).await?;
    state::write_atomic(&state.manifest_copy_path(&work.run_id), &body)?;
    progress(Progress {
        stage: Stage::Completed,
        disk: None,
        percent: 100.0,
        bytes_done: bytes_before,
        bytes_total: Some(bytes_before),
        virtual_total,
        note: note_now(),
    });
    Ok(RunOutcome {
        manifest_key,
        manifest,
        disks: outcomes,
    })
}

enum Plan {
    Seed,
    Delta {
        old: Arc<BlockMap>,
        base_run: Option<String>,
    },
    /// The object was made before the upload.
    Prepared(Arc<PreparedObject>),
}

#[allow(clippy::too_many_arguments)]
async fn upload_disk(
    work: &ReplicationWork,
    ctx: &ReplicateContext,
    t: &Target<'_>,
    opened: &OpenedDisk,
    limiter: &Mutex<Limiter>,
    fail_after: Option<u64>,
    report: &mut (dyn FnMut(u64, u64) + Send),
    note: &mut (dyn FnMut(String) + Send),
) -> Result<(DiskManifest, PartCounts, SourceRead), ReplicateError> {
    let index = t.disk;
    let mut counts = PartCounts::default();
    let mut rec = t.state.load_upload(t.run_id, index)?;
    if let Some(done) = rec.as_ref().and_then(|r| r.completed.clone()) {
        if t.state.has_pending_map(t.run_id, index) {
            counts.skipped = done.parts as u64;
            counts.bytes_skipped = done.size;
            report(done.size, done.virtual_size);
            let read = SourceRead {
                bytes: 0,
                changes: Changes::Resumed,
            };
            return Ok((done, counts, read));
        }
    }

    let plan = match &opened.read {
        Read::Prepared(p) => Plan::Prepared(p.clone()),
        Read::Disk(_) if work.seed => Plan::Seed,
        Read::Disk(_) => match t.state.kept_map(index)? {
            None => Plan::Seed,
            Some(old) => Plan::Delta {
                old: Arc::new(old),
                base_run: t.state.committed_run()?,
            },
        },
    };
    let kind = match &plan {
        Plan::Seed => ObjectKind::SeedVmdk,
        Plan::Delta { .. } => ObjectKind::Delta,
        Plan::Prepared(p) => p.kind,
    };
    let (changes, fallback) = match &plan {
        Plan::Prepared(p) => match &p.changes {
            Changes::Compare { fallback } => (None, fallback.clone()),
            _ => (None, None),
        },
        _ => {
            let c = prepare_changes(work, ctx, t, &plan)?;
            let fallback = c.fallback().map(str::to_string);
            (Some(c), fallback)
        }
    };
    if let Some(reason) = fallback {
        note(format!(
            "disk {index}: changes found by reading the whole disk ({reason})"
        ));
        // Said at once, before the disk is read.
        report(0, 0);
    }
    let key = work
        .staging
        .disk_key(&work.job_id, &work.run_id, index, kind);

    // An upload recorded for another object (the kept map changed since) cannot be resumed.
    if let Some(r) = rec.take() {
        if r.key == key && r.kind == kind && r.completed.is_none() {
            let mut r = r;
            if upload::reconcile(t, &mut r).await? {
                rec = Some(r);
            }
        } else {
            upload::abort(t, &r).await;
            t.state.remove_upload(t.run_id, index)?;
        }
    }
    let mut rec = match rec {
        Some(r) => r,
        None => {
            let ps = part_size_for(ctx.options.part_size, opened.size());
            upload::create(t, &key, kind, ps).await?
        }
    };

    let limit = match kind {
        ObjectKind::Delta => ctx.options.max_delta_bytes,
        _ => u64::MAX,
    };
    let mut restarted = false;
    let produced = loop {
        let (tx, mut rx) = mpsc::channel(1);
        let part_size = rec.part_size as usize;
        let producer = match (&opened.read, &changes) {
            (Read::Disk(disk), Some(changes)) => {
                let disk = disk.clone();
                let old = match &plan {
                    Plan::Delta { old, .. } => Some(old.clone()),
                    _ => None,
                };
                let name = format!("disk-{index}.vmdk");
                let changes = changes.clone();
                tokio::task::spawn_blocking(move || {
                    produce(&*disk, old.as_deref(), changes, tx, part_size, limit, &name)
                })
            }
            _ => {
                let Plan::Prepared(p) = &plan else {
                    return Err(ReplicateError::Internal(format!(
                        "disk {index}: no change plan for a disk read now"
                    )));
                };
                let p = p.clone();
                tokio::task::spawn_blocking(move || {
                    prepared::produce(&p, stream::PartSink::new(tx, part_size, limit))
                })
            }
        };
        let sent = upload::send_parts(
            t,
            &mut rec,
            &mut rx,
            limiter,
            fail_after,
            &mut counts,
            report,
        )
        .await;
        // Closing the channel stops a writer that is still going (the upload failed).
        drop(rx);
        let produced = producer
            .await
            .map_err(|e| ReplicateError::Internal(format!("disk writer: {e}")))?;
        let produced = match produced {
            Ok(p) => Some(p),
            Err(DiskError::Stream(e)) if is_limit(&e) => {
                upload::abort(t, &rec).await;
                t.state.remove_upload(t.run_id, index)?;
                return Err(ReplicateError::DeltaTooLarge { index, limit });
            }
            // The writer stopped because the uploader did: the uploader's error says why.
            Err(DiskError::Stream(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => None,
            Err(source) => {
                return Err(ReplicateError::Disk {
                    index,
                    what: opened.what.clone(),
                    source,
                })
            }
        };
        let changed = match sent? {
            Err(changed) => Some(changed.part),
            Ok(()) => {
                let p = produced.ok_or_else(|| {
                    ReplicateError::Internal("disk writer stopped without an error".into())
                })?;
                // Recorded parts past the end of a shorter regenerated stream would corrupt
                // the object; every part must be accounted for exactly.
                let recorded: u64 = rec.parts.iter().map(|p| p.size).sum();
                if recorded == p.size && rec.parts.len() as u64 == p.size.div_ceil(rec.part_size) {
                    break p;
                }
                Some(rec.parts.len() as i32)
            }
        };
        if let Some(part) = changed {
            if restarted {
                return Err(ReplicateError::Internal(format!(
                    "disk {index}: the regenerated stream differs from a fresh upload at part {part}"
                )));
            }
            tracing::warn!(
                disk = index,
                part,
                "the disk changed since the interrupted attempt; restarting its upload"
            );
            restarted = true;
            upload::abort(t, &rec).await;
            t.state.remove_upload(t.run_id, index)?;
            counts = PartCounts::default();
            rec = upload::create(t, &key, kind, rec.part_size).await?;
        }
    };

    upload::complete(t, &rec, produced.size).await?;
    let (base_run_id, block_size, changed_blocks, zero_blocks, data_bytes) =
        match (&plan, &produced.delta) {
            (Plan::Delta { base_run, .. }, Some(d)) => (
                base_run.clone(),
                Some(BLOCK_SIZE),
                Some(d.changed_blocks),
                Some(d.zero_blocks),
                Some(d.data_bytes),
            ),
            (Plan::Prepared(p), _) if p.kind == ObjectKind::Delta => (
                p.base_run_id.clone(),
                Some(BLOCK_SIZE),
                p.changed_blocks,
                p.zero_blocks,
                p.data_bytes,
            ),
            _ => (None, None, None, None, None),
        };
    let (source_format, source_variant) = opened.format();
    let entry = DiskManifest {
        index,
        source: opened.what.clone(),
        source_format,
        source_variant,
        virtual_size: opened.size(),
        kind,
        key: key.clone(),
        size: produced.size,
        sha256: hex::encode(produced.sha256),
        part_size: rec.part_size,
        parts: rec.parts.len() as u32,
        bytes_uploaded: rec.bytes_sent,
        base_run_id,
        block_size,
        changed_blocks,
        zero_blocks,
        data_bytes,
    };
    // The map first: a record marked complete always has its map next to it.
    t.state.write_pending_map(t.run_id, index, &produced.map)?;
    rec.completed = Some(entry.clone());
    t.state.save_upload(t.run_id, index, &rec)?;
    Ok((entry, counts, produced.read))
}

fn is_limit(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<LimitExceeded>())
}

/// Gives a run up for good (the control plane withdrew its work item: the job was deleted):
/// every multipart upload of the run that has not completed is aborted, so its parts stop
/// costing storage, and the run's upload records are removed, so nothing resumes it. Returns
/// how many uploads were aborted. The kept block maps are not touched.
pub async fn abandon_run(
    work: &ReplicationWork,
    ctx: &ReplicateContext,
) -> Result<usize, ReplicateError> {
    check_id("jobId", &work.job_id)?;
    check_id("runId", &work.run_id)?;
    let state = JobState::new(&ctx.state_dir, &work.job_id);
    let mut aborted = 0;
    for disk in 0..work.disks.len() {
        let Some(rec) = state.load_upload(&work.run_id, disk)? else {
            continue;
        };
        if rec.completed.is_none() {
            let t = Target {
                s3: &ctx.s3,
                bucket: &work.staging.bucket,
                state: &state,
                run_id: &work.run_id,
                disk,
                retry: &ctx.options.retry,
            };
            upload::abort(&t, &rec).await;
            aborted += 1;
        }
        state.remove_upload(&work.run_id, disk)?;
    }
    Ok(aborted)
}

/// The run whose block maps are kept for `job_id` (the base of the next delta), if any run of
/// the job was ever confirmed on this connector.
pub fn committed_run(state_dir: &Path, job_id: &str) -> Result<Option<String>, ReplicateError> {
    check_id("jobId", job_id)?;
    JobState::new(state_dir, job_id).committed_run()
}

/// The kept block map of disk `disk` of `job_id` (the base of its next delta), if any.
pub fn kept_map(
    state_dir: &Path,
    job_id: &str,
    disk: usize,
) -> Result<Option<BlockMap>, ReplicateError> {
    check_id("jobId", job_id)?;
    JobState::new(state_dir, job_id).kept_map(disk)
}

/// Whether `run_id` of `job_id` uploaded its manifest and waits for confirmation (its pending
/// block maps exist): then [`commit_run`] can promote them.
pub fn has_pending_run(state_dir: &Path, job_id: &str, run_id: &str) -> bool {
    check_id("jobId", job_id).is_ok()
        && check_id("runId", run_id).is_ok()
        && JobState::new(state_dir, job_id)
            .manifest_copy_path(run_id)
            .is_file()
}

/// Confirms a run: its block maps become the kept ones, the base of the next run's deltas.
/// Call it when the control plane reports the run's import as done; until then (or if the run
/// fails) the next run's delta stays relative to the last confirmed run. Idempotent.
pub fn commit_run(state_dir: &Path, job_id: &str, run_id: &str) -> Result<(), ReplicateError> {
    check_id("jobId", job_id)?;
    check_id("runId", run_id)?;
    let state = JobState::new(state_dir, job_id);
    // Read before the commit removes the run's folder.
    let bitmaps = changed::read_record(&state.bitmaps_path(run_id))?;
    state.commit(run_id)?;
    changed::after_commit(&bitmaps);
    Ok(())
}

/// A deleted job: its folder in the state directory (kept maps, upload records, prepared
/// objects) is removed.
pub fn forget_job(state_dir: &Path, job_id: &str) -> Result<(), ReplicateError> {
    check_id("jobId", job_id)?;
    let dir = state_dir.join("jobs").join(job_id);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ReplicateError::State {
            path: dir,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Writes a file of the state directory atomically.
pub(crate) fn write_state_file(path: &Path, bytes: &[u8]) -> Result<(), ReplicateError> {
    state::write_atomic(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_camel_case_json() {
        let w: ReplicationWork = serde_json::from_value(serde_json::json!({
            "jobId": "sms-job-0123456789abcdef0",
            "runId": "sms-run-0123456789abcdef0",
            "serverId": "s-0123456789abcdef0",
            "disks": [
                {"type": "file", "path": "/d/a.qcow2", "format": "qcow2"},
                {"type": "ova", "path": "/d/vm.ova", "disk": 1}
            ],
            "staging": {"bucket": "b", "prefix": "staging"},
            "seed": true
        }))
        .expect("parses");
        assert_eq!(w.disks.len(), 2);
        assert!(matches!(&w.disks[1], DiskSource::Ova { disk: 1, .. }));
        assert!(w.seed);
        let bad = serde_json::from_value::<ReplicationWork>(serde_json::json!({
            "jobId": "j", "runId": "r", "serverId": "s", "disks": [], "staging": {"bucket": "b"},
            "extra": 1
        }));
        assert!(bad.is_err(), "unknown fields are refused");
    }

    #[test]
    fn ids_cannot_escape_the_state_directory() {
        for id in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(check_id("jobId", id).is_err(), "{id:?}");
        }
        check_id("jobId", "sms-job-0123456789abcdef0").expect("a real id");
    }

    #[test]
    fn part_size_grows_for_huge_disks() {
        assert_eq!(part_size_for(25 << 20, 10 << 30), 25 << 20);
        let ps = part_size_for(25 << 20, 16 << 40);
        assert!(ps > 25 << 20);
        assert!((16u64 << 40).div_ceil(ps) < 10_000);
    }
}
