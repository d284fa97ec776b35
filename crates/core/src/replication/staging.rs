//! Where a run's objects live in the staging bucket — the one definition of the layout.
//!
//! ```text
//! <prefix>/<jobId>/<runId>/disk-<index>.vmdk   seed: the whole disk, stream-optimized VMDK
//! <prefix>/<jobId>/<runId>/disk-<index>.delta  incremental: the blocks changed since the base run
//! <prefix>/<jobId>/<runId>/manifest.json       written last; its arrival means "upload complete"
//! ```
//!
//! The control plane hands the connector a [`StagingLocation`] in every `REPLICATE` work item,
//! and the connector builds its keys with the same methods the upload-complete handler parses
//! them with, so the two sides cannot drift apart.

use serde::{Deserialize, Serialize};

/// File name of a run's manifest under the run's prefix.
pub const MANIFEST_NAME: &str = "manifest.json";

/// The bucket and key prefix under which every run gets its own folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagingLocation {
    pub bucket: String,
    /// Every object of a run goes under `<prefix>/<jobId>/<runId>/`; see the module docs.
    pub prefix: String,
}

/// The run a staged object belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StagedRun {
    pub job_id: String,
    pub run_id: String,
}

/// What a disk's object holds (the manifest's `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectKind {
    /// The whole disk as a stream-optimized VMDK (what EC2 ImportSnapshot takes).
    SeedVmdk,
    /// A `TERNDLTA` delta object: the blocks changed since the base run's image.
    Delta,
}

impl ObjectKind {
    /// The name in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::SeedVmdk => "seed-vmdk",
            ObjectKind::Delta => "delta",
        }
    }

    /// File extension of the disk's object.
    pub fn extension(self) -> &'static str {
        match self {
            ObjectKind::SeedVmdk => "vmdk",
            ObjectKind::Delta => "delta",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StagingLocation {
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    /// The prefix without surrounding slashes, so that `runs`, `runs/` and `/runs` name the
    /// same folder and an empty prefix puts runs at the bucket's root.
    fn root(&self) -> &str {
        self.prefix.trim_matches('/')
    }

    /// `<prefix>/<jobId>/<runId>/`: every object of the run starts with it.
    pub fn run_prefix(&self, job_id: &str, run_id: &str) -> String {
        match self.root() {
            "" => format!("{job_id}/{run_id}/"),
            root => format!("{root}/{job_id}/{run_id}/"),
        }
    }

    /// Key of the run's manifest.
    pub fn manifest_key(&self, job_id: &str, run_id: &str) -> String {
        format!("{}{MANIFEST_NAME}", self.run_prefix(job_id, run_id))
    }

    /// Key of disk `index`'s object of the run.
    pub fn disk_key(&self, job_id: &str, run_id: &str, index: usize, kind: ObjectKind) -> String {
        format!(
            "{}disk-{index}.{}",
            self.run_prefix(job_id, run_id),
            kind.extension()
        )
    }

    /// The run whose manifest `key` is, or `None` for any other object.
    pub fn run_of_manifest_key(&self, key: &str) -> Option<StagedRun> {
        let rest = match self.root() {
            "" => key,
            root => key.strip_prefix(root)?.strip_prefix('/')?,
        };
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(job), Some(run), Some(MANIFEST_NAME), None)
                if !job.is_empty() && !run.is_empty() =>
            {
                Some(StagedRun {
                    job_id: job.to_string(),
                    run_id: run.to_string(),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        let s = StagingLocation::new("tern-staging", "runs");
        assert_eq!(
            s.run_prefix("sms-job-1", "sms-run-2"),
            "runs/sms-job-1/sms-run-2/"
        );
        assert_eq!(
            s.manifest_key("sms-job-1", "sms-run-2"),
            "runs/sms-job-1/sms-run-2/manifest.json"
        );
        assert_eq!(
            s.disk_key("sms-job-1", "sms-run-2", 1, ObjectKind::SeedVmdk),
            "runs/sms-job-1/sms-run-2/disk-1.vmdk"
        );
        assert_eq!(
            s.disk_key("sms-job-1", "sms-run-2", 0, ObjectKind::Delta),
            "runs/sms-job-1/sms-run-2/disk-0.delta"
        );
    }

    #[test]
    fn slashes_around_the_prefix_do_not_change_the_keys() {
        for prefix in ["runs/", "/runs", "runs"] {
            let s = StagingLocation::new("b", prefix);
            assert_eq!(s.manifest_key("j", "r"), "runs/j/r/manifest.json");
        }
        let root = StagingLocation::new("b", "");
        assert_eq!(root.manifest_key("j", "r"), "j/r/manifest.json");
        assert_eq!(
            root.run_of_manifest_key("j/r/manifest.json"),
            Some(StagedRun {
                job_id: "j".into(),
                run_id: "r".into()
            })
        );
    }

    #[test]
    fn only_a_run_manifest_names_a_run() {
        let s = StagingLocation::new("b", "runs");
        let key = s.manifest_key("sms-job-1", "sms-run-2");
        assert_eq!(
            s.run_of_manifest_key(&key),
            Some(StagedRun {
                job_id: "sms-job-1".into(),
                run_id: "sms-run-2".into()
            })
        );
        for other in [
            "runs/sms-job-1/sms-run-2/disk-0.vmdk",
            "runs/sms-job-1/manifest.json",
            "runs/sms-job-1/sms-run-2/x/manifest.json",
            "runs//sms-run-2/manifest.json",
            "other/sms-job-1/sms-run-2/manifest.json",
            "runsx/sms-job-1/sms-run-2/manifest.json",
            "manifest.json",
        ] {
            assert_eq!(s.run_of_manifest_key(other), None, "{other}");
        }
    }

    #[test]
    fn kinds_have_their_manifest_names() {
        for kind in [ObjectKind::SeedVmdk, ObjectKind::Delta] {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
            assert_eq!(serde_json::from_value::<ObjectKind>(json).unwrap(), kind);
        }
    }
}
