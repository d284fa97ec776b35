//! The contract every [`Store`] adapter must honour, as a library of async test cases.
//!
//! Each adapter crate takes this crate as a dev-dependency and runs the whole suite against a
//! real instance of its backend:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn demo(store: Arc<dyn tern_core::Store>) {
//! // inside a `#[tokio::test(flavor = "multi_thread")]`
//! tern_store_contract::run_all(store).await;
//! # }
//! ```
//!
//! Every case works in partitions of its own (a fresh random `pk`), so the cases can share one
//! store — one SQLite file, one DynamoDB table — and may run against a store that already holds
//! data. [`run_all`] runs every case, catches each one's panic, and fails once at the end with the
//! names and messages of all failing cases, so one broken behaviour does not hide the others.
//!
//! What the suite pins down, beyond the doc comments of the port:
//! * an empty `pk` or `sk` and a `limit` of 0 are `Invalid`, an item over [`MAX_ITEM_BYTES`] is
//!   `TooLarge`, and
//!   every refusal of the port's shared rules (`tern_core::store::validate`) comes back from
//!   every adapter as the very same refusal (see [`validation`]);
//! * an empty transaction is a no-op;
//! * a failed condition reports the key and the index of the failing write;
//! * sort keys order by their UTF-8 bytes (DynamoDB's order for string keys);
//! * `query` never returns `last_sk` unless it equals the sort key of the last item returned, and
//!   always returns it when more matching items exist.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
pub use tern_core::store::MAX_ITEM_BYTES;
use tern_core::store::{Expect, Item, Key, Page, Store, StoreError, Write, MAX_TRANSACTION_WRITES};

pub mod app_configs;
pub mod apps;
pub mod concurrency;
pub mod counter;
pub mod validation;
use concurrency::{
    concurrent_creates_have_one_winner, concurrent_increments_lose_nothing,
    concurrent_transfers_keep_the_sum,
};
use counter::{
    add_counts_from_an_absent_item, add_refuses_past_its_bounds_and_changes_nothing,
    concurrent_adds_stop_exactly_at_the_limit, put_over_a_counter_makes_a_body_item,
};
use validation::{
    bad_keys_are_refused_alike, bad_queries_are_refused_alike, bad_transactions_are_refused_alike,
    item_sizes_are_refused_alike, keys_at_the_limits_are_accepted,
};

/// Items of this size (sort key, partition key and JSON body together) must be accepted; the
/// suite checks that a body of [`MAX_ITEM_BYTES`] is refused as `TooLarge`.
pub const ACCEPTED_ITEM_BYTES: usize = 300 * 1024;

type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One named contract case.
pub struct Case {
    pub name: &'static str,
    pub run: fn(Arc<dyn Store>) -> CaseFuture,
}

macro_rules! case {
    ($name:ident) => {
        Case {
            name: stringify!($name),
            run: |store| Box::pin($name(store)),
        }
    };
}

/// Every case of the contract, in the order [`run_all`] runs them.
pub fn cases() -> Vec<Case> {
    vec![
        case!(get_missing_item_is_none),
        case!(put_any_creates_at_version_1_then_increments),
        case!(put_absent_creates_once),
        case!(put_version_requires_the_current_version),
        case!(delete_honours_every_condition),
        case!(recreated_item_starts_again_at_version_1),
        case!(check_honours_every_condition_and_changes_nothing),
        case!(transaction_applies_every_write),
        case!(transaction_with_a_failing_condition_applies_nothing),
        case!(transaction_with_a_key_twice_is_invalid),
        case!(transaction_size_limit),
        case!(empty_transaction_is_a_no_op),
        case!(empty_key_parts_and_zero_limit_are_invalid),
        case!(item_size_limit),
        case!(keys_at_the_limits_are_accepted),
        case!(bad_keys_are_refused_alike),
        case!(bad_queries_are_refused_alike),
        case!(item_sizes_are_refused_alike),
        case!(bad_transactions_are_refused_alike),
        case!(bodies_round_trip_exactly),
        case!(query_orders_by_sort_key_bytes),
        case!(query_filters_by_prefix_and_partition),
        case!(query_after_is_exclusive),
        case!(query_paginates_across_pages),
        case!(query_of_an_empty_partition),
        case!(reads_see_the_latest_write),
        case!(concurrent_increments_lose_nothing),
        case!(concurrent_creates_have_one_winner),
        case!(concurrent_transfers_keep_the_sum),
        case!(add_counts_from_an_absent_item),
        case!(add_refuses_past_its_bounds_and_changes_nothing),
        case!(put_over_a_counter_makes_a_body_item),
        case!(concurrent_adds_stop_exactly_at_the_limit),
    ]
}

/// Runs every case against `store` and panics with the list of failing cases, if any.
pub async fn run_all(store: Arc<dyn Store>) {
    run_cases(store, cases()).await
}

/// Runs the given cases against `store` and panics with the list of failing cases, if any.
pub async fn run_cases(store: Arc<dyn Store>, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let started = Instant::now();
        let outcome = std::panic::AssertUnwindSafe((case.run)(store.clone()))
            .catch_unwind()
            .await;
        let elapsed = started.elapsed();
        // A test-only crate: libtest captures this output and shows it for failing tests only.
        match outcome {
            Ok(()) => eprintln!("store contract: {} ... ok ({elapsed:.2?})", case.name),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(non-string panic)".into());
                eprintln!("store contract: {} ... FAILED ({elapsed:.2?})", case.name);
                failures.push(format!("{}: {message}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} store contract case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// helpers

/// A partition no other case (or earlier run against the same table) uses.
pub(crate) fn partition(tag: &str) -> String {
    format!("contract#{tag}#{}", uuid::Uuid::new_v4().simple())
}

pub(crate) fn put(key: &Key, body: Value, expect: Expect) -> Write {
    Write::Put {
        key: key.clone(),
        body,
        expect,
    }
}

pub(crate) fn delete(key: &Key, expect: Expect) -> Write {
    Write::Delete {
        key: key.clone(),
        expect,
    }
}

pub(crate) fn check(key: &Key, expect: Expect) -> Write {
    Write::Check {
        key: key.clone(),
        expect,
    }
}

pub(crate) async fn must_get(store: &dyn Store, key: &Key) -> Item {
    match store.get(key).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("expected {key:?} to exist, it does not"),
        Err(e) => panic!("get {key:?} failed: {e}"),
    }
}

pub(crate) async fn must_be_absent(store: &dyn Store, key: &Key) {
    match store.get(key).await {
        Ok(None) => {}
        Ok(Some(item)) => panic!("expected {key:?} to be absent, found {item:?}"),
        Err(e) => panic!("get {key:?} failed: {e}"),
    }
}

pub(crate) async fn must_write(store: &dyn Store, write: Write) {
    let what = format!("{write:?}");
    if let Err(e) = store.write(write).await {
        panic!("write {what} failed: {e}");
    }
}

pub(crate) async fn must_query(
    store: &dyn Store,
    pk: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Page {
    match store.query(pk, prefix, after, limit).await {
        Ok(page) => page,
        Err(e) => panic!("query({pk:?}, {prefix:?}, {after:?}, {limit}) failed: {e}"),
    }
}

#[track_caller]
pub(crate) fn assert_condition_failed(result: Result<(), StoreError>, key: &Key, index: usize) {
    match result {
        Err(StoreError::ConditionFailed {
            key: failed,
            index: failed_index,
        }) => {
            assert_eq!(&failed, key, "ConditionFailed names the wrong key");
            assert_eq!(
                failed_index,
                Some(index),
                "ConditionFailed names the wrong index"
            );
        }
        other => panic!("expected ConditionFailed on {key:?} at index {index}, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Invalid(message)) => {
            assert!(!message.is_empty(), "{what}: Invalid without a message")
        }
        other => panic!("{what}: expected Invalid, got {other:?}"),
    }
}

#[track_caller]
fn assert_too_large<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::TooLarge { bytes, limit, .. }) => {
            assert!(
                bytes > limit,
                "{what}: TooLarge of {bytes} bytes under {limit}"
            )
        }
        other => panic!("{what}: expected TooLarge, got {other:?}"),
    }
}

fn sks(page: &Page) -> Vec<&str> {
    page.items.iter().map(|i| i.key.sk.as_str()).collect()
}

/// Retries `attempt` while it fails with a condition failure or throttling, with random
/// exponential backoff (up to 64 ms) so contending tasks spread out instead of colliding again
/// in lockstep. Panics on any other error or after too many attempts.
pub(crate) async fn retry<F, Fut>(what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut conflicts = 0u32;
    loop {
        match attempt().await {
            Ok(()) => return,
            Err(StoreError::ConditionFailed { .. }) | Err(StoreError::Throttled(_)) => {
                conflicts += 1;
                assert!(
                    conflicts < 5_000,
                    "{what}: gave up after {conflicts} conflicts"
                );
                let ceiling = 500u64 << conflicts.min(7);
                let pause = rand::rng().random_range(0..=ceiling);
                tokio::time::sleep(Duration::from_micros(pause)).await;
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// single-item writes and reads

pub async fn get_missing_item_is_none(store: Arc<dyn Store>) {
    must_be_absent(&*store, &Key::new(partition("missing"), "nothing-here")).await;
}

pub async fn put_any_creates_at_version_1_then_increments(store: Arc<dyn Store>) {
    let key = Key::new(partition("put-any"), "item");
    must_write(&*store, put(&key, json!({"n": 1}), Expect::Any)).await;
    let item = must_get(&*store, &key).await;
    assert_eq!(
        item,
        Item {
            key: key.clone(),
            version: 1,
            body: json!({"n": 1})
        }
    );

    must_write(&*store, put(&key, json!({"n": 2}), Expect::Any)).await;
    must_write(&*store, put(&key, json!("replaced"), Expect::Any)).await;
    let item = must_get(&*store, &key).await;
    assert_eq!(item.version, 3, "every write adds one to the version");
    assert_eq!(
        item.body,
        json!("replaced"),
        "a put replaces the whole body"
    );
}

pub async fn put_absent_creates_once(store: Arc<dyn Store>) {
    let key = Key::new(partition("put-absent"), "item");
    must_write(&*store, put(&key, json!({"first": true}), Expect::Absent)).await;
    assert_condition_failed(
        store
            .write(put(&key, json!({"second": true}), Expect::Absent))
            .await,
        &key,
        0,
    );
    let item = must_get(&*store, &key).await;
    assert_eq!(
        (item.version, item.body),
        (1, json!({"first": true})),
        "a failed put changes nothing"
    );
}

pub async fn put_version_requires_the_current_version(store: Arc<dyn Store>) {
    let pk = partition("put-version");
    let key = Key::new(&pk, "item");
    must_write(&*store, put(&key, json!(1), Expect::Absent)).await;
    must_write(&*store, put(&key, json!(2), Expect::Version(1))).await;
    assert_eq!(must_get(&*store, &key).await.version, 2);

    assert_condition_failed(
        store
            .write(put(&key, json!("stale"), Expect::Version(1)))
            .await,
        &key,
        0,
    );
    assert_condition_failed(
        store
            .write(put(&key, json!("future"), Expect::Version(3)))
            .await,
        &key,
        0,
    );
    let item = must_get(&*store, &key).await;
    assert_eq!(
        (item.version, item.body),
        (2, json!(2)),
        "failed puts change nothing"
    );

    let missing = Key::new(&pk, "missing");
    assert_condition_failed(
        store
            .write(put(&missing, json!(1), Expect::Version(1)))
            .await,
        &missing,
        0,
    );
    must_be_absent(&*store, &missing).await;
}

pub async fn delete_honours_every_condition(store: Arc<dyn Store>) {
    let pk = partition("delete");
    let key = Key::new(&pk, "item");
    must_write(&*store, put(&key, json!({}), Expect::Absent)).await;
    must_write(&*store, put(&key, json!({}), Expect::Any)).await; // version 2

    assert_condition_failed(store.write(delete(&key, Expect::Version(1))).await, &key, 0);
    assert_condition_failed(store.write(delete(&key, Expect::Absent)).await, &key, 0);
    assert_eq!(
        must_get(&*store, &key).await.version,
        2,
        "failed deletes change nothing"
    );

    must_write(&*store, delete(&key, Expect::Version(2))).await;
    must_be_absent(&*store, &key).await;

    // On a missing item: Any and Absent hold (nothing to delete), Version does not.
    must_write(&*store, delete(&key, Expect::Any)).await;
    must_write(&*store, delete(&key, Expect::Absent)).await;
    assert_condition_failed(store.write(delete(&key, Expect::Version(2))).await, &key, 0);

    let other = Key::new(&pk, "other");
    must_write(&*store, put(&other, json!({}), Expect::Any)).await;
    must_write(&*store, delete(&other, Expect::Any)).await;
    must_be_absent(&*store, &other).await;
}

pub async fn recreated_item_starts_again_at_version_1(store: Arc<dyn Store>) {
    let key = Key::new(partition("recreate"), "item");
    must_write(&*store, put(&key, json!("a"), Expect::Absent)).await;
    must_write(&*store, put(&key, json!("b"), Expect::Version(1))).await;
    must_write(&*store, delete(&key, Expect::Version(2))).await;
    must_write(&*store, put(&key, json!("c"), Expect::Absent)).await;
    let item = must_get(&*store, &key).await;
    assert_eq!((item.version, item.body), (1, json!("c")));
}

pub async fn check_honours_every_condition_and_changes_nothing(store: Arc<dyn Store>) {
    let pk = partition("check");
    let key = Key::new(&pk, "item");
    let missing = Key::new(&pk, "missing");
    must_write(&*store, put(&key, json!({"x": 1}), Expect::Absent)).await;

    must_write(&*store, check(&key, Expect::Any)).await;
    must_write(&*store, check(&key, Expect::Version(1))).await;
    must_write(&*store, check(&missing, Expect::Any)).await;
    must_write(&*store, check(&missing, Expect::Absent)).await;
    assert_condition_failed(store.write(check(&key, Expect::Absent)).await, &key, 0);
    assert_condition_failed(store.write(check(&key, Expect::Version(2))).await, &key, 0);
    assert_condition_failed(
        store.write(check(&missing, Expect::Version(1))).await,
        &missing,
        0,
    );

    let item = must_get(&*store, &key).await;
    assert_eq!(
        (item.version, item.body),
        (1, json!({"x": 1})),
        "checks never change the item"
    );
    must_be_absent(&*store, &missing).await;
}

// ---------------------------------------------------------------------------------------------
// transactions

pub async fn transaction_applies_every_write(store: Arc<dyn Store>) {
    let pk = partition("tx-apply");
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|sk| Key::new(&pk, sk));
    must_write(&*store, put(&b, json!("b1"), Expect::Absent)).await;
    must_write(&*store, put(&c, json!("c1"), Expect::Absent)).await;
    must_write(&*store, put(&d, json!("d1"), Expect::Absent)).await;

    store
        .transact(vec![
            put(&a, json!("a1"), Expect::Absent),
            put(&b, json!("b2"), Expect::Version(1)),
            delete(&c, Expect::Version(1)),
            check(&d, Expect::Version(1)),
        ])
        .await
        .expect("transaction whose conditions all hold");

    let page = must_query(&*store, &pk, "", None, 10).await;
    let got: Vec<(&str, u64, &Value)> = page
        .items
        .iter()
        .map(|i| (i.key.sk.as_str(), i.version, &i.body))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a", 1, &json!("a1")),
            ("b", 2, &json!("b2")),
            ("d", 1, &json!("d1"))
        ]
    );
}

pub async fn transaction_with_a_failing_condition_applies_nothing(store: Arc<dyn Store>) {
    let pk = partition("tx-atomic");
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|sk| Key::new(&pk, sk));
    must_write(&*store, put(&b, json!("b1"), Expect::Absent)).await;
    must_write(&*store, put(&c, json!("c1"), Expect::Absent)).await;
    must_write(&*store, put(&d, json!("d1"), Expect::Absent)).await;
    let before = must_query(&*store, &pk, "", None, 10).await;

    // A failing put in the middle.
    let result = store
        .transact(vec![
            put(&a, json!("a1"), Expect::Absent),
            put(&b, json!("b2"), Expect::Version(7)),
            delete(&c, Expect::Any),
        ])
        .await;
    assert_condition_failed(result, &b, 1);

    // A failing check at the end, after writes that would succeed.
    let result = store
        .transact(vec![
            put(&a, json!("a1"), Expect::Absent),
            put(&b, json!("b2"), Expect::Version(1)),
            delete(&c, Expect::Version(1)),
            check(&d, Expect::Absent),
        ])
        .await;
    assert_condition_failed(result, &d, 3);

    // A failing delete first.
    let result = store
        .transact(vec![
            delete(&c, Expect::Version(2)),
            put(&a, json!("a1"), Expect::Any),
        ])
        .await;
    assert_condition_failed(result, &c, 0);

    let after = must_query(&*store, &pk, "", None, 10).await;
    assert_eq!(
        after, before,
        "a cancelled transaction leaves every item as it was"
    );
}

pub async fn transaction_with_a_key_twice_is_invalid(store: Arc<dyn Store>) {
    let pk = partition("tx-dup");
    let [a, b] = ["a", "b"].map(|sk| Key::new(&pk, sk));
    let result = store
        .transact(vec![
            put(&a, json!(1), Expect::Any),
            put(&b, json!(1), Expect::Any),
            put(&a, json!(2), Expect::Any),
        ])
        .await;
    assert_invalid(result, "the same key put twice");
    let result = store
        .transact(vec![
            check(&b, Expect::Absent),
            put(&b, json!(1), Expect::Absent),
        ])
        .await;
    assert_invalid(result, "a check and a put of one key");
    must_be_absent(&*store, &a).await;
    must_be_absent(&*store, &b).await;

    // The same sort key in another partition is another key.
    let other = Key::new(partition("tx-dup-other"), "a");
    store
        .transact(vec![
            put(&a, json!(1), Expect::Absent),
            put(&other, json!(1), Expect::Absent),
        ])
        .await
        .expect("equal sort keys in two partitions are two keys");
}

pub async fn transaction_size_limit(store: Arc<dyn Store>) {
    let pk = partition("tx-size");
    let writes = |n: usize| -> Vec<Write> {
        (0..n)
            .map(|i| {
                put(
                    &Key::new(&pk, format!("item#{i:03}")),
                    json!({"i": i}),
                    Expect::Absent,
                )
            })
            .collect()
    };
    assert_invalid(
        store.transact(writes(MAX_TRANSACTION_WRITES + 1)).await,
        "101 writes",
    );
    let page = must_query(&*store, &pk, "", None, 200).await;
    assert!(
        page.items.is_empty(),
        "a refused transaction writes nothing"
    );

    store
        .transact(writes(MAX_TRANSACTION_WRITES))
        .await
        .expect("a transaction of exactly the maximum size");
    let page = must_query(&*store, &pk, "", None, 200).await;
    assert_eq!(page.items.len(), MAX_TRANSACTION_WRITES);
    assert!(page.items.iter().all(|i| i.version == 1));
}

pub async fn empty_transaction_is_a_no_op(store: Arc<dyn Store>) {
    store
        .transact(Vec::new())
        .await
        .expect("an empty transaction succeeds and does nothing");
}

pub async fn empty_key_parts_and_zero_limit_are_invalid(store: Arc<dyn Store>) {
    let pk = partition("empty-key");
    let no_pk = Key::new("", "sk");
    let no_sk = Key::new(&pk, "");
    assert_invalid(
        store.write(put(&no_pk, json!(1), Expect::Any)).await,
        "put with an empty pk",
    );
    assert_invalid(
        store.write(put(&no_sk, json!(1), Expect::Any)).await,
        "put with an empty sk",
    );
    assert_invalid(
        store.write(delete(&no_sk, Expect::Any)).await,
        "delete with an empty sk",
    );
    assert_invalid(
        store.write(check(&no_pk, Expect::Absent)).await,
        "check with an empty pk",
    );
    assert_invalid(store.get(&no_sk).await, "get with an empty sk");
    assert_invalid(store.query("", "", None, 10).await, "query of an empty pk");
    assert_invalid(store.query(&pk, "", None, 0).await, "query with limit 0");

    // A bad write makes the whole transaction invalid: the good write is not applied.
    let good = Key::new(&pk, "good");
    let result = store
        .transact(vec![
            put(&good, json!(1), Expect::Any),
            put(&no_sk, json!(1), Expect::Any),
        ])
        .await;
    assert_invalid(result, "transaction with one empty sk");
    must_be_absent(&*store, &good).await;
}

pub async fn item_size_limit(store: Arc<dyn Store>) {
    let pk = partition("size");
    let big = Key::new(&pk, "big");
    let body = json!({ "blob": "x".repeat(ACCEPTED_ITEM_BYTES) });
    must_write(&*store, put(&big, body.clone(), Expect::Absent)).await;
    assert_eq!(must_get(&*store, &big).await.body, body);

    let too_big = Key::new(&pk, "too-big");
    let body = json!({ "blob": "x".repeat(MAX_ITEM_BYTES) });
    assert_too_large(
        store.write(put(&too_big, body.clone(), Expect::Any)).await,
        "an item over 400 KB",
    );
    let result = store
        .transact(vec![
            put(&big, json!("small"), Expect::Version(1)),
            put(&too_big, body, Expect::Any),
        ])
        .await;
    assert_too_large(result, "a transaction carrying an item over 400 KB");
    must_be_absent(&*store, &too_big).await;
    assert_eq!(
        must_get(&*store, &big).await.version,
        1,
        "an invalid transaction writes nothing"
    );
}

pub async fn bodies_round_trip_exactly(store: Arc<dyn Store>) {
    let pk = partition("bodies");
    let bodies = [
        json!(null),
        json!(true),
        json!(0),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5e-7),
        json!(""),
        json!("Grüße, 世界 🦀 \"quoted\" \\ \n"),
        json!([]),
        json!({}),
        json!({"nested": {"list": [1, "two", null, {"deep": [[[]]]}], "empty": "", "f": 0.1}}),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let key = Key::new(&pk, format!("b{i:02}"));
        must_write(&*store, put(&key, body.clone(), Expect::Absent)).await;
        assert_eq!(
            &must_get(&*store, &key).await.body,
            body,
            "body {i} changed on its way through the store"
        );
    }
    let page = must_query(&*store, &pk, "", None, 100).await;
    let got: Vec<&Value> = page.items.iter().map(|i| &i.body).collect();
    assert_eq!(
        got,
        bodies.iter().collect::<Vec<_>>(),
        "query returns the bodies unchanged"
    );

    // Keys may hold any characters, separators included.
    let odd = Key::new(format!("{pk}/ünïcode#|:"), "a b#c|d:ü/🦀");
    must_write(&*store, put(&odd, json!(1), Expect::Absent)).await;
    assert_eq!(must_get(&*store, &odd).await.key, odd);
}

// ---------------------------------------------------------------------------------------------
// queries

pub async fn query_orders_by_sort_key_bytes(store: Arc<dyn Store>) {
    let pk = partition("order");
    let mut keys: Vec<String> = [
        "b", "a", "aa", "a#", "A", "Z", "0", "10", "9", "~", "é", "z", "ab", "a\u{7f}", "😀", "ｚ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    keys.shuffle(&mut rand::rng());
    for sk in &keys {
        must_write(&*store, put(&Key::new(&pk, sk), json!(sk), Expect::Absent)).await;
    }
    keys.sort(); // Rust orders strings by their UTF-8 bytes
    let page = must_query(&*store, &pk, "", None, 100).await;
    assert_eq!(
        sks(&page),
        keys.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(page.last_sk, None);
    for item in &page.items {
        assert_eq!(item.key.pk, pk);
        assert_eq!(
            item.body,
            json!(item.key.sk),
            "query returns each item's own body"
        );
        assert_eq!(item.version, 1);
    }
}

pub async fn query_filters_by_prefix_and_partition(store: Arc<dyn Store>) {
    let pk = partition("prefix");
    let neighbour = partition("prefix-neighbour");
    let all = [
        "job",
        "job#1",
        "job#2",
        "job#2#run#1",
        "job$",
        "jobs#1",
        "joa#9",
        "run#1",
        "JOB#1",
    ];
    for sk in all {
        must_write(&*store, put(&Key::new(&pk, sk), json!(sk), Expect::Absent)).await;
        must_write(
            &*store,
            put(
                &Key::new(&neighbour, format!("{sk}x")),
                json!(sk),
                Expect::Absent,
            ),
        )
        .await;
    }
    let page = must_query(&*store, &pk, "job#", None, 100).await;
    assert_eq!(sks(&page), ["job#1", "job#2", "job#2#run#1"]);
    let page = must_query(&*store, &pk, "job", None, 100).await;
    assert_eq!(
        sks(&page),
        ["job", "job#1", "job#2", "job#2#run#1", "job$", "jobs#1"]
    );
    let page = must_query(&*store, &pk, "job#2", None, 100).await;
    assert_eq!(sks(&page), ["job#2", "job#2#run#1"]);
    let page = must_query(&*store, &pk, "job#2#run#1", None, 100).await;
    assert_eq!(
        sks(&page),
        ["job#2#run#1"],
        "a prefix equal to a whole key matches that key"
    );
    let page = must_query(&*store, &pk, "nothing", None, 100).await;
    assert!(page.items.is_empty() && page.last_sk.is_none());
    let page = must_query(&*store, &pk, "", None, 100).await;
    assert_eq!(
        page.items.len(),
        all.len(),
        "an empty prefix lists the whole partition and nothing else"
    );
}

pub async fn query_after_is_exclusive(store: Arc<dyn Store>) {
    let pk = partition("after");
    for sk in ["a#1", "a#2", "a#3", "a#5", "b#1", "b#2"] {
        must_write(&*store, put(&Key::new(&pk, sk), json!(sk), Expect::Absent)).await;
    }
    let q = |prefix: &'static str, after: &'static str| {
        let store = store.clone();
        let pk = pk.clone();
        async move { must_query(&*store, &pk, prefix, Some(after), 100).await }
    };
    assert_eq!(
        sks(&q("a#", "a#2").await),
        ["a#3", "a#5"],
        "after an existing key"
    );
    assert_eq!(
        sks(&q("a#", "a#4").await),
        ["a#5"],
        "after a key that does not exist"
    );
    assert_eq!(
        sks(&q("a#", "a#").await),
        ["a#1", "a#2", "a#3", "a#5"],
        "after the prefix itself"
    );
    assert_eq!(
        sks(&q("b#", "a#9").await),
        ["b#1", "b#2"],
        "after a key before the prefix range"
    );
    assert_eq!(
        sks(&q("a#", "b").await),
        Vec::<&str>::new(),
        "after a key beyond the prefix range"
    );
    assert_eq!(
        sks(&q("", "a#5").await),
        ["b#1", "b#2"],
        "after with no prefix"
    );
    let last = q("a#", "a#5").await;
    assert!(
        last.items.is_empty() && last.last_sk.is_none(),
        "after the last key: {last:?}"
    );
}

pub async fn query_paginates_across_pages(store: Arc<dyn Store>) {
    let pk = partition("pages");
    let mut expected = Vec::new();
    for i in 0..11 {
        let sk = format!("item#{i:02}");
        must_write(&*store, put(&Key::new(&pk, &sk), json!(i), Expect::Absent)).await;
        expected.push(sk);
    }
    must_write(
        &*store,
        put(&Key::new(&pk, "other#1"), json!(0), Expect::Absent),
    )
    .await;

    for limit in [1, 3, 4, 11, 12] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages <= 20, "pagination with limit {limit} does not end");
            let page = must_query(&*store, &pk, "item#", after.as_deref(), limit).await;
            assert!(
                page.items.len() <= limit,
                "limit {limit}: page of {} items",
                page.items.len()
            );
            seen.extend(page.items.iter().map(|i| i.key.sk.clone()));
            match page.last_sk {
                Some(last) => {
                    assert_eq!(
                        Some(&last),
                        page.items.last().map(|i| &i.key.sk),
                        "last_sk is the last item's sk"
                    );
                    after = Some(last);
                }
                None => {
                    assert_eq!(
                        seen.len(),
                        expected.len(),
                        "limit {limit}: last_sk missing while items remain"
                    );
                    break;
                }
            }
        }
        assert_eq!(
            seen, expected,
            "limit {limit}: every item exactly once, in order"
        );
    }
}

pub async fn query_of_an_empty_partition(store: Arc<dyn Store>) {
    let page = must_query(&*store, &partition("empty"), "", None, 10).await;
    assert_eq!(page, Page::default());
    let page = must_query(&*store, &partition("empty"), "job#", Some("job#1"), 10).await;
    assert_eq!(page, Page::default());
}

pub async fn reads_see_the_latest_write(store: Arc<dyn Store>) {
    let pk = partition("latest");
    let key = Key::new(&pk, "item");
    for round in 1..=5u64 {
        let expect = if round == 1 {
            Expect::Absent
        } else {
            Expect::Version(round - 1)
        };
        must_write(&*store, put(&key, json!({"round": round}), expect)).await;
        let got = must_get(&*store, &key).await;
        assert_eq!((got.version, got.body), (round, json!({"round": round})));
        let page = must_query(&*store, &pk, "", None, 10).await;
        assert_eq!(
            page.items,
            vec![Item {
                key: key.clone(),
                version: round,
                body: json!({"round": round})
            }]
        );
    }
    must_write(&*store, delete(&key, Expect::Version(5))).await;
    assert!(must_query(&*store, &pk, "", None, 10)
        .await
        .items
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// concurrency
