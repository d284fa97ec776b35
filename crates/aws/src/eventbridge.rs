//! The [`EventBus`] port on Amazon EventBridge: `PutEvents` in batches of ten (its limit), with
//! every entry the bus refused reported by its position in the published slice, so the outbox
//! keeps exactly those for the next try and never publishes an accepted one twice.
//!
//! EventBridge gives each event its own id; Tern's deterministic id is kept in the outbox, and the
//! envelope's other fields (source, detail-type, time, resources, detail) go over as they are.

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_eventbridge::Client;
use aws_smithy_types::DateTime;
use tern_core::events::{BusError, Event, EventBus, FailedEntry, PublishOutcome};

use crate::sdk::classify;

/// Most entries one `PutEvents` call carries.
pub const MAX_ENTRIES_PER_CALL: usize = 10;

/// EventBridge, on one event bus (`default` or the stack's own).
#[derive(Debug, Clone)]
pub struct EventBridge {
    client: Client,
    bus_name: String,
}

impl EventBridge {
    pub fn new(client: Client, bus_name: impl Into<String>) -> Self {
        Self {
            client,
            bus_name: bus_name.into(),
        }
    }

    fn entry(&self, event: &Event) -> PutEventsRequestEntry {
        PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus_name)
            .source(&event.source)
            .detail_type(&event.detail_type)
            .detail(event.detail.to_string())
            .set_resources(Some(event.resources.clone()))
            .time(DateTime::from_secs(event.time.unix_timestamp()))
            .build()
    }
}

#[async_trait]
impl EventBus for EventBridge {
    async fn publish(&self, events: &[Event]) -> Result<PublishOutcome, BusError> {
        let mut outcome = PublishOutcome::all_accepted();
        for (chunk, batch) in events.chunks(MAX_ENTRIES_PER_CALL).enumerate() {
            let offset = chunk * MAX_ENTRIES_PER_CALL;
            let sent = self
                .client
                .put_events()
                .set_entries(Some(batch.iter().map(|e| self.entry(e)).collect()))
                .send()
                .await;
            let out = match sent {
                Ok(out) => out,
                Err(e) => {
                    let f = classify("PutEvents", &e);
                    // Entries of earlier batches went out; the whole remainder failed alike.
                    if offset > 0 {
                        let code = f.code.clone().unwrap_or_else(|| "InternalFailure".into());
                        let code = if f.transient {
                            "InternalFailure".into()
                        } else {
                            code
                        };
                        for index in offset..events.len() {
                            outcome.failed.push(FailedEntry {
                                index,
                                error_code: code.clone(),
                                error_message: f.message.clone(),
                            });
                        }
                        return Ok(outcome);
                    }
                    return Err(if f.transient {
                        BusError::Transient {
                            message: f.message,
                            source: Some(Box::new(e)),
                        }
                    } else {
                        BusError::Rejected {
                            message: f.message,
                            source: Some(Box::new(e)),
                        }
                    });
                }
            };
            if out.failed_entry_count() == 0 {
                continue;
            }
            for (i, entry) in out.entries().iter().enumerate() {
                if let Some(code) = entry.error_code() {
                    outcome.failed.push(FailedEntry {
                        index: offset + i,
                        error_code: code.to_owned(),
                        error_message: entry.error_message().unwrap_or_default().to_owned(),
                    });
                }
            }
        }
        Ok(outcome)
    }
}
