//! Where an incremental run's changes come from.
//!
//! * **Bitmap** (qcow2 files): Tern keeps a persistent dirty bitmap in the image, one per run,
//!   named `tern-<jobId>-<runId>`, added *before* the run reads the disk. An incremental run
//!   exports the image read-only with the bitmap of its base run (the last confirmed one) through
//!   `qemu-nbd`, asks NBD block status for `qemu:dirty-bitmap:<name>` and reads only the dirty
//!   512 KiB blocks (`tern-nbd`). Each is compared with the kept block map as the full
//!   comparison would, so the delta is the same one.
//! * **Compare**: every block is read and compared with the kept block map (always available).
//!
//! Why one bitmap per run rather than one cleared at each commit: the confirmation of a run
//! arrives after its import, minutes after the disk was read. A bitmap cleared then would lose
//! the writes made in between. A bitmap added before the read holds every write since that
//! read; it becomes the base once its run is confirmed, and only then are the older bitmaps of
//! the job removed. A failed or crashed run removes nothing, so the base bitmap still holds a
//! superset of the changes and the next run is still correct.
//!
//! The bitmap path is taken only when it can be trusted; otherwise the run falls back to the
//! comparison and records why ([`Changes::Compare`]): the disk is not a qcow2 file (or has a
//! backing file), qemu-img or qemu-nbd is missing, the image is in use (locked), the base run's
//! bitmap is missing, inconsistent (`in-use`) or disabled (no `auto`), or the disk was resized.
//! `changed_blocks = "bitmap"` makes each of these a failure instead.

mod qemu;
mod read;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tern_disk::Format;
use tern_nbd::Client;

use crate::replicate::{DiskSource, ReplicateError};
pub use qemu::{parse_info, Bitmap, Export, ImageInfo, ToolError};
pub use read::{bitmap_delta, dirty_blocks, extents_delta, BitmapRead, Counting};

/// `changed_blocks` of a source: how incremental runs find the changed blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangedBlocks {
    /// The dirty bitmap when it can be trusted, else the full comparison (saying why).
    #[default]
    Auto,
    /// Only the dirty bitmap: a disk that cannot use it fails the run.
    Bitmap,
    /// Always the full comparison; no bitmaps are added.
    Compare,
}

/// How a disk's object was made in a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "method")]
pub enum Changes {
    /// A seed: the whole disk read.
    Seed,
    /// Only the blocks the bitmap marks dirty were read.
    #[serde(rename_all = "camelCase")]
    Bitmap { bitmap: String, dirty_blocks: u64 },
    /// Every block read and compared with the kept block map; `fallback` says why the bitmap
    /// was not used (none when `changed_blocks = "compare"`).
    Compare { fallback: Option<String> },
    /// The disk's object was complete from an earlier attempt of the run; nothing was read.
    Resumed,
}

/// The bitmap that holds every write since run `run_id` of `job_id` started reading.
pub fn bitmap_name(job_id: &str, run_id: &str) -> String {
    format!("tern-{job_id}-{run_id}")
}

/// What every bitmap (and libvirt checkpoint) of `job_id` is named with first.
pub(crate) fn job_prefix(job_id: &str) -> String {
    format!("tern-{job_id}-")
}

/// A bitmap export ready for an incremental run's read. The connection opened while deciding
/// is used by the first read; a regenerated stream (resume) opens a new one.
pub struct BitmapSource {
    pub image: PathBuf,
    pub bitmap: String,
    state_dir: PathBuf,
    opened: Mutex<Option<(Export, Client)>>,
}

impl BitmapSource {
    pub fn context(&self) -> String {
        tern_nbd::dirty_bitmap_context(&self.bitmap)
    }

    /// The export and its connection.
    pub fn connect(&self) -> Result<(Export, Client), ToolError> {
        let pre = self.opened.lock().unwrap_or_else(|p| p.into_inner()).take();
        match pre {
            Some(c) => Ok(c),
            None => open(&self.image, &self.bitmap, &self.state_dir),
        }
    }
}

fn open(image: &Path, bitmap: &str, state_dir: &Path) -> Result<(Export, Client), ToolError> {
    let (export, client) = Export::start(image, bitmap, state_dir)?;
    if client
        .context_id(&tern_nbd::dirty_bitmap_context(bitmap))
        .is_none()
    {
        return Err(ToolError::Failed {
            tool: "qemu-nbd",
            detail: format!("the export does not offer the bitmap {bitmap}"),
        });
    }
    Ok((export, client))
}

/// What a disk of a run does, decided before it is read.
pub struct DiskPlan {
    /// Read the changes from this export (incremental runs only).
    pub bitmap: Option<BitmapSource>,
    /// Why an incremental run compares instead (auto mode).
    pub fallback: Option<String>,
}

/// The bitmaps a run added and found, kept with the run until it is confirmed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunBitmaps {
    pub disks: Vec<DiskBitmaps>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskBitmaps {
    pub disk: usize,
    pub image: PathBuf,
    /// This run's bitmap.
    pub own: String,
    /// The job's bitmaps that existed before this run added its own: older, so superseded
    /// once this run is confirmed.
    pub older: Vec<String>,
}

/// What [`prepare`] needs to know about the run.
pub struct RunInfo<'a> {
    pub job_id: &'a str,
    pub run_id: &'a str,
    /// A delta (not a seed).
    pub incremental: bool,
    /// The confirmed run a delta is relative to.
    pub base_run: Option<&'a str>,
    /// The disk size the kept block map has (a delta's base).
    pub base_size: Option<u64>,
    pub state_dir: &'a Path,
    /// Where the run's [`RunBitmaps`] are recorded.
    pub record: &'a Path,
}

/// Decides how disk `index` of a run is read. Called before the disk is read: it adds the
/// run's own bitmap first (a seed's too), so that writes during and after the read are
/// recorded for the next run.
pub fn prepare(
    mode: ChangedBlocks,
    index: usize,
    source: &DiskSource,
    run: &RunInfo<'_>,
) -> Result<DiskPlan, ReplicateError> {
    let incremental = run.incremental;
    let fallback = |reason: String| -> Result<DiskPlan, ReplicateError> {
        if mode == ChangedBlocks::Bitmap {
            return Err(ReplicateError::ChangedBlocks { index, reason });
        }
        if incremental {
            tracing::warn!(disk = index, %reason, "reading the whole disk to find its changes");
        } else {
            tracing::info!(disk = index, %reason, "no dirty bitmap for the next run");
        }
        Ok(DiskPlan {
            bitmap: None,
            fallback: incremental.then_some(reason),
        })
    };
    if mode == ChangedBlocks::Compare {
        return Ok(DiskPlan {
            bitmap: None,
            fallback: None,
        });
    }
    let DiskSource::File {
        path,
        format,
        backing_chain,
    } = source
    else {
        return fallback("a disk inside an OVA archive has no dirty bitmap".into());
    };
    if let Some(f) = format.filter(|f| *f != Format::Qcow2) {
        return fallback(format!("the disk is {f}, not qcow2"));
    }
    if !backing_chain.is_empty() {
        return fallback("the qcow2 image has a backing chain".into());
    }
    let info = match qemu::info(path) {
        Ok(i) => i,
        Err(e) => return fallback(e.to_string()),
    };
    if info.format != "qcow2" {
        return fallback(format!("the disk is {}, not qcow2", info.format));
    }
    if info.backing.is_some() {
        return fallback("the qcow2 image has a backing file".into());
    }

    let own = bitmap_name(run.job_id, run.run_id);
    match info.bitmap(&own) {
        // Added by an earlier attempt of this run, before its read: it still covers this one.
        Some(b) if b.unusable().is_none() => {}
        found => {
            if found.is_some() {
                if let Err(e) = qemu::remove_bitmap(path, &own) {
                    return fallback(e.to_string());
                }
            }
            if let Err(e) = qemu::add_bitmap(path, &own) {
                return fallback(e.to_string());
            }
        }
    }
    let prefix = job_prefix(run.job_id);
    record(
        run.record,
        DiskBitmaps {
            disk: index,
            image: path.clone(),
            own: own.clone(),
            older: info
                .bitmaps
                .iter()
                .filter(|b| b.name.starts_with(&prefix) && b.name != own)
                .map(|b| b.name.clone())
                .collect(),
        },
    )?;

    if !incremental {
        return Ok(DiskPlan {
            bitmap: None,
            fallback: None,
        });
    }
    let Some(base) = run.base_run else {
        return fallback("no confirmed run is recorded to start from".into());
    };
    let base_name = bitmap_name(run.job_id, base);
    match info.bitmap(&base_name) {
        None => {
            return fallback(format!(
                "the bitmap {base_name} of the base run is missing (deleted, or the run was read before bitmaps were kept)"
            ))
        }
        Some(b) => {
            if let Some(r) = b.unusable() {
                return fallback(r);
            }
        }
    }
    if run.base_size != Some(info.virtual_size) {
        return fallback(format!(
            "the disk was resized to {} bytes since the base run",
            info.virtual_size
        ));
    }
    match open(path, &base_name, run.state_dir) {
        Ok(opened) => Ok(DiskPlan {
            bitmap: Some(BitmapSource {
                image: path.clone(),
                bitmap: base_name,
                state_dir: run.state_dir.to_path_buf(),
                opened: Mutex::new(Some(opened)),
            }),
            fallback: None,
        }),
        Err(e) => fallback(e.to_string()),
    }
}

fn record(path: &Path, disk: DiskBitmaps) -> Result<(), ReplicateError> {
    let mut all = read_record(path)?;
    all.disks.retain(|d| d.disk != disk.disk);
    all.disks.push(disk);
    let bytes = serde_json::to_vec_pretty(&all).expect("records serialise");
    crate::replicate::write_state_file(path, &bytes)
}

/// The bitmaps recorded for a run (none when it recorded none).
pub fn read_record(path: &Path) -> Result<RunBitmaps, ReplicateError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| ReplicateError::StateCorrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RunBitmaps::default()),
        Err(source) => Err(ReplicateError::State {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// After a run is confirmed: the job's bitmaps older than the run's own are superseded and
/// removed. A failure only leaves a bitmap behind (a little metadata, never a wrong delta), so
/// it is logged, not returned.
/// A deleted job: every bitmap of `job_id` in `image` is removed. Returns their names.
pub fn forget_job(image: &Path, job_id: &str) -> Result<Vec<String>, ToolError> {
    let prefix = job_prefix(job_id);
    let mut removed = Vec::new();
    for b in qemu::info(image)?.bitmaps {
        if b.name.starts_with(&prefix) {
            qemu::remove_bitmap(image, &b.name)?;
            removed.push(b.name);
        }
    }
    Ok(removed)
}

pub fn after_commit(record: &RunBitmaps) {
    for d in &record.disks {
        let present = match qemu::info(&d.image) {
            Ok(info) => info.bitmaps,
            Err(e) => {
                tracing::warn!(image = %d.image.display(), error = %e, "could not list the bitmaps to remove superseded ones");
                continue;
            }
        };
        for name in d
            .older
            .iter()
            .filter(|n| present.iter().any(|b| &b.name == *n))
        {
            match qemu::remove_bitmap(&d.image, name) {
                Ok(()) => {
                    tracing::debug!(image = %d.image.display(), bitmap = %name, "superseded bitmap removed")
                }
                Err(e) => {
                    tracing::warn!(image = %d.image.display(), bitmap = %name, error = %e, "could not remove a superseded bitmap")
                }
            }
        }
    }
}
