//! The scheduler's tick: due runs are created, pending runs get their execution, ended jobs
//! go, deleted jobs' unfinished runs are torn down (the sweep that finishes what a crash or a
//! failing dependency interrupted), deleted jobs past their retention are purged, lost
//! manifest hand-overs are redone, the outbox is published, and replicated applications that
//! ask for `autoLaunch` are launched.

use time::OffsetDateTime;

use super::contract::RunInput;
use super::handle::Replication;
use super::outbox::StateChange;
use super::upload::UploadOutcome;
use crate::enums::{ReplicationJobState, ReplicationRunState, ReplicationRunType};
use crate::error::DomainError;
use crate::images::StagedObject;
use crate::keys;
use crate::model::{ReplicationJob, ReplicationRun, RunRef};
use crate::service::{put, retrying, Service};
use crate::states::accepts_runs;
use crate::store::Expect;
use crate::workflows::{WorkflowError, REPLICATION_RUN};

/// Jobs the scheduler handles at once within a tick.
const SCHEDULER_CONCURRENCY: usize = 16;

/// What a tick did for one job.
#[derive(Default)]
struct JobPass {
    created: Option<String>,
    missed: Option<String>,
    ended: bool,
    /// The job's run in progress after scheduling.
    active: Option<RunRef>,
}

/// What one tick of the scheduler did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub runs_created: Vec<String>,
    pub runs_missed: Vec<String>,
    pub executions_started: Vec<String>,
    pub jobs_ended: Vec<String>,
    pub uploads_resignalled: usize,
    /// Deleted jobs' unfinished runs whose teardown finished in this tick.
    pub teardowns_finished: usize,
    /// Applications launched by their launch configuration's `autoLaunch`.
    pub apps_launched: Vec<String>,
}

impl Replication {
    /// One pass of the scheduler: due runs are created (or recorded MISSED while a run is still
    /// going), pending runs get their execution, ended and long-paused jobs are deleted, lost
    /// manifest hand-overs are redone and the outbox is published. Safe to run from several
    /// places at once: every step is conditional or idempotent.
    pub async fn tick(&self) -> Result<TickReport, DomainError> {
        use futures::StreamExt;
        let mut report = TickReport::default();
        let now = self.service.now();
        let jobs = self.service.list_all::<ReplicationJob>(keys::JOB).await?;
        // Jobs are independent of each other, and each step is a few store round trips: a
        // thousand runs due in the same minute are scheduled SCHEDULER_CONCURRENCY at a time
        // instead of one after the other (33 s for 1,000 on a loaded 2-core machine).
        let passes: Vec<(JobPass, String)> = futures::stream::iter(jobs)
            .map(|job| async move {
                let id = job.value.replication_job_id.clone();
                (self.pass_job(&job.value, now).await, id)
            })
            .buffer_unordered(SCHEDULER_CONCURRENCY)
            .collect()
            .await;
        // Runs in progress after scheduling, to drive below: one listing serves both passes.
        let mut in_progress: Vec<(String, RunRef)> = Vec::new();
        for (pass, id) in passes {
            report.runs_created.extend(pass.created);
            report.runs_missed.extend(pass.missed);
            if pass.ended {
                report.jobs_ended.push(id.clone());
            }
            if let Some(run) = pass.active {
                in_progress.push((id, run));
            }
        }
        // Runs waiting for their execution, and manifests not yet handed over.
        let driven: Vec<TickReport> = futures::stream::iter(in_progress)
            .map(|(job_id, run)| async move {
                let mut one = TickReport::default();
                if let Err(e) = self.drive_run(&job_id, &run, &mut one).await {
                    tracing::warn!(job_id = %job_id, error = %e, "scheduler could not drive run");
                }
                one
            })
            .buffer_unordered(SCHEDULER_CONCURRENCY)
            .collect()
            .await;
        for one in driven {
            report.executions_started.extend(one.executions_started);
            report.uploads_resignalled += one.uploads_resignalled;
        }
        match self.sweep_teardowns().await {
            Ok(n) => report.teardowns_finished = n,
            Err(e) => tracing::warn!(error = %e, "scheduler could not sweep teardowns"),
        }
        if let Err(e) = self.service.purge_deleted_jobs().await {
            tracing::warn!(error = %e, "scheduler could not purge deleted jobs");
        }
        self.publish_outbox().await;
        if let Some(launcher) = self.launcher.get() {
            report.apps_launched = self
                .service
                .auto_launch(launcher.as_ref(), self.staging.as_ref())
                .await;
        }
        Ok(report)
    }

    /// The scheduling part of a tick for one job: deletes it when it ended, creates its due
    /// run. A failure is logged; the job is looked at again next tick.
    async fn pass_job(&self, j: &ReplicationJob, now: OffsetDateTime) -> JobPass {
        let limits = &self.service.config.limits;
        let id = j.replication_job_id.clone();
        let mut pass = JobPass {
            active: j.active_run.clone(),
            ..JobPass::default()
        };
        let outcome: Result<(), DomainError> = async {
            if j.state == ReplicationJobState::PausedOnFailure {
                if j.paused_on
                    .is_some_and(|t| now - t >= self.settings.paused_job_lifetime)
                {
                    self.service.delete_job(&id).await?;
                    pass.ended = true;
                    pass.active = None;
                }
                return Ok(());
            }
            if !accepts_runs(j.state) {
                return Ok(());
            }
            // R13: the lifetime counts from the first replication, not from the seed time
            // (a job created today with a seed time in 2016 starts its seed now).
            if j.lifetime_start()
                .is_some_and(|t| now - t >= limits.max_replication_lifetime)
                && j.active_run.is_none()
            {
                self.service.delete_job(&id).await?;
                pass.ended = true;
                return Ok(());
            }
            if j.next_replication_run_start_time.is_some_and(|t| t <= now) {
                match self.schedule_run(&id, now).await? {
                    Some((run, true)) => {
                        pass.created = Some(run.replication_run_id.clone());
                        pass.active = Some(run);
                    }
                    Some((run, false)) => pass.missed = Some(run.replication_run_id),
                    None => {}
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            tracing::warn!(job_id = %id, error = %e, "scheduler could not handle job");
        }
        pass
    }

    async fn drive_run(
        &self,
        job_id: &str,
        active: &RunRef,
        report: &mut TickReport,
    ) -> Result<(), DomainError> {
        let run_id = &active.replication_run_id;
        let Some(run) = self
            .service
            .read::<ReplicationRun>(&keys::run(job_id, active.seq))
            .await?
        else {
            return Ok(());
        };
        let w = &run.value.workflow;
        if !w.execution_started {
            let input = serde_json::to_value(RunInput {
                job_id: job_id.to_string(),
                run_id: run_id.clone(),
            })
            .map_err(|e| DomainError::Corrupt {
                key: run_id.clone(),
                message: e.to_string(),
            })?;
            match self
                .workflows
                .start_execution(REPLICATION_RUN, run_id, &input)
                .await
            {
                Ok(_) | Err(WorkflowError::AlreadyExists(_)) => {}
                Err(e) => {
                    tracing::warn!(run_id, error = %e, "could not start the run's workflow");
                    return Err(e.into());
                }
            }
            self.update_run(job_id, run_id, |r| {
                if r.workflow.execution_started {
                    return Ok(None);
                }
                r.workflow.execution_started = true;
                Ok(Some(false))
            })
            .await?;
            report.executions_started.push(run_id.clone());
        } else if w.manifest.is_some() && w.upload_token.is_some() && !w.upload_signalled {
            self.signal_upload(job_id, run_id).await?;
            report.uploads_resignalled += 1;
        } else if w.upload_token.is_some() && w.manifest.is_none() {
            // A notification lost to a crash or a slow listener: look for the manifest itself.
            let staging = self.settings.staging();
            let manifest = StagedObject {
                key: staging.manifest_key(job_id, run_id),
                bucket: staging.bucket,
            };
            if matches!(self.staging.object_size(&manifest).await, Ok(Some(_))) {
                match self.upload_complete(&manifest.bucket, &manifest.key).await {
                    Ok(UploadOutcome::Accepted) => report.uploads_resignalled += 1,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(job_id, run_id, error = %e, "could not take the run's manifest")
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates the job's scheduled run when it is due: a new AUTOMATIC run, or a MISSED one
    /// when a run is still in progress (SMS skips the interval). Advances the next start time by
    /// whole intervals past `now`. Returns the run id and whether it will run.
    async fn schedule_run(
        &self,
        job_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<(RunRef, bool)>, DomainError> {
        let svc = &self.service;
        let run_id = svc.ids.new_id(crate::IdKind::ReplicationRun);
        retrying!(svc, job_id, async {
            let job = svc.live_job(job_id, DomainError::JobNotFound).await?;
            let mut j = job.value.clone();
            let Some(due) = j.next_replication_run_start_time.filter(|t| *t <= now) else {
                return Ok(None);
            };
            if !accepts_runs(j.state) {
                return Ok(None);
            }
            let runs = j.active_run.is_none();
            let seq = j.run_count + 1;
            let run = ReplicationRun {
                replication_run_id: run_id.clone(),
                state: if runs {
                    ReplicationRunState::Pending
                } else {
                    ReplicationRunState::Missed
                },
                run_type: ReplicationRunType::Automatic,
                stage_details: None,
                status_message: (!runs).then(|| {
                    "Missed: the previous run was still in progress; moved to the next interval"
                        .to_string()
                }),
                ami_id: None,
                scheduled_start_time: Some(due),
                completed_time: (!runs).then_some(now),
                description: None,
                encrypted: Some(j.encrypted),
                kms_key_id: j.kms_key_id.clone(),
                seq,
                workflow: Default::default(),
            };
            j.run_count = seq;
            if runs {
                j.first_run_on.get_or_insert(now);
                j.active_run = Some(RunRef {
                    replication_run_id: run_id.clone(),
                    seq,
                });
            }
            j.next_replication_run_start_time = match (j.run_once, j.frequency) {
                (false, Some(hours)) if hours > 0 => {
                    let step = time::Duration::hours(i64::from(hours));
                    let mut next = due + step;
                    while next <= now {
                        next += step;
                    }
                    Some(next)
                }
                _ => None,
            };
            Service::embed_run(
                &mut j,
                &run,
                svc.config.limits.runs_embedded_in_job as usize,
            );
            let mut writes = vec![
                put(keys::run(job_id, seq), &run, Expect::Absent)?,
                put(keys::job(job_id), &j, job.expect())?,
            ];
            if let Some(c) = StateChange::of_run(job_id, &j.server_id, &run, now) {
                writes.push(c.write()?);
            }
            svc.store.transact(writes).await?;
            tracing::info!(job_id, run_id = %run_id, runs, "scheduled run");
            Ok(Some((
                RunRef {
                    replication_run_id: run_id.clone(),
                    seq,
                },
                runs,
            )))
        })
    }
}
