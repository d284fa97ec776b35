//! The port's rules for what a store call may carry, checked in one place before any adapter
//! does I/O. Every adapter (memory, SQLite, DynamoDB) calls these, so a call one deployment
//! refuses is refused by the other with the same error, and data written locally always fits
//! the AWS deployment.

use std::collections::HashSet;

use super::{Key, StoreError, Write, MAX_TRANSACTION_WRITES};

/// Largest item accepted, counting the UTF-8 bytes of the partition key, the sort key and the
/// JSON text of the body.
///
/// DynamoDB documents its item limit as 400 KB and counts every attribute's *name* as well as
/// its value. The service itself takes up to 409,600 bytes, but moto's DynamoDB (what the
/// adapter is tested against) refuses items over 405,000, so the limit is the documented
/// 400,000 — fits every backend — less 64 bytes for the names `pk`, `sk`, `version`, `body`
/// (15 bytes) and the version number (at most 21 bytes for a `u64`). A larger limit would let
/// an item through the local store that a DynamoDB backend then refuses.
pub const MAX_ITEM_BYTES: usize = 400_000 - 64;

/// Longest partition key: DynamoDB's limit for a partition key value.
pub const MAX_PK_BYTES: usize = 2048;

/// Longest sort key: DynamoDB's limit for a sort key value.
pub const MAX_SK_BYTES: usize = 1024;

/// A key DynamoDB would store: both parts non-empty and within its lengths.
pub fn check_key(key: &Key) -> Result<(), StoreError> {
    check_pk(&key.pk)?;
    check_sk(&key.sk, "sort key")?;
    Ok(())
}

fn check_pk(pk: &str) -> Result<(), StoreError> {
    if pk.is_empty() {
        return Err(StoreError::Invalid("the partition key is empty".into()));
    }
    if pk.len() > MAX_PK_BYTES {
        return Err(StoreError::Invalid(format!(
            "the partition key is {} bytes, more than the {MAX_PK_BYTES} allowed",
            pk.len()
        )));
    }
    Ok(())
}

fn check_sk(sk: &str, what: &str) -> Result<(), StoreError> {
    if sk.is_empty() {
        return Err(StoreError::Invalid(format!("the {what} is empty")));
    }
    if sk.len() > MAX_SK_BYTES {
        return Err(StoreError::Invalid(format!(
            "the {what} is {} bytes, more than the {MAX_SK_BYTES} allowed",
            sk.len()
        )));
    }
    Ok(())
}

/// A query's arguments: a valid partition key, a prefix and `after` no longer than a sort key
/// (an empty prefix lists the whole partition; an empty `after` is a sort key no item has), and
/// a limit of at least 1.
pub fn check_query(
    pk: &str,
    sk_prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(), StoreError> {
    check_pk(pk)?;
    if sk_prefix.len() > MAX_SK_BYTES {
        return Err(StoreError::Invalid(format!(
            "the sort key prefix is {} bytes, more than the {MAX_SK_BYTES} allowed",
            sk_prefix.len()
        )));
    }
    if let Some(after) = after {
        check_sk(after, "`after` sort key")?;
    }
    if limit == 0 {
        return Err(StoreError::Invalid(
            "a query's limit must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A write that passed [`check_transaction`], with its body already serialised.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    Put {
        key: Key,
        /// The body's JSON text, as measured against [`MAX_ITEM_BYTES`].
        body: String,
        expect: super::Expect,
    },
    Delete {
        key: Key,
        expect: super::Expect,
    },
    Check {
        key: Key,
        expect: super::Expect,
    },
    Add {
        key: Key,
        delta: i64,
        at_most: Option<u64>,
    },
}

impl Checked {
    pub fn key(&self) -> &Key {
        match self {
            Checked::Put { key, .. }
            | Checked::Delete { key, .. }
            | Checked::Check { key, .. }
            | Checked::Add { key, .. } => key,
        }
    }

    /// The version condition of the write; an add has none (its bounds are its condition).
    pub fn expect(&self) -> super::Expect {
        match self {
            Checked::Put { expect, .. }
            | Checked::Delete { expect, .. }
            | Checked::Check { expect, .. } => *expect,
            Checked::Add { .. } => super::Expect::Any,
        }
    }
}

/// A transaction's rules: at most [`MAX_TRANSACTION_WRITES`] writes, each key valid and at most
/// once, each item at most [`MAX_ITEM_BYTES`]. Serialises every body once, for the size check
/// and for the adapter to store.
pub fn check_transaction(writes: Vec<Write>) -> Result<Vec<Checked>, StoreError> {
    check_count(&writes)?;
    let mut seen = HashSet::with_capacity(writes.len());
    let mut checked = Vec::with_capacity(writes.len());
    for (index, write) in writes.into_iter().enumerate() {
        check_entry(index, write.key(), &mut seen)?;
        checked.push(match write {
            Write::Put { key, body, expect } => Checked::Put {
                body: measured(index, &key, &body)?,
                key,
                expect,
            },
            Write::Delete { key, expect } => Checked::Delete { key, expect },
            Write::Check { key, expect } => Checked::Check { key, expect },
            Write::Add {
                key,
                delta,
                at_most,
            } => Checked::Add {
                key,
                delta,
                at_most,
            },
        });
    }
    Ok(checked)
}

/// [`check_transaction`] for adapters that keep bodies as trees: the same rules and errors,
/// without giving up the writes.
pub fn check_writes(writes: &[Write]) -> Result<(), StoreError> {
    check_count(writes)?;
    let mut seen = HashSet::with_capacity(writes.len());
    for (index, write) in writes.iter().enumerate() {
        check_entry(index, write.key(), &mut seen)?;
        if let Write::Put { key, body, .. } = write {
            measured(index, key, body)?;
        }
    }
    Ok(())
}

fn check_count(writes: &[Write]) -> Result<(), StoreError> {
    if writes.len() > MAX_TRANSACTION_WRITES {
        return Err(StoreError::Invalid(format!(
            "a transaction carries at most {MAX_TRANSACTION_WRITES} writes, got {}",
            writes.len()
        )));
    }
    Ok(())
}

/// The key of write `index` is valid and not written before in the same transaction.
fn check_entry(index: usize, key: &Key, seen: &mut HashSet<Key>) -> Result<(), StoreError> {
    check_key(key).map_err(|e| match e {
        StoreError::Invalid(m) => StoreError::Invalid(format!("write {index}: {m}")),
        other => other,
    })?;
    if !seen.insert(key.clone()) {
        return Err(StoreError::Invalid(format!(
            "write {index} repeats the key {key:?} in one transaction"
        )));
    }
    Ok(())
}

/// The body's JSON text, once the item it makes is known to fit [`MAX_ITEM_BYTES`].
fn measured(index: usize, key: &Key, body: &serde_json::Value) -> Result<String, StoreError> {
    let body = serde_json::to_string(body).map_err(|e| {
        StoreError::Invalid(format!("write {index}: the body is not serialisable: {e}"))
    })?;
    let size = key.pk.len() + key.sk.len() + body.len();
    if size > MAX_ITEM_BYTES {
        return Err(StoreError::TooLarge {
            key: key.clone(),
            bytes: size,
            limit: MAX_ITEM_BYTES,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Expect;
    use serde_json::json;

    fn put(key: Key, body: serde_json::Value) -> Write {
        Write::Put {
            key,
            body,
            expect: Expect::Any,
        }
    }

    fn invalid_message(r: Result<impl std::fmt::Debug, StoreError>) -> String {
        match r {
            Err(StoreError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_refused_when_empty_or_longer_than_dynamodb_allows() {
        assert!(check_key(&Key::new(
            "p".repeat(MAX_PK_BYTES),
            "s".repeat(MAX_SK_BYTES)
        ))
        .is_ok());
        for (key, says) in [
            (Key::new("", "s"), "partition key is empty"),
            (Key::new("p", ""), "sort key is empty"),
            (
                Key::new("p".repeat(MAX_PK_BYTES + 1), "s"),
                "partition key is 2049 bytes",
            ),
            (
                Key::new("p", "s".repeat(MAX_SK_BYTES + 1)),
                "sort key is 1025 bytes",
            ),
        ] {
            let m = invalid_message(check_key(&key));
            assert!(m.contains(says), "{m:?} should say {says:?}");
        }
        // Lengths are bytes, as DynamoDB counts them: 512 four-byte characters fill a sort key.
        assert!(check_key(&Key::new("p", "🦀".repeat(256))).is_ok());
        assert!(check_key(&Key::new("p", "🦀".repeat(257))).is_err());
    }

    #[test]
    fn queries_need_a_partition_a_short_prefix_and_a_limit() {
        assert!(check_query("p", "", None, 1).is_ok());
        assert!(invalid_message(check_query("", "", None, 1)).contains("partition key is empty"));
        assert!(invalid_message(check_query("p", "", None, 0)).contains("limit"));
        assert!(
            invalid_message(check_query("p", &"x".repeat(MAX_SK_BYTES + 1), None, 1))
                .contains("prefix")
        );
        assert!(invalid_message(check_query("p", "", Some(""), 1)).contains("`after`"));
    }

    #[test]
    fn an_item_at_the_limit_fits_and_one_byte_more_does_not() {
        let key = Key::new("pk", "sk");
        // `"…"` adds two quotes around the string.
        let filler = MAX_ITEM_BYTES - key.pk.len() - key.sk.len() - 2;
        let fits = check_transaction(vec![put(key.clone(), json!("x".repeat(filler)))]).unwrap();
        match &fits[0] {
            Checked::Put { body, .. } => assert_eq!(body.len() + 4, MAX_ITEM_BYTES),
            other => panic!("{other:?}"),
        }
        match check_transaction(vec![put(key, json!("x".repeat(filler + 1)))]) {
            Err(StoreError::TooLarge { bytes, limit, .. }) => {
                assert_eq!((bytes, limit), (MAX_ITEM_BYTES + 1, MAX_ITEM_BYTES))
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn transactions_are_bounded_and_name_each_key_once() {
        let many = (0..=MAX_TRANSACTION_WRITES)
            .map(|i| put(Key::new("p", i.to_string()), json!(1)))
            .collect();
        assert!(invalid_message(check_transaction(many)).contains("at most 100"));
        let twice = vec![
            put(Key::new("p", "a"), json!(1)),
            Write::Delete {
                key: Key::new("p", "a"),
                expect: Expect::Any,
            },
        ];
        assert!(invalid_message(check_transaction(twice)).contains("write 1 repeats"));
        let bad_second = vec![
            put(Key::new("p", "a"), json!(1)),
            put(Key::new("p", ""), json!(1)),
        ];
        assert!(invalid_message(check_transaction(bad_second)).starts_with("write 1: "));
    }
}
