//! Run objects made before the upload: a source that reads every disk of a server at one point
//! in time (libvirt's backup API) writes each disk's seed VMDK or delta into the run's folder of
//! the state directory first, and the upload sends those files.
//!
//! Why not stream them straight into S3 as the file sources do: the point in time is held by a
//! backup job of the running domain, whose scratch files grow with every guest write while it is
//! open. Writing the objects locally ends the backup in the time it takes to read the changed
//! blocks, whatever the upload's speed; and a crashed or cut upload resumes from the same files,
//! at the same point in time, without a new backup. The price is local space for one run's
//! objects (a compressed seed, or the changed blocks), freed once the manifest is uploaded.
//!
//! A prepared run is recorded in `<run folder>/prepared/run.json` only after every object and
//! block map in it is on disk (synced), so a run interrupted while preparing is prepared again.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tern_disk::blockmap::BlockMap;

use super::manifest::ObjectKind;
use super::state::{write_atomic, JobState};
use super::stream::PartSink;
use super::ReplicateError;
use crate::changed::Changes;

/// One disk's object, made before the upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreparedObject {
    /// The object's file (a stream-optimized VMDK or a delta).
    pub object: PathBuf,
    /// The disk's block map at the run's point in time (kept for the next run once confirmed).
    pub map: PathBuf,
    pub kind: ObjectKind,
    /// Where it was read, for people (`libvirt web01/vda`).
    pub what: String,
    pub source_format: String,
    pub source_variant: String,
    pub virtual_size: u64,
    /// Deltas: the confirmed run they apply onto and their counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_blocks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_blocks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes: Option<u64>,
    /// How the changes were found, and the bytes read from the source to make the object.
    pub changes: Changes,
    pub bytes_read: u64,
}

/// A prepared run: what the source read and the objects it made, one per disk in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreparedRun {
    /// The source's own name for what it read (`libvirt:<domain>`), so that later steps (a
    /// commit, an abandoned run) know where the run's checkpoint lives.
    pub source: String,
    /// The confirmed run the deltas apply onto; `None` for a seed.
    #[serde(default)]
    pub base_run_id: Option<String>,
    pub disks: Vec<PreparedObject>,
}

/// `<state>/jobs/<job>/<run>/prepared`: where a run's objects are made.
pub fn prepared_dir(
    state_dir: &Path,
    job_id: &str,
    run_id: &str,
) -> Result<PathBuf, ReplicateError> {
    super::check_id("jobId", job_id)?;
    super::check_id("runId", run_id)?;
    Ok(JobState::new(state_dir, job_id).prepared_dir(run_id))
}

fn record_path(dir: &Path) -> PathBuf {
    dir.join("run.json")
}

/// The prepared run recorded in `dir`, if its preparation finished.
pub fn load(dir: &Path) -> Result<Option<PreparedRun>, ReplicateError> {
    let path = record_path(dir);
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ReplicateError::StateCorrupt {
                    path,
                    detail: format!("{e}; delete the folder to prepare the run again"),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReplicateError::State { path, source }),
    }
}

/// Records a prepared run whose objects are written (syncing them first).
pub fn save(dir: &Path, run: &PreparedRun) -> Result<(), ReplicateError> {
    for d in &run.disks {
        for path in [&d.object, &d.map] {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|source| ReplicateError::State {
                    path: path.clone(),
                    source,
                })?;
        }
    }
    let bytes = serde_json::to_vec_pretty(run).expect("prepared runs serialise");
    write_atomic(&record_path(dir), &bytes)
}

/// Frees a prepared run's objects once its manifest is uploaded (the record stays until the
/// run is confirmed or given up, so the source can be told).
pub fn release_objects(run: &PreparedRun) {
    for d in &run.disks {
        if let Err(e) = fs::remove_file(&d.object) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(object = %d.object.display(), error = %e, "could not remove a prepared object");
            }
        }
    }
}

/// Removes a prepared run's folder (objects, maps and record).
pub fn remove(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a prepared run");
        }
    }
}

/// Writes a prepared object's file into the part channel, as [`super::produce`] writes a disk
/// it reads. Runs on a blocking thread.
pub(super) fn produce(
    p: &PreparedObject,
    mut sink: PartSink,
) -> Result<super::produce::Produced, tern_disk::DiskError> {
    let io = |e: std::io::Error| tern_disk::DiskError::Stream(e);
    let map = File::open(&p.map)
        .map_err(io)
        .and_then(|f| BlockMap::read_from(BufReader::new(f)))?;
    let mut f = File::open(&p.object).map_err(io)?;
    let len = f.metadata().map_err(io)?.len().max(1);
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut sink, &buf[..n]).map_err(io)?;
        copied += n as u64;
        // Progress in virtual bytes, as the other sources report it: the share of the object sent.
        let done = (p.virtual_size as u128 * copied.min(len) as u128 / len as u128) as u64;
        sink.virtual_done
            .store(done, std::sync::atomic::Ordering::Relaxed);
    }
    let (size, sha256) = sink.finish(p.virtual_size).map_err(io)?;
    Ok(super::produce::Produced {
        size,
        sha256,
        map,
        delta: None,
        read: super::produce::SourceRead {
            bytes: p.bytes_read,
            changes: p.changes.clone(),
        },
    })
}
