//! Wire shapes of the connector-facing operations (target prefix `TernConnectorService_V1`).
//!
//! Same protocol as the SMS operations: awsJson 1.1, `POST /`, `X-Amz-Target:
//! TernConnectorService_V1.<Operation>`, camelCase members, absent members omitted, unknown input
//! members ignored, errors as `{"__type": …, "message": …}`. Only connector principals may call
//! these. The connector agent (`tern connector run`) builds its client from these types, so
//! each one serialises and deserialises.
//!
//! | operation | input | output |
//! |---|---|---|
//! | `RegisterConnector` | [`RegisterConnectorRequest`] | [`RegisterConnectorResponse`] |
//! | `SendHeartbeat` | [`SendHeartbeatRequest`] | [`SendHeartbeatResponse`] |
//! | `ReportInventory` | [`ReportInventoryRequest`] | [`ReportInventoryResponse`] |
//! | `PollWork` | [`PollWorkRequest`] | [`PollWorkResponse`] |
//! | `ReportError` | [`ReportErrorRequest`] | [`ReportErrorResponse`] |
//! | `ReportProgress` | [`ReportProgressRequest`] | [`ReportProgressResponse`] |
//! | `CompleteWork` | [`CompleteWorkRequest`] | [`CompleteWorkResponse`] |
//!
//! The agent's loop: register once (keep the returned `connectorId` and pass it back on the next
//! registration to keep the same id), heartbeat every minute or so (a connector whose last
//! heartbeat is older than the server's `connector_unhealthy_after` reads as `UNHEALTHY` and gets
//! no new work), poll for work, answer each `INVENTORY` item with a `ReportInventory` carrying its
//! `requestId`, and report failures of a work item with `ReportError`.
//!
//! A `REPLICATE` item ([`ReplicationWork`]) asks for one replication run: upload each disk (a
//! stream-optimized VMDK for a seed, a delta otherwise) under `staging.prefix`, write the manifest
//! last, report progress with `ReportProgress` on the way, and `CompleteWork` once the manifest
//! is written (or `ReportError`, which fails the run). A `COMMIT_RUN` item ([`CommitRunWork`])
//! says the run succeeded: keep its block maps as the base of the next delta, then
//! `CompleteWork`. A `FORGET_JOB` item ([`ForgetJobWork`]) says the job was deleted: remove what
//! is kept for it on the source VM and in the state directory, then `CompleteWork`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use tern_core::enums::{ConnectorCapability, OsType, VmManagerType, WorkKind};
pub use tern_core::replication::{
    CommitRunWork, ForgetJobWork, ObjectKind, ReplicationWork, StagingLocation, WorkDisk,
};

/// Operation names (the part after `TernConnectorService_V1.`).
pub mod op {
    pub const REGISTER_CONNECTOR: &str = "RegisterConnector";
    pub const SEND_HEARTBEAT: &str = "SendHeartbeat";
    pub const REPORT_INVENTORY: &str = "ReportInventory";
    pub const POLL_WORK: &str = "PollWork";
    pub const REPORT_ERROR: &str = "ReportError";
    pub const REPORT_PROGRESS: &str = "ReportProgress";
    pub const COMPLETE_WORK: &str = "CompleteWork";
    /// Every connector operation.
    pub const ALL: &[&str] = &[
        REGISTER_CONNECTOR,
        SEND_HEARTBEAT,
        REPORT_INVENTORY,
        POLL_WORK,
        REPORT_ERROR,
        REPORT_PROGRESS,
        COMPLETE_WORK,
    ];
}

/// Registers a connector (or re-registers a known one when `connectorId` is given).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterConnectorRequest {
    /// The id from an earlier registration: re-registering keeps it (and its catalog servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_id: Option<String>,
    /// A human-readable name of this connector. Required.
    #[serde(default)]
    pub name: String,
    /// Connector software version. Required.
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_manager_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_manager_type: Option<VmManagerType>,
    /// Identity of the VM manager (vCenter UUID, or any stable id for a `files` source). Required:
    /// catalog servers are keyed by `vmManagerId` + `vmId`.
    #[serde(default)]
    pub vm_manager_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capability_list: Vec<ConnectorCapability>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterConnectorResponse {
    pub connector_id: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendHeartbeatRequest {
    #[serde(default)]
    pub connector_id: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendHeartbeatResponse {}

/// One disk of a reported VM.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryDisk {
    /// Where the connector reads the disk (file path, datastore path).
    #[serde(default)]
    pub path: String,
    /// Image format as the connector sees it (`raw`, `qcow2`, `vmdk`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Virtual size in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// One VM of an inventory report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryVm {
    /// The VM's id inside its VM manager. Required; with `vmManagerId` it names the catalog
    /// server, whose `serverId` stays the same across re-imports.
    #[serde(default)]
    pub vm_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    /// Folder path of the VM in its manager's inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_path: Option<String>,
    /// Defaults to the connector's registered `vmManagerId` (likewise name and type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_manager_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_manager_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_manager_type: Option<VmManagerType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<InventoryDisk>,
    /// Operating-system hint; decides the allowed license types of the server's jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<OsType>,
    /// Whatever the connector learnt by inspecting the disks (a JSON object), kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection: Option<Value>,
    /// The application the connector's configuration puts the VM in (`[[applications]]`);
    /// ImportAppCatalog makes an SMS application of each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
}

/// The connector's complete current inventory, in one request or in pages. VMs it reported
/// before and no longer reports are marked as vanished in the catalog (not dropped).
///
/// **Pages.** A large inventory is sent as pages of one report: the same `reportId` (chosen by
/// the connector: 1-128 of `A-Za-z0-9._-`), `page` 1, 2, … and `lastPage: true` on the last. The
/// service keeps the pages aside and switches the catalog to the new inventory only when the last
/// page arrives and every page before it is there. A page sent again with the same content
/// changes nothing (so a connector may resend after a lost answer, or resume after a restart from
/// the first page it is not sure of); a page of an applied report answers that report's outcome.
/// Without `reportId` the request is the whole report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportInventoryRequest {
    #[serde(default)]
    pub connector_id: String,
    /// The `requestId` of the `INVENTORY` work item this answers; absent for an unsolicited report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Names the report this page belongs to; absent: the request is the whole report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_id: Option<String>,
    /// Position of this page in the report, from 1 (with `reportId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// This page ends the report (with `reportId`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last_page: bool,
    #[serde(default)]
    pub vm_list: Vec<InventoryVm>,
}

/// A VM of the report that was not taken into the catalog, and why.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedVm {
    #[serde(default)]
    pub vm_id: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportInventoryResponse {
    /// VMs now in the catalog from this report (for a page that is not the last: VMs of this
    /// page kept for the report).
    #[serde(default)]
    pub accepted_count: u32,
    /// Servers of this connector that the report no longer lists (now marked vanished).
    #[serde(default)]
    pub vanished_count: u32,
    /// Bad entries; the rest of the report was still applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_list: Vec<RejectedVm>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollWorkRequest {
    #[serde(default)]
    pub connector_id: String,
    /// At most this many items (default and cap: the server's page-size limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_results: Option<i64>,
    /// The work kinds this connector runs. Without it, the kinds every connector has run
    /// ([`LEGACY_WORK_KINDS`]): items of a kind added later (`FORGET_JOB`) wait for a connector
    /// that names it, instead of being leased again and again to one that skips them. Names
    /// this server does not know are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
}

/// The work kinds a connector that names none in PollWork is handed.
pub const LEGACY_WORK_KINDS: [WorkKind; 3] = [
    WorkKind::Inventory,
    WorkKind::Replicate,
    WorkKind::CommitRun,
];

impl PollWorkRequest {
    /// The kinds to hand out (see [`PollWorkRequest::kinds`]).
    pub fn work_kinds(&self) -> Vec<WorkKind> {
        match &self.kinds {
            None => LEGACY_WORK_KINDS.to_vec(),
            Some(names) => WorkKind::ALL
                .iter()
                .copied()
                .filter(|k| names.iter().any(|n| n == k.as_str()))
                .collect(),
        }
    }
}

/// A unit of work for a connector. `kind` is a string so that older connectors can skip kinds
/// added later instead of failing to parse the whole response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkItem {
    pub work_id: String,
    pub kind: String,
    /// Kind-specific parameters; for `INVENTORY` an [`InventoryWork`].
    #[serde(default)]
    pub payload: Value,
}

/// Payload of an `INVENTORY` work item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryWork {
    /// Pass it back as `ReportInventoryRequest.requestId`.
    pub request_id: String,
}

impl WorkItem {
    /// The kind, when this build knows it.
    pub fn known_kind(&self) -> Option<WorkKind> {
        self.kind.parse().ok()
    }

    /// The replication run to upload, when this is a `REPLICATE` item with a well-formed payload.
    pub fn replication(&self) -> Option<ReplicationWork> {
        match self.known_kind() {
            Some(WorkKind::Replicate) => serde_json::from_value(self.payload.clone()).ok(),
            _ => None,
        }
    }

    /// The run whose block maps to keep, when this is a `COMMIT_RUN` item.
    pub fn commit_run(&self) -> Option<CommitRunWork> {
        match self.known_kind() {
            Some(WorkKind::CommitRun) => serde_json::from_value(self.payload.clone()).ok(),
            _ => None,
        }
    }

    /// The deleted job whose traces to remove, when this is a `FORGET_JOB` item.
    pub fn forget_job(&self) -> Option<ForgetJobWork> {
        match self.known_kind() {
            Some(WorkKind::ForgetJob) => serde_json::from_value(self.payload.clone()).ok(),
            _ => None,
        }
    }

    /// The inventory request, when this is an `INVENTORY` item with a well-formed payload.
    pub fn inventory(&self) -> Option<InventoryWork> {
        match self.known_kind() {
            Some(WorkKind::Inventory) => serde_json::from_value(self.payload.clone()).ok(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollWorkResponse {
    #[serde(default)]
    pub work_items: Vec<WorkItem>,
}

/// A failure on the connector's side, optionally of one work item (which is then closed).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportErrorRequest {
    #[serde(default)]
    pub connector_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_id: Option<String>,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportErrorResponse {}

/// Progress of a `REPLICATE` work item; it becomes the run's stageDetails and statusMessage
/// ("Uploading 42% (3.1 GiB of 7.4 GiB)") and keeps the run's upload from timing out.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportProgressRequest {
    #[serde(default)]
    pub connector_id: String,
    #[serde(default)]
    pub work_id: String,
    /// e.g. `Preparing`, `Uploading`.
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub percent: u8,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// Tern's: what the run's statusMessage should also say (e.g. why a disk's changes are
    /// found by reading it whole); at most 400 characters are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportProgressResponse {}

/// The connector is done with a work item.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteWorkRequest {
    #[serde(default)]
    pub connector_id: String,
    #[serde(default)]
    pub work_id: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteWorkResponse {}

#[cfg(test)]
mod tests {
    #[test]
    fn a_poll_names_the_kinds_it_runs_or_gets_the_legacy_ones() {
        let poll = |json: &str| serde_json::from_str::<PollWorkRequest>(json).unwrap();
        assert_eq!(
            poll(r#"{"connectorId":"c"}"#).work_kinds(),
            LEGACY_WORK_KINDS.to_vec()
        );
        assert_eq!(
            poll(r#"{"connectorId":"c","kinds":["FORGET_JOB","NEWER_KIND","REPLICATE"]}"#)
                .work_kinds(),
            [WorkKind::Replicate, WorkKind::ForgetJob]
        );
        assert!(poll(r#"{"connectorId":"c","kinds":[]}"#)
            .work_kinds()
            .is_empty());
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_use_camel_case_and_omit_absent_members() {
        let req = RegisterConnectorRequest {
            name: "lab".into(),
            version: "0.1.0".into(),
            vm_manager_id: "files-1".into(),
            vm_manager_type: Some(VmManagerType::Vsphere),
            capability_list: vec![ConnectorCapability::Vsphere],
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"name":"lab","version":"0.1.0","vmManagerType":"VSPHERE","vmManagerId":"files-1",
                   "capabilityList":["VSPHERE"]})
        );
        let vm: InventoryVm = serde_json::from_value(json!({
            "vmId":"vm-1","disks":[{"path":"/d/a.qcow2","format":"qcow2","sizeBytes":1024}],
            "osType":"LINUX","inspection":{"kernel":"6.1"},"somethingNew":1
        }))
        .unwrap();
        assert_eq!(vm.disks[0].size_bytes, Some(1024));
        assert_eq!(vm.os_type, Some(OsType::Linux));
    }

    #[test]
    fn work_items_tolerate_unknown_kinds() {
        let resp: PollWorkResponse = serde_json::from_value(json!({"workItems":[
            {"workId":"work-1","kind":"INVENTORY","payload":{"requestId":"work-1"}},
            {"workId":"work-2","kind":"REPLICATE_LATER","payload":{"x":1}}
        ]}))
        .unwrap();
        assert_eq!(resp.work_items[0].inventory().unwrap().request_id, "work-1");
        assert_eq!(resp.work_items[1].known_kind(), None);
        assert!(resp.work_items[1].inventory().is_none());
    }
}
