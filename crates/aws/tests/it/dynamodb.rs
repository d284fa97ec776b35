//! The DynamoDB store against the `Store` contract, through the real SDK calls, on a local moto
//! server (PyPI `moto[server]`) that this test starts on a free port and stops at the end.
//!
//! Without moto installed the DynamoDB contract is skipped with a notice, unless `CI` is set:
//! then a missing emulator fails the test, so CI cannot pass without exercising the SDK
//! (`tern_test_support::moto`).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use serde_json::json;
use tern_aws::DynamoStore;
use tern_core::store::{Expect, Key, Store, StoreError, Write};
use tern_test_support::moto::{Flavor, Moto};

/// moto for this test: single-threaded, because the concurrency cases need each request applied
/// atomically (see [`Flavor::SingleThreaded`]).
fn start_moto() -> Option<Moto> {
    Moto::start(Flavor::SingleThreaded, "the DynamoDB store contract")
}

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "tern-tests",
        ))
        .endpoint_url(endpoint)
        .build();
    Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_store_on_moto() {
    let Some(moto) = start_moto() else { return };
    let store = DynamoStore::new(client(&moto.endpoint), "tern");
    store.create_table().await.expect("create the table");
    store
        .create_table()
        .await
        .expect("creating an existing table is a no-op");

    // The table has exactly the key schema the SAM template declares.
    let table = client(&moto.endpoint)
        .describe_table()
        .table_name("tern")
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let schema: Vec<(String, String)> = table
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_owned(),
                k.key_type().as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        schema,
        [
            ("pk".to_owned(), "HASH".to_owned()),
            ("sk".to_owned(), "RANGE".to_owned())
        ]
    );

    // moto copies the whole table for every transaction (to roll back on failure), so the
    // contention-heavy concurrency cases get a table of their own that stays small.
    let (concurrent, others): (Vec<_>, Vec<_>) = tern_store_contract::cases()
        .into_iter()
        .partition(|case| case.name.starts_with("concurrent_"));
    let small = DynamoStore::new(client(&moto.endpoint), "tern-concurrency");
    small.create_table().await.expect("create the second table");
    tern_store_contract::run_cases(Arc::new(small), concurrent).await;
    tern_store_contract::run_cases(Arc::new(store.clone()), others).await;

    // The application use cases (CreateApp … DeleteApp, replication up to the jobs) on DynamoDB,
    // in a table of their own.
    let apps = DynamoStore::new(client(&moto.endpoint), "tern-apps");
    apps.create_table()
        .await
        .expect("create the applications table");
    tern_store_contract::apps::use_cases(Arc::new(apps)).await;

    // Launch and validation configuration (conditional writes of the application's item).
    let configs = DynamoStore::new(client(&moto.endpoint), "tern-app-configs");
    configs
        .create_table()
        .await
        .expect("create the application configurations table");
    tern_store_contract::app_configs::use_cases(Arc::new(configs)).await;

    // The stored layout other tools see: a numeric version and the body as a JSON string.
    let key = Key::new("layout", "item");
    store
        .write(Write::Put {
            key: key.clone(),
            body: json!({"a": [1, 2]}),
            expect: Expect::Absent,
        })
        .await
        .unwrap();
    let raw = client(&moto.endpoint)
        .get_item()
        .table_name("tern")
        .key("pk", AttributeValue::S("layout".into()))
        .key("sk", AttributeValue::S("item".into()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(raw["version"].as_n().unwrap(), "1");
    assert_eq!(raw["body"].as_s().unwrap(), r#"{"a":[1,2]}"#);

    // A table that does not exist is an outage, not a bad request or a missing item.
    let missing = DynamoStore::new(client(&moto.endpoint), "no-such-table");
    match missing.get(&key).await {
        Err(StoreError::Unavailable { message, .. }) => {
            assert!(message.contains("GetItem"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_quickly() {
    // A port nobody listens on: the call must fail (after the SDK's retries), not hang.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = DynamoStore::new(client(&format!("http://127.0.0.1:{port}")), "tern");
    let started = Instant::now();
    let result = store.query("p", "", None, 10).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}
