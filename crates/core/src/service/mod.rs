//! Use cases: everything the API does, as methods of [`Service`].
//!
//! Every read-modify-write is optimistic: read items with their versions, decide, and write with
//! `Expect::Version` (or `Expect::Absent`) conditions, all items of one decision in one
//! transaction. When a condition fails another request won the race; the use case starts over
//! from the reads, at most `config.max_write_attempts` times, then answers
//! [`DomainError::Contention`] (TemporarilyUnavailableException on the wire, which SDKs retry).

mod access_keys;
mod apps;
mod catalog;
mod connectors;
mod jobs;
pub mod preflight;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::{DomainError, Result};
use crate::store::{Expect, Key, RawItem, Store, Write};
use crate::{Clock, Config, Ids};

pub use access_keys::{generate_pair, AccessKey, KeyRole, ACCESS_KEY};
pub use apps::{
    App, AppDetails, AppLaunch, AppServerView, AppSummary, AppUpdate, AppValidation,
    GroupLaunchView, GroupReplication, GroupReplicationView, ImportOutcome, LaunchConfiguration,
    LaunchConfigurationView, NewApp, NewServerGroup, NewTag, NotificationContext,
    RecordedValidation, S3Location, ServerGroupLaunchConfiguration, ServerGroupValidation,
    ServerGroupView, ServerLaunchConfiguration, ServerReplication, ServerReplicationParameters,
    ServerValidation, SsmValidationParameters, Tag, UserData, UserDataValidationParameters,
    ValidationConfiguration, ValidationOutputView, ValidationRunner,
};
pub use catalog::{InventoryOutcome, InventoryPage, InventoryVm, ServerListing, MAX_REPORT_PAGES};
pub use connectors::NewConnector;
pub use jobs::{JobUpdate, NewJob, RunUpdate};

/// The domain's entry point; cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: Arc<dyn Ids>,
    pub(crate) config: Config,
}

/// One page of a listing. `last` is the sort key to continue after, when more may follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub last: Option<String>,
}

/// A decoded item with the version it was read at.
#[derive(Debug, Clone)]
pub(crate) struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

impl<T> Versioned<T> {
    /// The condition that the item is still as read.
    pub fn expect(&self) -> Expect {
        Expect::Version(self.version)
    }
}

/// `Expect` for an item that may not exist yet.
pub(crate) fn expect_of<T>(v: &Option<Versioned<T>>) -> Expect {
    v.as_ref().map_or(Expect::Absent, Versioned::expect)
}

/// Lets other tasks run between attempts of a contended write, without depending on a runtime.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Runs `$attempt` (an expression producing a future of `Result`) until it does not fail with a
/// lost write race, at most `max_write_attempts` times.
macro_rules! retrying {
    ($svc:expr, $what:expr, $attempt:expr) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result: $crate::error::Result<_> = $attempt.await;
            match result {
                Err(e) if e.is_conflict() => {
                    if attempt >= $svc.config.max_write_attempts {
                        tracing::warn!(what = %$what, attempts = attempt, "giving up on contended write");
                        break Err($crate::error::DomainError::Contention($what.to_string()));
                    }
                    $crate::service::yield_now().await;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use retrying;

pub(crate) fn yield_now() -> impl Future<Output = ()> {
    YieldNow(false)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| DomainError::Corrupt {
        key: "(new item)".into(),
        message: e.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(item: RawItem) -> Result<Versioned<T>> {
    let version = item.version;
    let key = item.key;
    item.body
        .decode()
        .map(|value| Versioned { value, version })
        .map_err(|e| DomainError::Corrupt {
            key: format!("{}/{}", key.pk, key.sk),
            message: e.to_string(),
        })
}

pub(crate) fn put<T: Serialize>(key: Key, value: &T, expect: Expect) -> Result<Write> {
    Ok(Write::Put {
        key,
        body: encode(value)?,
        expect,
    })
}

/// Non-empty trimmed value of a required string member.
pub(crate) fn required<'a>(name: &str, value: &'a str) -> Result<&'a str> {
    let v = value.trim();
    if v.is_empty() {
        Err(DomainError::MissingParameter(format!("{name} is required")))
    } else {
        Ok(v)
    }
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn Ids>,
        config: Config,
    ) -> Self {
        Self {
            store,
            clock,
            ids,
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub(crate) async fn read<T: DeserializeOwned>(
        &self,
        key: &Key,
    ) -> Result<Option<Versioned<T>>> {
        // Raw: a body stored as text is parsed straight into `T`, without a `Value` tree.
        match self.store.get_raw(key).await? {
            Some(item) => decode(item).map(Some),
            None => Ok(None),
        }
    }

    /// One page of a partition, decoded.
    pub(crate) async fn list<T: DeserializeOwned>(
        &self,
        pk: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Versioned<T>>, Option<String>)> {
        let page = self.store.query_raw(pk, "", after, limit.max(1)).await?;
        let items = page
            .items
            .into_iter()
            .map(decode)
            .collect::<Result<Vec<_>>>()?;
        Ok((items, page.last_sk))
    }

    /// Every item of a partition (for small partitions: connectors, one connector's work).
    pub(crate) async fn list_all<T: DeserializeOwned>(
        &self,
        pk: &str,
    ) -> Result<Vec<Versioned<T>>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (mut items, last) = self.list(pk, after.as_deref(), 500).await?;
            out.append(&mut items);
            match last {
                Some(l) => after = Some(l),
                None => return Ok(out),
            }
        }
    }

    /// Page size to use for a request's `maxResults`: default when absent, capped at the limit.
    pub fn page_size(&self, max_results: Option<i64>) -> Result<usize> {
        let limits = &self.config.limits;
        match max_results {
            None => Ok(limits
                .default_page_size
                .clamp(1, limits.max_page_size.max(1)) as usize),
            Some(n) if n < 1 => Err(DomainError::InvalidParameter(format!(
                "maxResults must be at least 1, got {n}"
            ))),
            Some(n) => Ok(n.min(i64::from(limits.max_page_size.max(1))) as usize),
        }
    }
}
