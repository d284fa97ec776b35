//! The [`Replication`] handle: the ports replication drives, its settings, and the reads and
//! conditional writes of a run in progress that every use case above shares.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::outbox::{Announcer, Outbox, Published, Publishing};
use super::staging::StagingLocation;
use crate::enums::WorkKind;
use crate::error::DomainError;
use crate::images::Images;
use crate::keys;
use crate::model::{ReplicationJob, ReplicationRun, StageDetails, Work};
use crate::service::{put, retrying, Service, Versioned};
use crate::staging::Staging;
use crate::store::{Expect, StoreError};
use crate::workflows::Workflows;

/// Tunables of replication (typed config, read once).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationSettings {
    /// The staging bucket connectors upload into.
    pub staging_bucket: String,
    /// Key prefix of every run's objects: `<prefix>/<jobId>/<runId>/…`.
    pub staging_prefix: String,
    /// WaitForUpload fails with States.HeartbeatTimeout when the connector reports no progress
    /// for this long.
    pub upload_heartbeat: Duration,
    /// WaitForUpload fails with States.Timeout after this long in all.
    pub upload_timeout: Duration,
    /// Largest manifest read.
    pub max_manifest_bytes: u64,
    /// A job PAUSED_ON_FAILURE is deleted after this long (SMS: 4 days).
    pub paused_job_lifetime: Duration,
    /// Delete a run's staged objects once its image is registered.
    pub delete_staged_after_import: bool,
    /// Who announces the outbox's state changes.
    pub publishing: Publishing,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            staging_bucket: "tern-staging".into(),
            staging_prefix: "runs".into(),
            upload_heartbeat: Duration::from_secs(15 * 60),
            upload_timeout: Duration::from_secs(7 * 24 * 3600),
            max_manifest_bytes: 1 << 20,
            paused_job_lifetime: Duration::from_secs(4 * 24 * 3600),
            delete_staged_after_import: true,
            publishing: Publishing::Inline,
        }
    }
}

impl ReplicationSettings {
    /// Where runs are staged (the layout of their objects is [`StagingLocation`]'s).
    pub fn staging(&self) -> StagingLocation {
        StagingLocation::new(&self.staging_bucket, &self.staging_prefix)
    }
}

/// The replication use cases, over the domain [`Service`] and the ports they drive.
#[derive(Clone)]
pub struct Replication {
    pub(super) service: Service,
    pub(super) images: Arc<dyn Images>,
    pub(super) workflows: Arc<dyn Workflows>,
    pub(super) staging: Arc<dyn Staging>,
    pub(super) outbox: Outbox,
    pub(super) settings: ReplicationSettings,
    /// The launcher autoLaunch uses, where the deployment has one (shared by clones).
    pub(super) launcher: Arc<std::sync::OnceLock<Arc<dyn crate::launcher::Launcher>>>,
}

/// Sizes as SMS status messages show them ("3.1 GiB"), in MiB below a GiB so that small disks
/// do not read "0.0 GiB".
pub(super) fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

impl Replication {
    pub fn new(
        service: Service,
        images: Arc<dyn Images>,
        workflows: Arc<dyn Workflows>,
        staging: Arc<dyn Staging>,
        announcer: Arc<dyn Announcer>,
        settings: ReplicationSettings,
    ) -> Self {
        let outbox = Outbox::new(service.store.clone(), announcer);
        Self {
            service,
            images,
            workflows,
            staging,
            outbox,
            settings,
            launcher: Arc::default(),
        }
    }

    /// Connects the launcher the scheduler's tick launches `autoLaunch` applications with.
    pub fn attach_launcher(&self, launcher: Arc<dyn crate::launcher::Launcher>) {
        let _ = self.launcher.set(launcher);
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn settings(&self) -> &ReplicationSettings {
        &self.settings
    }

    /// The staging bucket's port (templates and change sets are written there too).
    pub fn staging(&self) -> &dyn Staging {
        self.staging.as_ref()
    }

    /// Publishes the outbox and deletes what the bus accepted; failures stay for the next
    /// try. With [`Publishing::Stream`], only the changes the stream consumer left behind
    /// (older than its `sweep_after`).
    pub async fn publish_outbox(&self) {
        match self.settings.publishing {
            Publishing::Inline => self.outbox.publish(None).await,
            Publishing::Stream { sweep_after } => {
                let before = self.service.now() - sweep_after;
                self.outbox.publish(Some(before)).await
            }
        }
    }

    /// What a task does after its work: announces the changes it made at once when this
    /// process publishes inline; a stream consumer announces them otherwise.
    pub(super) async fn publish_after_task(&self) {
        if self.settings.publishing == Publishing::Inline {
            self.outbox.publish(None).await
        }
    }

    /// Publishes the outbox changes `ids` (a change-stream consumer's batch), in order; see
    /// [`Outbox::publish_ids`].
    pub async fn publish_changes(&self, ids: &[String]) -> Vec<(String, Published)> {
        self.outbox.publish_ids(ids).await
    }

    /// The job and its run `run_id`, which must be the job's run in progress.
    pub(super) async fn active_run(
        &self,
        job_id: &str,
        run_id: &str,
    ) -> Result<(Versioned<ReplicationJob>, Versioned<ReplicationRun>), DomainError> {
        let job = self
            .service
            .live_job(job_id, DomainError::JobNotFound)
            .await?;
        let active = job
            .value
            .active_run
            .clone()
            .filter(|a| a.replication_run_id == run_id)
            .ok_or_else(|| {
                DomainError::OperationNotPermitted(format!(
                    "run {run_id} is not the run in progress of replication job {job_id}"
                ))
            })?;
        let key = keys::run(job_id, active.seq);
        let run = self
            .service
            .read::<ReplicationRun>(&key)
            .await?
            .ok_or_else(|| DomainError::Corrupt {
                key: format!("{}/{}", key.pk, key.sk),
                message: "missing run".into(),
            })?;
        Ok((job, run))
    }

    /// Changes the run in progress (and, when it says so, the job's copy of it) in one
    /// conditional transaction, retried on lost races. `f` returns whether the wire-visible
    /// part of the run changed (then the job's embedded copy is rewritten too), or an error
    /// that stops without writing.
    pub(super) async fn update_run<F>(
        &self,
        job_id: &str,
        run_id: &str,
        mut f: F,
    ) -> Result<ReplicationRun, DomainError>
    where
        F: FnMut(&mut ReplicationRun) -> Result<Option<bool>, DomainError>,
    {
        let svc = &self.service;
        retrying!(svc, run_id, async {
            let (job, run) = self.active_run(job_id, run_id).await?;
            let mut r = run.value.clone();
            let Some(visible) = f(&mut r)? else {
                return Ok(r);
            };
            let mut writes = vec![put(keys::run(job_id, r.seq), &r, run.expect())?];
            if visible {
                let mut j = job.value.clone();
                Service::embed_run(&mut j, &r, svc.config.limits.runs_embedded_in_job as usize);
                writes.push(put(keys::job(job_id), &j, job.expect())?);
            }
            svc.store.transact(writes).await?;
            Ok(r)
        })
    }

    /// Sets a run's stage and status message (what GetReplicationRuns shows).
    pub(super) async fn set_stage(
        &self,
        job_id: &str,
        run_id: &str,
        stage: &str,
        progress: Option<String>,
        message: String,
    ) -> Result<(), DomainError> {
        self.update_run(job_id, run_id, |r| {
            let details = StageDetails {
                stage: Some(stage.to_string()),
                stage_progress: progress.clone(),
            };
            if r.stage_details.as_ref() == Some(&details)
                && r.status_message.as_deref() == Some(&message)
            {
                return Ok(None);
            }
            r.stage_details = Some(details);
            r.status_message = Some(message.clone());
            Ok(Some(true))
        })
        .await
        .map(drop)
    }

    /// Queues a work item with a fixed id; an item already queued under that id is left alone.
    pub(super) async fn queue_work<T: Serialize>(
        &self,
        connector_id: &str,
        work_id: &str,
        kind: WorkKind,
        payload: &T,
    ) -> Result<(), DomainError> {
        let work = Work {
            work_id: work_id.to_string(),
            connector_id: connector_id.to_string(),
            kind,
            payload: serde_json::to_value(payload).map_err(|e| DomainError::Corrupt {
                key: work_id.to_string(),
                message: e.to_string(),
            })?,
            queued_on: self.service.now(),
            leased_on: None,
        };
        match self
            .service
            .store
            .write(put(
                keys::work(connector_id, work_id),
                &work,
                Expect::Absent,
            )?)
            .await
        {
            Ok(()) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_sms_status_messages() {
        assert_eq!(gib(3_328_599_654), "3.1 GiB");
        assert_eq!(gib(48 << 20), "48.0 MiB");
        assert_eq!(gib(0), "0.0 MiB");
    }
}
