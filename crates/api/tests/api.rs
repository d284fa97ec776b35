//! Drives `Api::handle` with raw JSON bodies against `MemoryStore`: every operation, the error
//! cases, authorization, and pagination across pages.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tern_api::{Api, Deps, Principal, CONNECTOR_TARGET_PREFIX, SMS_TARGET_PREFIX};
use tern_core::service::RunUpdate;
use tern_core::states::RunEvent;
use tern_core::{Clock, Config, ManualClock, MemoryStore, RandomIds};
use time::macros::datetime;

const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

struct Env {
    api: Api,
    clock: Arc<ManualClock>,
    admin: Principal,
    agent: Principal,
}

fn env_with(config: Config) -> Env {
    let clock = Arc::new(ManualClock::new(datetime!(2026-01-01 00:00 UTC)));
    let api = Api::new(Deps {
        store: Arc::new(MemoryStore::new()),
        clock: clock.clone(),
        ids: Arc::new(RandomIds),
        config,
    });
    Env {
        api,
        clock,
        admin: Principal::Admin {
            id: "AKIDADMIN".into(),
        },
        agent: Principal::Connector {
            id: "AKIDCONNECTOR".into(),
        },
    }
}

fn env() -> Env {
    env_with(Config::default())
}

/// Asserts a JSON document carries no `null` anywhere: absent members are omitted.
fn assert_no_nulls(v: &Value, path: &str) {
    match v {
        Value::Null => panic!("null at {path}"),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| assert_no_nulls(x, &format!("{path}[{i}]"))),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| assert_no_nulls(x, &format!("{path}.{k}"))),
        _ => {}
    }
}

impl Env {
    async fn raw(
        &self,
        target: Option<&str>,
        body: &[u8],
        who: &Principal,
    ) -> (u16, Value, Option<String>) {
        let r = self.api.handle(target, body, who).await;
        let v: Value = serde_json::from_slice(&r.body).expect("response body is JSON");
        assert_no_nulls(&v, "$");
        if let Some(t) = &r.error_type {
            assert_eq!(
                v["__type"],
                json!(t),
                "header and body agree on the error type"
            );
            assert!(v["message"].is_string());
        }
        (r.status, v, r.error_type)
    }

    async fn sms(&self, op: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = self
            .raw(
                Some(&format!("{SMS_TARGET_PREFIX}.{op}")),
                body.to_string().as_bytes(),
                &self.admin,
            )
            .await;
        (s, v)
    }

    async fn ok(&self, op: &str, body: Value) -> Value {
        let (s, v) = self.sms(op, body).await;
        assert_eq!(s, 200, "{op}: {v}");
        v
    }

    async fn err(&self, op: &str, body: Value, shape: &str) -> String {
        let (s, v) = self.sms(op, body).await;
        assert_eq!(v["__type"], json!(shape), "{op}: {v}");
        assert_eq!(
            s,
            if shape == "TemporarilyUnavailableException" {
                503
            } else {
                400
            }
        );
        v["message"].as_str().unwrap().to_string()
    }

    async fn conn(&self, op: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = self
            .raw(
                Some(&format!("{CONNECTOR_TARGET_PREFIX}.{op}")),
                body.to_string().as_bytes(),
                &self.agent,
            )
            .await;
        (s, v)
    }

    async fn conn_ok(&self, op: &str, body: Value) -> Value {
        let (s, v) = self.conn(op, body).await;
        assert_eq!(s, 200, "{op}: {v}");
        v
    }

    async fn register(&self, name: &str) -> String {
        let v = self
            .conn_ok(
                "RegisterConnector",
                json!({"name": name, "version": "1.0", "vmManagerId": format!("vc-{name}"),
                       "vmManagerName": "vcenter.lab", "vmManagerType": "VSPHERE",
                       "ipAddress": "10.0.0.5", "macAddress": "00:11:22:33:44:55",
                       "capabilityList": ["VSPHERE", "SMS_OPTIMIZED"]}),
            )
            .await;
        v["connectorId"].as_str().unwrap().to_string()
    }

    /// ImportServerCatalog, then the connector answers with `vms`.
    async fn import(&self, connector: &str, vms: Value) -> Value {
        self.ok("ImportServerCatalog", json!({})).await;
        let work = self
            .conn_ok("PollWork", json!({"connectorId": connector}))
            .await;
        let item = &work["workItems"][0];
        assert_eq!(item["kind"], "INVENTORY");
        let request = item["payload"]["requestId"].as_str().unwrap();
        self.conn_ok(
            "ReportInventory",
            json!({"connectorId": connector, "requestId": request, "vmList": vms}),
        )
        .await
    }

    async fn servers(&self) -> Vec<Value> {
        self.ok("GetServers", json!({"maxResults": 1000})).await["serverList"]
            .as_array()
            .unwrap()
            .clone()
    }
}

fn vm(id: &str, os: &str) -> Value {
    json!({"vmId": id, "vmName": format!("{id}-name"), "vmPath": "/DC1/vm", "osType": os,
           "disks": [{"path": format!("/d/{id}.qcow2"), "format": "qcow2", "sizeBytes": 1073741824}],
           "inspection": {"partitions": 2}})
}

fn server_id(servers: &[Value], vm_id: &str) -> String {
    servers
        .iter()
        .find(|s| s["vmServer"]["vmServerAddress"]["vmId"] == json!(vm_id))
        .unwrap()["serverId"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn principals_are_refused_each_others_operations() {
    let e = env();
    let (s, v, t) = e
        .raw(
            Some(&format!("{CONNECTOR_TARGET_PREFIX}.RegisterConnector")),
            b"{}",
            &e.admin,
        )
        .await;
    assert_eq!(
        (s, t.as_deref()),
        (400, Some("AccessDeniedException")),
        "{v}"
    );
    for op in ["GetConnectors", "CreateApp"] {
        let (s, _, t) = e
            .raw(Some(&format!("{SMS_TARGET_PREFIX}.{op}")), b"{}", &e.agent)
            .await;
        assert_eq!((s, t.as_deref()), (400, Some("AccessDeniedException")));
    }
}

#[tokio::test]
async fn protocol_errors() {
    let e = env();
    for target in [
        None,
        Some(""),
        Some("GetConnectors"),
        Some("Nope.GetConnectors"),
        Some("AWSServerMigrationService_V2016_10_24.DescribeEverything"),
        Some("TernConnectorService_V1.GetConnectors"),
    ] {
        let (s, v, t) = e.raw(target, b"{}", &e.admin).await;
        assert_eq!(
            (s, t.as_deref()),
            (400, Some("UnknownOperationException")),
            "{target:?}: {v}"
        );
    }
    let target = format!("{SMS_TARGET_PREFIX}.GetReplicationJobs");
    for body in [
        &b"{"[..],
        b"[]",
        b"\"x\"",
        b"{\"maxResults\": \"5\"}",
        b"{\"replicationJobId\": 7}",
    ] {
        let (s, v, t) = e.raw(Some(&target), body, &e.admin).await;
        assert_eq!(
            (s, t.as_deref()),
            (400, Some("SerializationException")),
            "{}: {v}",
            String::from_utf8_lossy(body)
        );
    }
    // An empty body counts as {}, and unknown members are ignored.
    let (s, v, _) = e.raw(Some(&target), b"", &e.admin).await;
    assert_eq!((s, v), (200, json!({"replicationJobList": []})));
    let v = e
        .ok("GetReplicationJobs", json!({"someFutureMember": {"x": 1}}))
        .await;
    assert_eq!(v, json!({"replicationJobList": []}));
    // maxResults below 1.
    e.err(
        "GetReplicationJobs",
        json!({"maxResults": 0}),
        "InvalidParameterException",
    )
    .await;
    e.err(
        "GetServers",
        json!({"nextToken": "garbage"}),
        "InvalidParameterException",
    )
    .await;
}

/// All 35 SMS operations are routed; one that needs a part the host was started without (this
/// API has no launcher and no replication attached) says which part, never "unknown".
#[tokio::test]
async fn every_sms_operation_is_served_and_a_missing_part_is_named() {
    let e = env();
    let mut ops = tern_api::SMS_OPERATIONS.to_vec();
    ops.sort_unstable();
    ops.dedup();
    assert_eq!(ops.len(), 35);
    let app = "app-0123456789abcdef0";
    for (op, part) in [
        ("LaunchApp", "needs a launcher"),
        ("TerminateApp", "needs a launcher"),
        ("GenerateTemplate", "needs the staging bucket"),
        ("GenerateChangeSet", "needs the staging bucket"),
    ] {
        let msg = e
            .err(op, json!({"appId": app}), "OperationNotPermittedException")
            .await;
        assert!(msg.starts_with(op) && msg.contains(part), "{op}: {msg}");
    }
}

#[tokio::test]
async fn connectors_register_heartbeat_list_and_disassociate() {
    let e = env();
    let id = e.register("lab").await;
    assert!(id.starts_with("c-") && id.len() == 19, "{id}");
    let v = e.ok("GetConnectors", json!({})).await;
    assert_eq!(
        v["connectorList"][0],
        json!({"connectorId": id, "version": "1.0", "status": "HEALTHY",
               "capabilityList": ["VSPHERE", "SMS_OPTIMIZED"], "vmManagerName": "vcenter.lab",
               "vmManagerType": "VSPHERE", "vmManagerId": "vc-lab", "ipAddress": "10.0.0.5",
               "macAddress": "00:11:22:33:44:55", "associatedOn": T0})
    );
    // Heartbeats stop: UNHEALTHY; one heartbeat: HEALTHY again.
    e.clock.advance(Duration::from_secs(301));
    assert_eq!(
        e.ok("GetConnectors", json!({})).await["connectorList"][0]["status"],
        "UNHEALTHY"
    );
    e.err(
        "ImportServerCatalog",
        json!({}),
        "NoConnectorsAvailableException",
    )
    .await;
    e.conn_ok("SendHeartbeat", json!({"connectorId": id})).await;
    assert_eq!(
        e.ok("GetConnectors", json!({})).await["connectorList"][0]["status"],
        "HEALTHY"
    );

    // Re-registering with its id keeps it.
    let again = e
        .conn_ok(
            "RegisterConnector",
            json!({"connectorId": id, "name": "lab", "version": "1.1", "vmManagerId": "vc-lab"}),
        )
        .await;
    assert_eq!(again["connectorId"], json!(id));

    let (s, v) = e.conn("RegisterConnector", json!({"version": "1"})).await;
    assert_eq!(
        (s, &v["__type"]),
        (400, &json!("MissingRequiredParameterException")),
        "{v}"
    );
    let (_, v) = e
        .conn(
            "RegisterConnector",
            json!({"name": "x", "version": "1", "vmManagerId": "v", "vmManagerType": "VMWARE"}),
        )
        .await;
    assert_eq!(v["__type"], "InvalidParameterException", "{v}");
    let (_, v) = e
        .conn(
            "SendHeartbeat",
            json!({"connectorId": "c-00000000000000000"}),
        )
        .await;
    assert_eq!(v["__type"], "InvalidParameterException");

    e.conn_ok(
        "ReportError",
        json!({"connectorId": id, "message": "vCenter unreachable"}),
    )
    .await;
    e.err(
        "DisassociateConnector",
        json!({}),
        "MissingRequiredParameterException",
    )
    .await;
    e.err(
        "DisassociateConnector",
        json!({"connectorId": "c-00000000000000000"}),
        "InvalidParameterException",
    )
    .await;
    assert_eq!(
        e.ok("DisassociateConnector", json!({"connectorId": id}))
            .await,
        json!({})
    );
    assert_eq!(
        e.ok("GetConnectors", json!({})).await,
        json!({"connectorList": []})
    );
    let (_, v) = e.conn("SendHeartbeat", json!({"connectorId": id})).await;
    assert_eq!(v["__type"], "OperationNotPermittedException");
    e.err(
        "DisassociateConnector",
        json!({"connectorId": id}),
        "OperationNotPermittedException",
    )
    .await;
}

#[tokio::test]
async fn catalog_import_filter_and_delete() {
    let e = env();
    let v = e.ok("GetServers", json!({})).await;
    assert_eq!(
        v,
        json!({"serverCatalogStatus": "NOT_IMPORTED", "serverList": [], "lastModifiedOn": T0})
    );
    e.err(
        "ImportServerCatalog",
        json!({}),
        "NoConnectorsAvailableException",
    )
    .await;
    let c = e.register("lab").await;

    e.ok("ImportServerCatalog", json!({})).await;
    assert_eq!(
        e.ok("GetServers", json!({})).await["serverCatalogStatus"],
        "IMPORTING"
    );
    let work = e.conn_ok("PollWork", json!({"connectorId": c})).await;
    let request = work["workItems"][0]["payload"]["requestId"]
        .as_str()
        .unwrap()
        .to_string();
    e.clock.advance(Duration::from_millis(1500));
    let out = e
        .conn_ok(
            "ReportInventory",
            json!({"connectorId": c, "requestId": request,
                   "vmList": [vm("vm-1", "LINUX"), vm("vm-2", "WINDOWS"), {"vmId": ""}, vm("vm-1", "LINUX")]}),
        )
        .await;
    assert_eq!(out["acceptedCount"], 2);
    assert_eq!(out["rejectedList"].as_array().unwrap().len(), 2);

    let v = e.ok("GetServers", json!({})).await;
    assert_eq!(v["serverCatalogStatus"], "AVAILABLE");
    assert_eq!(v["lastModifiedOn"], json!(T0 as f64 + 1.5));
    let servers = v["serverList"].as_array().unwrap();
    let s1 = server_id(servers, "vm-1");
    let one = servers.iter().find(|s| s["serverId"] == json!(s1)).unwrap();
    assert_eq!(
        one,
        &json!({"serverId": s1, "serverType": "VIRTUAL_MACHINE",
                "vmServer": {"vmServerAddress": {"vmManagerId": "vc-lab", "vmId": "vm-1"},
                             "vmName": "vm-1-name", "vmManagerName": "vcenter.lab",
                             "vmManagerType": "VSPHERE", "vmPath": "/DC1/vm"}})
    );

    // The vmServerAddressList filter.
    let v = e
        .ok("GetServers", json!({"vmServerAddressList": [{"vmManagerId": "vc-lab", "vmId": "vm-1"},
                                                          {"vmManagerId": "vc-lab", "vmId": "nope"}]}))
        .await;
    assert_eq!(v["serverList"].as_array().unwrap().len(), 1);
    assert_eq!(v["serverList"][0]["serverId"], json!(s1));
    e.err(
        "GetServers",
        json!({"vmServerAddressList": [{"vmId": "vm-1"}]}),
        "MissingRequiredParameterException",
    )
    .await;

    // Re-import: ids stay, vm-2 vanishes (kept, marked), cannot get a job.
    let out = e.import(&c, json!([vm("vm-1", "LINUX")])).await;
    assert_eq!(
        (out["acceptedCount"].clone(), out["vanishedCount"].clone()),
        (json!(1), json!(1))
    );
    let servers = e.servers().await;
    assert_eq!(servers.len(), 2);
    assert_eq!(server_id(&servers, "vm-1"), s1);
    let s2 = server_id(&servers, "vm-2");
    e.err(
        "CreateReplicationJob",
        json!({"serverId": s2, "seedReplicationTime": T0 + 60, "frequency": 12}),
        "ServerCannotBeReplicatedException",
    )
    .await;

    assert_eq!(e.ok("DeleteServerCatalog", json!({})).await, json!({}));
    let v = e.ok("GetServers", json!({})).await;
    assert_eq!(v["serverCatalogStatus"], "DELETED");
    assert_eq!(v["serverList"], json!([]));
    // A stale answer after the delete is refused instead of refilling the catalog.
    let (_, v) = e
        .conn(
            "ReportInventory",
            json!({"connectorId": c, "requestId": request, "vmList": []}),
        )
        .await;
    assert_eq!(v["__type"], "OperationNotPermittedException");
    e.import(&c, json!([vm("vm-1", "LINUX")])).await;
    assert_eq!(server_id(&e.servers().await, "vm-1"), s1);

    // ReportError closes an inventory request.
    e.ok("ImportServerCatalog", json!({})).await;
    let work = e.conn_ok("PollWork", json!({"connectorId": c})).await;
    let wid = work["workItems"][0]["workId"].as_str().unwrap();
    assert_eq!(
        e.ok("GetServers", json!({})).await["serverCatalogStatus"],
        "IMPORTING"
    );
    e.conn_ok(
        "ReportError",
        json!({"connectorId": c, "workId": wid, "message": "disk unreadable"}),
    )
    .await;
    assert_eq!(
        e.ok("GetServers", json!({})).await["serverCatalogStatus"],
        "AVAILABLE"
    );
}

#[tokio::test]
async fn replication_jobs_and_runs_end_to_end() {
    let e = env();
    let c = e.register("lab").await;
    e.import(&c, json!([vm("lin", "LINUX"), vm("win", "WINDOWS")]))
        .await;
    let servers = e.servers().await;
    let lin = server_id(&servers, "lin");
    let win = server_id(&servers, "win");

    // Validation.
    let base = json!({"serverId": lin, "seedReplicationTime": T0 + 3600, "frequency": 12});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (body, shape) in [
        (with("frequency", json!(0)), "InvalidParameterException"),
        (with("frequency", json!(25)), "InvalidParameterException"),
        (with("frequency", json!(1.5)), "SerializationException"),
        (
            with("numberOfRecentAmisToKeep", json!(271)),
            "InvalidParameterException",
        ),
        (
            with("seedReplicationTime", json!(T0 + 31 * 86_400)),
            "InvalidParameterException",
        ),
        (
            with("seedReplicationTime", json!("2026-01-02T00:00:00Z")),
            "SerializationException",
        ),
        (
            with("licenseType", json!("AWS")),
            "InvalidParameterException",
        ),
        (
            with("licenseType", json!("aws")),
            "InvalidParameterException",
        ),
        (
            with("serverId", json!("s-00000000000000000")),
            "InvalidParameterException",
        ),
        (
            with("serverId", json!("")),
            "MissingRequiredParameterException",
        ),
        (
            json!({"serverId": lin, "frequency": 12}),
            "MissingRequiredParameterException",
        ),
    ] {
        e.err("CreateReplicationJob", body.clone(), shape).await;
    }

    // Linux + BYOL with a fractional seed time.
    let job = e
        .ok("CreateReplicationJob", json!({"serverId": lin, "seedReplicationTime": T0 as f64 + 3600.25,
                                           "frequency": 12, "licenseType": "BYOL", "roleName": "sms",
                                           "numberOfRecentAmisToKeep": 3, "encrypted": true}))
        .await["replicationJobId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(job.starts_with("sms-job-"));
    let msg = e
        .err(
            "CreateReplicationJob",
            base.clone(),
            "ReplicationJobAlreadyExistsException",
        )
        .await;
    assert!(msg.contains(&job), "{msg}");

    let v = e
        .ok("GetReplicationJobs", json!({"replicationJobId": job}))
        .await;
    let j = &v["replicationJobList"][0];
    assert_eq!(
        j,
        &json!({"replicationJobId": job, "serverId": lin, "serverType": "VIRTUAL_MACHINE",
                "vmServer": {"vmServerAddress": {"vmManagerId": "vc-lab", "vmId": "lin"},
                             "vmName": "lin-name", "vmManagerName": "vcenter.lab",
                             "vmManagerType": "VSPHERE", "vmPath": "/DC1/vm"},
                "seedReplicationTime": T0 as f64 + 3600.25, "frequency": 12, "runOnce": false,
                "nextReplicationRunStartTime": T0 as f64 + 3600.25, "licenseType": "BYOL",
                "roleName": "sms", "state": "PENDING", "numberOfRecentAmisToKeep": 3,
                "encrypted": true, "replicationRunList": []})
    );
    let servers = e.servers().await;
    let s = servers
        .iter()
        .find(|s| s["serverId"] == json!(lin))
        .unwrap();
    assert_eq!(
        (&s["replicationJobId"], &s["replicationJobTerminated"]),
        (&json!(job), &json!(false))
    );

    // Update.
    e.err(
        "UpdateReplicationJob",
        json!({}),
        "MissingRequiredParameterException",
    )
    .await;
    e.err(
        "UpdateReplicationJob",
        json!({"replicationJobId": "sms-job-00000000000000000"}),
        "ReplicationJobNotFoundException",
    )
    .await;
    e.err(
        "UpdateReplicationJob",
        json!({"replicationJobId": job, "frequency": 30}),
        "InvalidParameterException",
    )
    .await;
    e.err(
        "UpdateReplicationJob",
        json!({"replicationJobId": job, "licenseType": "AWS"}),
        "InvalidParameterException",
    )
    .await;
    assert_eq!(
        e.ok(
            "UpdateReplicationJob",
            json!({"replicationJobId": job, "frequency": 6, "description": "nightly",
                                            "nextReplicationRunStartTime": T0 + 7200})
        )
        .await,
        json!({})
    );
    let j = e
        .ok("GetReplicationJobs", json!({"replicationJobId": job}))
        .await["replicationJobList"][0]
        .clone();
    assert_eq!(
        (j["frequency"].clone(), j["description"].clone()),
        (json!(6), json!("nightly"))
    );
    assert_eq!(j["nextReplicationRunStartTime"], json!(T0 + 7200));

    // On-demand runs: one at a time, two per 24 h.
    e.err(
        "StartOnDemandReplicationRun",
        json!({}),
        "MissingRequiredParameterException",
    )
    .await;
    e.err(
        "StartOnDemandReplicationRun",
        json!({"replicationJobId": "sms-job-00000000000000000"}),
        "InvalidParameterException",
    )
    .await;
    let run1 = e
        .ok(
            "StartOnDemandReplicationRun",
            json!({"replicationJobId": job, "description": "now"}),
        )
        .await["replicationRunId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(run1.starts_with("sms-run-"));
    e.err(
        "StartOnDemandReplicationRun",
        json!({"replicationJobId": job}),
        "OperationNotPermittedException",
    )
    .await;
    let svc = e.api.service();
    let upd = |event, ami: Option<&str>| RunUpdate {
        event,
        stage_details: Some(tern_core::model::StageDetails {
            stage: Some("Completed".into()),
            stage_progress: Some("100%".into()),
        }),
        status_message: None,
        ami_id: ami.map(Into::into),
        snapshot_ids: Vec::new(),
    };
    svc.record_run(&job, &run1, upd(RunEvent::Start, None))
        .await
        .unwrap();
    e.clock.advance(Duration::from_secs(600));
    svc.record_run(
        &job,
        &run1,
        upd(RunEvent::Complete, Some("ami-0123456789abcdef0")),
    )
    .await
    .unwrap();
    let run2 = e
        .ok(
            "StartOnDemandReplicationRun",
            json!({"replicationJobId": job}),
        )
        .await["replicationRunId"]
        .as_str()
        .unwrap()
        .to_string();
    svc.record_run(&job, &run2, upd(RunEvent::Fail, None))
        .await
        .unwrap();
    e.err(
        "StartOnDemandReplicationRun",
        json!({"replicationJobId": job}),
        "ReplicationRunLimitExceededException",
    )
    .await;

    let v = e
        .ok("GetReplicationRuns", json!({"replicationJobId": job}))
        .await;
    assert_eq!(v["replicationJob"]["replicationJobId"], json!(job));
    assert_eq!(v["replicationJob"]["latestAmiId"], "ami-0123456789abcdef0");
    assert_eq!(v["replicationJob"]["state"], "FAILING");
    // Newest first.
    let runs = v["replicationRunList"].as_array().unwrap();
    assert_eq!(
        runs[1],
        json!({"replicationRunId": run1, "state": "COMPLETED", "type": "ON_DEMAND",
               "stageDetails": {"stage": "Completed", "stageProgress": "100%"},
               "amiId": "ami-0123456789abcdef0", "scheduledStartTime": T0,
               "completedTime": T0 + 600, "description": "now", "encrypted": true})
    );
    assert_eq!(runs[0]["state"], "FAILED");
    assert!(v.get("nextToken").is_none());
    // The job embeds its recent runs too.
    let j = e.ok("GetReplicationJobs", json!({})).await["replicationJobList"][0].clone();
    assert_eq!(j["replicationRunList"].as_array().unwrap().len(), 2);
    e.err(
        "GetReplicationRuns",
        json!({}),
        "MissingRequiredParameterException",
    )
    .await;
    e.err(
        "GetReplicationRuns",
        json!({"replicationJobId": "sms-job-00000000000000000"}),
        "InvalidParameterException",
    )
    .await;

    // runOnce on the Windows server with an AWS license.
    let once = e
        .ok("CreateReplicationJob", json!({"serverId": win, "seedReplicationTime": T0, "runOnce": true, "licenseType": "AWS"}))
        .await["replicationJobId"].as_str().unwrap().to_string();
    let j = e
        .ok("GetReplicationJobs", json!({"replicationJobId": once}))
        .await["replicationJobList"][0]
        .clone();
    assert_eq!(
        (j["runOnce"].clone(), j.get("frequency")),
        (json!(true), None)
    );

    // Delete keeps the job's AMI record and marks the server.
    e.err(
        "DeleteServerCatalog",
        json!({}),
        "OperationNotPermittedException",
    )
    .await;
    e.err(
        "DisassociateConnector",
        json!({"connectorId": c}),
        "OperationNotPermittedException",
    )
    .await;
    e.err(
        "DeleteReplicationJob",
        json!({}),
        "MissingRequiredParameterException",
    )
    .await;
    e.err(
        "DeleteReplicationJob",
        json!({"replicationJobId": "sms-job-00000000000000000"}),
        "ReplicationJobNotFoundException",
    )
    .await;
    assert_eq!(
        e.ok("DeleteReplicationJob", json!({"replicationJobId": job}))
            .await,
        json!({})
    );
    let j = e
        .ok("GetReplicationJobs", json!({"replicationJobId": job}))
        .await["replicationJobList"][0]
        .clone();
    assert_eq!(
        (j["state"].clone(), j["latestAmiId"].clone()),
        (json!("DELETED"), json!("ami-0123456789abcdef0"))
    );
    let listed = e.ok("GetReplicationJobs", json!({})).await["replicationJobList"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed, 2, "the live job and the deleted one (R17)");
    let s = e
        .servers()
        .await
        .into_iter()
        .find(|s| s["serverId"] == json!(lin))
        .unwrap();
    assert_eq!(s["replicationJobTerminated"], json!(true));
    e.err(
        "DeleteReplicationJob",
        json!({"replicationJobId": job}),
        "ReplicationJobNotFoundException",
    )
    .await;
    e.err(
        "StartOnDemandReplicationRun",
        json!({"replicationJobId": job}),
        "OperationNotPermittedException",
    )
    .await;
    // The server can get a new job now.
    e.ok("CreateReplicationJob", base.clone()).await;
}

#[tokio::test]
async fn active_job_limit_is_a_clear_error() {
    let mut config = Config::default();
    config.limits.max_active_jobs = 2;
    let e = env_with(config);
    let c = e.register("lab").await;
    e.import(
        &c,
        json!([vm("a", "LINUX"), vm("b", "LINUX"), vm("c", "LINUX")]),
    )
    .await;
    let servers = e.servers().await;
    for vm_id in ["a", "b"] {
        e.ok("CreateReplicationJob", json!({"serverId": server_id(&servers, vm_id), "seedReplicationTime": T0, "frequency": 1})).await;
    }
    let msg = e
        .err("CreateReplicationJob", json!({"serverId": server_id(&servers, "c"), "seedReplicationTime": T0, "frequency": 1}),
             "OperationNotPermittedException")
        .await;
    assert!(msg.contains("limit of 2 active replication jobs"), "{msg}");
}

/// Walks a listing page by page; returns the pages' sizes and every item's `id_member`.
async fn walk(
    e: &Env,
    op: &str,
    base: Value,
    list: &str,
    id_member: &str,
    page: u32,
) -> (Vec<usize>, Vec<String>) {
    let mut sizes = Vec::new();
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut body = base.clone();
        body["maxResults"] = json!(page);
        if let Some(t) = &token {
            body["nextToken"] = json!(t);
        }
        let v = e.ok(op, body).await;
        let items = v[list].as_array().unwrap();
        sizes.push(items.len());
        ids.extend(
            items
                .iter()
                .map(|i| i[id_member].as_str().unwrap().to_string()),
        );
        match v.get("nextToken") {
            Some(t) => token = Some(t.as_str().unwrap().to_string()),
            None => return (sizes, ids),
        }
        assert!(sizes.len() < 50, "pagination does not end");
    }
}

#[tokio::test]
async fn pagination_across_pages() {
    let mut config = Config::default();
    config.limits.max_page_size = 4;
    config.limits.on_demand_runs_per_window = 100;
    let e = env_with(config);
    let mut connectors = Vec::new();
    for i in 0..5 {
        connectors.push(e.register(&format!("c{i}")).await);
    }
    let (sizes, ids) = walk(
        &e,
        "GetConnectors",
        json!({}),
        "connectorList",
        "connectorId",
        2,
    )
    .await;
    assert_eq!(sizes, vec![2, 2, 1]);
    let mut expected = connectors.clone();
    expected.sort();
    assert_eq!(ids, expected);

    // Only the first connector answers; the others' requests time out of IMPORTING later.
    e.ok("ImportServerCatalog", json!({})).await;
    let c = &connectors[0];
    let work = e.conn_ok("PollWork", json!({"connectorId": c})).await;
    let request = work["workItems"][0]["workId"].as_str().unwrap().to_string();
    let vms: Vec<Value> = (0..7).map(|i| vm(&format!("vm-{i}"), "LINUX")).collect();
    e.conn_ok(
        "ReportInventory",
        json!({"connectorId": c, "requestId": request, "vmList": vms}),
    )
    .await;
    let (sizes, servers) = walk(&e, "GetServers", json!({}), "serverList", "serverId", 3).await;
    assert_eq!(sizes, vec![3, 3, 1]);
    assert_eq!(servers.len(), 7);
    let mut unique = servers.clone();
    unique.dedup();
    assert_eq!(unique.len(), 7);
    // maxResults above the cap is capped.
    let v = e.ok("GetServers", json!({"maxResults": 1000})).await;
    assert_eq!(v["serverList"].as_array().unwrap().len(), 4);
    assert!(v.get("nextToken").is_some());
    // The address filter pages too.
    let filter: Vec<Value> = (0..5)
        .map(|i| json!({"vmManagerId": "vc-c0", "vmId": format!("vm-{i}")}))
        .collect();
    let (sizes, _) = walk(
        &e,
        "GetServers",
        json!({"vmServerAddressList": filter}),
        "serverList",
        "serverId",
        2,
    )
    .await;
    assert_eq!(sizes, vec![2, 2, 1]);

    let mut jobs = Vec::new();
    for s in &servers {
        let v = e
            .ok(
                "CreateReplicationJob",
                json!({"serverId": s, "seedReplicationTime": T0, "frequency": 24}),
            )
            .await;
        jobs.push(v["replicationJobId"].as_str().unwrap().to_string());
    }
    let (sizes, listed) = walk(
        &e,
        "GetReplicationJobs",
        json!({}),
        "replicationJobList",
        "replicationJobId",
        3,
    )
    .await;
    assert_eq!(sizes, vec![3, 3, 1]);
    jobs.sort();
    assert_eq!(listed, jobs);
    // A token of one listing is refused by another.
    let v = e.ok("GetReplicationJobs", json!({"maxResults": 1})).await;
    let t = v["nextToken"].as_str().unwrap();
    e.err(
        "GetServers",
        json!({"nextToken": t}),
        "InvalidParameterException",
    )
    .await;

    // Runs of one job, in creation order.
    let job = &jobs[0];
    let mut runs = Vec::new();
    for _ in 0..5 {
        let r = e
            .ok(
                "StartOnDemandReplicationRun",
                json!({"replicationJobId": job}),
            )
            .await["replicationRunId"]
            .as_str()
            .unwrap()
            .to_string();
        let svc = e.api.service();
        let ev = |event| RunUpdate {
            event,
            stage_details: None,
            status_message: None,
            ami_id: None,
            snapshot_ids: Vec::new(),
        };
        svc.record_run(job, &r, ev(RunEvent::Start)).await.unwrap();
        let done = RunUpdate {
            ami_id: Some(format!("ami-{}", runs.len())),
            ..ev(RunEvent::Complete)
        };
        svc.record_run(job, &r, done).await.unwrap();
        runs.push(r);
        e.clock.advance(Duration::from_secs(60));
    }
    let (sizes, listed) = walk(
        &e,
        "GetReplicationRuns",
        json!({"replicationJobId": job}),
        "replicationRunList",
        "replicationRunId",
        2,
    )
    .await;
    assert_eq!(sizes, vec![2, 2, 1]);
    runs.reverse();
    assert_eq!(listed, runs, "newest first");
    let _ = e.clock.now();
}

/// Lists the jobs (one page) and checks that every listed job is exactly what
/// GetReplicationJobs by id answers.
async fn listed_as_by_id(e: &Env) -> Vec<Value> {
    let listing = e.ok("GetReplicationJobs", json!({})).await;
    let list = listing["replicationJobList"].as_array().unwrap().clone();
    for job in &list {
        let by_id = e
            .ok(
                "GetReplicationJobs",
                json!({"replicationJobId": job["replicationJobId"]}),
            )
            .await;
        assert_eq!(&by_id["replicationJobList"][0], job);
    }
    list
}

/// A store that keeps JSON text, as SQLite does: raw reads hand bodies out as text, so job
/// listings go through the rendering cache.
struct TextStore(MemoryStore);

#[async_trait::async_trait]
impl tern_core::Store for TextStore {
    async fn get(
        &self,
        key: &tern_core::store::Key,
    ) -> Result<Option<tern_core::store::Item>, tern_core::store::StoreError> {
        self.0.get(key).await
    }
    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<tern_core::store::Page, tern_core::store::StoreError> {
        self.0.query(pk, sk_prefix, after, limit).await
    }
    async fn transact(
        &self,
        writes: Vec<tern_core::store::Write>,
    ) -> Result<(), tern_core::store::StoreError> {
        self.0.transact(writes).await
    }
    async fn query_raw(
        &self,
        pk: &str,
        sk_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<tern_core::store::RawPage, tern_core::store::StoreError> {
        let page = self.0.query(pk, sk_prefix, after, limit).await?;
        Ok(tern_core::store::RawPage {
            items: page
                .items
                .into_iter()
                .map(|i| tern_core::store::RawItem {
                    key: i.key,
                    version: i.version,
                    body: tern_core::store::Body::Text(i.body.to_string()),
                })
                .collect(),
            last_sk: page.last_sk,
        })
    }
}

#[tokio::test]
async fn job_listings_follow_every_change_of_a_job() {
    let clock = Arc::new(ManualClock::new(datetime!(2026-01-01 00:00 UTC)));
    let e = Env {
        api: Api::new(Deps {
            store: Arc::new(TextStore(MemoryStore::new())),
            clock: clock.clone(),
            ids: Arc::new(RandomIds),
            config: Config::default(),
        }),
        clock,
        admin: Principal::Admin {
            id: "AKIDADMIN".into(),
        },
        agent: Principal::Connector {
            id: "AKIDCONNECTOR".into(),
        },
    };
    let c = e.register("lab").await;
    e.import(&c, json!([vm("a", "LINUX"), vm("b", "WINDOWS")]))
        .await;
    let servers = e.servers().await;
    let mut ids = Vec::new();
    for vm_id in ["a", "b"] {
        let created = e
            .ok(
                "CreateReplicationJob",
                json!({"serverId": server_id(&servers, vm_id), "seedReplicationTime": T0 + 3600,
                       "frequency": 12, "description": "first"}),
            )
            .await;
        ids.push(created["replicationJobId"].as_str().unwrap().to_string());
    }
    // Every listed job is exactly what GetReplicationJobs by id answers, before and after
    // changes (the second listing of unchanged jobs comes from the cache).
    let first = listed_as_by_id(&e).await;
    assert_eq!(first.len(), 2);
    assert_eq!(listed_as_by_id(&e).await, first);

    e.ok(
        "UpdateReplicationJob",
        json!({"replicationJobId": ids[0], "description": "second", "frequency": 6}),
    )
    .await;
    let after = listed_as_by_id(&e).await;
    let changed = after
        .iter()
        .find(|j| j["replicationJobId"] == json!(ids[0]))
        .unwrap();
    assert_eq!(
        (&changed["description"], &changed["frequency"]),
        (&json!("second"), &json!(6))
    );

    // Pages of one carry a token; the last page none.
    let page = e.ok("GetReplicationJobs", json!({"maxResults": 1})).await;
    assert_eq!(page["replicationJobList"].as_array().unwrap().len(), 1);
    let token = page["nextToken"].as_str().unwrap().to_string();
    let last = e
        .ok(
            "GetReplicationJobs",
            json!({"maxResults": 1, "nextToken": token}),
        )
        .await;
    assert_eq!(last["replicationJobList"].as_array().unwrap().len(), 1);
    assert!(last.get("nextToken").is_none());

    e.ok("DeleteReplicationJob", json!({"replicationJobId": ids[1]}))
        .await;
    // The deleted job stays listed, as DELETED (R17).
    let left = listed_as_by_id(&e).await;
    let states: Vec<_> = left
        .iter()
        .map(|j| (j["replicationJobId"].clone(), j["state"].clone()))
        .collect();
    let mut want = vec![
        (json!(ids[0]), json!("PENDING")),
        (json!(ids[1]), json!("DELETED")),
    ];
    want.sort_by_key(|(id, _)| id.as_str().unwrap().to_string());
    assert_eq!(states, want);
}
