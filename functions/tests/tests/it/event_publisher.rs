//! event-publisher: a DynamoDB stream batch of outbox changes goes out to EventBridge once,
//! even when the batch is delivered again, and a refused publication is reported as the batch
//! item failure Lambda retries from.

use aws_lambda_events::event::dynamodb::Event;
use tern_core::replication::StateChange;
use tern_core::store::Store;

use crate::{fixture, Stack};

/// The outbox changes the fixture's records announce, written into the table as the core's
/// transitions write them.
async fn write_fixture_changes(stack: &Stack) -> Vec<StateChange> {
    let batch = fixture("dynamodb/outbox-batch.json");
    let mut changes = Vec::new();
    for record in batch["Records"].as_array().unwrap() {
        let Some(body) = record["dynamodb"]["NewImage"]["body"]["S"].as_str() else {
            continue;
        };
        let change: StateChange = serde_json::from_str(body).unwrap();
        stack.store.write(change.write().unwrap()).await.unwrap();
        changes.push(change);
    }
    changes
}

fn batch() -> Event {
    serde_json::from_value(fixture("dynamodb/outbox-batch.json")).expect("stream batch")
}

#[tokio::test]
async fn a_stream_batch_is_published_once_even_when_delivered_again() {
    let Some(stack) = Stack::start("the event-publisher Lambda").await else {
        return;
    };
    let changes = write_fixture_changes(&stack).await;
    assert_eq!(changes.len(), 2);

    let response = tern_fn_event_publisher::handle(&stack.deployment.replication, batch()).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let delivered = stack.delivered().await;
    let states: Vec<&str> = delivered
        .iter()
        .map(|e| e["detail"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["Active", "Completed"], "{delivered:#?}");
    let completed = &delivered[1];
    assert_eq!(completed["source"], "tern.sms");
    assert_eq!(
        completed["detail-type"],
        "Server Migration Job State Change"
    );
    // EventBridge fills `account` itself (PutEvents has no such field); the resources carry ours.
    assert_eq!(
        completed["resources"][0],
        "arn:aws:sms:us-east-1:123456789012:sms-job-2ea64347a2c8f1e9b"
    );
    assert_eq!(completed["detail"]["ami-id"], "ami-0a1b2c3d4e5f60718");
    assert_eq!(
        completed["detail"]["replication-run-id"],
        "sms-run-1d4e5a6b7c8d9e0f1"
    );
    let outbox = stack
        .store
        .query(tern_core::keys::OUTBOX, "", None, 10)
        .await
        .unwrap();
    assert!(
        outbox.items.is_empty(),
        "published changes leave the outbox"
    );

    // Lambda delivers the same batch again (a timeout after the publication, say).
    let again = tern_fn_event_publisher::handle(&stack.deployment.replication, batch()).await;
    assert!(again.batch_item_failures.is_empty(), "{again:?}");
    assert!(
        stack.delivered().await.is_empty(),
        "a re-delivered batch published again"
    );
}

#[tokio::test]
async fn a_refused_publication_is_the_batch_item_failure_and_stays_in_the_outbox() {
    let Some(mut stack) = Stack::start("the event-publisher Lambda").await else {
        return;
    };
    write_fixture_changes(&stack).await;
    // A bus that does not exist: EventBridge refuses every entry.
    let mut settings = stack.settings.clone();
    settings.event_bus_name = "no-such-bus".into();
    let images = std::sync::Arc::new(
        tern_local::images::LocalImages::open(
            &stack._data.path().join("other"),
            &stack._data.path().join("staging"),
            std::sync::Arc::new(tern_core::RandomIds),
            std::sync::Arc::new(tern_core::SystemClock),
        )
        .unwrap(),
    );
    stack.deployment = tern_fn_common::Deployment::connect(
        &stack.aws,
        &settings,
        tern_core::Config::default(),
        images,
    )
    .unwrap();
    let response = tern_fn_event_publisher::handle(&stack.deployment.replication, batch()).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap())
        .collect();
    // The first outbox record; Lambda re-delivers it and everything after it.
    assert_eq!(failed, ["111100000000000000000001"]);
    assert!(stack.delivered().await.is_empty());
    let outbox = stack
        .store
        .query(tern_core::keys::OUTBOX, "", None, 10)
        .await
        .unwrap();
    assert_eq!(outbox.items.len(), 2, "nothing left the outbox");
}
