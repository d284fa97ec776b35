//! The [`Store`] on Amazon DynamoDB: one table, used by the AWS deployment.
//!
//! # Table
//!
//! | attribute | type | role |
//! |---|---|---|
//! | `pk` | S | partition key (HASH) |
//! | `sk` | S | sort key (RANGE) |
//! | `version` | N | 1 on creation, +1 per write |
//! | `body` | S | the item's JSON document, as a string |
//! | `count` | N | instead of `body` on a counter item ([`Write::Add`]): DynamoDB adds to it atomically; read back as the body `{"count": n}` |
//!
//! On-demand billing (`PAY_PER_REQUEST`), no secondary index. The SAM template declares the same
//! key schema; [`DynamoStore::create_table`] creates it for tests and local tooling.
//!
//! The body is one JSON string rather than a DynamoDB map because the domain owns its shape and
//! never queries inside it (every condition is on `version`): a string round-trips any JSON value
//! exactly (a map would lose the difference between `1` and `1.0`, reject numbers beyond 38
//! digits and nest at most 32 levels), parses with one `serde_json` call instead of a tree of
//! `AttributeValue` conversions, and costs the same item size. Should a query ever need a body
//! field, the adapter would copy it into a top-level attribute.
//!
//! # Consistency
//!
//! Reads (`GetItem`, `Query`) are strongly consistent. Writes whose condition is `Absent` or
//! `Version` and every multi-write call go through `TransactWriteItems` with one
//! `ConditionExpression` per write: the SDK gives each call a `ClientRequestToken`, so a retry
//! after a timeout whose first attempt did commit succeeds instead of failing its own condition
//! (a plain conditional `UpdateItem` would report `ConditionFailed` for a write it made, and
//! the caller would apply it twice). That costs twice the write capacity of a plain write; a
//! lone `Put`/`Delete` with `Expect::Any` has no condition to trip over and uses `UpdateItem` /
//! `DeleteItem`. A cancelled transaction reports the first write whose condition failed, by key
//! and index. Throttling, exceeded throughput and transaction conflicts (another transaction
//! holding one of the items) become [`StoreError::Throttled`]: the caller may retry.
//!
//! # Timeouts
//!
//! [`DynamoStore::new`] fills in [`default_timeouts`] wherever the client has no timeout of its
//! own, so a stalled connection fails an API call in seconds instead of hanging until the Lambda
//! or HTTP client gives up.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, KeySchemaElement,
    KeyType, ScalarAttributeType, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use aws_smithy_types::timeout::TimeoutConfig;
use tern_core::store::validate::{self, Checked};
use tern_core::store::{Expect, Item, Key, Page, Store, StoreError, Write};

const PK: &str = "pk";
const SK: &str = "sk";
const VERSION: &str = "version";
const BODY: &str = "body";
const COUNT: &str = tern_core::store::COUNT;

/// Creates or replaces the body and counts the version up from 0 (so a new item gets 1).
/// A put over a counter turns it back into a body item, so `count` goes.
const PUT_EXPRESSION: &str =
    "SET #body = :body, #version = if_not_exists(#version, :zero) + :one REMOVE #count";
/// Adds to a counter kept as the number attribute `count` (so DynamoDB does the arithmetic)
/// instead of a body string; reads turn it back into the body `{"count": n}`.
const ADD_EXPRESSION: &str =
    "SET #count = if_not_exists(#count, :zero) + :delta, #version = if_not_exists(#version, :zero) + :one REMOVE #body";
/// A condition that always holds, for `Check` with `Expect::Any` inside a transaction
/// (`ConditionCheck` requires an expression).
const ALWAYS: &str = "attribute_exists(pk) OR attribute_not_exists(pk)";

/// Tern's SDK timeouts for DynamoDB calls: generous for a service that answers in milliseconds,
/// short enough that an API request fails before API Gateway's 30-second limit.
pub fn default_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(15))
        .build()
}

/// The DynamoDB store over one table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    /// A store over `table`. Timeouts the client does not set are taken from [`default_timeouts`].
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let config = client.config();
        let timeouts = match config.timeout_config() {
            Some(own) => own
                .to_builder()
                .take_unset_from(default_timeouts().into_builder())
                .build(),
            None => default_timeouts(),
        };
        let client = Client::from_conf(config.to_builder().timeout_config(timeouts).build());
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table (on-demand billing, `pk` HASH + `sk` RANGE, both strings) and waits
    /// until it is active. Succeeds when the table already exists. Meant for tests and local
    /// tooling: the AWS deployment declares the table in `template.yaml`.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let key = |name: &str, key_type| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let result = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key(PK, KeyType::Hash).map_err(build_error)?)
            .key_schema(key(SK, KeyType::Range).map_err(build_error)?)
            .attribute_definitions(attribute(PK).map_err(build_error)?)
            .attribute_definitions(attribute(SK).map_err(build_error)?)
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => {}
            Err(e) => return Err(sdk_error("CreateTable", e)),
        }
        for _ in 0..300 {
            let table = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await;
            let status = table
                .map_err(|e| sdk_error("DescribeTable", e))?
                .table
                .and_then(|t| t.table_status);
            if status.as_ref().is_some_and(|s| s.as_str() == "ACTIVE") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(StoreError::Unavailable {
            message: format!("table {} did not become active in 60 s", self.table),
            source: None,
        })
    }

    fn key(&self, key: &Key) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (PK.to_owned(), AttributeValue::S(key.pk.clone())),
            (SK.to_owned(), AttributeValue::S(key.sk.clone())),
        ])
    }

    /// One write as a transaction item, with its condition.
    fn transact_item(&self, index: usize, write: Checked) -> Result<TransactWriteItem, StoreError> {
        let (condition, mut names, mut values) = condition(write.expect());
        let item = match write {
            Checked::Put { key, body, .. } => {
                names.insert("#body".into(), BODY.into());
                names.insert("#version".into(), VERSION.into());
                names.insert("#count".into(), COUNT.into());
                values.insert(":body".into(), AttributeValue::S(body));
                values.insert(":zero".into(), AttributeValue::N("0".into()));
                values.insert(":one".into(), AttributeValue::N("1".into()));
                let update = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(self.key(&key)))
                    .update_expression(PUT_EXPRESSION)
                    .set_condition_expression(condition)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .map_err(build_error)?;
                TransactWriteItem::builder().update(update).build()
            }
            Checked::Delete { key, .. } => {
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(self.key(&key)))
                    .set_condition_expression(condition)
                    .set_expression_attribute_names(non_empty(names))
                    .set_expression_attribute_values(non_empty(values))
                    .build()
                    .map_err(build_error)?;
                TransactWriteItem::builder().delete(delete).build()
            }
            Checked::Check { key, .. } => {
                let check = ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(self.key(&key)))
                    .condition_expression(condition.unwrap_or_else(|| ALWAYS.into()))
                    .set_expression_attribute_names(non_empty(names))
                    .set_expression_attribute_values(non_empty(values))
                    .build()
                    .map_err(build_error)?;
                TransactWriteItem::builder().condition_check(check).build()
            }
            Checked::Add {
                key,
                delta,
                at_most,
            } => {
                let bounds =
                    add_bounds(delta, at_most).ok_or_else(|| StoreError::ConditionFailed {
                        key: key.clone(),
                        index: Some(index),
                    })?;
                let names = HashMap::from([
                    ("#count".to_string(), COUNT.to_string()),
                    ("#version".to_string(), VERSION.to_string()),
                    ("#body".to_string(), BODY.to_string()),
                ]);
                let mut values = HashMap::from([
                    (":delta".to_string(), AttributeValue::N(delta.to_string())),
                    (":zero".to_string(), AttributeValue::N("0".into())),
                    (":one".to_string(), AttributeValue::N("1".into())),
                ]);
                let (condition, bound) = bounds;
                if let Some(bound) = bound {
                    values.insert(":bound".into(), AttributeValue::N(bound.to_string()));
                }
                let update = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(self.key(&key)))
                    .update_expression(ADD_EXPRESSION)
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .map_err(build_error)?;
                TransactWriteItem::builder().update(update).build()
            }
        };
        Ok(item)
    }

    /// A lone write without a condition: nothing to make idempotent, so the cheaper single-item
    /// call does.
    async fn write_unconditionally(&self, write: Checked) -> Result<(), StoreError> {
        let key = self.key(write.key());
        match write {
            Checked::Put { body, .. } => self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .update_expression(PUT_EXPRESSION)
                .expression_attribute_names("#body", BODY)
                .expression_attribute_names("#version", VERSION)
                .expression_attribute_names("#count", COUNT)
                .expression_attribute_values(":body", AttributeValue::S(body))
                .expression_attribute_values(":zero", AttributeValue::N("0".into()))
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .send()
                .await
                .map(drop)
                .map_err(|e| sdk_error("UpdateItem", e)),
            Checked::Delete { .. } => self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .send()
                .await
                .map(drop)
                .map_err(|e| sdk_error("DeleteItem", e)),
            Checked::Check { .. } => Ok(()),
            Checked::Add { .. } => unreachable_add(),
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        validate::check_key(key)?;
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        output
            .item
            .map(|item| to_item(key.clone(), &item))
            .transpose()
    }

    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        validate::check_query(pk, sk_prefix, after, limit)?;
        // DynamoDB refuses an ExclusiveStartKey outside the key condition's range, so place
        // `after` relative to the prefix range first.
        let start = match after {
            Some(after) if after.starts_with(sk_prefix) => Some(after),
            // Everything with the prefix sorts after `after`.
            Some(after) if after < sk_prefix => None,
            // `after` sorts beyond every key with the prefix.
            Some(_) => return Ok(Page::default()),
            None => None,
        };

        let mut items = Vec::new();
        let mut exclusive_start = start.map(|sk| self.key(&Key::new(pk, sk)));
        // One item more than asked tells whether another page follows. DynamoDB may stop early
        // (1 MB per response), hence the loop.
        let wanted = limit.saturating_add(1);
        while items.len() < wanted {
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
                .limit(i32::try_from(wanted - items.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(exclusive_start.take());
            request = if sk_prefix.is_empty() {
                request.key_condition_expression("pk = :pk")
            } else {
                request
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", AttributeValue::S(sk_prefix.to_owned()))
            };
            let output = request.send().await.map_err(|e| sdk_error("Query", e))?;
            for item in output.items() {
                let sk = string_attribute(item, SK)?;
                items.push(to_item(Key::new(pk, sk), item)?);
            }
            match output.last_evaluated_key {
                Some(last) if !last.is_empty() => exclusive_start = Some(last),
                _ => break,
            }
        }
        let more = items.len() > limit;
        items.truncate(limit);
        let last_sk = if more {
            items.last().map(|i| i.key.sk.clone())
        } else {
            None
        };
        Ok(Page { items, last_sk })
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut writes = validate::check_transaction(writes)?;
        if writes.is_empty() {
            return Ok(());
        }
        let unconditional = matches!(
            &writes[..],
            [Checked::Put {
                expect: Expect::Any,
                ..
            } | Checked::Delete {
                expect: Expect::Any,
                ..
            }]
        );
        if unconditional {
            return self.write_unconditionally(writes.remove(0)).await;
        }
        let keys: Vec<Key> = writes.iter().map(|w| w.key().clone()).collect();
        let items = writes
            .into_iter()
            .enumerate()
            .map(|(index, w)| self.transact_item(index, w))
            .collect::<Result<Vec<_>, _>>()?;
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        let error = match result {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        if let SdkError::ServiceError(service) = &error {
            if let TransactWriteItemsError::TransactionCanceledException(cancelled) = service.err()
            {
                let codes = cancelled.cancellation_reasons().iter().map(|r| r.code());
                let error = cancellation(&keys, codes, cancelled.message());
                tracing::debug!(table = %self.table, error = %error, "transaction cancelled");
                return Err(error);
            }
        }
        Err(sdk_error("TransactWriteItems", error))
    }
}

/// Maps a cancelled transaction's reasons (one per write, in order) to the port's error.
fn cancellation<'a>(
    keys: &[Key],
    codes: impl Iterator<Item = Option<&'a str>>,
    message: Option<&str>,
) -> StoreError {
    let codes: Vec<&str> = codes.map(|c| c.unwrap_or("None")).collect();
    if let Some(index) = codes.iter().position(|c| *c == "ConditionalCheckFailed") {
        if let Some(key) = keys.get(index) {
            return StoreError::ConditionFailed {
                key: key.clone(),
                index: Some(index),
            };
        }
    }
    let failing = || {
        codes
            .iter()
            .zip(keys)
            .filter(|(code, _)| **code != "None")
            .map(|(code, key)| format!("{code} on {key:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if codes.iter().any(|c| {
        matches!(
            *c,
            "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded"
        )
    }) {
        StoreError::Throttled(format!("transaction cancelled: {}", failing()))
    } else if codes.contains(&"ValidationError") {
        StoreError::Invalid(format!("transaction cancelled: {}", failing()))
    } else {
        StoreError::Unavailable {
            message: format!(
                "transaction cancelled: {} ({})",
                failing(),
                message.unwrap_or("no message")
            ),
            source: None,
        }
    }
}

fn condition(
    expect: Expect,
) -> (
    Option<String>,
    HashMap<String, String>,
    HashMap<String, AttributeValue>,
) {
    match expect {
        Expect::Any => (None, HashMap::new(), HashMap::new()),
        Expect::Absent => (
            Some("attribute_not_exists(pk)".into()),
            HashMap::new(),
            HashMap::new(),
        ),
        // Holds only when the item exists: a missing item has no `version` to equal anything.
        Expect::Version(version) => (
            Some("#version = :expected".into()),
            HashMap::from([("#version".into(), VERSION.into())]),
            HashMap::from([(":expected".into(), AttributeValue::N(version.to_string()))]),
        ),
    }
}

fn non_empty<K, V>(map: HashMap<K, V>) -> Option<HashMap<K, V>> {
    (!map.is_empty()).then_some(map)
}

/// The condition an add needs, with the `:bound` it compares against: `None` when the add can
/// never hold (it would pass `at_most` even from an absent counter, i.e. from 0).
fn add_bounds(delta: i64, at_most: Option<u64>) -> Option<(&'static str, Option<u64>)> {
    match (delta, at_most) {
        // Compared against a missing `count`, `<=` and `>=` are false, so an absent counter
        // (0) must be let through explicitly when 0 + delta is within bounds.
        // An item a put wrote keeps its count in `body`, which DynamoDB cannot add to: refused
        // rather than counted again from 0.
        (d, Some(max)) if d > 0 => {
            let bound = max.checked_sub(d.unsigned_abs())?;
            Some((
                "attribute_not_exists(#body) AND (attribute_not_exists(#count) OR #count <= :bound)",
                Some(bound),
            ))
        }
        (d, _) if d < 0 => Some((
            "attribute_not_exists(#body) AND #count >= :bound",
            Some(d.unsigned_abs()),
        )),
        _ => Some(("attribute_not_exists(#body)", None)),
    }
}

/// Only transactions carry adds (they always have a condition or a bound to respect).
fn unreachable_add() -> Result<(), StoreError> {
    Err(StoreError::Invalid(
        "an add is always written in a transaction".into(),
    ))
}

fn string_attribute<'a>(
    item: &'a HashMap<String, AttributeValue>,
    name: &str,
) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => Ok(s),
        _ => Err(corrupt(
            format!("an item lacks the string attribute `{name}`"),
            None,
        )),
    }
}

fn to_item(key: Key, item: &HashMap<String, AttributeValue>) -> Result<Item, StoreError> {
    let version = match item.get(VERSION) {
        Some(AttributeValue::N(n)) => n
            .parse::<u64>()
            .map_err(|e| corrupt(format!("item {key:?} has version {n:?}"), Some(Box::new(e))))?,
        _ => {
            return Err(corrupt(
                format!("item {key:?} lacks a numeric `version`"),
                None,
            ))
        }
    };
    if let Some(AttributeValue::N(count)) = item.get(COUNT) {
        let count: u64 = count.parse().map_err(|e| {
            corrupt(
                format!("item {key:?} has count {count:?}"),
                Some(Box::new(e)),
            )
        })?;
        let body = serde_json::json!({ COUNT: count });
        return Ok(Item { key, version, body });
    }
    let body = string_attribute(item, BODY)?;
    let body = serde_json::from_str(body).map_err(|e| {
        corrupt(
            format!("item {key:?} holds a body that is not JSON"),
            Some(Box::new(e)),
        )
    })?;
    Ok(Item { key, version, body })
}

fn corrupt(
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::Unavailable { message, source }
}

fn build_error(e: aws_smithy_types::error::operation::BuildError) -> StoreError {
    StoreError::Invalid(format!("cannot build a DynamoDB request: {e}"))
}

/// Sorts an SDK failure into the port's error kinds by the service's error code.
fn sdk_error<E, R>(operation: &str, error: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = error.code().unwrap_or_default().to_owned();
    let message = format!("DynamoDB {operation}: {}", DisplayErrorContext(&error));
    match code.as_str() {
        "ThrottlingException"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded"
        | "TransactionConflictException"
        | "TransactionInProgressException" => StoreError::Throttled(message),
        "ValidationException" => StoreError::Invalid(message),
        // ConditionalCheckFailedException cannot occur: every conditional write is transactional.
        _ => StoreError::Unavailable {
            message,
            source: Some(Box::new(error)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<Key> {
        vec![Key::new("p", "a"), Key::new("p", "b"), Key::new("p", "c")]
    }

    #[test]
    fn cancellation_names_the_first_failed_condition() {
        let codes = [
            Some("None"),
            Some("ConditionalCheckFailed"),
            Some("ConditionalCheckFailed"),
        ];
        match cancellation(&keys(), codes.into_iter(), None) {
            StoreError::ConditionFailed { key, index } => {
                assert_eq!((key, index), (Key::new("p", "b"), Some(1)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancellation_by_conflict_or_throttling_is_retryable() {
        for code in [
            "TransactionConflict",
            "ThrottlingError",
            "ProvisionedThroughputExceeded",
        ] {
            let codes = [Some("None"), None, Some(code)];
            match cancellation(&keys(), codes.into_iter(), None) {
                StoreError::Throttled(message) => assert!(
                    message.contains(code) && message.contains("\"c\""),
                    "{message}"
                ),
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn cancellation_by_validation_is_invalid_and_unknown_is_unavailable() {
        let codes = [Some("ValidationError"), Some("None"), Some("None")];
        assert!(
            matches!(cancellation(&keys(), codes.into_iter(), None), StoreError::Invalid(m) if m.contains("\"a\""))
        );
        let codes = [
            Some("ItemCollectionSizeLimitExceeded"),
            Some("None"),
            Some("None"),
        ];
        assert!(matches!(
            cancellation(&keys(), codes.into_iter(), Some("m")),
            StoreError::Unavailable { .. }
        ));
    }

    #[test]
    fn new_fills_in_missing_timeouts_and_keeps_the_clients_own() {
        let own = TimeoutConfig::builder()
            .operation_timeout(Duration::from_secs(42))
            .build();
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .timeout_config(own)
            .build();
        let store = DynamoStore::new(Client::from_conf(config), "t");
        let timeouts = store
            .client
            .config()
            .timeout_config()
            .expect("timeouts set");
        assert_eq!(timeouts.operation_timeout(), Some(Duration::from_secs(42)));
        assert_eq!(timeouts.connect_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(
            timeouts.operation_attempt_timeout(),
            Some(Duration::from_secs(5))
        );
    }
}
