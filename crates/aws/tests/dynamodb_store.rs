//! The DynamoDB store against the `Store` contract, through the real SDK calls, on a local moto
//! server (PyPI `moto[server]`) that this test starts on a free port and stops at the end.
//!
//! Without moto installed the DynamoDB contract is skipped with a notice, unless `CI` is set:
//! then a missing emulator fails the test, so CI cannot pass without exercising the SDK.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use serde_json::json;
use tern_aws::DynamoStore;
use tern_core::store::{Expect, Key, Store, StoreError, Write};

const INSTALL: &str = "pip install 'moto[server]>=5,<6'";

/// `moto_server`'s own application, served one request at a time. `moto_server` itself serves
/// each request on its own thread, and moto checks a condition and applies a write (or snapshots
/// and restores the table around a transaction) in separate steps without a lock, so concurrent
/// requests interleave and lose updates inside the emulator. DynamoDB applies each request
/// atomically; a single-threaded moto does too, which is what the concurrency cases need.
const MOTO: &str = r#"
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)
"#;

/// A running moto server, killed when dropped (also when the test panics).
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    /// Starts moto on a free port and waits until it accepts connections. `None` when moto is
    /// not installed and `CI` is not set.
    fn start() -> Option<Moto> {
        let installed = Command::new("python3")
            .args(["-c", "import moto.server, werkzeug.serving"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto is not installed and CI is set; install it with {INSTALL}"
            );
            eprintln!("SKIPPED: the DynamoDB store contract needs moto for python3 ({INSTALL})");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-c", MOTO, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto: {e}"));
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("moto exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(moto)
    }

    fn client(&self) -> Client {
        client(&self.endpoint)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let Some(moto) = Moto::start() else { return };
    let store = DynamoStore::new(moto.client(), "tern");
    store.create_table().await.expect("create the table");
    store
        .create_table()
        .await
        .expect("creating an existing table is a no-op");

    // The table has exactly the key schema the SAM template declares.
    let table = moto
        .client()
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
    let small = DynamoStore::new(moto.client(), "tern-concurrency");
    small.create_table().await.expect("create the second table");
    tern_store_contract::run_cases(Arc::new(small), concurrent).await;
    tern_store_contract::run_cases(Arc::new(store.clone()), others).await;

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
    let raw = moto
        .client()
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
    let missing = DynamoStore::new(moto.client(), "no-such-table");
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
