//! The run manifest as the control plane reads it, and the checks it must pass before a run
//! builds on it.
//!
//! The connector writes more members than these (source format, hashes, part counts, delta
//! statistics); they are kept in `extra`, so the manifest handed to the state machine is the
//! one the connector wrote.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::staging::{ObjectKind, StagedRun, StagingLocation};

/// Why a manifest cannot be used; the run fails with `Tern.InvalidManifest` and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidManifest(pub String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub job_id: String,
    pub run_id: String,
    pub disks: Vec<ManifestDisk>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDisk {
    pub index: usize,
    pub kind: ObjectKind,
    /// The object's key in the staging bucket.
    #[serde(rename = "key")]
    pub object_key: String,
    #[serde(default, rename = "size")]
    pub object_size: u64,
    #[serde(default)]
    pub virtual_size: u64,
    /// Deltas: the run whose image the delta applies onto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_run_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Manifest {
    /// Parses the manifest object `object` (named in messages) of `run` and checks that it
    /// names this run, lists every disk once, root first, and keeps every object under the
    /// run's prefix. Whether those objects exist is for the caller to ask staging.
    pub fn parse(
        bytes: &[u8],
        object: &str,
        run: &StagedRun,
        staging: &StagingLocation,
    ) -> Result<Manifest, InvalidManifest> {
        let bad = |m: String| Err(InvalidManifest(m));
        let raw: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => return bad(format!("manifest {object} is not JSON: {e}")),
        };
        let m: Manifest = match serde_json::from_value(raw) {
            Ok(m) => m,
            Err(e) => return bad(format!("manifest {object} is malformed: {e}")),
        };
        if m.job_id != run.job_id || m.run_id != run.run_id {
            return bad(format!(
                "manifest {object} names job {} run {}, not job {} run {}",
                m.job_id, m.run_id, run.job_id, run.run_id
            ));
        }
        if m.disks.is_empty() {
            return bad(format!("manifest {object} lists no disks"));
        }
        let prefix = staging.run_prefix(&run.job_id, &run.run_id);
        for (i, d) in m.disks.iter().enumerate() {
            if d.index != i {
                return bad(format!(
                    "manifest {object}: disk {i} is listed as index {}",
                    d.index
                ));
            }
            if !d.object_key.starts_with(&prefix) {
                return bad(format!(
                    "manifest {object}: disk {i}'s object {} is outside the run's prefix {prefix}",
                    d.object_key
                ));
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run() -> (StagedRun, StagingLocation) {
        (
            StagedRun {
                job_id: "sms-job-1".into(),
                run_id: "sms-run-2".into(),
            },
            StagingLocation::new("tern-staging", "runs"),
        )
    }

    fn parse(v: Value) -> Result<Manifest, InvalidManifest> {
        let (r, s) = run();
        Manifest::parse(&serde_json::to_vec(&v).unwrap(), "m", &r, &s)
    }

    fn connector_manifest() -> Value {
        json!({
            "formatVersion": 1, "jobId": "sms-job-1", "runId": "sms-run-2", "serverId": "s-1",
            "disks": [
                {"index": 0, "kind": "seed-vmdk", "key": "runs/sms-job-1/sms-run-2/disk-0.vmdk",
                 "size": 10, "virtualSize": 1024, "sha256": "ab", "parts": 1},
                {"index": 1, "kind": "delta", "key": "runs/sms-job-1/sms-run-2/disk-1.delta",
                 "size": 5, "virtualSize": 2048, "baseRunId": "sms-run-1", "changedBlocks": 3}
            ]
        })
    }

    /// What the connector wrote is what the state machine gets, members Tern does not read
    /// included.
    #[test]
    fn a_connector_manifest_round_trips_unchanged() {
        let m = parse(connector_manifest()).unwrap();
        assert_eq!(m.disks[1].kind, ObjectKind::Delta);
        assert_eq!(m.disks[1].base_run_id.as_deref(), Some("sms-run-1"));
        assert_eq!(serde_json::to_value(&m).unwrap(), connector_manifest());
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let (r, s) = run();
        let not_json = Manifest::parse(b"{", "m", &r, &s).unwrap_err();
        assert!(not_json.0.contains("is not JSON"), "{not_json}");

        let mut other_run = connector_manifest();
        other_run["runId"] = json!("sms-run-9");
        assert!(parse(other_run)
            .unwrap_err()
            .0
            .contains("not job sms-job-1 run sms-run-2"));

        let mut none = connector_manifest();
        none["disks"] = json!([]);
        assert!(parse(none).unwrap_err().0.contains("lists no disks"));

        let mut order = connector_manifest();
        order["disks"][0]["index"] = json!(1);
        assert!(parse(order)
            .unwrap_err()
            .0
            .contains("disk 0 is listed as index 1"));

        let mut outside = connector_manifest();
        outside["disks"][1]["key"] = json!("runs/sms-job-1/sms-run-1/disk-1.delta");
        assert!(parse(outside)
            .unwrap_err()
            .0
            .contains("outside the run's prefix"));

        let mut kind = connector_manifest();
        kind["disks"][0]["kind"] = json!("raw");
        assert!(parse(kind).unwrap_err().0.contains("is malformed"));
    }
}
