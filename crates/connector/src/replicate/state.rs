//! The connector's replication state on disk: the block map of the last confirmed run of each
//! job and disk, the maps of runs waiting for confirmation, and the multipart upload records
//! that make a run resumable.
//!
//! ```text
//! <state_dir>/jobs/<job_id>/disk-<n>.map                 block map of the last confirmed run
//! <state_dir>/jobs/<job_id>/committed.json               {"runId": …} of that run
//! <state_dir>/jobs/<job_id>/<run_id>/disk-<n>.map.pending block map of this run, until confirmed
//! <state_dir>/jobs/<job_id>/<run_id>/upload-<n>.json     multipart upload record of disk n
//! <state_dir>/jobs/<job_id>/<run_id>/manifest.json       copy of the manifest, once uploaded
//! <state_dir>/jobs/<job_id>/<run_id>/bitmaps.json        dirty bitmaps the run added (qcow2)
//! ```
//!
//! Every file is written to a temporary name and renamed into place, so a killed process
//! leaves either the old or the new version, never half of one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tern_disk::blockmap::BlockMap;

use super::manifest::{DiskManifest, ObjectKind};
use super::ReplicateError;

/// One uploaded part, as recorded after S3 acknowledged it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartRecord {
    pub number: i32,
    pub etag: String,
    pub size: u64,
    /// SHA-256 of the part's bytes, hex: a regenerated part must match it to be skipped.
    pub sha256: String,
}

/// The multipart upload of one disk's object in one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadRecord {
    pub key: String,
    pub kind: ObjectKind,
    pub upload_id: String,
    pub part_size: u64,
    pub parts: Vec<PartRecord>,
    /// Bytes put on the wire for this object over every attempt of the run, retries included.
    pub bytes_sent: u64,
    /// Set once CompleteMultipartUpload succeeded: the manifest entry of the finished object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<DiskManifest>,
}

impl UploadRecord {
    pub fn part(&self, number: i32) -> Option<&PartRecord> {
        self.parts.iter().find(|p| p.number == number)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Committed {
    run_id: String,
}

/// Paths and atomic reads and writes under `<state_dir>/jobs/<job_id>`.
pub struct JobState {
    job_dir: PathBuf,
}

fn state_err(path: &Path) -> impl Fn(std::io::Error) -> ReplicateError + '_ {
    move |source| ReplicateError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced before the
/// rename so a crash cannot leave a renamed but empty file.
/// A JSON state file, `None` when there is none; a file that does not parse is
/// [`ReplicateError::StateCorrupt`], with `hint` (what to do) added when not empty.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    hint: &str,
) -> Result<Option<T>, ReplicateError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ReplicateError::StateCorrupt {
                    path: path.to_path_buf(),
                    detail: if hint.is_empty() {
                        e.to_string()
                    } else {
                        format!("{e}; {hint}")
                    },
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_err(path)(e)),
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReplicateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(state_err(dir))?;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = fs::File::create(&tmp).map_err(state_err(&tmp))?;
    f.write_all(bytes).map_err(state_err(&tmp))?;
    f.sync_all().map_err(state_err(&tmp))?;
    fs::rename(&tmp, path).map_err(state_err(path))
}

impl JobState {
    pub fn new(state_dir: &Path, job_id: &str) -> JobState {
        JobState {
            job_dir: state_dir.join("jobs").join(job_id),
        }
    }

    pub fn map_path(&self, disk: usize) -> PathBuf {
        self.job_dir.join(format!("disk-{disk}.map"))
    }

    fn run_dir(&self, run_id: &str) -> PathBuf {
        self.job_dir.join(run_id)
    }

    pub fn pending_map_path(&self, run_id: &str, disk: usize) -> PathBuf {
        self.run_dir(run_id)
            .join(format!("disk-{disk}.map.pending"))
    }

    /// A copy of the manifest, written once it is in the staging bucket.
    pub fn manifest_copy_path(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("manifest.json")
    }

    /// The dirty bitmaps the run added and found (`crate::changed::RunBitmaps`).
    pub fn bitmaps_path(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("bitmaps.json")
    }

    /// Objects made before the upload ([`super::prepared`]).
    pub fn prepared_dir(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("prepared")
    }

    pub fn upload_path(&self, run_id: &str, disk: usize) -> PathBuf {
        self.run_dir(run_id).join(format!("upload-{disk}.json"))
    }

    /// The run whose maps are the kept ones, if any run was ever confirmed.
    pub fn committed_run(&self) -> Result<Option<String>, ReplicateError> {
        let path = self.job_dir.join("committed.json");
        Ok(read_json::<Committed>(&path, "")?.map(|c| c.run_id))
    }

    /// The kept block map of `disk`; `None` when there is none (the next run is a seed).
    pub fn kept_map(&self, disk: usize) -> Result<Option<BlockMap>, ReplicateError> {
        let path = self.map_path(disk);
        match fs::File::open(&path) {
            Ok(f) => BlockMap::read_from(std::io::BufReader::new(f))
                .map(Some)
                .map_err(|e| ReplicateError::StateCorrupt {
                    detail: format!(
                        "{e}; delete the file (or send the work with seed = true) to start over with a full seed"
                    ),
                    path,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(state_err(&path)(e)),
        }
    }

    pub fn write_pending_map(
        &self,
        run_id: &str,
        disk: usize,
        map: &BlockMap,
    ) -> Result<(), ReplicateError> {
        let path = self.pending_map_path(run_id, disk);
        let mut bytes = Vec::new();
        map.write_to(&mut bytes)
            .map_err(|e| ReplicateError::State {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
        write_atomic(&path, &bytes)
    }

    pub fn has_pending_map(&self, run_id: &str, disk: usize) -> bool {
        self.pending_map_path(run_id, disk).is_file()
    }

    pub fn load_upload(
        &self,
        run_id: &str,
        disk: usize,
    ) -> Result<Option<UploadRecord>, ReplicateError> {
        read_json(&self.upload_path(run_id, disk), "")
    }

    pub fn save_upload(
        &self,
        run_id: &str,
        disk: usize,
        rec: &UploadRecord,
    ) -> Result<(), ReplicateError> {
        let path = self.upload_path(run_id, disk);
        let bytes = serde_json::to_vec_pretty(rec).expect("upload records serialise");
        write_atomic(&path, &bytes)
    }

    pub fn remove_upload(&self, run_id: &str, disk: usize) -> Result<(), ReplicateError> {
        let path = self.upload_path(run_id, disk);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(state_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Promotes the pending maps of `run_id` to kept maps. Idempotent: confirming the run that
    /// is already the committed one succeeds without changes, and a commit interrupted half way
    /// finishes when called again.
    pub fn commit(&self, run_id: &str) -> Result<(), ReplicateError> {
        let run_dir = self.run_dir(run_id);
        if !run_dir.is_dir() {
            return if self.committed_run()?.as_deref() == Some(run_id) {
                Ok(())
            } else {
                Err(ReplicateError::UnknownRun {
                    job_id: self.job_id(),
                    run_id: run_id.to_string(),
                })
            };
        }
        let mut pending = Vec::new();
        for entry in fs::read_dir(&run_dir).map_err(state_err(&run_dir))? {
            let entry = entry.map_err(state_err(&run_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_prefix("disk-")
                .and_then(|r| r.strip_suffix(".map.pending"))
                .and_then(|n| n.parse::<usize>().ok())
            {
                pending.push(n);
            }
        }
        // Only a run whose manifest was uploaded can have been imported; confirming another
        // would make the next delta relative to an image that does not exist.
        if pending.is_empty() || !self.manifest_copy_path(run_id).is_file() {
            return Err(ReplicateError::UnknownRun {
                job_id: self.job_id(),
                run_id: run_id.to_string(),
            });
        }
        pending.sort_unstable();
        for n in pending {
            let from = self.pending_map_path(run_id, n);
            let to = self.map_path(n);
            fs::rename(&from, &to).map_err(state_err(&to))?;
        }
        let committed = serde_json::to_vec(&Committed {
            run_id: run_id.to_string(),
        })
        .expect("serialises");
        write_atomic(&self.job_dir.join("committed.json"), &committed)?;
        fs::remove_dir_all(&run_dir).map_err(state_err(&run_dir))
    }

    fn job_id(&self) -> String {
        self.job_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}
