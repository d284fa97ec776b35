//! The SQLite store against the `Store` contract, plus what only a file-backed store has:
//! durability across reopen and atomicity between independent connections to one file.
//! The image service, which keeps its metadata in SQLite too, is tested in [`images`] (one test
//! binary per crate).

mod images;

use std::sync::Arc;

use serde_json::json;
use tern_core::store::{Expect, Key, Store, StoreError, Write};
use tern_local::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("tern.db")).unwrap();
    tern_store_contract::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_in_memory() {
    tern_store_contract::run_all(Arc::new(SqliteStore::open_in_memory().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn application_use_cases_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("tern.db")).unwrap();
    tern_store_contract::apps::use_cases(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn application_configurations_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("tern.db")).unwrap();
    tern_store_contract::app_configs::use_cases(Arc::new(store)).await;
}

#[tokio::test]
async fn data_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tern.db");
    let key = Key::new("job", "sms-job-1");
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .write(Write::Put {
                key: key.clone(),
                body: json!({"frequency": 12}),
                expect: Expect::Absent,
            })
            .await
            .unwrap();
        store
            .write(Write::Put {
                key: key.clone(),
                body: json!({"frequency": 24}),
                expect: Expect::Version(1),
            })
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let item = store
        .get(&key)
        .await
        .unwrap()
        .expect("item kept across reopen");
    assert_eq!((item.version, item.body), (2, json!({"frequency": 24})));
}

/// Two stores on one file stand for two processes (or the States engine's own connection):
/// their conditional writes must still serialise through SQLite's lock, not just our mutex.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_connections_to_one_file_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tern.db");
    let stores: Vec<Arc<dyn Store>> = vec![
        Arc::new(SqliteStore::open(&path).unwrap()),
        Arc::new(SqliteStore::open(&path).unwrap()),
    ];
    let key = Key::new("counter", "c");
    stores[0]
        .write(Write::Put {
            key: key.clone(),
            body: json!(0),
            expect: Expect::Absent,
        })
        .await
        .unwrap();

    const TASKS: usize = 16;
    const ROUNDS: u64 = 20;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, key) = (stores[t % 2].clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                loop {
                    let item = store.get(&key).await.unwrap().unwrap();
                    let next = json!(item.body.as_u64().unwrap() + 1);
                    match store
                        .write(Write::Put {
                            key: key.clone(),
                            body: next,
                            expect: Expect::Version(item.version),
                        })
                        .await
                    {
                        Ok(()) => break,
                        Err(StoreError::ConditionFailed { .. } | StoreError::Throttled(_)) => {
                            tokio::task::yield_now().await
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let item = stores[1].get(&key).await.unwrap().unwrap();
    assert_eq!(item.body, json!(TASKS as u64 * ROUNDS));
    assert_eq!(item.version, TASKS as u64 * ROUNDS + 1);
}

#[tokio::test]
async fn opening_a_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    match SqliteStore::open(dir.path()) {
        Err(StoreError::Unavailable { message, .. }) => {
            assert!(
                message.contains(&dir.path().display().to_string()),
                "{message}"
            )
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Concurrent transactions are committed together (group commit), each in a savepoint: one
/// whose condition fails is refused with its own index and leaves nothing, while the ones
/// committed beside it all apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_committed_together_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("tern.db")).unwrap());
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = Key::new("GROUP", format!("item-{t:02}"));
            let mut writes = vec![Write::Put {
                key: key.clone(),
                body: json!({ "t": t }),
                expect: Expect::Absent,
            }];
            if t % 2 == 1 {
                // Never holds: the transaction must be refused whole.
                writes.push(Write::Check {
                    key: Key::new("GROUP", "missing"),
                    expect: Expect::Version(7),
                });
            }
            (t, store.transact(writes).await)
        }));
    }
    for task in tasks {
        let (t, result) = task.await.unwrap();
        let key = Key::new("GROUP", format!("item-{t:02}"));
        if t % 2 == 1 {
            match result {
                Err(StoreError::ConditionFailed { index, .. }) => assert_eq!(index, Some(1)),
                other => panic!("transaction {t}: expected ConditionFailed, got {other:?}"),
            }
            assert!(store.get(&key).await.unwrap().is_none(), "{t} left its put");
        } else {
            result.unwrap_or_else(|e| panic!("transaction {t}: {e}"));
            assert_eq!(
                store.get(&key).await.unwrap().unwrap().body,
                json!({ "t": t })
            );
        }
    }
}
