//! What DeleteReplicationJob leaves to undo of the run in progress (R10: the job's service
//! artifacts go; AMIs of completed runs stay).
//!
//! The delete itself is one store transaction: the job and run marked deleted, the run's
//! `REPLICATE` work item withdrawn (a connector polling gets nothing for the job, and an
//! uploading connector's next ReportProgress is answered "no work item", upon which it aborts
//! its multipart uploads), and a [`Teardown`] record written. The rest cannot be part of a
//! store transaction, so it is done here, step by idempotent step, and the record is removed
//! only when every step is done:
//!
//! 1. the run's execution is stopped (`Workflows::stop_execution`), so no further task runs;
//! 2. the work item is deleted again (a Prepare that read the run before the delete may have
//!    queued it after);
//! 3. the run's staging prefix is deleted, which also aborts its open multipart uploads;
//! 4. the image tasks the run started are waited for and their snapshots deleted, and an image
//!    registered for the run (the delete raced RegisterImage) is deregistered.
//!
//! A run that fails gets the same record (written with the failure, `run_failed`): its
//! execution ends by itself and is not stopped, and the rest goes as above — its staged
//! objects, the snapshots of the image tasks it started, an image registered before the
//! failure — so a failed or killed run leaves no snapshot, image or staging object behind
//! (R10's AMIs of completed runs are other runs').
//!
//! DeleteReplicationJob runs it at once; the scheduler's tick sweeps every record left (a crash
//! between the delete and the end of the teardown, a failing dependency, image tasks still
//! running) and repeats the staging step until `work_lease` has passed since the delete, for
//! an object a connector completed before it learnt of the delete. Images of completed runs
//! are never touched: they are not the run's.

use super::handle::Replication;
use super::work::replicate_work_id;
use crate::error::DomainError;
use crate::images::{ImagesError, TaskStatus};
use crate::keys;
use crate::model::Teardown;
use crate::service::{put, retrying};
use crate::store::{Expect, StoreError, Write};
use crate::workflows::REPLICATION_RUN;

/// Why the execution was stopped, as its history shows.
const STOP_CAUSE: &str = "The replication job was deleted";

impl Replication {
    /// Undoes the unfinished run of deleted job `job_id`, when it had one, and what its failed
    /// runs left. A step that cannot finish now is left to the scheduler's sweep.
    pub async fn tear_down_job(&self, job_id: &str) -> Result<(), DomainError> {
        let pending = self
            .service
            .list_all::<Teardown>(keys::TEARDOWN)
            .await?
            .into_iter()
            .filter(|t| t.value.job_id == job_id);
        for t in pending {
            self.tear_down(&t.value).await?;
        }
        Ok(())
    }

    /// The scheduler's sweep: every teardown left is tried again. Returns how many finished.
    pub async fn sweep_teardowns(&self) -> Result<usize, DomainError> {
        let mut finished = 0;
        for t in self.service.list_all::<Teardown>(keys::TEARDOWN).await? {
            match self.tear_down(&t.value).await {
                Ok(true) => finished += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job_id = %t.value.job_id, run_id = %t.value.run_id, error = %e, "teardown of a deleted job's run failed; the next tick tries again")
                }
            }
        }
        Ok(finished)
    }

    /// One teardown, every step idempotent. `Ok(true)` when it is done and its record gone,
    /// `Ok(false)` when image tasks of the run are still running or a connector may still
    /// complete an object of the run.
    async fn tear_down(&self, t: &Teardown) -> Result<bool, DomainError> {
        let (job_id, run_id) = (t.job_id.as_str(), t.run_id.as_str());
        if !t.run_failed {
            self.workflows
                .stop_execution(REPLICATION_RUN, run_id, STOP_CAUSE)
                .await?;
        }
        self.service
            .store
            .write(Write::Delete {
                key: keys::work(&t.connector_id, &replicate_work_id(run_id)),
                expect: Expect::Any,
            })
            .await?;
        let staging = self.settings.staging();
        let removed = self
            .staging
            .delete_prefix(&staging.bucket, &staging.run_prefix(job_id, run_id))
            .await?;
        let mut running = 0;
        for task in &t.snapshot_tasks {
            match self.images.describe_task(task).await {
                Ok(TaskStatus::Active { .. }) => running += 1,
                Ok(TaskStatus::Completed { snapshot }) => {
                    self.delete_unfinished_snapshot(&snapshot.snapshot_id)
                        .await?
                }
                Ok(TaskStatus::Failed { .. }) | Err(ImagesError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if running > 0 {
            tracing::info!(
                job_id,
                run_id,
                running,
                "waiting for the deleted run's image tasks to end"
            );
            return Ok(false);
        }
        // A connector that was uploading learns of the delete with its next report, and may
        // complete an object before it does: the prefix is deleted again on every sweep until
        // the work lease (the longest a connector works without being heard) has passed.
        let settled = self.service.now() - t.deleted_on >= self.service.config.work_lease;
        let name = format!("tern-{job_id}-{run_id}");
        for image in self.images.list_images().await? {
            if image.name != name {
                continue;
            }
            self.images.deregister_image(&image.image_id).await?;
            for d in &image.block_devices {
                self.delete_unfinished_snapshot(&d.snapshot_id).await?;
            }
        }
        if !settled {
            return Ok(false);
        }
        // Conditional on the record as read: a task list merged meanwhile keeps it.
        let key = keys::teardown(job_id, run_id);
        let Some(current) = self.service.read::<Teardown>(&key).await? else {
            return Ok(true);
        };
        if current.value != *t {
            return Ok(false);
        }
        match self
            .service
            .store
            .write(Write::Delete {
                key,
                expect: current.expect(),
            })
            .await
        {
            Ok(()) => {
                tracing::info!(
                    job_id,
                    run_id,
                    staged_objects_removed = removed,
                    "deleted job's run torn down"
                );
                Ok(true)
            }
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_unfinished_snapshot(&self, snapshot_id: &str) -> Result<(), DomainError> {
        match self.images.delete_snapshot(snapshot_id).await {
            Ok(()) | Err(ImagesError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Image tasks a run started after its job was deleted (the delete raced Import): they
    /// join the run's teardown record, created again if the teardown already finished.
    pub(super) async fn orphan_snapshot_tasks(
        &self,
        job_id: &str,
        run_id: &str,
        connector_id: &str,
        tasks: &[String],
    ) -> Result<(), DomainError> {
        let svc = &self.service;
        let key = keys::teardown(job_id, run_id);
        retrying!(svc, run_id, async {
            let current = svc.read::<Teardown>(&key).await?;
            let (mut t, expect) = match &current {
                Some(c) => (c.value.clone(), c.expect()),
                None => (
                    Teardown {
                        job_id: job_id.to_string(),
                        run_id: run_id.to_string(),
                        connector_id: connector_id.to_string(),
                        snapshot_tasks: Vec::new(),
                        deleted_on: svc.now(),
                        run_failed: false,
                    },
                    Expect::Absent,
                ),
            };
            for task in tasks {
                if !t.snapshot_tasks.contains(task) {
                    t.snapshot_tasks.push(task.clone());
                }
            }
            svc.store.write(put(key.clone(), &t, expect)?).await?;
            Ok(())
        })
    }
}
