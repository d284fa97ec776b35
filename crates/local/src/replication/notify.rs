//! Staging notifications on one machine: the S3 endpoint's "Object Created" events go to the
//! local bus (where user rules see them, as on EventBridge), and from the bus to the
//! upload-complete handler.

use std::sync::Arc;

use tern_core::events::{Event, EventBus};
use tern_core::replication::{ObjectCreated, Replication, UploadOutcome};
use tokio::sync::broadcast;

use crate::bus::LocalBus;
use crate::s3::ObjectCreatedSink;

/// Publishes every "Object Created" event of the staging store on the bus (and hands it on to
/// a further sink, when one is configured).
pub struct BusSink {
    bus: LocalBus,
    next: Option<Arc<dyn ObjectCreatedSink>>,
    runtime: tokio::runtime::Handle,
}

impl BusSink {
    pub fn new(bus: LocalBus, next: Option<Arc<dyn ObjectCreatedSink>>) -> Self {
        Self {
            bus,
            next,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl ObjectCreatedSink for BusSink {
    fn object_created(&self, event: serde_json::Value) {
        if let Some(next) = &self.next {
            next.object_created(event.clone());
        }
        let event: Event = match serde_json::from_value(event) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "staging event is not an EventBridge event");
                return;
            }
        };
        let bus = self.bus.clone();
        // The sink must not block the request; a publish lost to a crash here is made up for
        // by the scheduler, which looks for manifests of runs still waiting.
        self.runtime.spawn(async move {
            match bus.publish(std::slice::from_ref(&event)).await {
                Ok(outcome) if outcome.is_complete() => {}
                Ok(outcome) => {
                    tracing::warn!(failed = ?outcome.failed, "staging event refused by the bus")
                }
                Err(e) => tracing::warn!(error = %e, "could not publish a staging event"),
            }
        });
    }
}

/// Calls [`Replication::upload_complete`] for every "Object Created" event of a run's manifest
/// published on the bus (recognised by the domain's [`ObjectCreated`] and staging layout, the
/// same code the AWS upload-complete handler runs).
pub fn spawn_upload_listener(
    mut events: broadcast::Receiver<Event>,
    replication: Replication,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // The scheduler's reconciliation finds the manifests of those runs.
                    tracing::warn!(missed = n, "upload listener fell behind the bus");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let Ok(value) = serde_json::to_value(&event) else {
                continue;
            };
            let Some(object) = ObjectCreated::from_event(&value) else {
                continue;
            };
            if replication.run_of_manifest(&object).is_none() {
                continue;
            }
            let key = object.key.as_str();
            crate::pause::point("upload-complete", key).await;
            match replication.upload_complete(&object.bucket, key).await {
                Ok(UploadOutcome::Accepted) => tracing::info!(key, "run upload complete"),
                Ok(UploadOutcome::Duplicate) => {
                    tracing::debug!(key, "repeated upload notification")
                }
                Ok(UploadOutcome::Ignored(why)) => {
                    tracing::info!(key, why = %why, "upload notification ignored")
                }
                Ok(UploadOutcome::Rejected(why)) => {
                    tracing::warn!(key, why = %why, "run manifest rejected")
                }
                Err(e) => tracing::warn!(key, error = %e, "upload-complete handler failed"),
            }
        }
    })
}
