//! The task functions of `statemachines/replication-run.asl.json`, one typed method per
//! state (see [`super::contract`] for their inputs and outputs).
//!
//! Every task is idempotent: a task re-invoked after a crash finds its effect already recorded
//! (run state, run workflow fields, deterministic work ids, images registered by name) and
//! changes nothing twice.

use serde_json::Value;

use super::contract::*;
use super::handle::{gib, Replication};
use super::staging::ObjectKind;
use super::work::{commit_work_id, replicate_work_id, CommitRunWork, ReplicationWork, WorkDisk};
use crate::enums::{ReplicationRunState, WorkKind};
use crate::error::DomainError;
use crate::images::{
    Architecture, BlockDevice, BlockRange, BootMode, ImagesError, RegisterImage, StagedObject,
    TaskStatus,
};
use crate::keys;
use crate::model::{JobImage, StageDetails};
use crate::service::{put, retrying, RunUpdate};
use crate::states::{run_in_progress, RunEvent};
use crate::store::{Expect, Write};

/// Device names of an image's disks: root first (`/dev/sda1`), then `/dev/sdb`, `/dev/sdc`, …
fn device_name(index: usize) -> String {
    if index == 0 {
        "/dev/sda1".into()
    } else {
        format!("/dev/sd{}", (b'a' + (index as u8 % 26)) as char)
    }
}

impl Replication {
    /// Prepare: the run becomes ACTIVE, seed or incremental is decided, and the connector gets
    /// its work item (one per run: the item's id is derived from the run id).
    pub async fn prepare(&self, input: PrepareInput) -> TaskResult<PrepareOutput> {
        let RunInput { job_id, run_id } = &input;
        let (job, run) = self.active_run(job_id, run_id).await?;
        let j = &job.value;
        if run.value.state == ReplicationRunState::Pending {
            self.service
                .record_run(
                    job_id,
                    run_id,
                    RunUpdate {
                        event: RunEvent::Start,
                        stage_details: Some(StageDetails {
                            stage: Some("Preparing".into()),
                            stage_progress: Some("0%".into()),
                        }),
                        status_message: Some("Preparing".into()),
                        ami_id: None,
                        snapshot_ids: Vec::new(),
                    },
                )
                .await?;
        }
        let (_, server) = self.service.current_server(&j.server_id).await?;
        let server = server.ok_or_else(|| {
            TaskError::new(
                task_errors::RUN_NOT_ACTIVE,
                format!("server {} is no longer in the catalog", j.server_id),
            )
        })?;
        let disks: Vec<WorkDisk> = server
            .value
            .disks
            .iter()
            .enumerate()
            .map(|(index, d)| WorkDisk {
                index,
                path: d.path.clone(),
                format: d.format.clone(),
            })
            .collect();
        if disks.is_empty() {
            return Err(TaskError::new(
                task_errors::INVALID_MANIFEST,
                format!(
                    "server {} has no disks in the catalog; re-import the catalog",
                    j.server_id
                ),
            ));
        }
        // A seed when there is nothing to build on, or the server's disks changed in number.
        let seed = j.latest_snapshot_ids.len() != disks.len();
        let staging = self.settings.staging();
        let work = ReplicationWork {
            job_id: job_id.to_string(),
            run_id: run_id.to_string(),
            server_id: j.server_id.clone(),
            vm_id: server.value.vm_server.vm_server_address.vm_id.clone(),
            disks,
            staging: staging.clone(),
            seed,
            parent_run_id: (!seed).then(|| j.latest_run_id.clone()).flatten(),
        };
        self.queue_work(
            &j.connector_id,
            &replicate_work_id(run_id),
            WorkKind::Replicate,
            &work,
        )
        .await?;
        // The job may have been deleted between the read above and the queueing, after its
        // delete withdrew the (not yet queued) item: withdraw it now, so that no connector is
        // handed work of a deleted job.
        if let Err(e @ (DomainError::JobNotFound(_) | DomainError::OperationNotPermitted(_))) =
            self.active_run(job_id, run_id).await
        {
            self.service
                .store
                .write(Write::Delete {
                    key: keys::work(&j.connector_id, &replicate_work_id(run_id)),
                    expect: Expect::Any,
                })
                .await
                .map_err(DomainError::from)?;
            return Err(e.into());
        }
        self.update_run(job_id, run_id, |r| {
            if r.workflow.seed == Some(seed) {
                return Ok(None);
            }
            r.workflow.seed = Some(seed);
            Ok(Some(false))
        })
        .await?;
        Ok(PrepareOutput {
            seed,
            staging_prefix: staging.run_prefix(job_id, run_id),
            staging_bucket: staging.bucket,
            upload_heartbeat_seconds: self.settings.upload_heartbeat.as_secs(),
            upload_timeout_seconds: self.settings.upload_timeout.as_secs(),
        })
    }

    /// WaitForUpload: keeps the task token on the run. If the manifest already arrived (a fast
    /// connector), the task is answered at once.
    pub async fn wait_for_upload(
        &self,
        input: WaitForUploadInput,
    ) -> TaskResult<WaitForUploadOutput> {
        let WaitForUploadInput {
            job_id,
            run_id,
            task_token: token,
        } = &input;
        let run = self
            .update_run(job_id, run_id, |r| {
                if r.workflow.upload_token.as_deref() == Some(token) {
                    return Ok(None);
                }
                r.workflow.upload_token = Some(token.to_string());
                r.workflow.upload_signalled = false;
                if r.workflow.manifest.is_none() {
                    r.stage_details = Some(StageDetails {
                        stage: Some("Uploading".into()),
                        stage_progress: Some("0%".into()),
                    });
                    r.status_message = Some("Waiting for the connector to upload".into());
                }
                Ok(Some(true))
            })
            .await?;
        if run.workflow.manifest.is_some() {
            self.signal_upload(job_id, run_id).await?;
        }
        Ok(WaitForUploadOutput {})
    }

    /// Import / ApplyDelta: starts one snapshot task per disk of the manifest. A seed disk is
    /// imported; a delta disk is applied onto the same disk's snapshot of the previous run.
    pub async fn start_snapshots(&self, input: ImportInput) -> TaskResult<ImportOutput> {
        let ImportInput {
            job_id,
            run_id,
            manifest,
        } = &input;
        let (job, _) = self.active_run(job_id, run_id).await?;
        let mut tasks = Vec::new();
        let mut writes = Vec::new();
        for disk in &manifest.disks {
            let source = StagedObject {
                bucket: self.settings.staging_bucket.clone(),
                key: disk.object_key.clone(),
            };
            let description = format!(
                "disk {} of server {} (replication job {job_id}, run {run_id})",
                disk.index, job.value.server_id
            );
            let task_id = match disk.kind {
                ObjectKind::SeedVmdk => self.images.start_import(&source, &description).await?,
                ObjectKind::Delta => {
                    if disk.base_run_id.is_some() && disk.base_run_id != job.value.latest_run_id {
                        return Err(TaskError::new(
                            task_errors::INVALID_MANIFEST,
                            format!(
                                "disk {}'s delta applies onto run {}, but the job's latest image is from run {}; the connector must upload that disk in full",
                                disk.index,
                                disk.base_run_id.as_deref().unwrap_or("?"),
                                job.value.latest_run_id.as_deref().unwrap_or("(none)")
                            ),
                        ));
                    }
                    let parent = job.value.latest_snapshot_ids.get(disk.index).ok_or_else(|| {
                        TaskError::new(
                            task_errors::INVALID_MANIFEST,
                            format!(
                                "the manifest has a delta for disk {} but the job has no snapshot of that disk to apply it to",
                                disk.index
                            ),
                        )
                    })?;
                    self.images
                        .start_apply_delta(parent, &source, &description)
                        .await?
                }
            };
            writes.extend(
                self.images
                    .delta_writes(&task_id)
                    .await?
                    .into_iter()
                    .map(|r| BlockWrite {
                        index: disk.index,
                        task_id: task_id.clone(),
                        first: r.first,
                        count: r.count,
                    }),
            );
            tasks.push(SnapshotTask {
                index: disk.index,
                task_id,
            });
        }
        // Recorded on the run, so that deleting the job meanwhile removes their snapshots; when
        // the job was deleted already, they go to its teardown instead.
        let ids: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
        let recorded = self
            .update_run(job_id, run_id, |r| {
                if ids.iter().all(|i| r.workflow.snapshot_tasks.contains(i)) {
                    return Ok(None);
                }
                for i in &ids {
                    if !r.workflow.snapshot_tasks.contains(i) {
                        r.workflow.snapshot_tasks.push(i.clone());
                    }
                }
                Ok(Some(false))
            })
            .await;
        if let Err(e @ (DomainError::JobNotFound(_) | DomainError::OperationNotPermitted(_))) =
            recorded
        {
            self.orphan_snapshot_tasks(job_id, run_id, &job.value.connector_id, &ids)
                .await?;
            return Err(e.into());
        }
        recorded?;
        self.set_stage(
            job_id,
            run_id,
            "Converting",
            Some("0%".into()),
            "Converting 0%".into(),
        )
        .await?;
        Ok(ImportOutput { tasks, writes })
    }

    /// WriteBlocks (one Map iteration): writes one range of a disk's changed blocks onto its
    /// new snapshot. Re-running it writes the same bytes again; a run that is no longer active
    /// stops writing.
    pub async fn write_blocks(&self, input: WriteBlocksInput) -> TaskResult<WriteBlocksOutput> {
        let WriteBlocksInput {
            job_id,
            run_id,
            write,
        } = &input;
        self.active_run(job_id, run_id).await?;
        let range = BlockRange {
            first: write.first,
            count: write.count,
        };
        let blocks_written = self
            .images
            .write_delta_blocks(&write.task_id, &range)
            .await
            .map_err(|e| {
                let mut e = TaskError::from(e);
                e.cause = format!(
                    "disk {}: blocks {}..{}: {}",
                    write.index,
                    write.first,
                    write.first + write.count,
                    e.cause
                );
                e
            })?;
        Ok(WriteBlocksOutput { blocks_written })
    }

    /// WaitForSnapshots: fails with `Tern.SnapshotsPending` while any task runs (the state
    /// machine retries with backoff), with the image error of a failed task, else returns the
    /// snapshots in disk order.
    pub async fn check_snapshots(
        &self,
        input: CheckSnapshotsInput,
    ) -> TaskResult<CheckSnapshotsOutput> {
        let CheckSnapshotsInput {
            job_id,
            run_id,
            mut tasks,
        } = input;
        tasks.sort_by_key(|t| t.index);
        // A run whose job was deleted ends here (RUN_NOT_ACTIVE → RecordFailure records
        // nothing); its teardown deletes the snapshots these tasks make.
        self.active_run(&job_id, &run_id).await?;
        let (mut done, mut total) = (0u64, 0u64);
        let mut pending = 0;
        let mut snapshots = Vec::new();
        for t in &tasks {
            match self.images.describe_task(&t.task_id).await? {
                TaskStatus::Active {
                    bytes_done,
                    bytes_total,
                    ..
                } => {
                    pending += 1;
                    done += bytes_done;
                    total += bytes_total;
                }
                TaskStatus::Completed { snapshot } => {
                    done += snapshot.volume_size_bytes;
                    total += snapshot.volume_size_bytes;
                    snapshots.push(SnapshotRef {
                        index: t.index,
                        volume_size: snapshot.volume_size_gib(),
                        snapshot_id: snapshot.snapshot_id,
                    });
                }
                TaskStatus::Failed { kind, message } => {
                    return Err(TaskError::new(
                        kind.error_type(),
                        format!("disk {}: {message}", t.index),
                    ));
                }
            }
        }
        if pending > 0 {
            let percent = (done * 100).checked_div(total).unwrap_or(0);
            self.set_stage(
                &job_id,
                &run_id,
                "Converting",
                Some(format!("{percent}%")),
                format!("Converting {percent}% ({} of {})", gib(done), gib(total)),
            )
            .await?;
            return Err(TaskError::new(
                task_errors::SNAPSHOTS_PENDING,
                format!(
                    "{pending} of {} snapshot task(s) still running",
                    tasks.len()
                ),
            ));
        }
        Ok(CheckSnapshotsOutput { snapshots })
    }

    /// RegisterImage: one AMI over the run's snapshots, root disk first, DeleteOnTermination
    /// false (SMS's rule). The name is derived from the run, so a retried registration finds
    /// the image it already made.
    pub async fn register_image(&self, input: RegisterImageInput) -> TaskResult<Image> {
        let RegisterImageInput {
            job_id,
            run_id,
            snapshots: mut snaps,
        } = input;
        snaps.sort_by_key(|s| s.index);
        let (job, _) = self.active_run(&job_id, &run_id).await?;
        let (_, server) = self.service.current_server(&job.value.server_id).await?;
        let uefi = server
            .as_ref()
            .and_then(|s| s.value.inspection.as_ref())
            .and_then(|i| {
                i.pointer("/disks/0/efi_system_partition")
                    .or(i.get("efiSystemPartition"))
            })
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let request = RegisterImage {
            name: format!("tern-{job_id}-{run_id}"),
            description: format!(
                "Tern replication job {job_id}, run {run_id}, server {}",
                job.value.server_id
            ),
            block_devices: snaps
                .iter()
                .map(|s| BlockDevice {
                    device_name: device_name(s.index),
                    snapshot_id: s.snapshot_id.clone(),
                    volume_size: s.volume_size,
                    delete_on_termination: false,
                })
                .collect(),
            architecture: Architecture::X86_64,
            boot_mode: if uefi {
                BootMode::Uefi
            } else {
                BootMode::LegacyBios
            },
            ena_support: true,
        };
        let image = self.images.register_image(&request).await?;
        Ok(Image {
            image_id: image.image_id,
            snapshot_ids: snaps.into_iter().map(|s| s.snapshot_id).collect(),
        })
    }

    /// Retain: the job keeps its newest `numberOfRecentAmisToKeep` images (0 keeps all); older
    /// ones are deregistered and their snapshots deleted *before* the job's list is shortened,
    /// so a crash in between only repeats idempotent deletions.
    pub async fn retain(&self, input: RetainInput) -> TaskResult<RetainOutput> {
        let RetainInput {
            job_id,
            run_id,
            image: new,
        } = &input;
        let svc = &self.service;
        let retired = retrying!(svc, job_id, async {
            let (job, _) = self.active_run(job_id, run_id).await?;
            let mut j = job.value.clone();
            if !j.images.iter().any(|i| i.ami_id == new.image_id) {
                j.images.push(JobImage {
                    ami_id: new.image_id.clone(),
                    run_id: run_id.to_string(),
                    snapshot_ids: new.snapshot_ids.clone(),
                });
            }
            let keep = j.number_of_recent_amis_to_keep as usize;
            let excess = if keep == 0 {
                0
            } else {
                j.images.len().saturating_sub(keep)
            };
            let retired: Vec<JobImage> = j.images.drain(..excess).collect();
            for image in &retired {
                self.delete_image(image).await?;
            }
            if j != job.value {
                svc.store
                    .write(put(keys::job(job_id), &j, job.expect())?)
                    .await?;
            }
            Ok(retired)
        })?;
        if !retired.is_empty() {
            tracing::info!(job_id, retired = ?retired.iter().map(|i| &i.ami_id).collect::<Vec<_>>(), "retired old images");
        }
        Ok(RetainOutput {
            deregistered: retired.into_iter().map(|i| i.ami_id).collect(),
        })
    }

    async fn delete_image(&self, image: &JobImage) -> Result<(), DomainError> {
        self.images.deregister_image(&image.ami_id).await?;
        for snap in &image.snapshot_ids {
            match self.images.delete_snapshot(snap).await {
                Ok(()) | Err(ImagesError::NotFound(_)) => {}
                Err(ImagesError::InUse(m)) => {
                    tracing::warn!(snapshot_id = %snap, reason = %m, "snapshot still in use; kept")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Complete: the run is COMPLETED with its AMI; its snapshots become the parents of the
    /// next incremental run; the connector is told to keep this run's block maps.
    pub async fn complete(&self, input: CompleteInput) -> TaskResult<CompleteOutput> {
        let RetainInput {
            job_id,
            run_id,
            image: done,
        } = &input;
        let run = match self.active_run(job_id, run_id).await {
            Ok((_, run)) => Some(run),
            Err(DomainError::OperationNotPermitted(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(run) = run {
            if run.value.state == ReplicationRunState::Active {
                self.service
                    .record_run(
                        job_id,
                        run_id,
                        RunUpdate {
                            event: RunEvent::Complete,
                            stage_details: Some(StageDetails {
                                stage: Some("Completed".into()),
                                stage_progress: Some("100%".into()),
                            }),
                            status_message: Some(match &run.value.workflow.note {
                                Some(note) => format!("Completed: {}; {note}", done.image_id),
                                None => format!("Completed: {}", done.image_id),
                            }),
                            ami_id: Some(done.image_id.clone()),
                            snapshot_ids: done.snapshot_ids.clone(),
                        },
                    )
                    .await?;
            }
        } else {
            // Already recorded by an earlier attempt (the run is no longer in progress): only
            // a completion of this very run with this image counts as done.
            let job = self.service.get_job(job_id).await?;
            if job.latest_ami_id.as_deref() != Some(&done.image_id) {
                return Err(TaskError::new(
                    task_errors::RUN_NOT_ACTIVE,
                    format!("run {run_id} of replication job {job_id} is no longer in progress"),
                ));
            }
        }
        let job = self.service.get_job(job_id).await?;
        self.queue_work(
            &job.connector_id,
            &commit_work_id(run_id),
            WorkKind::CommitRun,
            &CommitRunWork {
                job_id: job_id.to_string(),
                run_id: run_id.to_string(),
            },
        )
        .await?;
        if self.settings.delete_staged_after_import {
            let staging = self.settings.staging();
            let prefix = staging.run_prefix(job_id, run_id);
            if let Err(e) = self.staging.delete_prefix(&staging.bucket, &prefix).await {
                tracing::warn!(job_id, run_id, error = %e, "could not delete the run's staged objects");
            }
        }
        Ok(CompleteOutput {
            image_id: done.image_id.clone(),
        })
    }

    /// RecordFailure: the run is FAILED with a message that says why and how many retries the
    /// job has left; the job becomes FAILING, PAUSED_ON_FAILURE (after the last retry) or
    /// FAILED (a runOnce job).
    pub async fn record_failure(
        &self,
        input: RecordFailureInput,
    ) -> TaskResult<RecordFailureOutput> {
        let RecordFailureInput {
            job_id,
            run_id,
            error,
        } = &input;
        let name = error.error.as_deref().unwrap_or("States.TaskFailed");
        let cause = error.cause.as_deref().unwrap_or("");
        // Lambda errors arrive as {"errorMessage", "errorType"} JSON in Cause.
        let cause = serde_json::from_str::<Value>(cause)
            .ok()
            .and_then(|v| {
                v.get("errorMessage")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_else(|| cause.to_string());
        let reason = match name {
            "States.HeartbeatTimeout" => "the connector stopped reporting progress".to_string(),
            "States.Timeout" => "the run took longer than allowed".to_string(),
            _ if cause.is_empty() => name.to_string(),
            _ => cause,
        };
        let not_recorded = RecordFailureOutput {
            recorded: false,
            message: None,
        };
        let (job, run) = match self.active_run(job_id, run_id).await {
            Ok(found) => found,
            // Deleted or already recorded: nothing left to fail.
            Err(DomainError::OperationNotPermitted(_) | DomainError::JobNotFound(_)) => {
                return Ok(not_recorded)
            }
            Err(e) => return Err(e.into()),
        };
        if !run_in_progress(run.value.state) {
            return Ok(not_recorded);
        }
        let j = &job.value;
        let max = self.service.config.limits.max_consecutive_run_failures;
        let left = max.saturating_sub(j.consecutive_failures + 1);
        let then = if j.run_once { "failed" } else { "paused" };
        let message = format!(
            "Run failed: {reason}. {left} re-try run(s) remaining before the job will be {then}"
        );
        self.service
            .record_run(
                job_id,
                run_id,
                RunUpdate {
                    event: RunEvent::Fail,
                    stage_details: Some(StageDetails {
                        stage: Some("Failed".into()),
                        stage_progress: run
                            .value
                            .stage_details
                            .as_ref()
                            .and_then(|d| d.stage_progress.clone()),
                    }),
                    status_message: Some(message.clone()),
                    ami_id: None,
                    snapshot_ids: Vec::new(),
                },
            )
            .await?;
        // The connector need not keep working on it.
        let _ = self
            .service
            .store
            .write(Write::Delete {
                key: keys::work(&j.connector_id, &replicate_work_id(run_id)),
                expect: Expect::Any,
            })
            .await;
        Ok(RecordFailureOutput {
            recorded: true,
            message: Some(message),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_put_the_root_disk_first() {
        assert_eq!(device_name(0), "/dev/sda1");
        assert_eq!(device_name(1), "/dev/sdb");
        assert_eq!(device_name(2), "/dev/sdc");
    }
}
