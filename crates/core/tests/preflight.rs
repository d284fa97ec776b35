//! Preflight through the service: the findings are stored with the server when its inventory
//! report is applied, and CreateReplicationJob refuses by the rule, with the current limits.

use std::sync::Arc;

use serde_json::json;
use tern_core::enums::*;
use tern_core::model::Disk;
use tern_core::service::preflight::{rule, Outcome};
use tern_core::service::{InventoryVm, NewConnector, NewJob};
use tern_core::{Config, DomainError, ManualClock, MemoryStore, RandomIds, Service};
use time::macros::datetime;

fn service(config: Config) -> Service {
    let clock = Arc::new(ManualClock::new(datetime!(2026-01-01 00:00 UTC)));
    Service::new(
        Arc::new(MemoryStore::new()),
        clock,
        Arc::new(RandomIds),
        config,
    )
}

fn vm(id: &str, disks: usize, boot_table: &str) -> InventoryVm {
    InventoryVm {
        vm_id: id.into(),
        disks: (0..disks)
            .map(|d| Disk {
                path: format!("/d/{id}-{d}.raw"),
                format: Some("raw".into()),
                size_bytes: Some(1 << 30),
            })
            .collect(),
        os_type: Some(OsType::Linux),
        inspection: Some(json!({"disks": [{
            "disk_size": 1u64 << 30, "sector_size": 512, "partition_table": boot_table,
            "partitions": if boot_table == "none" { json!([]) } else { json!([{
                "number": 1, "type_id": "0x83", "bootable": true, "start": 1048576,
                "size": 1u64 << 29, "filesystem": "ext4", "efi_system": false}]) },
            "whole_disk_filesystem": null, "efi_system_partition": false, "warnings": []}]})),
        ..Default::default()
    }
}

async fn import(svc: &Service, vms: Vec<InventoryVm>) -> Vec<tern_core::model::Server> {
    let c = svc
        .register_connector(NewConnector {
            name: "pre".into(),
            version: "1.0".into(),
            vm_manager_id: "vc-pre".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    svc.import_catalog().await.unwrap();
    let work = svc.poll_work(&c, 10).await.unwrap();
    let req = work.iter().find(|w| w.kind == WorkKind::Inventory).unwrap();
    svc.report_inventory(&c, Some(&req.work_id), vms)
        .await
        .unwrap();
    svc.get_servers(None, None, 100)
        .await
        .unwrap()
        .servers
        .items
}

fn job(server_id: &str) -> NewJob {
    NewJob {
        server_id: server_id.into(),
        seed_replication_time: Some(datetime!(2026-01-01 01:00 UTC)),
        frequency: Some(12),
        ..Default::default()
    }
}

#[tokio::test]
async fn findings_are_stored_with_the_server_and_refuse_the_job_by_rule() {
    let svc = service(Config::default());
    let servers = import(&svc, vec![vm("blank", 1, "none"), vm("ok", 2, "mbr")]).await;
    let find = |id: &str| {
        servers
            .iter()
            .find(|s| s.vm_server.vm_server_address.vm_id == id)
            .unwrap()
            .clone()
    };
    let (blank, ok) = (find("blank"), find("ok"));
    assert_eq!(blank.preflight.len(), 1, "{:#?}", blank.preflight);
    assert_eq!(blank.preflight[0].rule, rule::BOOT_DISK_UNPARTITIONED);
    assert_eq!(blank.preflight[0].outcome, Outcome::Refuse);
    assert!(ok.preflight.is_empty(), "{:#?}", ok.preflight);

    match svc.create_job(job(&blank.server_id)).await {
        Err(DomainError::ServerCannotBeReplicated(m)) => {
            assert!(m.contains("boot-disk-unpartitioned: "), "{m}");
            assert_eq!(Some(m), svc.cannot_replicate(&blank));
        }
        other => panic!("refused expected, got {other:?}"),
    }
    svc.create_job(job(&ok.server_id)).await.unwrap();
}

#[tokio::test]
async fn the_volume_limit_is_the_configured_one() {
    let mut config = Config::default();
    config.limits.max_volumes_per_vm = 1;
    let svc = service(config);
    let servers = import(&svc, vec![vm("two", 2, "mbr")]).await;
    assert_eq!(servers[0].preflight[0].rule, rule::VOLUME_COUNT);
    match svc.create_job(job(&servers[0].server_id)).await {
        Err(DomainError::ServerCannotBeReplicated(m)) => {
            assert!(
                m.contains("volume-count: the server has 2 volumes; at most 1"),
                "{m}"
            )
        }
        other => panic!("refused expected, got {other:?}"),
    }
}
