//! Counter cases ([`Write::Add`]): the backend does the arithmetic, so concurrent adds never
//! fail each other; only the bounds refuse one.

use std::sync::Arc;

use serde_json::json;
use tern_core::store::{Expect, Key, Store, StoreError, Write};

use crate::{assert_condition_failed, must_be_absent, must_get, must_write, partition, put};

fn add(key: &Key, delta: i64, at_most: Option<u64>) -> Write {
    Write::Add {
        key: key.clone(),
        delta,
        at_most,
    }
}

pub async fn add_counts_from_an_absent_item(store: Arc<dyn Store>) {
    let key = Key::new(partition("add"), "counter");
    must_write(&*store, add(&key, 3, None)).await;
    let item = must_get(&*store, &key).await;
    assert_eq!((item.version, item.body), (1, json!({"count": 3})));
    must_write(&*store, add(&key, -1, Some(10))).await;
    let item = must_get(&*store, &key).await;
    assert_eq!((item.version, item.body), (2, json!({"count": 2})));
    // A version condition elsewhere in the transaction sees the add's version like a put's.
    must_write(
        &*store,
        Write::Check {
            key: key.clone(),
            expect: Expect::Version(2),
        },
    )
    .await;
}

pub async fn add_refuses_past_its_bounds_and_changes_nothing(store: Arc<dyn Store>) {
    let pk = partition("add-bounds");
    let key = Key::new(&pk, "counter");
    let other = Key::new(&pk, "other");
    // Past the bound even from an absent counter (0 + 3 > 2).
    assert_condition_failed(store.write(add(&key, 3, Some(2))).await, &key, 0);
    must_be_absent(&*store, &key).await;
    // Below zero from an absent counter.
    assert_condition_failed(store.write(add(&key, -1, None)).await, &key, 0);
    must_be_absent(&*store, &key).await;

    must_write(&*store, add(&key, 2, Some(2))).await;
    // At the bound: one more is refused, and with it the whole transaction.
    let refused = store
        .transact(vec![
            put(&other, json!({"n": 1}), Expect::Absent),
            add(&key, 1, Some(2)),
        ])
        .await;
    assert_condition_failed(refused, &key, 1);
    must_be_absent(&*store, &other).await;
    assert_condition_failed(store.write(add(&key, -3, None)).await, &key, 0);
    let item = must_get(&*store, &key).await;
    assert_eq!((item.version, item.body), (1, json!({"count": 2})));

    // Within bounds, with another write: both apply.
    store
        .transact(vec![
            put(&other, json!({"n": 1}), Expect::Absent),
            add(&key, -2, Some(2)),
        ])
        .await
        .expect("an add within bounds");
    let item = must_get(&*store, &key).await;
    assert_eq!((item.version, item.body), (2, json!({"count": 0})));
    assert_eq!(must_get(&*store, &other).await.body, json!({"n": 1}));
}

pub async fn put_over_a_counter_makes_a_body_item(store: Arc<dyn Store>) {
    let key = Key::new(partition("add-put"), "counter");
    must_write(&*store, add(&key, 5, None)).await;
    must_write(
        &*store,
        put(&key, json!({"note": "replaced"}), Expect::Version(1)),
    )
    .await;
    let item = must_get(&*store, &key).await;
    assert_eq!((item.version, item.body), (2, json!({"note": "replaced"})));
}

/// Sixteen tasks each take one of ten places at once: exactly ten succeed, every other one is
/// refused by the bound (never by a lost race), and the count ends at ten.
pub async fn concurrent_adds_stop_exactly_at_the_limit(store: Arc<dyn Store>) {
    let key = Key::new(partition("add-race"), "slots");
    const PLACES: u64 = 10;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                match store.write(add(&key, 1, Some(PLACES))).await {
                    // A backend may shed load under contention; that is not a refusal.
                    Err(StoreError::Throttled(_)) => continue,
                    other => return (t, other),
                }
            }
        }));
    }
    let mut taken = 0;
    for task in tasks {
        let (t, result) = task.await.expect("add task");
        match result {
            Ok(()) => taken += 1,
            Err(StoreError::ConditionFailed { .. }) => {}
            Err(e) => panic!("task {t}: unexpected error {e}"),
        }
    }
    assert_eq!(taken, PLACES, "places taken");
    let item = must_get(&*store, &key).await;
    assert_eq!(item.body, json!({"count": PLACES}));
    assert_eq!(item.version, PLACES, "one version per add that applied");
}
