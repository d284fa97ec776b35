//! SMS wire shapes (spec §2.1–2.2, §4) and their encoding rules: camelCase members, absent
//! members omitted, unknown input members ignored, timestamps as epoch-second JSON numbers
//! (integers and fractions accepted on input; whole seconds emitted as integers, otherwise with
//! millisecond fractions).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use tern_core::enums::*;
use tern_core::model;

/// Epoch-second timestamps.
pub mod epoch {
    use super::*;

    /// Whole seconds as an integer, otherwise seconds with a millisecond fraction (rounded, so
    /// that a value read from a float like `1477227683.652` is written back the same).
    pub fn to_number(t: &OffsetDateTime) -> serde_json::Number {
        let millis = (t.unix_timestamp_nanos() + 500_000).div_euclid(1_000_000);
        if millis % 1000 == 0 {
            serde_json::Number::from((millis / 1000) as i64)
        } else {
            serde_json::Number::from_f64(millis as f64 / 1000.0)
                .unwrap_or_else(|| serde_json::Number::from(t.unix_timestamp()))
        }
    }

    /// Seconds (integer or fractional) to a time. The whole and fractional parts are converted
    /// separately because `secs * 1e9` loses the fraction's precision at today's magnitudes.
    pub fn from_f64(secs: f64) -> Option<OffsetDateTime> {
        if !secs.is_finite() || secs.abs() > 1e15 {
            return None;
        }
        let whole = secs.floor();
        let nanos = ((secs - whole) * 1e9).round() as i128;
        OffsetDateTime::from_unix_timestamp_nanos(whole as i128 * 1_000_000_000 + nanos).ok()
    }

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => to_number(t).serialize(s),
            None => s.serialize_none(),
        }
    }

    /// Accepts a JSON number (integer or fractional) or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let n: Option<f64> = Option::deserialize(d)?;
        n.map(|secs| {
            from_f64(secs).ok_or_else(|| {
                serde::de::Error::invalid_value(
                    serde::de::Unexpected::Float(secs),
                    &"epoch seconds between the years -9999 and 9999",
                )
            })
        })
        .transpose()
    }
}

// ---------------------------------------------------------------- shapes shared by outputs

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ConnectorStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capability_list: Option<Vec<ConnectorCapability>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_manager_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_manager_type: Option<VmManagerType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_manager_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "epoch::serialize"
    )]
    pub associated_on: Option<OffsetDateTime>,
}

impl Connector {
    pub fn from_model(c: model::Connector, status: ConnectorStatus) -> Self {
        Self {
            connector_id: Some(c.connector_id),
            version: Some(c.version),
            status: Some(status),
            capability_list: Some(c.capability_list),
            vm_manager_name: c.vm_manager_name,
            vm_manager_type: c.vm_manager_type,
            vm_manager_id: Some(c.vm_manager_id),
            ip_address: c.ip_address,
            mac_address: c.mac_address,
            associated_on: Some(c.associated_on),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmServerAddress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_manager_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmServer {
    pub vm_server_address: VmServerAddress,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_manager_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_manager_type: Option<VmManagerType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_path: Option<String>,
}

impl From<model::VmServer> for VmServer {
    fn from(v: model::VmServer) -> Self {
        Self {
            vm_server_address: VmServerAddress {
                vm_manager_id: Some(v.vm_server_address.vm_manager_id),
                vm_id: Some(v.vm_server_address.vm_id),
            },
            vm_name: v.vm_name,
            vm_manager_name: v.vm_manager_name,
            vm_manager_type: v.vm_manager_type,
            vm_path: v.vm_path,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub server_id: String,
    pub server_type: ServerType,
    pub vm_server: VmServer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_job_terminated: Option<bool>,
    /// Tern's addition: why CreateReplicationJob would refuse this server (vanished from the
    /// inventory, no disks, or the import rules' refusals, each named: `volume-count`,
    /// `boot-disk-unpartitioned`, … see `tern_core::service::preflight`). SMS clients ignore
    /// members they do not know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cannot_replicate_reason: Option<String>,
    /// Tern's addition: the import rules' warnings (each message starts with its rule's
    /// name); they do not stop a job. Absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preflight_warnings: Vec<String>,
}

impl From<model::Server> for Server {
    fn from(s: model::Server) -> Self {
        Self {
            server_id: s.server_id,
            server_type: s.server_type,
            vm_server: s.vm_server.into(),
            replication_job_id: s.replication_job_id,
            replication_job_terminated: s.replication_job_terminated,
            cannot_replicate_reason: None,
            preflight_warnings: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_progress: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationRun {
    pub replication_run_id: String,
    pub state: ReplicationRunState,
    #[serde(rename = "type")]
    pub run_type: ReplicationRunType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_details: Option<StageDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "epoch::serialize"
    )]
    pub scheduled_start_time: Option<OffsetDateTime>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "epoch::serialize"
    )]
    pub completed_time: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

impl From<model::ReplicationRun> for ReplicationRun {
    fn from(r: model::ReplicationRun) -> Self {
        Self {
            replication_run_id: r.replication_run_id,
            state: r.state,
            run_type: r.run_type,
            stage_details: r.stage_details.map(|d| StageDetails {
                stage: d.stage,
                stage_progress: d.stage_progress,
            }),
            status_message: r.status_message,
            ami_id: r.ami_id,
            scheduled_start_time: r.scheduled_start_time,
            completed_time: r.completed_time,
            description: r.description,
            encrypted: r.encrypted,
            kms_key_id: r.kms_key_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationJob {
    pub replication_job_id: String,
    pub server_id: String,
    pub server_type: ServerType,
    pub vm_server: VmServer,
    #[serde(serialize_with = "epoch::serialize")]
    pub seed_replication_time: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency: Option<u32>,
    pub run_once: bool,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "epoch::serialize"
    )]
    pub next_replication_run_start_time: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license_type: Option<LicenseType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_ami_id: Option<String>,
    pub state: ReplicationJobState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub number_of_recent_amis_to_keep: u32,
    pub encrypted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    pub replication_run_list: Vec<ReplicationRun>,
}

impl From<model::ReplicationJob> for ReplicationJob {
    fn from(j: model::ReplicationJob) -> Self {
        Self {
            replication_job_id: j.replication_job_id,
            server_id: j.server_id,
            server_type: j.server_type,
            vm_server: j.vm_server.into(),
            seed_replication_time: Some(j.seed_replication_time),
            frequency: j.frequency,
            run_once: j.run_once,
            next_replication_run_start_time: j.next_replication_run_start_time,
            license_type: j.license_type,
            role_name: j.role_name,
            latest_ami_id: j.latest_ami_id,
            state: j.state,
            status_message: j.status_message,
            description: j.description,
            number_of_recent_amis_to_keep: j.number_of_recent_amis_to_keep,
            encrypted: j.encrypted,
            kms_key_id: j.kms_key_id,
            replication_run_list: j.replication_run_list.into_iter().map(Into::into).collect(),
        }
    }
}

// ---------------------------------------------------------------- requests and responses

/// Requests whose only members are pagination.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetConnectorsRequest {
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetConnectorsResponse {
    pub connector_list: Vec<Connector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisassociateConnectorRequest {
    #[serde(default)]
    pub connector_id: Option<String>,
}

/// Input of the operations without input members; unknown members are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct EmptyRequest {}

/// Output of the operations without output members: `{}`.
#[derive(Debug, Default, Serialize)]
pub struct EmptyResponse {}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetServersRequest {
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub vm_server_address_list: Option<Vec<VmServerAddress>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetServersResponse {
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "epoch::serialize"
    )]
    pub last_modified_on: Option<OffsetDateTime>,
    pub server_catalog_status: ServerCatalogStatus,
    /// Tern's addition: why the last import failed (SMS clients ignore unknown members).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_catalog_status_message: Option<String>,
    pub server_list: Vec<Server>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateReplicationJobRequest {
    #[serde(default)]
    pub server_id: Option<String>,
    #[serde(default, with = "epoch")]
    pub seed_replication_time: Option<OffsetDateTime>,
    #[serde(default)]
    pub frequency: Option<i64>,
    #[serde(default)]
    pub run_once: Option<bool>,
    #[serde(default)]
    pub license_type: Option<LicenseType>,
    #[serde(default)]
    pub role_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub number_of_recent_amis_to_keep: Option<i64>,
    #[serde(default)]
    pub encrypted: Option<bool>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateReplicationJobResponse {
    pub replication_job_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetReplicationJobsRequest {
    #[serde(default)]
    pub replication_job_id: Option<String>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetReplicationJobsResponse {
    pub replication_job_list: Vec<ReplicationJob>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateReplicationJobRequest {
    #[serde(default)]
    pub replication_job_id: Option<String>,
    #[serde(default)]
    pub frequency: Option<i64>,
    #[serde(default, with = "epoch")]
    pub next_replication_run_start_time: Option<OffsetDateTime>,
    #[serde(default)]
    pub license_type: Option<LicenseType>,
    #[serde(default)]
    pub role_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub number_of_recent_amis_to_keep: Option<i64>,
    #[serde(default)]
    pub encrypted: Option<bool>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationJobIdRequest {
    #[serde(default)]
    pub replication_job_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartOnDemandReplicationRunRequest {
    #[serde(default)]
    pub replication_job_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartOnDemandReplicationRunResponse {
    pub replication_run_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetReplicationRunsRequest {
    #[serde(default)]
    pub replication_job_id: Option<String>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetReplicationRunsResponse {
    pub replication_job: ReplicationJob,
    pub replication_run_list: Vec<ReplicationRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_epoch_numbers() {
        let t = OffsetDateTime::from_unix_timestamp(1_704_067_200).unwrap();
        assert_eq!(
            serde_json::to_string(&epoch::to_number(&t)).unwrap(),
            "1704067200"
        );
        let t = epoch::from_f64(1_477_227_683.652).unwrap();
        assert_eq!(
            serde_json::to_string(&epoch::to_number(&t)).unwrap(),
            "1477227683.652"
        );
        assert!(epoch::from_f64(f64::NAN).is_none());
        assert!(epoch::from_f64(1e30).is_none());
    }
}
