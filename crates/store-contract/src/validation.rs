//! Cases proving that every adapter refuses exactly what the port's shared rules
//! (`tern_core::store::validate`) refuse, with the very error those rules give, and accepts
//! everything up to the limits: an adapter that refused earlier than the rules (or only at its
//! backend, with a different error) fails here.

use std::sync::Arc;

use serde_json::{json, Value};
use tern_core::store::validate::{self, MAX_ITEM_BYTES, MAX_PK_BYTES, MAX_SK_BYTES};
use tern_core::store::{Expect, Key, Store, StoreError, Write, MAX_TRANSACTION_WRITES};

use super::{check, delete, must_be_absent, must_get, must_query, must_write, partition, put};

/// `result` is the refusal `expected` (what the shared rules say), message and all.
#[track_caller]
fn assert_refused<T: std::fmt::Debug, U: std::fmt::Debug>(
    result: Result<T, StoreError>,
    expected: Result<U, StoreError>,
    what: &str,
) {
    let Err(expected) = expected else {
        panic!("{what}: the shared rules accept this input ({expected:?}); the case is wrong");
    };
    match result {
        Err(got) => assert_eq!(
            format!("{got:?}"),
            format!("{expected:?}"),
            "{what}: refused otherwise than the shared rules refuse"
        ),
        Ok(v) => panic!("{what}: expected {expected:?}, got Ok({v:?})"),
    }
}

/// A string of exactly `len` bytes that starts with `start`.
fn padded(start: &str, len: usize) -> String {
    format!("{start}{}", "k".repeat(len - start.len()))
}

/// A body whose item under `key` is exactly `size` bytes as the rules measure it.
fn body_of_size(key: &Key, size: usize) -> Value {
    // The JSON text of a string is the string and two quotes.
    json!("x".repeat(size - key.pk.len() - key.sk.len() - 2))
}

pub async fn keys_at_the_limits_are_accepted(store: Arc<dyn Store>) {
    let pk = padded(&partition("long-keys"), MAX_PK_BYTES);
    let longest = Key::new(&pk, padded("sk#", MAX_SK_BYTES));
    must_write(&*store, put(&longest, json!(1), Expect::Absent)).await;
    assert_eq!(must_get(&*store, &longest).await.key, longest);
    // A sort key's length is its UTF-8 bytes, as DynamoDB counts it: 256 four-byte characters.
    let wide = Key::new(&pk, "🦀".repeat(MAX_SK_BYTES / 4));
    must_write(&*store, put(&wide, json!(2), Expect::Absent)).await;
    let prefix = padded("sk#", MAX_SK_BYTES);
    let page = must_query(&*store, &pk, &prefix, None, 10).await;
    assert_eq!(super::sks(&page), [longest.sk.as_str()]);
    let page = must_query(&*store, &pk, "", Some(&prefix), 10).await;
    assert_eq!(super::sks(&page), [wide.sk.as_str()]);
}

pub async fn bad_keys_are_refused_alike(store: Arc<dyn Store>) {
    let pk = partition("bad-keys");
    let bad = [
        ("an empty pk", Key::new("", "sk")),
        ("an empty sk", Key::new(&pk, "")),
        (
            "a pk one byte too long",
            Key::new(padded(&pk, MAX_PK_BYTES + 1), "sk"),
        ),
        (
            "an sk one byte too long",
            Key::new(&pk, padded("sk", MAX_SK_BYTES + 1)),
        ),
        (
            "an sk of 257 four-byte characters",
            Key::new(&pk, "🦀".repeat(257)),
        ),
    ];
    for (what, key) in &bad {
        assert_refused(
            store.get(key).await,
            validate::check_key(key),
            &format!("get with {what}"),
        );
        for write in [
            put(key, json!(1), Expect::Any),
            put(key, json!(1), Expect::Absent),
            delete(key, Expect::Any),
            check(key, Expect::Version(1)),
        ] {
            let expected = validate::check_transaction(vec![write.clone()]);
            let label = format!("{write:?} with {what}");
            assert_refused(store.write(write).await, expected, &label);
        }
        // Second in a transaction: the whole transaction is refused, the good write not made.
        let good = Key::new(&pk, "good");
        let writes = vec![
            put(&good, json!(1), Expect::Any),
            put(key, json!(1), Expect::Any),
        ];
        let expected = validate::check_transaction(writes.clone());
        assert_refused(
            store.transact(writes).await,
            expected,
            &format!("a transaction with {what}"),
        );
        must_be_absent(&*store, &good).await;
    }
}

pub async fn bad_queries_are_refused_alike(store: Arc<dyn Store>) {
    let pk = partition("bad-query");
    let long_pk = padded(&pk, MAX_PK_BYTES + 1);
    let long_prefix = padded("p", MAX_SK_BYTES + 1);
    let cases: [(&str, &str, &str, Option<&str>, usize); 5] = [
        ("an empty pk", "", "", None, 10),
        ("a pk one byte too long", &long_pk, "", None, 10),
        ("a prefix one byte too long", &pk, &long_prefix, None, 10),
        ("an empty `after`", &pk, "", Some(""), 10),
        ("a limit of 0", &pk, "", None, 0),
    ];
    for (what, pk, prefix, after, limit) in cases {
        let expected = validate::check_query(pk, prefix, after, limit);
        assert_refused(
            store.query(pk, prefix, after, limit).await,
            expected,
            &format!("query with {what}"),
        );
    }
}

pub async fn item_sizes_are_refused_alike(store: Arc<dyn Store>) {
    let pk = partition("item-size");
    // The largest item the rules allow must fit every backend (DynamoDB's 400 KB included).
    let largest = Key::new(&pk, "largest");
    let body = body_of_size(&largest, MAX_ITEM_BYTES);
    must_write(&*store, put(&largest, body.clone(), Expect::Absent)).await;
    assert_eq!(must_get(&*store, &largest).await.body, body);

    let over = Key::new(&pk, "over");
    let write = put(&over, body_of_size(&over, MAX_ITEM_BYTES + 1), Expect::Any);
    let expected = validate::check_transaction(vec![write.clone()]);
    assert_refused(
        store.write(write.clone()).await,
        expected,
        "an item one byte too large",
    );
    let writes = vec![put(&largest, json!("small"), Expect::Version(1)), write];
    let expected = validate::check_transaction(writes.clone());
    assert_refused(
        store.transact(writes).await,
        expected,
        "a transaction with an item too large",
    );
    must_be_absent(&*store, &over).await;
    assert_eq!(must_get(&*store, &largest).await.version, 1);
}

pub async fn bad_transactions_are_refused_alike(store: Arc<dyn Store>) {
    let pk = partition("bad-tx");
    let too_many: Vec<Write> = (0..=MAX_TRANSACTION_WRITES)
        .map(|i| put(&Key::new(&pk, format!("{i:03}")), json!(i), Expect::Any))
        .collect();
    let expected = validate::check_transaction(too_many.clone());
    assert_refused(store.transact(too_many).await, expected, "101 writes");
    let a = Key::new(&pk, "a");
    let twice = vec![check(&a, Expect::Absent), delete(&a, Expect::Any)];
    let expected = validate::check_transaction(twice.clone());
    assert_refused(store.transact(twice).await, expected, "one key twice");
    assert!(must_query(&*store, &pk, "", None, 200)
        .await
        .items
        .is_empty());
}
