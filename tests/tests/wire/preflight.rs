//! Preflight against the import rules, end to end: the connector's `files` source inspects real
//! disk files, the catalog stores what the rules find, GetServers shows it (Tern members
//! `cannotReplicateReason` and `preflightWarnings`) and CreateReplicationJob refuses a server
//! VM Import could not boot, naming the rule.

use tern_acceptance::{now_secs, TestServer};

use crate::code_and_message;

#[tokio::test]
async fn an_unpartitioned_boot_disk_is_refused_by_name_and_an_unreadable_one_only_warns() {
    // Every rule enforced (the harness waives boot-disk-unpartitioned for the other tests).
    let config = tern_core::Config {
        preflight_waive: Some(String::new()),
        ..Default::default()
    };
    let server = TestServer::start_with(config).await;
    let disks = tempfile::tempdir().unwrap();
    // An empty raw disk (what `qemu-img create -f raw` makes): no partition table.
    let blank = disks.path().join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let gone = disks.path().join("gone.raw");
    let inventory = format!(
        "vm_manager_id = \"vc-pre\"\n\
         [[vms]]\nid = \"blank\"\nos_type = \"LINUX\"\ndisks = [{blank:?}]\n\
         [[vms]]\nid = \"gone\"\nos_type = \"LINUX\"\ndisks = [{gone:?}]\n"
    );
    let mut agent = server.connector_agent("pre", &inventory).await;
    agent.run_once().await.unwrap();
    server.client.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();

    let raw = server
        .raw(
            Some(&tern_acceptance::sms_target("GetServers")),
            b"{}",
            Some(&server.admin()),
        )
        .await
        .json();
    let entry = |vm_id: &str| {
        raw["serverList"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vmServer"]["vmServerAddress"]["vmId"] == vm_id)
            .unwrap_or_else(|| panic!("{vm_id} in {raw}"))
            .clone()
    };
    let (blank_entry, gone_entry) = (entry("blank"), entry("gone"));
    let why = blank_entry["cannotReplicateReason"]
        .as_str()
        .expect("the catalog says why");
    assert!(
        why.contains("boot-disk-unpartitioned: ")
            && why.contains("blank.raw")
            && why.contains("nothing to boot"),
        "{why}"
    );
    assert_eq!(gone_entry.get("cannotReplicateReason"), None);
    let warnings = gone_entry["preflightWarnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("boot-disk-uninspected: ")),
        "{warnings:?}"
    );

    let create = |s: &serde_json::Value| {
        server
            .client
            .create_replication_job()
            .server_id(s["serverId"].as_str().unwrap())
            .seed_replication_time(aws_smithy_types::DateTime::from_secs(now_secs() + 3600))
            .frequency(12)
            .send()
    };
    let (code, message) = code_and_message(create(&blank_entry).await);
    assert_eq!(code, "ServerCannotBeReplicatedException");
    assert_eq!(message, why);
    create(&gone_entry)
        .await
        .expect("a warning does not refuse");
    server.shutdown().await;
}
