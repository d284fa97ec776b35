//! The event-publisher Lambda: a consumer of the table's DynamoDB stream. Every job and run
//! transition writes its state change into the `OUTBOX` partition in the same transaction; the
//! stream hands each new outbox item to this function, which announces it on EventBridge
//! ("Server Migration Job State Change", `PutEvents`) and deletes it from the outbox.
//!
//! A change no longer in the outbox was announced before, so a retried batch announces
//! nothing twice. A change the bus refuses (`FailedEntryCount`, a per-entry error) or that
//! cannot be read is reported as a batch item failure (`ReportBatchItemFailures`): Lambda
//! retries the batch from the first failed record, so the function stops at the first failure
//! and keeps the events in order. Records of other partitions, and removals, are skipped.

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use tern_core::keys::OUTBOX;
use tern_core::replication::{Published, Replication};

/// The outbox change id a stream record announces: the `sk` of a new `OUTBOX` item.
fn change_id(record: &EventRecord) -> Option<String> {
    if record.event_name != "INSERT" && record.event_name != "MODIFY" {
        return None;
    }
    // Keys serialise in the attribute-value shape: {"pk": {"S": "…"}, …}.
    let keys = serde_json::to_value(&record.change.keys).ok()?;
    let string = |name: &str| keys[name]["S"].as_str().map(str::to_owned);
    (string("pk")? == OUTBOX).then(|| string("sk")).flatten()
}

/// Publishes the batch's outbox changes; answers the records Lambda must deliver again.
pub async fn handle(replication: &Replication, event: Event) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    let records: Vec<(String, String)> = event
        .records
        .iter()
        .filter_map(|r| {
            let id = change_id(r)?;
            // Without a sequence number a failure could not be reported; such a record (none
            // arrives from a real stream) is published like the others.
            Some((id, r.change.sequence_number.clone().unwrap_or_default()))
        })
        .collect();
    if records.is_empty() {
        return response;
    }
    let ids: Vec<String> = records.iter().map(|(id, _)| id.clone()).collect();
    let outcomes = replication.publish_changes(&ids).await;
    let mut counts = (0, 0);
    for ((id, sequence), (_, outcome)) in records.iter().zip(outcomes) {
        match outcome {
            Published::Announced => counts.0 += 1,
            Published::AlreadyGone => counts.1 += 1,
            Published::Failed(why) => {
                tracing::warn!(change = %id, sequence, reason = %why, "state change not published; the stream delivers it again");
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = Some(sequence.clone());
                response.batch_item_failures.push(failure);
                // Lambda restarts from the first failure; later records come again with it.
                break;
            }
        }
    }
    tracing::info!(
        announced = counts.0,
        already_announced = counts.1,
        failed = response.batch_item_failures.len(),
        "stream batch handled"
    );
    response
}
