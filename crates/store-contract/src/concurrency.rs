//! Concurrency cases: conditional writes are atomic under contention.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use tern_core::store::{Expect, Item, Key, Store, StoreError};

use crate::{must_get, must_query, must_write, partition, put, retry};

/// Tasks and rounds of the concurrency cases: enough contention to lose updates if conditions
/// were not atomic (every round, most tasks read the same version), small enough to stay fast
/// against a local DynamoDB emulator that serves about a hundred requests per second.
const TASKS: usize = 16;
const ROUNDS: usize = 4;

pub async fn concurrent_increments_lose_nothing(store: Arc<dyn Store>) {
    let key = Key::new(partition("increments"), "counter");
    must_write(&*store, put(&key, json!({"count": 0}), Expect::Absent)).await;

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                retry(&format!("task {t}"), || async {
                    let item = store.get(&key).await?.expect("the counter exists");
                    let count = item.body["count"].as_u64().expect("count is a number");
                    store
                        .write(put(
                            &key,
                            json!({"count": count + 1}),
                            Expect::Version(item.version),
                        ))
                        .await
                })
                .await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("increment task");
    }
    let item = must_get(&*store, &key).await;
    let total = (TASKS * ROUNDS) as u64;
    assert_eq!(item.body, json!({"count": total}), "lost increments");
    assert_eq!(item.version, total + 1, "one version per successful write");
}

pub async fn concurrent_creates_have_one_winner(store: Arc<dyn Store>) {
    let key = Key::new(partition("creates"), "only-one");
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            (
                t,
                store
                    .write(put(&key, json!({"winner": t}), Expect::Absent))
                    .await,
            )
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (t, result) = task.await.expect("create task");
        match result {
            Ok(()) => winners.push(t),
            Err(StoreError::ConditionFailed { .. }) => {}
            // Throttling under contention is allowed; it is not a second winner.
            Err(StoreError::Throttled(_)) => {}
            Err(e) => panic!("task {t}: unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let item = must_get(&*store, &key).await;
    assert_eq!(
        (item.version, item.body),
        (1, json!({"winner": winners[0]}))
    );
}

pub async fn concurrent_transfers_keep_the_sum(store: Arc<dyn Store>) {
    let pk = partition("transfers");
    let accounts: Vec<Key> = (0..4)
        .map(|i| Key::new(&pk, format!("account#{i}")))
        .collect();
    const START: i64 = 1_000;
    for key in &accounts {
        must_write(&*store, put(key, json!({"balance": START}), Expect::Absent)).await;
    }

    let mut tasks = Vec::new();
    for t in 0..TASKS / 2 {
        let (store, accounts) = (store.clone(), accounts.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                // Move 1 from one account to the next, reading both and writing both atomically.
                let from = accounts[(t + round) % accounts.len()].clone();
                let to = accounts[(t + round + 1) % accounts.len()].clone();
                retry(&format!("transfer task {t}"), || async {
                    let a = store.get(&from).await?.expect("account exists");
                    let b = store.get(&to).await?.expect("account exists");
                    let balance =
                        |i: &Item| i.body["balance"].as_i64().expect("balance is a number");
                    store
                        .transact(vec![
                            put(
                                &from,
                                json!({"balance": balance(&a) - 1}),
                                Expect::Version(a.version),
                            ),
                            put(
                                &to,
                                json!({"balance": balance(&b) + 1}),
                                Expect::Version(b.version),
                            ),
                        ])
                        .await
                })
                .await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("transfer task");
    }

    let page = must_query(&*store, &pk, "account#", None, 10).await;
    let balances: BTreeMap<&str, i64> = page
        .items
        .iter()
        .map(|i| (i.key.sk.as_str(), i.body["balance"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        balances.values().sum::<i64>(),
        START * accounts.len() as i64,
        "money appeared or vanished: {balances:?}"
    );
    // Each round of task t moves 1 from account (t+r)%4 to (t+r+1)%4: count the expected net flow.
    let mut expected = vec![START; accounts.len()];
    for t in 0..TASKS / 2 {
        for round in 0..ROUNDS {
            expected[(t + round) % accounts.len()] -= 1;
            expected[(t + round + 1) % accounts.len()] += 1;
        }
    }
    let got: Vec<i64> = balances.values().copied().collect();
    assert_eq!(got, expected, "every transfer applied exactly once");
    let writes: u64 = page.items.iter().map(|i| i.version - 1).sum();
    assert_eq!(
        writes,
        (TASKS / 2 * ROUNDS * 2) as u64,
        "two writes per transfer, no more, no less"
    );
}
