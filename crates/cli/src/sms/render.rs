//! The SDK's output types as the SMS wire JSON: member names in camelCase, enums as their wire
//! strings, timestamps in epoch seconds, absent members left out.

use aws_sdk_sms::types::{
    Connector, ReplicationJob, ReplicationRun, Server, VmServer, VmServerAddress,
};
use aws_smithy_types::DateTime;
use serde_json::{json, Map, Value};

pub(crate) fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value);
    }
}

/// Epoch seconds as the wire carries them: an integer when whole, else a fraction.
pub(crate) fn time_json(t: &DateTime) -> Value {
    if t.subsec_nanos() == 0 {
        json!(t.secs())
    } else {
        json!(t.as_secs_f64())
    }
}

pub(crate) fn connector_json(c: &Connector) -> Value {
    let mut m = Map::new();
    put(&mut m, "connectorId", c.connector_id().map(Value::from));
    put(&mut m, "version", c.version().map(Value::from));
    put(&mut m, "status", c.status().map(|v| v.as_str().into()));
    put(
        &mut m,
        "capabilityList",
        c.capability_list
            .as_ref()
            .map(|l| l.iter().map(|v| Value::from(v.as_str())).collect()),
    );
    put(
        &mut m,
        "vmManagerName",
        c.vm_manager_name().map(Value::from),
    );
    put(
        &mut m,
        "vmManagerType",
        c.vm_manager_type().map(|v| v.as_str().into()),
    );
    put(&mut m, "vmManagerId", c.vm_manager_id().map(Value::from));
    put(&mut m, "ipAddress", c.ip_address().map(Value::from));
    put(&mut m, "macAddress", c.mac_address().map(Value::from));
    put(&mut m, "associatedOn", c.associated_on().map(time_json));
    Value::Object(m)
}

pub(crate) fn address_json(a: &VmServerAddress) -> Value {
    let mut m = Map::new();
    put(&mut m, "vmManagerId", a.vm_manager_id().map(Value::from));
    put(&mut m, "vmId", a.vm_id().map(Value::from));
    Value::Object(m)
}

pub(crate) fn vm_server_json(v: &VmServer) -> Value {
    let mut m = Map::new();
    put(
        &mut m,
        "vmServerAddress",
        v.vm_server_address().map(address_json),
    );
    put(&mut m, "vmName", v.vm_name().map(Value::from));
    put(
        &mut m,
        "vmManagerName",
        v.vm_manager_name().map(Value::from),
    );
    put(
        &mut m,
        "vmManagerType",
        v.vm_manager_type().map(|t| t.as_str().into()),
    );
    put(&mut m, "vmPath", v.vm_path().map(Value::from));
    Value::Object(m)
}

pub(crate) fn server_json(s: &Server) -> Value {
    let mut m = Map::new();
    put(&mut m, "serverId", s.server_id().map(Value::from));
    put(
        &mut m,
        "serverType",
        s.server_type().map(|t| t.as_str().into()),
    );
    put(&mut m, "vmServer", s.vm_server().map(vm_server_json));
    put(
        &mut m,
        "replicationJobId",
        s.replication_job_id().map(Value::from),
    );
    put(
        &mut m,
        "replicationJobTerminated",
        s.replication_job_terminated().map(Value::from),
    );
    Value::Object(m)
}

pub(crate) fn job_json(j: &ReplicationJob) -> Value {
    let mut m = Map::new();
    put(
        &mut m,
        "replicationJobId",
        j.replication_job_id().map(Value::from),
    );
    put(&mut m, "serverId", j.server_id().map(Value::from));
    put(
        &mut m,
        "serverType",
        j.server_type().map(|t| t.as_str().into()),
    );
    put(&mut m, "vmServer", j.vm_server().map(vm_server_json));
    put(
        &mut m,
        "seedReplicationTime",
        j.seed_replication_time().map(time_json),
    );
    put(&mut m, "frequency", j.frequency().map(Value::from));
    put(&mut m, "runOnce", j.run_once().map(Value::from));
    put(
        &mut m,
        "nextReplicationRunStartTime",
        j.next_replication_run_start_time().map(time_json),
    );
    put(
        &mut m,
        "licenseType",
        j.license_type().map(|t| t.as_str().into()),
    );
    put(&mut m, "roleName", j.role_name().map(Value::from));
    put(&mut m, "latestAmiId", j.latest_ami_id().map(Value::from));
    put(&mut m, "state", j.state().map(|t| t.as_str().into()));
    put(&mut m, "statusMessage", j.status_message().map(Value::from));
    put(&mut m, "description", j.description().map(Value::from));
    put(
        &mut m,
        "numberOfRecentAmisToKeep",
        j.number_of_recent_amis_to_keep().map(Value::from),
    );
    put(&mut m, "encrypted", j.encrypted().map(Value::from));
    put(&mut m, "kmsKeyId", j.kms_key_id().map(Value::from));
    put(
        &mut m,
        "replicationRunList",
        j.replication_run_list
            .as_ref()
            .map(|runs| runs.iter().map(run_json).collect()),
    );
    Value::Object(m)
}

pub(crate) fn run_json(r: &ReplicationRun) -> Value {
    let mut m = Map::new();
    put(
        &mut m,
        "replicationRunId",
        r.replication_run_id().map(Value::from),
    );
    put(&mut m, "state", r.state().map(|t| t.as_str().into()));
    put(&mut m, "type", r.r#type().map(|t| t.as_str().into()));
    put(
        &mut m,
        "stageDetails",
        r.stage_details().map(|d| {
            let mut s = Map::new();
            put(&mut s, "stage", d.stage().map(Value::from));
            put(&mut s, "stageProgress", d.stage_progress().map(Value::from));
            Value::Object(s)
        }),
    );
    put(&mut m, "statusMessage", r.status_message().map(Value::from));
    put(&mut m, "amiId", r.ami_id().map(Value::from));
    put(
        &mut m,
        "scheduledStartTime",
        r.scheduled_start_time().map(time_json),
    );
    put(&mut m, "completedTime", r.completed_time().map(time_json));
    put(&mut m, "description", r.description().map(Value::from));
    put(&mut m, "encrypted", r.encrypted().map(Value::from));
    put(&mut m, "kmsKeyId", r.kms_key_id().map(Value::from));
    Value::Object(m)
}
