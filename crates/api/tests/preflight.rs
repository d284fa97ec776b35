//! Preflight through the wire (connector ReportInventory → GetServers → CreateReplicationJob):
//! a server the import rules refuse is refused with the rule's name and GetServers says why;
//! warnings show with the server and do not stop a job.

use std::sync::Arc;

use serde_json::{json, Value};
use tern_api::{Api, Deps, Principal, CONNECTOR_TARGET_PREFIX, SMS_TARGET_PREFIX};
use tern_core::{Config, ManualClock, MemoryStore, RandomIds};
use time::macros::datetime;

const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

struct Env {
    api: Api,
    admin: Principal,
    agent: Principal,
}

fn env() -> Env {
    let clock = Arc::new(ManualClock::new(datetime!(2026-01-01 00:00 UTC)));
    Env {
        api: Api::new(Deps {
            store: Arc::new(MemoryStore::new()),
            clock,
            ids: Arc::new(RandomIds),
            config: Config::default(),
        }),
        admin: Principal::Admin {
            id: "AKIDADMIN".into(),
        },
        agent: Principal::Connector {
            id: "AKIDCONNECTOR".into(),
        },
    }
}

impl Env {
    async fn call(&self, prefix: &str, op: &str, body: Value, who: &Principal) -> (u16, Value) {
        let target = format!("{prefix}.{op}");
        let r = self
            .api
            .handle(Some(&target), body.to_string().as_bytes(), who)
            .await;
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }

    async fn ok(&self, op: &str, body: Value) -> Value {
        let (s, v) = self.call(SMS_TARGET_PREFIX, op, body, &self.admin).await;
        assert_eq!(s, 200, "{op}: {v}");
        v
    }

    /// The error's `__type` and message.
    async fn err(&self, op: &str, body: Value) -> (String, String) {
        let (s, v) = self.call(SMS_TARGET_PREFIX, op, body, &self.admin).await;
        assert_eq!(s, 400, "{op}: {v}");
        (
            v["__type"].as_str().unwrap().to_string(),
            v["message"].as_str().unwrap().to_string(),
        )
    }

    async fn conn_ok(&self, op: &str, body: Value) -> Value {
        let (s, v) = self
            .call(CONNECTOR_TARGET_PREFIX, op, body, &self.agent)
            .await;
        assert_eq!(s, 200, "{op}: {v}");
        v
    }

    /// Registers a connector and imports `vms` through it; returns `vmId → server`.
    async fn import(&self, vms: Value) -> std::collections::HashMap<String, Value> {
        let c = self
            .conn_ok(
                "RegisterConnector",
                json!({"name": "pre", "version": "1.0", "vmManagerId": "vc-pre",
                       "vmManagerType": "VSPHERE", "capabilityList": ["VSPHERE"]}),
            )
            .await["connectorId"]
            .as_str()
            .unwrap()
            .to_string();
        self.ok("ImportServerCatalog", json!({})).await;
        let work = self.conn_ok("PollWork", json!({"connectorId": c})).await;
        let request = work["workItems"][0]["payload"]["requestId"].clone();
        let out = self
            .conn_ok(
                "ReportInventory",
                json!({"connectorId": c, "requestId": request, "vmList": vms}),
            )
            .await;
        assert_eq!(
            out["acceptedCount"],
            json!(vms.as_array().unwrap().len()),
            "{out}"
        );
        let servers = self.ok("GetServers", json!({})).await["serverList"].clone();
        servers
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let id = s["vmServer"]["vmServerAddress"]["vmId"].as_str().unwrap();
                (id.to_string(), s.clone())
            })
            .collect()
    }

    async fn create(
        &self,
        server: &Value,
        license: Option<&str>,
    ) -> Result<String, (String, String)> {
        let mut body = json!({"serverId": server["serverId"], "seedReplicationTime": T0 + 3600,
                              "frequency": 12});
        if let Some(l) = license {
            body["licenseType"] = json!(l);
        }
        let (s, v) = self
            .call(
                SMS_TARGET_PREFIX,
                "CreateReplicationJob",
                body.clone(),
                &self.admin,
            )
            .await;
        if s == 200 {
            return Ok(v["replicationJobId"].as_str().unwrap().to_string());
        }
        Err(self.err("CreateReplicationJob", body).await)
    }
}

/// What `tern_disk::inspect` reports for one disk.
fn disk_report(table: &str, parts: &[(&str, &str)]) -> Value {
    json!({"disk_size": 10 * GIB, "sector_size": 512, "partition_table": table,
           "partitions": parts.iter().enumerate().map(|(i, (t, fs))| json!({
               "number": i + 1, "type_id": t, "bootable": i == 0, "start": 1 << 20,
               "size": GIB, "filesystem": fs, "efi_system": false})).collect::<Vec<_>>(),
           "whole_disk_filesystem": null, "efi_system_partition": false, "warnings": []})
}

fn vm(id: &str, os: Option<&str>, sizes: &[u64], reports: Vec<Value>) -> Value {
    let mut v = json!({"vmId": id, "vmName": id,
        "disks": sizes.iter().enumerate().map(|(i, s)| json!({
            "path": format!("/images/{id}-{i}.raw"), "format": "raw", "sizeBytes": s}))
            .collect::<Vec<_>>(),
        "inspection": {"disks": reports}});
    if let Some(os) = os {
        v["osType"] = json!(os);
    }
    v
}

#[tokio::test]
async fn create_replication_job_is_refused_with_the_rule_and_get_servers_says_why() {
    let e = env();
    let servers = e
        .import(json!([
            // An empty raw disk: no partition table, nothing to boot.
            vm(
                "blank",
                Some("LINUX"),
                &[GIB],
                vec![disk_report("none", &[])]
            ),
            vm(
                "huge",
                Some("LINUX"),
                &[GIB, 20 * TIB],
                vec![disk_report("mbr", &[("0x83", "ext4")])]
            ),
            vm(
                "fine",
                Some("LINUX"),
                &[GIB],
                vec![disk_report("mbr", &[("0x83", "ext4")])]
            ),
            vm(
                "anon",
                None,
                &[GIB],
                vec![disk_report("mbr", &[("0x83", "ext4")])]
            ),
            vm(
                "win",
                Some("WINDOWS"),
                &[GIB],
                vec![disk_report("mbr", &[("0x07", "ntfs")])]
            ),
        ]))
        .await;

    let blank = &servers["blank"];
    let why = blank["cannotReplicateReason"]
        .as_str()
        .expect("the catalog says why");
    assert!(
        why.contains("boot-disk-unpartitioned: the boot disk, disk 1 (/images/blank-0.raw), has no partition table and no filesystem: nothing to boot"),
        "{why}"
    );
    let (shape, message) = e.create(blank, None).await.unwrap_err();
    assert_eq!(shape, "ServerCannotBeReplicatedException");
    assert_eq!(message, why, "the refusal and the catalog say the same");

    let huge = &servers["huge"];
    let (shape, message) = e.create(huge, None).await.unwrap_err();
    assert_eq!(shape, "ServerCannotBeReplicatedException");
    assert!(
        message.contains("volume-size: VM Import supports volumes up to 16 TiB; disk 2 (/images/huge-1.raw) is 20 TiB"),
        "{message}"
    );

    // A licence the rules refuse is a bad parameter, named by its rule.
    let (shape, message) = e.create(&servers["fine"], Some("AWS")).await.unwrap_err();
    assert_eq!(shape, "InvalidParameterException");
    assert!(message.contains("license-type: "), "{message}");

    // Warnings show with the server and do not stop a job.
    assert_eq!(servers["fine"].get("cannotReplicateReason"), None);
    assert_eq!(
        servers["fine"].get("preflightWarnings"),
        None,
        "nothing to warn about"
    );
    let anon = &servers["anon"];
    assert_eq!(anon.get("cannotReplicateReason"), None);
    let warnings = anon["preflightWarnings"]
        .as_array()
        .expect("warnings listed");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].as_str().unwrap().starts_with("os-supported: "));
    e.create(anon, None).await.unwrap();
    e.create(&servers["fine"], None).await.unwrap();

    // A warning that depends on the request lands in the new job's statusMessage.
    let job = e.create(&servers["win"], Some("BYOL")).await.unwrap();
    let j = &e
        .ok("GetReplicationJobs", json!({"replicationJobId": job}))
        .await["replicationJobList"][0];
    let status = j["statusMessage"].as_str().unwrap();
    assert!(
        status.starts_with("preflight warnings: windows-byol: ")
            && status.contains("Dedicated Hosts"),
        "{status}"
    );
}
