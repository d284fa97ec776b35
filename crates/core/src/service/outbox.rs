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
use crate::enums::{ReplicationJobState as J, ReplicationRunState as R};
use crate::error::Result;
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
    /// Title case, as in SMS events: Pending, Active, Completed, Failed, Deleted, Paused, Missed.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// The event `state` of a run state, if that state is announced.
pub fn run_event_state(state: R) -> Option<&'static str> {
    match state {
        R::Pending => Some("Pending"),
        R::Active => Some("Active"),
        R::Completed => Some("Completed"),
        R::Failed => Some("Failed"),
        R::Missed => Some("Missed"),
        R::Deleting | R::Deleted => None,
    }
}

/// The event `state` of a job state, if that state is announced.
pub fn job_event_state(state: J) -> Option<&'static str> {
    match state {
        J::Pending => Some("Pending"),
        J::Active => Some("Active"),
        J::Completed => Some("Completed"),
        J::Failed => Some("Failed"),
        J::PausedOnFailure => Some("Paused"),
        J::Deleted => Some("Deleted"),
        J::Failing | J::Deleting => None,
    }
}

impl StateChange {
    /// A run reaches each of its states once, so run id + state identifies the transition.
    pub fn of_run(
        job_id: &str,
        server_id: &str,
        run: &crate::model::ReplicationRun,
        time: OffsetDateTime,
    ) -> Option<StateChange> {
        let state = run_event_state(run.state)?;
        Some(StateChange {
            id: format!("{job_id}.{}.{state}", run.replication_run_id),
            job_id: job_id.to_string(),
            run_id: Some(run.replication_run_id.clone()),
            server_id: server_id.to_string(),
            state: state.to_string(),
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
        let name = job_event_state(state)?;
        Some(StateChange {
            id: format!("{}.job.{name}.{}", job.replication_job_id, job.run_count),
            job_id: job.replication_job_id.clone(),
            run_id: None,
            server_id: job.server_id.clone(),
            state: name.to_string(),
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
