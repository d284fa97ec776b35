//! ImportServerCatalog, GetServers (filter, pagination, status), DeleteServerCatalog.

use aws_sdk_sms::types::{ServerCatalogStatus, ServerType, VmManagerType, VmServerAddress};
use tern_acceptance::{inventory_toml, now_secs, TestServer};

use crate::code;

fn address(vm_id: &str) -> VmServerAddress {
    VmServerAddress::builder()
        .vm_manager_id("vc-test")
        .vm_id(vm_id)
        .build()
}

#[tokio::test]
async fn the_catalog_is_empty_and_not_imported_at_first() {
    let server = TestServer::start().await;
    let out = server.client.get_servers().send().await.unwrap();
    assert_eq!(
        out.server_catalog_status(),
        Some(&ServerCatalogStatus::NotImported)
    );
    assert!(out.server_list().is_empty());
    assert_eq!(out.next_token(), None);
    assert_eq!(
        code(server.client.import_server_catalog().send().await),
        "NoConnectorsAvailableException",
        "no connector registered"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn import_fills_the_catalog_from_the_connector_inventory() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(3).await;
    let out = server.client.get_servers().send().await.unwrap();
    assert_eq!(
        out.server_catalog_status(),
        Some(&ServerCatalogStatus::Available)
    );
    let modified = out.last_modified_on().expect("lastModifiedOn").secs();
    assert!(
        (modified - now_secs()).abs() < 60,
        "lastModifiedOn {modified}"
    );
    assert_eq!(out.server_list().len(), 3);
    for (i, id) in ids.iter().enumerate() {
        assert!(id.starts_with("s-"), "server id {id}");
        let s = out
            .server_list()
            .iter()
            .find(|s| s.server_id() == Some(id))
            .unwrap();
        assert_eq!(s.server_type(), Some(&ServerType::VirtualMachine));
        let vm = s.vm_server().expect("vmServer");
        assert_eq!(vm.vm_name(), Some(format!("web{i}").as_str()));
        assert_eq!(vm.vm_path(), Some("/DC1/vm/web"));
        assert_eq!(vm.vm_manager_name(), Some("vcenter.test"));
        assert_eq!(vm.vm_manager_type(), Some(&VmManagerType::VSphere));
        let a = vm.vm_server_address().expect("vmServerAddress");
        assert_eq!(a.vm_manager_id(), Some("vc-test"));
        assert_eq!(a.vm_id(), Some(format!("vm-{i}").as_str()));
        assert_eq!(s.replication_job_id(), None, "no job yet");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn server_ids_are_stable_across_reimports() {
    let server = TestServer::start().await;
    let (agent, ids) = server.import_catalog(3).await;
    server.client.import_server_catalog().send().await.unwrap();
    let report = agent.poll_once().await.unwrap();
    assert_eq!(report.inventories_reported, 1);
    let out = server.client.get_servers().send().await.unwrap();
    let mut again: Vec<_> = out
        .server_list()
        .iter()
        .map(|s| s.server_id().unwrap().to_owned())
        .collect();
    again.sort();
    let mut before = ids.clone();
    before.sort();
    assert_eq!(again, before);
    server.shutdown().await;
}

#[tokio::test]
async fn get_servers_filters_by_vm_server_address() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(3).await;
    let out = server
        .client
        .get_servers()
        .vm_server_address_list(address("vm-1"))
        .vm_server_address_list(address("vm-2"))
        .send()
        .await
        .unwrap();
    let mut got: Vec<_> = out
        .server_list()
        .iter()
        .map(|s| s.server_id().unwrap())
        .collect();
    got.sort();
    let mut want = vec![ids[1].as_str(), ids[2].as_str()];
    want.sort();
    assert_eq!(got, want);
    let none = server
        .client
        .get_servers()
        .vm_server_address_list(address("vm-404"))
        .send()
        .await
        .unwrap();
    assert!(none.server_list().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn get_servers_paginates() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(7).await;
    let first = server
        .client
        .get_servers()
        .max_results(3)
        .send()
        .await
        .unwrap();
    assert_eq!(first.server_list().len(), 3);
    let token = first.next_token().expect("nextToken on a non-final page");
    let second = server
        .client
        .get_servers()
        .max_results(3)
        .next_token(token)
        .send()
        .await
        .unwrap();
    assert_eq!(second.server_list().len(), 3);
    assert_eq!(
        second.server_catalog_status(),
        Some(&ServerCatalogStatus::Available)
    );

    let pages: Vec<_> = server
        .client
        .get_servers()
        .max_results(3)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        pages
            .iter()
            .map(|p| p.server_list().len())
            .collect::<Vec<_>>(),
        [3, 3, 1]
    );
    assert_eq!(
        pages.last().unwrap().next_token(),
        None,
        "no token on the last page"
    );
    let mut all: Vec<_> = pages
        .iter()
        .flat_map(|p| p.server_list())
        .map(|s| s.server_id().unwrap().to_owned())
        .collect();
    all.sort();
    all.dedup();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(all, want, "every server exactly once");

    assert_eq!(
        code(server.client.get_servers().max_results(0).send().await),
        "InvalidParameterException"
    );
    assert_eq!(
        code(
            server
                .client
                .get_servers()
                .next_token("not-a-token")
                .send()
                .await
        ),
        "InvalidParameterException"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn delete_server_catalog_empties_it() {
    let server = TestServer::start().await;
    let (agent, _ids) = server.import_catalog(2).await;
    server.client.delete_server_catalog().send().await.unwrap();
    let out = server.client.get_servers().send().await.unwrap();
    assert!(out.server_list().is_empty());
    assert_eq!(
        out.server_catalog_status(),
        Some(&ServerCatalogStatus::Deleted)
    );
    // A new import brings the servers back.
    server.client.import_server_catalog().send().await.unwrap();
    assert_eq!(agent.poll_once().await.unwrap().inventories_reported, 1);
    let out = server.client.get_servers().send().await.unwrap();
    assert_eq!(out.server_list().len(), 2);
    assert_eq!(
        out.server_catalog_status(),
        Some(&ServerCatalogStatus::Available)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_vanished_vm_stays_in_the_catalog_and_cannot_be_replicated() {
    let server = TestServer::start().await;
    let (agent, ids) = server.import_catalog(2).await;
    // vm-1 disappears from the inventory file.
    server.write_connector_config("lab", &inventory_toml("vc-test", 1));
    server.client.import_server_catalog().send().await.unwrap();
    assert_eq!(agent.poll_once().await.unwrap().vms_reported, 1);
    let out = server.client.get_servers().send().await.unwrap();
    assert!(
        out.server_list()
            .iter()
            .any(|s| s.server_id() == Some(ids[1].as_str())),
        "vanished servers are marked, not dropped: {out:?}"
    );
    let result = server
        .client
        .create_replication_job()
        .server_id(&ids[1])
        .seed_replication_time(aws_smithy_types::DateTime::from_secs(now_secs() + 3600))
        .frequency(12)
        .send()
        .await;
    assert_eq!(code(result), "ServerCannotBeReplicatedException");
    server.shutdown().await;
}

/// GetServers answers `lastModifiedOn` from the start (the time the catalog began), not only
/// once an import modified it; reading does not move it, an import does.
#[tokio::test]
async fn the_catalog_has_a_last_modified_time_from_the_start() {
    use tern_core::Clock;
    let clock = std::sync::Arc::new(tern_core::ManualClock::new(time::OffsetDateTime::now_utc()));
    let start = clock.now().unix_timestamp();
    let server =
        TestServer::start_with_clock(tern_acceptance::Config::default(), Some(clock.clone())).await;
    let first = server.client.get_servers().send().await.unwrap();
    assert_eq!(
        first.server_catalog_status(),
        Some(&ServerCatalogStatus::NotImported)
    );
    assert_eq!(
        first.last_modified_on().map(|t| t.secs()),
        Some(start),
        "{first:?}"
    );
    clock.advance(std::time::Duration::from_secs(600));
    let again = server.client.get_servers().send().await.unwrap();
    assert_eq!(again.last_modified_on().map(|t| t.secs()), Some(start));
    server.import_catalog(1).await;
    let imported = server.client.get_servers().send().await.unwrap();
    assert_eq!(
        imported.last_modified_on().map(|t| t.secs()),
        Some(start + 600)
    );
    server.shutdown().await;
}

/// SMS replicated VMs of at most 22 volumes (`limits.max_volumes_per_vm`): a VM with more is
/// refused at CreateReplicationJob with a message naming the limit, and GetServers says why
/// with the server (`cannotReplicateReason`, a Tern member SMS clients ignore).
#[tokio::test]
async fn a_vm_with_more_volumes_than_the_limit_is_refused_and_the_catalog_says_why() {
    let server = TestServer::start().await;
    let vm = |id: &str, disks: usize| {
        let paths: Vec<String> = (0..disks)
            .map(|d| format!("/images/{id}-{d}.raw"))
            .collect();
        format!("\n[[vms]]\nid = {id:?}\nname = {id:?}\nos_type = \"LINUX\"\ndisks = {paths:?}\n")
    };
    let inventory = format!(
        "vm_manager_id = \"vc-vol\"\nvm_manager_name = \"vcenter.test\"\nvm_manager_type = \"VSPHERE\"\n{}{}",
        vm("wide", 23),
        vm("ok", 22)
    );
    let mut agent = server.connector_agent("vol", &inventory).await;
    agent.run_once().await.unwrap();
    server.client.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();
    let servers = server.client.get_servers().send().await.unwrap();
    let id_of = |vm_id: &str| {
        servers
            .server_list()
            .iter()
            .find(|s| {
                s.vm_server()
                    .and_then(|v| v.vm_server_address())
                    .and_then(|a| a.vm_id())
                    == Some(vm_id)
            })
            .and_then(|s| s.server_id())
            .unwrap_or_else(|| panic!("{vm_id} in the catalog"))
            .to_owned()
    };
    let (wide, ok) = (id_of("wide"), id_of("ok"));
    let create = |id: &str| {
        server
            .client
            .create_replication_job()
            .server_id(id)
            .seed_replication_time(aws_smithy_types::DateTime::from_secs(now_secs() + 3600))
            .frequency(12)
            .send()
    };
    let (code, message) = crate::code_and_message(create(&wide).await);
    assert_eq!(code, "ServerCannotBeReplicatedException");
    assert!(
        message.contains("23 volumes") && message.contains("at most 22"),
        "{message}"
    );
    create(&ok).await.unwrap();

    let raw = server
        .raw(
            Some(&tern_acceptance::sms_target("GetServers")),
            b"{}",
            Some(&server.admin()),
        )
        .await
        .json();
    let reason_of = |id: &str| {
        raw["serverList"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["serverId"] == id)
            .unwrap()
            .get("cannotReplicateReason")
            .cloned()
    };
    let why = reason_of(&wide).expect("the catalog says why");
    assert!(why.as_str().unwrap().contains("at most 22"), "{why}");
    assert_eq!(reason_of(&ok), None);
    server.shutdown().await;
}
