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
use super::state::{read_json, write_atomic, JobState};
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
    /// The hypervisor's change-tracking id of the disk at the run's point in time (vSphere
    /// CBT), kept once the run is confirmed for the next run to ask what changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
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
    read_json(
        &record_path(dir),
        "delete the folder to prepare the run again",
    )
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

/// The base of a run a source prepares: the last confirmed run and the kept block maps of its
/// `disks` disks, or `(None, [])` for a seed (asked for, or a disk without a kept map).
pub fn base_maps(
    state_dir: &Path,
    work: &super::ReplicationWork,
    disks: usize,
) -> Result<(Option<String>, Vec<BlockMap>), ReplicateError> {
    if work.seed {
        return Ok((None, Vec::new()));
    }
    let Some(base) = super::committed_run(state_dir, &work.job_id)? else {
        return Ok((None, Vec::new()));
    };
    let mut old = Vec::with_capacity(disks);
    for i in 0..disks {
        match super::kept_map(state_dir, &work.job_id, i)? {
            Some(m) => old.push(m),
            None => return Ok((None, Vec::new())),
        }
    }
    Ok((Some(base), old))
}

/// The run an earlier attempt prepared in `dir` against the same base, if it is complete (its
/// objects are on disk, or were freed because its manifest is uploaded): resuming uploads it
/// instead of reading the source at a second point in time. Anything else there is removed.
pub fn reusable(
    dir: &Path,
    state_dir: &Path,
    work: &super::ReplicationWork,
    base: &Option<String>,
) -> Result<Option<PreparedRun>, ReplicateError> {
    let Some(run) = load(dir)? else {
        return Ok(None);
    };
    let uploaded = super::has_pending_run(state_dir, &work.job_id, &work.run_id);
    let complete = run.disks.len() == work.disks.len()
        && run.disks.iter().all(|d| uploaded || d.object.is_file());
    if complete && &run.base_run_id == base {
        tracing::info!(run_id = %work.run_id, source = %run.source, "the run was read by an earlier attempt; uploading it");
        return Ok(Some(run));
    }
    remove(dir);
    Ok(None)
}

/// The file disk `i`'s object is written to.
pub fn object_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("disk-{i}.obj"))
}

/// What a source made of one disk, before it is recorded with [`made`].
pub struct Made {
    /// Where it was read, for people.
    pub what: String,
    pub source_format: String,
    pub source_variant: String,
    pub virtual_size: u64,
    pub changes: Changes,
    pub bytes_read: u64,
    pub map: BlockMap,
    /// Incremental runs: the delta's summary (its map already taken into `map`).
    pub delta: Option<tern_disk::delta::DeltaSummary>,
    /// See [`PreparedObject::change_id`].
    pub change_id: Option<String>,
}

/// Reads `disk` whole into `w`: a stream-optimized VMDK named `name` when `old` is `None` (a
/// seed), else the delta against `old` (every block compared). Returns the disk's block map and,
/// for a delta, its summary.
pub fn read_whole(
    disk: &dyn tern_disk::VirtualDisk,
    name: &str,
    old: Option<&BlockMap>,
    w: impl std::io::Write,
    progress: tern_disk::Progress<'_>,
) -> Result<(BlockMap, Option<tern_disk::delta::DeltaSummary>), tern_disk::DiskError> {
    match old {
        None => {
            let rec = super::stream::Recording::new(disk);
            tern_disk::write::write_vmdk_stream(&rec, w, name, progress)?;
            Ok((rec.into_map()?, None))
        }
        Some(old) => {
            let mut summary = tern_disk::delta::create(old, disk, w, progress)?;
            Ok((super::take_map(&mut summary), Some(summary)))
        }
    }
}

/// Writes disk `i`'s block map next to its object ([`object_path`]) and describes both.
pub fn made(
    dir: &Path,
    i: usize,
    m: Made,
    base: &Option<String>,
) -> Result<PreparedObject, ReplicateError> {
    let map = dir.join(format!("disk-{i}.map"));
    let state = |source| ReplicateError::State {
        path: map.clone(),
        source,
    };
    let f = File::create(&map).map_err(state)?;
    m.map
        .write_to(std::io::BufWriter::new(f))
        .map_err(|e| state(std::io::Error::other(e)))?;
    let delta = m.delta.as_ref();
    Ok(PreparedObject {
        object: object_path(dir, i),
        map,
        kind: if delta.is_some() {
            ObjectKind::Delta
        } else {
            ObjectKind::SeedVmdk
        },
        what: m.what,
        source_format: m.source_format,
        source_variant: m.source_variant,
        virtual_size: m.virtual_size,
        base_run_id: delta.and(base.clone()),
        changed_blocks: delta.map(|d| d.changed_blocks),
        zero_blocks: delta.map(|d| d.zero_blocks),
        data_bytes: delta.map(|d| d.data_bytes),
        changes: m.changes,
        bytes_read: m.bytes_read,
        change_id: m.change_id,
    })
}

/// Once run `run_id` is confirmed, the prepared folders of the job's other runs (failed or
/// superseded attempts) go.
pub fn remove_other_runs(state_dir: &Path, job_id: &str, run_id: &str) {
    let job_dir = state_dir.join("jobs").join(job_id);
    if let Ok(entries) = fs::read_dir(&job_dir) {
        for e in entries.flatten() {
            if e.file_name() != *run_id {
                let dir = e.path().join("prepared");
                if dir.is_dir() {
                    remove(&dir);
                }
            }
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
