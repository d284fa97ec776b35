//! GetConnectors, DisassociateConnector, and the separation of connector and admin principals.

use std::time::Duration;

use aws_sdk_sms::types::{ConnectorCapability, ConnectorStatus, VmManagerType};
use tern_acceptance::{connector_target, inventory_toml, now_secs, Config, TestServer};

use crate::code;

#[tokio::test]
async fn get_connectors_lists_a_registered_connector() {
    let server = TestServer::start().await;
    let empty = server.client.get_connectors().send().await.unwrap();
    assert!(empty.connector_list().is_empty());
    assert_eq!(empty.next_token(), None);

    let mut agent = server
        .connector_agent("lab", &inventory_toml("vc-test", 1))
        .await;
    let report = agent.run_once().await.unwrap();
    let id = report.connector_id.clone();
    assert!(id.starts_with("c-") && id.len() == 19, "connector id {id}");
    assert_eq!(report.work_items, 0, "nothing queued before an import");

    let out = server.client.get_connectors().send().await.unwrap();
    let [c] = out.connector_list() else {
        panic!("one connector: {out:?}")
    };
    assert_eq!(c.connector_id(), Some(id.as_str()));
    assert_eq!(c.status(), Some(&ConnectorStatus::Healthy));
    assert_eq!(c.version(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(c.vm_manager_id(), Some("vc-test"));
    assert_eq!(c.vm_manager_name(), Some("vcenter.test"));
    assert_eq!(c.vm_manager_type(), Some(&VmManagerType::VSphere));
    assert_eq!(c.capability_list(), &[ConnectorCapability::VSphere]);
    assert_eq!(c.ip_address(), Some("127.0.0.1"));
    let associated = c.associated_on().expect("associatedOn").secs();
    assert!(
        (associated - now_secs()).abs() < 60,
        "associatedOn {associated}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_restarted_connector_keeps_its_id() {
    let server = TestServer::start().await;
    let mut first = server
        .connector_agent("lab", &inventory_toml("vc-test", 1))
        .await;
    let id = first.run_once().await.unwrap().connector_id;
    // A new agent over the same config and state directory is the same connector.
    let mut again = server
        .connector_agent("lab", &inventory_toml("vc-test", 1))
        .await;
    assert_eq!(again.run_once().await.unwrap().connector_id, id);
    let out = server.client.get_connectors().send().await.unwrap();
    assert_eq!(out.connector_list().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_connector_without_heartbeats_turns_unhealthy() {
    let config = Config {
        connector_unhealthy_after: Duration::from_secs(60),
        ..Config::default()
    };
    let clock = std::sync::Arc::new(tern_core::ManualClock::new(time::OffsetDateTime::now_utc()));
    let server = TestServer::start_with_clock(config, Some(clock.clone())).await;
    let mut agent = server
        .connector_agent("lab", &inventory_toml("vc-test", 1))
        .await;
    agent.run_once().await.unwrap();
    let status = |out: aws_sdk_sms::operation::get_connectors::GetConnectorsOutput| {
        out.connector_list()[0].status().cloned()
    };
    clock.advance(Duration::from_secs(59));
    let out = server.client.get_connectors().send().await.unwrap();
    assert_eq!(status(out), Some(ConnectorStatus::Healthy), "59 s after");
    clock.advance(Duration::from_secs(2));
    let out = server.client.get_connectors().send().await.unwrap();
    assert_eq!(status(out), Some(ConnectorStatus::Unhealthy));
    // No healthy connector: nothing can take an inventory request.
    assert_eq!(
        code(server.client.import_server_catalog().send().await),
        "NoConnectorsAvailableException"
    );
    agent.heartbeat().await.unwrap();
    let out = server.client.get_connectors().send().await.unwrap();
    assert_eq!(status(out), Some(ConnectorStatus::Healthy));
    server.shutdown().await;
}

#[tokio::test]
async fn disassociate_connector() {
    let server = TestServer::start().await;
    let c = &server.client;
    assert_eq!(
        code(c.disassociate_connector().connector_id("").send().await),
        "MissingRequiredParameterException"
    );
    assert_eq!(
        code(
            c.disassociate_connector()
                .connector_id("c-00000000000000000")
                .send()
                .await
        ),
        "InvalidParameterException"
    );
    let mut agent = server
        .connector_agent("lab", &inventory_toml("vc-test", 1))
        .await;
    let id = agent.run_once().await.unwrap().connector_id;
    c.disassociate_connector()
        .connector_id(&id)
        .send()
        .await
        .unwrap();
    assert!(c
        .get_connectors()
        .send()
        .await
        .unwrap()
        .connector_list()
        .is_empty());
    assert_eq!(
        code(c.disassociate_connector().connector_id(&id).send().await),
        "OperationNotPermittedException",
        "disassociating twice"
    );
    assert_eq!(
        code(c.import_server_catalog().send().await),
        "NoConnectorsAvailableException"
    );
    // The disassociated connector can no longer act as itself.
    assert!(agent.heartbeat().await.is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn a_connector_serving_a_job_cannot_be_disassociated() {
    let server = TestServer::start().await;
    let (agent, servers) = server.import_catalog(1).await;
    server
        .client
        .create_replication_job()
        .server_id(&servers[0])
        .seed_replication_time(aws_smithy_types::DateTime::from_secs(now_secs() + 3600))
        .frequency(12)
        .license_type(aws_sdk_sms::types::LicenseType::Byol)
        .send()
        .await
        .unwrap();
    let id = agent.connector_id().unwrap().to_owned();
    assert_eq!(
        code(
            server
                .client
                .disassociate_connector()
                .connector_id(&id)
                .send()
                .await
        ),
        "OperationNotPermittedException"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn connector_and_admin_credentials_are_separate() {
    let server = TestServer::start().await;
    // Connector keys cannot call the administrative API...
    let as_connector = server.client_with(server.connector());
    assert_eq!(
        code(as_connector.get_connectors().send().await),
        "AccessDeniedException"
    );
    // ...and admin keys cannot impersonate a connector.
    let body = br#"{"name":"rogue","version":"1","vmManagerId":"x"}"#;
    let response = server
        .raw(
            Some(&connector_target("RegisterConnector")),
            body,
            Some(&server.admin()),
        )
        .await;
    assert!(
        response.status >= 400,
        "admin registered a connector: {response:?}"
    );
    assert_eq!(
        response.error_type(),
        "AccessDeniedException",
        "{response:?}"
    );
    // The connector keys do work for connector operations.
    let response = server
        .raw(
            Some(&connector_target("RegisterConnector")),
            body,
            Some(&server.connector()),
        )
        .await;
    assert_eq!(
        response.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert!(response.json()["connectorId"]
        .as_str()
        .unwrap()
        .starts_with("c-"));
    server.shutdown().await;
}

/// A connector that registers again with its id (a restarted process) gets its leased work back
/// at once instead of after `work_lease`; another connector never gets it; the lease itself is
/// configuration.
#[tokio::test]
async fn a_reregistered_connector_gets_its_leased_work_back_at_once() {
    use serde_json::{json, Value};
    let clock = std::sync::Arc::new(tern_core::ManualClock::new(time::OffsetDateTime::now_utc()));
    let config = Config {
        work_lease: Duration::from_secs(120),
        ..Config::default()
    };
    let server = TestServer::start_with_clock(config, Some(clock.clone())).await;
    let call = |op: &str, body: Value| {
        let server = &server;
        let op = connector_target(op);
        async move {
            let out = server
                .raw(
                    Some(&op),
                    body.to_string().as_bytes(),
                    Some(&server.connector()),
                )
                .await;
            assert_eq!(
                out.status,
                200,
                "{op}: {:?}",
                String::from_utf8_lossy(&out.body)
            );
            out.json()
        }
    };
    let register = |id: Option<&str>, name: &str| {
        let mut body = json!({"name": name, "version": "1", "vmManagerId": "vc-test"});
        if let Some(id) = id {
            body["connectorId"] = json!(id);
        }
        body
    };
    let a = call("RegisterConnector", register(None, "a")).await["connectorId"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = call("RegisterConnector", register(None, "b")).await["connectorId"]
        .as_str()
        .unwrap()
        .to_owned();
    server.client.import_server_catalog().send().await.unwrap();
    let work_ids = |out: &Value| -> Vec<String> {
        out["workItems"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| w["workId"].as_str().unwrap().to_owned())
            .collect()
    };
    let leased = work_ids(&call("PollWork", json!({"connectorId": a})).await);
    assert_eq!(leased.len(), 1, "a's inventory request");
    let b_own = work_ids(&call("PollWork", json!({"connectorId": b})).await);
    assert_eq!(b_own.len(), 1, "b's own inventory request");
    assert!(!b_own.contains(&leased[0]));
    // Leased: not handed out again while the lease runs...
    assert!(work_ids(&call("PollWork", json!({"connectorId": a})).await).is_empty());

    // ...until a registers again: its work comes back at once, without the clock moving.
    call("RegisterConnector", register(Some(&a), "a")).await;
    assert_eq!(
        work_ids(&call("PollWork", json!({"connectorId": a})).await),
        leased
    );
    // Another connector, live or registering again, never gets a's work.
    call("RegisterConnector", register(Some(&b), "b")).await;
    let b_again = work_ids(&call("PollWork", json!({"connectorId": b})).await);
    assert_eq!(b_again, b_own, "b gets back only its own request");

    // Without a new registration the configured lease decides.
    assert!(work_ids(&call("PollWork", json!({"connectorId": a})).await).is_empty());
    clock.advance(Duration::from_secs(121));
    assert_eq!(
        work_ids(&call("PollWork", json!({"connectorId": a})).await),
        leased
    );
    server.shutdown().await;
}
