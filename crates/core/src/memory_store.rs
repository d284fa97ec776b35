//! `MemoryStore`: a complete in-memory implementation of the [`Store`] port.
//!
//! It keeps the same semantics as the SQLite and DynamoDB adapters (versioned conditional
//! writes, all-or-nothing transactions of at most [`MAX_TRANSACTION_WRITES`](crate::store::MAX_TRANSACTION_WRITES) distinct keys,
//! ascending partition listings with prefix and `after`), so domain and API tests can run
//! against it without any infrastructure. One mutex guards the whole map: a transaction checks
//! every condition and applies every write while holding it, which makes it atomic and
//! serialisable.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use serde_json::Value;

use crate::store::validate::{self, check_key};
use crate::store::{Expect, Item, Key, Page, Store, StoreError, Write};

/// What is stored per key: the body and its version.
#[derive(Debug, Clone)]
struct Stored {
    version: u64,
    body: Value,
}

/// In-memory [`Store`]; cheap to create, shared through `Arc` like any other adapter.
#[derive(Debug, Default)]
pub struct MemoryStore {
    // Partition → sort key → item. Nesting by partition keeps queries a range scan of one map.
    items: Mutex<BTreeMap<String, BTreeMap<String, Stored>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of items held (all partitions). Useful in tests.
    pub fn len(&self) -> usize {
        self.lock().values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<String, Stored>>> {
        // A panic while holding the lock cannot leave a half-applied transaction behind (writes
        // are applied only after every check passed, and applying does not panic), so the data
        // behind a poisoned lock is still consistent.
        self.items
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn holds(expect: Expect, current: Option<&Stored>) -> bool {
    match (expect, current) {
        (Expect::Any, _) => true,
        (Expect::Absent, None) => true,
        (Expect::Absent, Some(_)) => false,
        (Expect::Version(_), None) => false,
        (Expect::Version(v), Some(s)) => s.version == v,
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        check_key(key)?;
        let items = self.lock();
        Ok(items
            .get(&key.pk)
            .and_then(|part| part.get(&key.sk))
            .map(|s| Item {
                key: key.clone(),
                version: s.version,
                body: s.body.clone(),
            }))
    }

    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        validate::check_query(pk, sk_prefix, after, limit)?;
        let items = self.lock();
        let Some(part) = items.get(pk) else {
            return Ok(Page::default());
        };
        let mut matching = part
            .range::<str, _>((
                match after {
                    Some(a) => std::ops::Bound::Excluded(a),
                    None => std::ops::Bound::Unbounded,
                },
                std::ops::Bound::Unbounded,
            ))
            .skip_while(|(sk, _)| sk.as_str() < sk_prefix)
            .take_while(|(sk, _)| sk.starts_with(sk_prefix));
        let mut page = Page::default();
        for (sk, stored) in matching.by_ref().take(limit) {
            page.items.push(Item {
                key: Key::new(pk, sk.clone()),
                version: stored.version,
                body: stored.body.clone(),
            });
        }
        // Only hand out a continuation when something really follows, so a listing whose size
        // is a multiple of `limit` does not end with an empty page.
        if matching.next().is_some() {
            page.last_sk = page.items.last().map(|i| i.key.sk.clone());
        }
        Ok(page)
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        // Bodies stay trees here; their text is only measured.
        validate::check_writes(&writes)?;
        if writes.is_empty() {
            return Ok(());
        }

        let mut items = self.lock();
        let mut counts = Vec::new();
        for (index, w) in writes.iter().enumerate() {
            let key = w.key();
            let current = items.get(&key.pk).and_then(|p| p.get(&key.sk));
            let holds = match w {
                Write::Put { expect, .. }
                | Write::Delete { expect, .. }
                | Write::Check { expect, .. } => holds(*expect, current),
                Write::Add { delta, at_most, .. } => {
                    match crate::store::added(current.map(|s| &s.body), *delta, *at_most) {
                        Some(count) => {
                            counts.push(count);
                            true
                        }
                        None => false,
                    }
                }
            };
            if !holds {
                return Err(StoreError::ConditionFailed {
                    key: key.clone(),
                    index: Some(index),
                });
            }
        }
        let mut counts = counts.into_iter();
        for w in writes {
            match w {
                Write::Add { key, .. } => {
                    let count = counts.next().unwrap_or_default();
                    let part = items.entry(key.pk).or_default();
                    let version = part.get(&key.sk).map_or(1, |s| s.version + 1);
                    let body = serde_json::json!({ crate::store::COUNT: count });
                    part.insert(key.sk, Stored { version, body });
                }
                Write::Put { key, body, .. } => {
                    let part = items.entry(key.pk).or_default();
                    let version = part.get(&key.sk).map_or(1, |s| s.version + 1);
                    part.insert(key.sk, Stored { version, body });
                }
                Write::Delete { key, .. } => {
                    if let Some(part) = items.get_mut(&key.pk) {
                        part.remove(&key.sk);
                        if part.is_empty() {
                            items.remove(&key.pk);
                        }
                    }
                }
                Write::Check { .. } => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MAX_TRANSACTION_WRITES;
    use serde_json::json;

    fn put(pk: &str, sk: &str, body: Value, expect: Expect) -> Write {
        Write::Put {
            key: Key::new(pk, sk),
            body,
            expect,
        }
    }

    #[tokio::test]
    async fn put_get_versions_and_conditions() {
        let s = MemoryStore::new();
        let k = Key::new("P", "a");
        assert!(s.get(&k).await.unwrap().is_none());
        s.write(put("P", "a", json!({"n": 1}), Expect::Absent))
            .await
            .unwrap();
        let it = s.get(&k).await.unwrap().unwrap();
        assert_eq!((it.version, it.body.clone()), (1, json!({"n": 1})));

        let err = s
            .write(put("P", "a", json!({}), Expect::Absent))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::ConditionFailed { index: Some(0), .. }
        ));
        let err = s
            .write(put("P", "a", json!({}), Expect::Version(7)))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ConditionFailed { .. }));

        s.write(put("P", "a", json!({"n": 2}), Expect::Version(1)))
            .await
            .unwrap();
        s.write(put("P", "a", json!({"n": 3}), Expect::Any))
            .await
            .unwrap();
        let it = s.get(&k).await.unwrap().unwrap();
        assert_eq!((it.version, it.body), (3, json!({"n": 3})));

        let err = s
            .write(Write::Delete {
                key: k.clone(),
                expect: Expect::Version(2),
            })
            .await;
        assert!(err.is_err());
        s.write(Write::Delete {
            key: k.clone(),
            expect: Expect::Version(3),
        })
        .await
        .unwrap();
        assert!(s.get(&k).await.unwrap().is_none());
        // Version on a missing item fails; Any on a missing item is fine for delete.
        assert!(s
            .write(Write::Check {
                key: k.clone(),
                expect: Expect::Version(1)
            })
            .await
            .is_err());
        s.write(Write::Delete {
            key: k.clone(),
            expect: Expect::Any,
        })
        .await
        .unwrap();
        // Re-creation starts again at version 1.
        s.write(put("P", "a", json!({}), Expect::Absent))
            .await
            .unwrap();
        assert_eq!(s.get(&k).await.unwrap().unwrap().version, 1);
    }

    #[tokio::test]
    async fn transactions_are_all_or_nothing() {
        let s = MemoryStore::new();
        s.write(put("P", "x", json!(1), Expect::Absent))
            .await
            .unwrap();
        let err = s
            .transact(vec![
                put("P", "y", json!(2), Expect::Absent),
                Write::Check {
                    key: Key::new("P", "x"),
                    expect: Expect::Version(9),
                },
            ])
            .await
            .unwrap_err();
        match err {
            StoreError::ConditionFailed { key, index } => {
                assert_eq!(key, Key::new("P", "x"));
                assert_eq!(index, Some(1));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.get(&Key::new("P", "y")).await.unwrap().is_none());

        s.transact(vec![
            put("P", "y", json!(2), Expect::Absent),
            Write::Check {
                key: Key::new("P", "x"),
                expect: Expect::Version(1),
            },
            Write::Delete {
                key: Key::new("P", "x"),
                expect: Expect::Any,
            },
        ])
        .await
        .unwrap_err(); // same key twice
        assert_eq!(s.len(), 1);

        s.transact(vec![
            put("P", "y", json!(2), Expect::Absent),
            Write::Delete {
                key: Key::new("P", "x"),
                expect: Expect::Version(1),
            },
        ])
        .await
        .unwrap();
        assert!(s.get(&Key::new("P", "x")).await.unwrap().is_none());
        assert_eq!(
            s.get(&Key::new("P", "y")).await.unwrap().unwrap().body,
            json!(2)
        );
    }

    #[tokio::test]
    async fn transaction_size_is_bounded() {
        let s = MemoryStore::new();
        let writes: Vec<_> = (0..=MAX_TRANSACTION_WRITES)
            .map(|i| put("P", &format!("{i:04}"), json!(i), Expect::Any))
            .collect();
        assert!(matches!(
            s.transact(writes).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(s.is_empty());
    }

    #[tokio::test]
    async fn empty_keys_and_oversized_items_are_invalid() {
        let s = MemoryStore::new();
        let invalid = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Invalid(_)));
        assert!(invalid(s.write(put("", "a", json!(1), Expect::Any)).await));
        assert!(invalid(s.write(put("P", "", json!(1), Expect::Any)).await));
        assert!(matches!(
            s.get(&Key::new("P", "")).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.query("", "", None, 1).await,
            Err(StoreError::Invalid(_))
        ));
        let big = json!({ "blob": "x".repeat(crate::store::MAX_ITEM_BYTES) });
        let ok = put("P", "ok", json!(1), Expect::Any);
        assert!(matches!(
            s.transact(vec![ok, put("P", "big", big, Expect::Any)])
                .await,
            Err(StoreError::TooLarge { .. })
        ));
        assert!(s.is_empty());
        let fits = json!({ "blob": "x".repeat(300 * 1024) });
        s.write(put("P", "fits", fits, Expect::Any)).await.unwrap();
    }

    #[tokio::test]
    async fn query_orders_filters_and_pages() {
        let s = MemoryStore::new();
        for sk in ["b#2", "a#1", "b#1", "b#3", "c#1", "b"] {
            s.write(put("P", sk, json!(sk), Expect::Absent))
                .await
                .unwrap();
        }
        s.write(put("Q", "b#9", json!(0), Expect::Absent))
            .await
            .unwrap();

        let p = s.query("P", "b#", None, 2).await.unwrap();
        let sks: Vec<_> = p.items.iter().map(|i| i.key.sk.as_str()).collect();
        assert_eq!(sks, ["b#1", "b#2"]);
        assert_eq!(p.last_sk.as_deref(), Some("b#2"));

        let p = s.query("P", "b#", p.last_sk.as_deref(), 2).await.unwrap();
        let sks: Vec<_> = p.items.iter().map(|i| i.key.sk.as_str()).collect();
        assert_eq!(sks, ["b#3"]);
        assert_eq!(p.last_sk, None);

        // Exactly `limit` items left: no continuation.
        let p = s.query("P", "b#", Some("b#1"), 2).await.unwrap();
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.last_sk, None);

        let all = s.query("P", "", None, 100).await.unwrap();
        assert_eq!(all.items.len(), 6);
        assert!(s
            .query("none", "", None, 10)
            .await
            .unwrap()
            .items
            .is_empty());
        // `after` before the prefix range still only yields prefixed items.
        let p = s.query("P", "b#", Some("a"), 10).await.unwrap();
        assert_eq!(p.items.len(), 3);
        assert!(matches!(
            s.query("P", "", None, 0).await,
            Err(StoreError::Invalid(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_conditional_increments_lose_nothing() {
        let s = std::sync::Arc::new(MemoryStore::new());
        s.write(put("P", "n", json!(0), Expect::Absent))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    loop {
                        let it = s.get(&Key::new("P", "n")).await.unwrap().unwrap();
                        let n = it.body.as_u64().unwrap();
                        match s
                            .write(put("P", "n", json!(n + 1), Expect::Version(it.version)))
                            .await
                        {
                            Ok(()) => break,
                            Err(StoreError::ConditionFailed { .. }) => {
                                tokio::task::yield_now().await
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let it = s.get(&Key::new("P", "n")).await.unwrap().unwrap();
        assert_eq!(it.body, json!(400));
        assert_eq!(it.version, 401);
    }
}
