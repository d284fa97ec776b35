//! State changes waiting to be announced.
//!
//! Every job or run transition writes a [`StateChange`] into the `OUTBOX` partition in the same
//! transaction as the transition itself, so an event can neither be lost when the process dies
//! after the commit nor announce a change that did not commit. [`Outbox::publish`] announces
//! them as "Server Migration Job State Change" events and deletes what was accepted;
//! publishing is at-least-once, and a re-published change carries the same event id.
//!
//! This module sits below the use cases (`service` writes state changes with its
//! transitions), so it uses only the store, the keys and the event shape.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::enums::ReplicationJobState as J;
use crate::error::{DomainError, Result};
use crate::events::{AppStateChange, EventBus, EventOrigin, JobEventState, JobStateChange};
use crate::keys;
use crate::model::{ReplicationJob, ReplicationRun};
use crate::store::{Expect, Store, Write};

/// One change waiting in the outbox: of a job or run, or of an application. Stored as the inner
/// shape (no tag), so the job changes written before applications had events read as they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StateChange {
    Job(JobChange),
    App(AppChange),
}

/// An application's launch or validation status change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppChange {
    /// Stable per transition: the outbox key and the seed of the event id.
    pub id: String,
    pub app_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// `launch` or `validation`.
    pub state_type: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// One job or run state change, as the event announcing it needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobChange {
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
    pub fn id(&self) -> &str {
        match self {
            StateChange::Job(c) => &c.id,
            StateChange::App(c) => &c.id,
        }
    }

    pub fn time(&self) -> OffsetDateTime {
        match self {
            StateChange::Job(c) => c.time,
            StateChange::App(c) => c.time,
        }
    }

    /// A run reaches each of its states once, so run id + state identifies the transition.
    pub fn of_run(
        job_id: &str,
        server_id: &str,
        run: &ReplicationRun,
        time: OffsetDateTime,
    ) -> Option<StateChange> {
        let state = JobEventState::of_run(run.state)?;
        Some(StateChange::Job(JobChange {
            id: format!("{job_id}.{}.{state}", run.replication_run_id),
            job_id: job_id.to_string(),
            run_id: Some(run.replication_run_id.clone()),
            server_id: server_id.to_string(),
            state,
            ami_id: run.ami_id.clone(),
            stage: run.stage_details.as_ref().and_then(|d| d.stage.clone()),
            status_message: run.status_message.clone(),
            time,
        }))
    }

    /// A job can pass through a state more than once (ACTIVE after each resume), so the
    /// number of runs so far is part of the id.
    pub fn of_job(job: &ReplicationJob, state: J, time: OffsetDateTime) -> Option<StateChange> {
        let name = JobEventState::of_job(state)?;
        Some(StateChange::Job(JobChange {
            id: format!("{}.job.{name}.{}", job.replication_job_id, job.run_count),
            job_id: job.replication_job_id.clone(),
            run_id: None,
            server_id: job.server_id.clone(),
            state: name,
            // The AMI is announced once, by its run's Completed event: automation launches an
            // instance per Completed event carrying `ami-id`, so a runOnce job's own Completed
            // must not carry it again.
            ami_id: None,
            stage: None,
            status_message: job.status_message.clone(),
            time,
        }))
    }

    /// The write that puts this change into the outbox (overwriting a retried copy).
    pub fn write(&self) -> Result<Write> {
        Ok(Write::Put {
            key: keys::outbox(self.id()),
            body: serde_json::to_value(self).map_err(|e| DomainError::Corrupt {
                key: "(new item)".into(),
                message: e.to_string(),
            })?,
            expect: Expect::Any,
        })
    }
}

/// Announces outbox state changes (the event bus adapter lives outside the domain).
#[async_trait::async_trait]
pub trait Announcer: Send + Sync {
    /// Publishes the changes; returns the ids of those accepted (the others stay in the outbox
    /// and are tried again).
    async fn announce(&self, changes: &[StateChange]) -> Vec<String>;
}

/// Announces state changes as "Server Migration Job State Change" events on an [`EventBus`].
pub struct BusAnnouncer {
    bus: Arc<dyn EventBus>,
    origin: EventOrigin,
}

impl BusAnnouncer {
    pub fn new(bus: Arc<dyn EventBus>, origin: EventOrigin) -> Self {
        Self { bus, origin }
    }

    /// The event announcing `change`; its id is derived from the change's id, so a repeated
    /// publication is recognisable downstream.
    pub fn event(&self, change: &StateChange) -> crate::events::Event {
        let change = match change {
            StateChange::Job(c) => c,
            StateChange::App(c) => {
                return AppStateChange {
                    app_id: c.app_id.clone(),
                    app_name: c.app_name.clone(),
                    state_type: c.state_type.clone(),
                    state: c.state.clone(),
                    validation_id: c.validation_id.clone(),
                    stack_id: c.stack_id.clone(),
                    status_message: c.status_message.clone(),
                    version: "1.0".into(),
                }
                .into_event(&self.origin, c.time, &c.id)
            }
        };
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
impl Announcer for BusAnnouncer {
    async fn announce(&self, changes: &[StateChange]) -> Vec<String> {
        let events: Vec<_> = changes.iter().map(|c| self.event(c)).collect();
        match self.bus.publish(&events).await {
            Ok(outcome) => {
                let failed: Vec<usize> = outcome.failed.iter().map(|f| f.index).collect();
                for f in &outcome.failed {
                    tracing::warn!(change = %changes[f.index].id(), code = %f.error_code, error = %f.error_message, "event not accepted; kept in the outbox");
                }
                changes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !failed.contains(i))
                    .map(|(_, c)| c.id().to_string())
                    .collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not publish events; kept in the outbox");
                Vec::new()
            }
        }
    }
}

/// Who publishes the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publishing {
    /// The process that wrote a change publishes it right after (each task, each tick): one
    /// machine, `tern serve`.
    Inline,
    /// A consumer of the store's change stream publishes each change as it is written (the AWS
    /// deployment's `event-publisher` on the table's DynamoDB stream, through
    /// [`Outbox::publish_ids`]); the scheduler's tick only sweeps up changes older than
    /// `sweep_after`, which the stream consumer must have failed to publish. Nothing else
    /// publishes, so a change is not announced twice by racing publishers.
    Stream { sweep_after: Duration },
}

/// What [`Outbox::publish_ids`] did with one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Announced now and removed from the outbox.
    Announced,
    /// No longer in the outbox: announced before (a re-delivered stream record).
    AlreadyGone,
    /// The bus refused it or was unreachable; it stays in the outbox.
    Failed(String),
}

/// Publishes the outbox through an [`Announcer`].
#[derive(Clone)]
pub struct Outbox {
    store: Arc<dyn Store>,
    announcer: Arc<dyn Announcer>,
    /// One publication at a time in this process, so that concurrent tasks and ticks do not
    /// announce the same change twice (across processes the event id tells repeats apart).
    publishing: Arc<futures::lock::Mutex<()>>,
}

impl Outbox {
    pub fn new(store: Arc<dyn Store>, announcer: Arc<dyn Announcer>) -> Self {
        Self {
            store,
            announcer,
            publishing: Arc::default(),
        }
    }

    /// Publishes the outbox and deletes what the announcer accepted. Failures stay for the
    /// next try. With `written_before`, only changes made before that time.
    pub async fn publish(&self, written_before: Option<OffsetDateTime>) {
        let _one_at_a_time = self.publishing.lock().await;
        let pending = match self.pending().await {
            Ok(p) => match written_before {
                Some(t) => p.into_iter().filter(|(c, _)| c.time() < t).collect(),
                None => p,
            },
            Err(e) => {
                tracing::warn!(error = %e, "could not read the event outbox");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        let mut changes: Vec<StateChange> = pending.iter().map(|(c, _)| c.clone()).collect();
        changes.sort_by_key(|c| c.time());
        let accepted = self.announcer.announce(&changes).await;
        for (change, version) in pending
            .iter()
            .filter(|(c, _)| accepted.iter().any(|a| a == c.id()))
        {
            self.forget(change, *version).await;
        }
    }

    /// Removes an announced change from the outbox, unless it changed since it was read. A
    /// failed delete only means a later publication announces it once more (same event id).
    async fn forget(&self, change: &StateChange, version: u64) {
        let _ = self
            .store
            .write(Write::Delete {
                key: keys::outbox(change.id()),
                expect: Expect::Version(version),
            })
            .await;
    }

    /// Publishes the changes `ids`, in this order, as a change-stream consumer does: a change
    /// no longer in the outbox was announced before and is not announced again. Returns one
    /// outcome per id. Store failures reading a change are `Failed` too (the stream retries).
    pub async fn publish_ids(&self, ids: &[String]) -> Vec<(String, Published)> {
        let _one_at_a_time = self.publishing.lock().await;
        let mut outcomes: Vec<(String, Published)> = Vec::with_capacity(ids.len());
        let mut present = Vec::new();
        for id in ids {
            match self.store.get(&keys::outbox(id)).await {
                Ok(None) => outcomes.push((id.clone(), Published::AlreadyGone)),
                Ok(Some(item)) => match serde_json::from_value::<StateChange>(item.body) {
                    Ok(change) => {
                        present.push((change, item.version));
                        outcomes.push((id.clone(), Published::Announced));
                    }
                    Err(e) => outcomes.push((
                        id.clone(),
                        Published::Failed(format!("outbox item {id} is corrupt: {e}")),
                    )),
                },
                Err(e) => outcomes.push((id.clone(), Published::Failed(e.to_string()))),
            }
        }
        if present.is_empty() {
            return outcomes;
        }
        let changes: Vec<StateChange> = present.iter().map(|(c, _)| c.clone()).collect();
        let accepted = self.announcer.announce(&changes).await;
        for (change, version) in &present {
            let outcome = if accepted.iter().any(|a| a == change.id()) {
                self.forget(change, *version).await;
                Published::Announced
            } else {
                Published::Failed("the event bus did not accept the event".into())
            };
            if let Some(o) = outcomes.iter_mut().find(|(id, _)| id == change.id()) {
                o.1 = outcome;
            }
        }
        outcomes
    }

    /// Every change in the outbox, with the version it was read at.
    async fn pending(&self) -> Result<Vec<(StateChange, u64)>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .query_raw(keys::OUTBOX, "", after.as_deref(), 500)
                .await?;
            for item in page.items {
                let key = format!("{}/{}", item.key.pk, item.key.sk);
                let version = item.version;
                let change =
                    item.body
                        .decode::<StateChange>()
                        .map_err(|e| DomainError::Corrupt {
                            key,
                            message: e.to_string(),
                        })?;
                out.push((change, version));
            }
            match page.last_sk {
                Some(l) => after = Some(l),
                None => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::memory_store::MemoryStore;

    /// Accepts every change except those whose id is in `refuse`; records what it saw.
    #[derive(Default)]
    struct Recording {
        seen: Mutex<Vec<String>>,
        refuse: Vec<String>,
    }

    #[async_trait::async_trait]
    impl Announcer for Recording {
        async fn announce(&self, changes: &[StateChange]) -> Vec<String> {
            let mut seen = self.seen.lock().unwrap();
            changes
                .iter()
                .inspect(|c| seen.push(c.id().to_string()))
                .filter(|c| !self.refuse.iter().any(|r| r == c.id()))
                .map(|c| c.id().to_string())
                .collect()
        }
    }

    fn change(id: &str, minutes_ago: i64) -> StateChange {
        StateChange::Job(JobChange {
            id: id.into(),
            job_id: "sms-job-1".into(),
            run_id: None,
            server_id: "s-1".into(),
            state: JobEventState::Active,
            ami_id: None,
            stage: None,
            status_message: None,
            time: OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)
                - time::Duration::minutes(minutes_ago),
        })
    }

    async fn outbox_with(
        changes: &[StateChange],
        refuse: &[&str],
    ) -> (Outbox, Arc<Recording>, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        for c in changes {
            store.write(c.write().unwrap()).await.unwrap();
        }
        let rec = Arc::new(Recording {
            seen: Mutex::default(),
            refuse: refuse.iter().map(|s| s.to_string()).collect(),
        });
        (Outbox::new(store.clone(), rec.clone()), rec, store)
    }

    async fn left(store: &MemoryStore) -> Vec<String> {
        let page = store.query(keys::OUTBOX, "", None, 100).await.unwrap();
        page.items.into_iter().map(|i| i.key.sk).collect()
    }

    #[tokio::test]
    async fn a_stream_batch_announces_each_change_once_even_when_delivered_again() {
        let (outbox, rec, store) =
            outbox_with(&[change("a", 0), change("b", 0), change("c", 0)], &["b"]).await;
        let ids: Vec<String> = ["a", "b", "c", "gone"].map(String::from).to_vec();
        let first = outbox.publish_ids(&ids).await;
        assert_eq!(first[0], ("a".into(), Published::Announced));
        assert!(matches!(&first[1], (id, Published::Failed(_)) if id == "b"));
        assert_eq!(first[2], ("c".into(), Published::Announced));
        assert_eq!(first[3], ("gone".into(), Published::AlreadyGone));
        assert_eq!(left(&store).await, ["b"], "only the refused change stays");
        // The whole batch delivered again: only the change that failed is announced again.
        let again = outbox.publish_ids(&ids).await;
        assert_eq!(again[0].1, Published::AlreadyGone);
        assert!(matches!(again[1].1, Published::Failed(_)));
        assert_eq!(again[2].1, Published::AlreadyGone);
        assert_eq!(*rec.seen.lock().unwrap(), ["a", "b", "c", "b"]);
    }

    #[tokio::test]
    async fn a_sweep_publishes_only_changes_written_before_its_cut_off() {
        let (outbox, rec, store) = outbox_with(&[change("old", 10), change("new", 1)], &[]).await;
        let cut_off = change("x", 5).time();
        outbox.publish(Some(cut_off)).await;
        assert_eq!(*rec.seen.lock().unwrap(), ["old"]);
        assert_eq!(left(&store).await, ["new"]);
        outbox.publish(None).await;
        assert!(left(&store).await.is_empty());
    }
}
