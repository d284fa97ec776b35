//! What the demo saw, kept for the final report: the text lines and the `--json` summary.

use serde::Serialize;
use serde_json::Value;

use super::vm::Changes;

/// One observed state of a run (a change of state, stage, progress or status message).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageStep {
    /// Seconds since the demo first saw the run.
    pub at_secs: f64,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
}

impl StageStep {
    /// The same observation, time aside.
    pub fn same_as(&self, other: &StageStep) -> bool {
        self.state == other.state
            && self.stage == other.stage
            && self.progress == other.progress
            && self.status_message == other.status_message
    }

    pub fn describe(&self) -> String {
        let mut s = format!("+{:>5.1}s  {:<9}", self.at_secs, self.state);
        if let Some(stage) = &self.stage {
            s.push_str(&format!(" {stage}"));
        }
        if let Some(p) = &self.progress {
            s.push_str(&format!(" {p}"));
        }
        if let Some(m) = &self.status_message {
            s.push_str(&format!("  ({m})"));
        }
        s.trim_end().to_owned()
    }
}

/// What the connector uploaded for one disk of a run (from the run's manifest).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskUpload {
    pub index: u64,
    /// `seed-vmdk` or `delta`.
    pub kind: String,
    pub virtual_size: u64,
    pub object_size: u64,
    pub bytes_uploaded: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_blocks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_blocks: Option<u64>,
}

impl DiskUpload {
    /// Reads the disks of a manifest written by the connector.
    pub fn from_manifest(manifest: &Value) -> Vec<DiskUpload> {
        let u = |d: &Value, k: &str| d.get(k).and_then(Value::as_u64);
        manifest
            .get("disks")
            .and_then(Value::as_array)
            .map(|disks| {
                disks
                    .iter()
                    .map(|d| DiskUpload {
                        index: u(d, "index").unwrap_or_default(),
                        kind: d
                            .get("kind")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned(),
                        virtual_size: u(d, "virtualSize").unwrap_or_default(),
                        object_size: u(d, "size").unwrap_or_default(),
                        bytes_uploaded: u(d, "bytesUploaded")
                            .or_else(|| u(d, "size"))
                            .unwrap_or_default(),
                        changed_blocks: u(d, "changedBlocks"),
                        zero_blocks: u(d, "zeroBlocks"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn describe(&self, name: &str) -> String {
        let pct = if self.virtual_size > 0 {
            100.0 * self.bytes_uploaded as f64 / self.virtual_size as f64
        } else {
            0.0
        };
        let mut s = format!(
            "disk {} ({name}): {:<9} uploaded {} of {} ({pct:.1}%)",
            self.index,
            self.kind,
            bytes(self.bytes_uploaded),
            bytes(self.virtual_size),
        );
        if let Some(c) = self.changed_blocks {
            s.push_str(&format!(", {c} changed blocks"));
            if let Some(z) = self.zero_blocks.filter(|z| *z > 0) {
                s.push_str(&format!(" ({z} now zero)"));
            }
        }
        s
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub number: usize,
    pub run_id: String,
    /// `AUTOMATIC` (the seed, started by the scheduler) or `ON_DEMAND`.
    #[serde(rename = "type")]
    pub run_type: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
    pub seconds: f64,
    pub stages: Vec<StageStep>,
    pub uploads: Vec<DiskUpload>,
    /// Blocks the demo changed (per disk) before this run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Changes>,
}

impl RunReport {
    pub fn uploaded(&self) -> u64 {
        self.uploads.iter().map(|u| u.bytes_uploaded).sum()
    }
}

/// A "Server Migration Job State Change" event as received from the bus.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    /// The event id: the same for every delivery of one state change.
    pub id: String,
    pub time: String,
    pub state: String,
    pub job_id: String,
    pub run_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

impl EventLine {
    /// From an event serialised to JSON (`detail-type` already checked by the caller).
    pub fn from_event(event: &Value) -> EventLine {
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let detail = event.get("detail").cloned().unwrap_or(Value::Null);
        EventLine {
            id: s(event, "id").unwrap_or_default(),
            time: s(event, "time").unwrap_or_default(),
            state: s(&detail, "state").unwrap_or_default(),
            job_id: s(&detail, "replication-job-id").unwrap_or_default(),
            run_id: s(&detail, "replication-run-id").unwrap_or_default(),
            ami_id: s(&detail, "ami-id"),
            stage: s(&detail, "stage"),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{}  {:<9}  {}  {}  {}",
            self.time,
            self.state,
            self.job_id,
            self.run_id,
            self.ami_id.as_deref().unwrap_or("-")
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub passed: bool,
    pub what: String,
}

impl Check {
    pub fn line(&self) -> String {
        format!(
            "{} {}",
            if self.passed { "PASS" } else { "FAIL" },
            self.what
        )
    }
}

/// `--json`: everything above, and the verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// `PASS` or `FAIL`.
    pub result: &'static str,
    pub directory: String,
    pub kept: bool,
    pub seed: u64,
    pub vm: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_job_id: Option<String>,
    pub runs: Vec<RunReport>,
    pub events: Vec<EventLine>,
    /// Deliveries of an event already received (the bus delivers at least once).
    pub duplicate_events: usize,
    pub checks: Vec<Check>,
    /// What `--boot` saw: the kernel, the accelerator, each disk's SHA-256 as the VM read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<Value>,
    /// What `--launch` saw: the application, its stack, the instance and its boot marker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `1.5 MiB`, `512 KiB`, `17 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(bytes(17), "17 B");
        assert_eq!(bytes(512 << 10), "512 KiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(3 * (1 << 20) / 2), "1.5 MiB");
    }

    #[test]
    fn manifest_disks_are_read() {
        let m = json!({"disks": [
            {"index": 0, "kind": "seed-vmdk", "virtualSize": 67108864, "size": 3000000, "bytesUploaded": 3000000},
            {"index": 1, "kind": "delta", "virtualSize": 33554432, "size": 524800, "bytesUploaded": 524800,
             "changedBlocks": 2, "zeroBlocks": 1},
        ]});
        let disks = DiskUpload::from_manifest(&m);
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].kind, "seed-vmdk");
        assert_eq!(disks[1].changed_blocks, Some(2));
        let line = disks[1].describe("data");
        assert!(
            line.contains("uploaded 512.5 KiB of 32 MiB (1.6%)"),
            "{line}"
        );
        assert!(line.contains("2 changed blocks (1 now zero)"), "{line}");
        assert!(DiskUpload::from_manifest(&json!({})).is_empty());
    }

    #[test]
    fn events_are_read_from_their_detail() {
        let e = EventLine::from_event(&json!({
            "id": "e-1",
            "time": "2026-12-01T20:00:00Z",
            "detail-type": "Server Migration Job State Change",
            "detail": {"state": "Completed", "replication-job-id": "sms-job-1",
                       "replication-run-id": "sms-run-1", "ami-id": "ami-1", "version": "1.0"}
        }));
        assert_eq!(e.state, "Completed");
        assert_eq!(e.id, "e-1");
        assert_eq!(e.ami_id.as_deref(), Some("ami-1"));
        assert!(e
            .describe()
            .contains("Completed  sms-job-1  sms-run-1  ami-1"));
    }

    #[test]
    fn stage_steps_compare_without_time() {
        let a = StageStep {
            at_secs: 1.0,
            state: "ACTIVE".into(),
            stage: Some("Uploading".into()),
            progress: Some("40%".into()),
            status_message: None,
        };
        let b = StageStep {
            at_secs: 2.0,
            ..a.clone()
        };
        assert!(a.same_as(&b));
        assert_eq!(a.describe(), "+  1.0s  ACTIVE    Uploading 40%");
        let pending = StageStep {
            state: "PENDING".into(),
            stage: None,
            progress: None,
            ..a
        };
        assert_eq!(pending.describe(), "+  1.0s  PENDING");
    }
}
