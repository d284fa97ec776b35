//! The `Store` port: a small single-table item store with versioned (conditional) writes and
//! multi-item transactions. Both adapters (SQLite in `tern-local`, DynamoDB in `tern-aws`) implement
//! exactly these semantics and are checked by one contract test suite.
//!
//! Items live in partitions (`pk`) and are ordered by sort key (`sk`) inside a partition, the way a
//! DynamoDB table with a composite primary key is. The body is opaque JSON owned by the domain.

use async_trait::async_trait;
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
}

impl Write {
    pub fn key(&self) -> &Key {
        match self {
            Write::Put { key, .. } | Write::Delete { key, .. } | Write::Check { key, .. } => key,
        }
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
    /// Bad call: too many writes, the same key twice in one transaction, item too large.
    #[error("invalid store request: {0}")]
    Invalid(String),
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
    /// each key at most once; otherwise `StoreError::Invalid`.
    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError>;

    /// Convenience: one conditional write.
    async fn write(&self, write: Write) -> Result<(), StoreError> {
        self.transact(vec![write]).await
    }
}
