//! The `Store` port: a small single-table item store with versioned (conditional) writes and
//! multi-item transactions. Both adapters (SQLite in `tern-local`, DynamoDB in `tern-aws`) implement
//! exactly these semantics and are checked by one contract test suite.
//!
//! Items live in partitions (`pk`) and are ordered by sort key (`sk`) inside a partition, the way a
//! DynamoDB table with a composite primary key is. The body is opaque JSON owned by the domain.

pub mod validate;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Primary key of an item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Self {
            pk: pk.into(),
            sk: sk.into(),
        }
    }
}

/// A stored item. `version` starts at 1 on creation and grows by one on every write.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub key: Key,
    pub version: u64,
    pub body: Value,
}

/// An item's body in the form its adapter holds it.
///
/// Readers that decode straight into their own types (the domain) skip building a [`Value`] tree
/// when the backend keeps JSON text: for a page of fifty jobs, parsing every body into a tree and
/// then walking the tree again cost more than the rest of the request together.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Already a JSON tree (backends that do not store text).
    Json(Value),
    /// JSON text as stored, not parsed yet.
    Text(String),
}

impl Body {
    /// Decodes the body into `T`, parsing text directly into it.
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        match self {
            Body::Json(value) => serde_json::from_value(value),
            Body::Text(text) => serde_json::from_str(&text),
        }
    }

    /// The body as a JSON tree.
    pub fn into_value(self) -> Result<Value, serde_json::Error> {
        self.decode()
    }
}

/// A stored item with its body as the adapter holds it (see [`Store::get_raw`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RawItem {
    pub key: Key,
    pub version: u64,
    pub body: Body,
}

impl From<Item> for RawItem {
    fn from(item: Item) -> Self {
        RawItem {
            key: item.key,
            version: item.version,
            body: Body::Json(item.body),
        }
    }
}

/// A page of [`RawItem`]s (see [`Store::query_raw`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawPage {
    pub items: Vec<RawItem>,
    pub last_sk: Option<String>,
}

impl From<Page> for RawPage {
    fn from(page: Page) -> Self {
        RawPage {
            items: page.items.into_iter().map(RawItem::from).collect(),
            last_sk: page.last_sk,
        }
    }
}

/// The condition a write requires of the item's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// The item must not exist (create).
    Absent,
    /// The item must exist with exactly this version (optimistic update / delete).
    Version(u64),
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create or replace the item's body. The stored version becomes the previous version + 1
    /// (or 1 when the item did not exist).
    Put {
        key: Key,
        body: Value,
        expect: Expect,
    },
    /// Remove the item.
    Delete { key: Key, expect: Expect },
    /// Change nothing, but require the condition (e.g. "the server still has version 3").
    Check { key: Key, expect: Expect },
    /// Adds `delta` to a counter item, whose body is `{"count": n}` (an absent item counts 0),
    /// and counts its version up like a put. Refused with `ConditionFailed` when the count would
    /// go below 0 or above `at_most`. The backend applies the arithmetic itself, so concurrent
    /// adds to one counter do not fail each other's conditions the way read-then-put does:
    /// only a real limit refuses them.
    Add {
        key: Key,
        delta: i64,
        at_most: Option<u64>,
    },
}

/// The body member of a counter item (see [`Write::Add`]).
pub const COUNT: &str = "count";

impl Write {
    pub fn key(&self) -> &Key {
        match self {
            Write::Put { key, .. }
            | Write::Delete { key, .. }
            | Write::Check { key, .. }
            | Write::Add { key, .. } => key,
        }
    }
}

/// The count a counter item holds after adding `delta` to `current` (`None`: no item), or
/// `None` when the result is outside `0..=at_most`. The one definition every adapter that
/// computes an add itself applies.
pub fn added(current: Option<&Value>, delta: i64, at_most: Option<u64>) -> Option<u64> {
    let count = current
        .and_then(|body| body.get(COUNT))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let result = i128::from(count) + i128::from(delta);
    let result = u64::try_from(result).ok()?;
    match at_most {
        Some(max) if result > max => None,
        _ => Some(result),
    }
}

/// A page of a partition listing, in ascending sort-key order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// Sort key of the last item returned when more items may follow; pass it back as `after`.
    pub last_sk: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write's `Expect` did not hold. `index` is the position of the failing write in the
    /// transaction when the backend can tell.
    #[error("condition failed on {key:?}")]
    ConditionFailed { key: Key, index: Option<usize> },
    /// The backend refused for load; callers may retry with backoff.
    #[error("store throttled: {0}")]
    Throttled(String),
    /// Bad call: too many writes, the same key twice in one transaction, item too large, a key
    /// empty or too long (see [`validate`], the rules every adapter applies).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// An item would be larger than [`MAX_ITEM_BYTES`]. Unlike the other refusals this follows
    /// from what a caller sent (long names, many disks), so the API answers it as bad input.
    #[error("item {key:?} would be {bytes} bytes, more than the {limit} allowed")]
    TooLarge {
        key: Key,
        bytes: usize,
        limit: usize,
    },
    /// Anything else (I/O, network, corrupt data). The message is for logs, never for clients.
    #[error("store unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Most writes one transaction may carry (DynamoDB's TransactWriteItems limit).
pub const MAX_TRANSACTION_WRITES: usize = 100;

pub use validate::{MAX_ITEM_BYTES, MAX_PK_BYTES, MAX_SK_BYTES};

#[async_trait]
pub trait Store: Send + Sync {
    /// Reads one item (strongly consistent).
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError>;

    /// Lists a partition in ascending `sk` order: items whose `sk` starts with `sk_prefix`
    /// and is strictly greater than `after` (when given), at most `limit` of them.
    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError>;

    /// Applies all writes atomically or none of them. At most [`MAX_TRANSACTION_WRITES`] writes,
    /// each key at most once, each item at most [`MAX_ITEM_BYTES`]; otherwise
    /// `StoreError::Invalid` (see [`validate::check_transaction`]).
    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError>;

    /// [`Store::get`] with the body as the backend holds it. Adapters that store JSON text
    /// override this to hand the text out unparsed; the default wraps `get`.
    async fn get_raw(&self, key: &Key) -> Result<Option<RawItem>, StoreError> {
        Ok(self.get(key).await?.map(RawItem::from))
    }

    /// [`Store::query`] with the bodies as the backend holds them (see [`Store::get_raw`]).
    async fn query_raw(
        &self,
        pk: &str,
        sk_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        Ok(self.query(pk, sk_prefix, after, limit).await?.into())
    }

    /// Convenience: one conditional write.
    async fn write(&self, write: Write) -> Result<(), StoreError> {
        self.transact(vec![write]).await
    }
}
