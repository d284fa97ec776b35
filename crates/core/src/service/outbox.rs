//! State changes waiting to be announced.
//!
//! Every job or run transition writes a [`StateChange`] into the `OUTBOX` partition in the same
//! transaction as the transition itself, so an event can neither be lost when the process dies
//! after the commit nor announce a change that did not commit. The replication service publishes
//! the outbox as "Server Migration Job State Change" events and deletes what was accepted;
//! publishing is at-least-once, and a re-published change carries the same event id.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::put;
use crate::enums::ReplicationJobState as J;
use crate::error::Result;
use crate::events::{EventBus, EventOrigin, JobEventState, JobStateChange};
use crate::keys;
use crate::store::{Expect, Write};

/// One job or run state change, as the event announcing it needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    /// Unique per transition and stable when the transition is retried: the outbox key, and
    /// the seed of the event id.
    pub id: String,
    pub job_id: String,
    /// `None` for a change of the job itself (the event says `N/A`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub server_id: String,
    pub state: JobEventState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

impl StateChange {
    /// A run reaches each of its states once, so run id + state identifies the transition.
    pub fn of_run(
        job_id: &str,
        server_id: &str,
        run: &crate::model::ReplicationRun,
        time: OffsetDateTime,
    ) -> Option<StateChange> {
        let state = JobEventState::of_run(run.state)?;
        Some(StateChange {
            id: format!("{job_id}.{}.{state}", run.replication_run_id),
            job_id: job_id.to_string(),
            run_id: Some(run.replication_run_id.clone()),
            server_id: server_id.to_string(),
            state,
            ami_id: run.ami_id.clone(),
            stage: run.stage_details.as_ref().and_then(|d| d.stage.clone()),
            status_message: run.status_message.clone(),
            time,
        })
    }

    /// A job can pass through a state more than once (ACTIVE after each resume), so the
    /// number of runs so far is part of the id.
    pub fn of_job(
        job: &crate::model::ReplicationJob,
        state: J,
        time: OffsetDateTime,
    ) -> Option<StateChange> {
        let name = JobEventState::of_job(state)?;
        Some(StateChange {
            id: format!("{}.job.{name}.{}", job.replication_job_id, job.run_count),
            job_id: job.replication_job_id.clone(),
            run_id: None,
            server_id: job.server_id.clone(),
            state: name,
            ami_id: (state == J::Completed)
                .then(|| job.latest_ami_id.clone())
                .flatten(),
            stage: None,
            status_message: job.status_message.clone(),
            time,
        })
    }

    /// The write that puts this change into the outbox (overwriting a retried copy).
    pub fn write(&self) -> Result<Write> {
        put(keys::outbox(&self.id), self, Expect::Any)
    }
}

/// Announces state changes as "Server Migration Job State Change" events on an [`EventBus`].
pub struct BusAnnouncer {
    bus: std::sync::Arc<dyn EventBus>,
    origin: EventOrigin,
}

impl BusAnnouncer {
    pub fn new(bus: std::sync::Arc<dyn EventBus>, origin: EventOrigin) -> Self {
        Self { bus, origin }
    }

    /// The event announcing `change`; its id is derived from the change's id, so a repeated
    /// publication is recognisable downstream.
    pub fn event(&self, change: &StateChange) -> crate::events::Event {
        let mut detail =
            JobStateChange::new(change.state, &change.job_id).with_server(&change.server_id);
        if let Some(run) = &change.run_id {
            detail = detail.with_run(run);
        }
        if let Some(ami) = &change.ami_id {
            detail = detail.with_ami(ami);
        }
        if let Some(stage) = &change.stage {
            detail = detail.with_stage(stage);
        }
        if let Some(message) = &change.status_message {
            detail = detail.with_status_message(message);
        }
        detail.into_event(&self.origin, change.time, &change.id)
    }
}

#[async_trait::async_trait]
impl super::replication::Announcer for BusAnnouncer {
    async fn announce(&self, changes: &[StateChange]) -> Vec<String> {
        let events: Vec<_> = changes.iter().map(|c| self.event(c)).collect();
        match self.bus.publish(&events).await {
            Ok(outcome) => {
                let failed: Vec<usize> = outcome.failed.iter().map(|f| f.index).collect();
                for f in &outcome.failed {
                    tracing::warn!(change = %changes[f.index].id, code = %f.error_code, error = %f.error_message, "event not accepted; kept in the outbox");
                }
                changes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !failed.contains(i))
                    .map(|(_, c)| c.id.clone())
                    .collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not publish events; kept in the outbox");
                Vec::new()
            }
        }
    }
}
