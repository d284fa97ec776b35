//! The upload side of a run, outside the state machine: the staging bucket's "Object Created"
//! notification of a run's manifest (upload complete), and what connectors report while they
//! upload (progress, failure).

use serde::Deserialize;
use serde_json::Value;

use super::contract::{task_errors, TaskError, TaskResult};
use super::handle::{gib, Replication};
use super::manifest::{InvalidManifest, Manifest};
use super::staging::StagedRun;
use super::work::ReplicationWork;
use crate::enums::WorkKind;
use crate::error::DomainError;
use crate::images::StagedObject;
use crate::keys;
use crate::model::{StageDetails, Work};
use crate::service::put;
use crate::store::StoreError;
use crate::workflows::WorkflowError;

/// The parts of an S3 "Object Created" event (as EventBridge delivers it) that upload-complete
/// needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectCreated {
    pub bucket: String,
    pub key: String,
}

impl ObjectCreated {
    /// The object an EventBridge event announces, or `None` when the event is not an S3
    /// "Object Created" event.
    pub fn from_event(event: &Value) -> Option<ObjectCreated> {
        #[derive(Deserialize)]
        struct Envelope {
            source: String,
            #[serde(rename = "detail-type")]
            detail_type: String,
            detail: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            bucket: Named,
            object: Keyed,
        }
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        #[derive(Deserialize)]
        struct Keyed {
            key: String,
        }
        let e = Envelope::deserialize(event).ok()?;
        (e.source == "aws.s3" && e.detail_type == "Object Created").then_some(ObjectCreated {
            bucket: e.detail.bucket.name,
            key: e.detail.object.key,
        })
    }
}

/// A connector's progress report for a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    pub work_id: String,
    pub stage: String,
    pub percent: u8,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Appended to the status message (at most [`MAX_NOTE`] characters).
    pub note: Option<String>,
}

/// The longest progress note kept in a run's status message, in characters.
pub const MAX_NOTE: usize = 400;

/// What [`Replication::upload_complete`] made of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The manifest was recorded (and handed to the waiting task if it was already waiting).
    Accepted,
    /// The manifest was already recorded: a repeated notification.
    Duplicate,
    /// Not a manifest, or of a run that is no longer in progress.
    Ignored(String),
    /// The manifest is unusable; the run was failed with this message.
    Rejected(String),
}

impl Replication {
    /// The run whose manifest `object` is, when it is one.
    pub fn run_of_manifest(&self, object: &ObjectCreated) -> Option<StagedRun> {
        let staging = self.settings.staging();
        if object.bucket != staging.bucket {
            return None;
        }
        staging.run_of_manifest_key(&object.key)
    }

    /// An object arrived in staging. Only a run's manifest matters (see
    /// [`super::staging`]): the first notification records the manifest and answers the
    /// waiting task; repeats change nothing.
    #[tracing::instrument(name = "upload_complete", skip(self))]
    pub async fn upload_complete(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<UploadOutcome, TaskError> {
        let object = ObjectCreated {
            bucket: bucket.to_string(),
            key: key.to_string(),
        };
        let Some(staged) = self.run_of_manifest(&object) else {
            return Ok(UploadOutcome::Ignored(format!(
                "{bucket}/{key} is not a run manifest"
            )));
        };
        let (job_id, run_id) = (staged.job_id.as_str(), staged.run_id.as_str());
        let run = match self.active_run(job_id, run_id).await {
            Ok((_, run)) => run,
            Err(DomainError::JobNotFound(m)) => {
                // A manifest that landed after its job was deleted (the connector wrote it
                // before it learnt of the delete): the run's objects go, as the delete's own
                // teardown removed the earlier ones.
                let deleted = self.service.store.get(&keys::deleted_job(job_id)).await;
                if deleted.map_err(DomainError::from)?.is_some() {
                    let staging = self.settings.staging();
                    self.staging
                        .delete_prefix(&staging.bucket, &staging.run_prefix(job_id, run_id))
                        .await?;
                }
                return Ok(UploadOutcome::Ignored(m));
            }
            Err(DomainError::OperationNotPermitted(m)) => return Ok(UploadOutcome::Ignored(m)),
            Err(e) => return Err(e.into()),
        };
        if run.value.workflow.manifest.is_some() {
            return Ok(UploadOutcome::Duplicate);
        }
        let object = StagedObject {
            bucket: object.bucket,
            key: object.key,
        };
        let checked = match self.read_manifest(&object, &staged).await {
            Ok(m) => Ok(m),
            Err(e) if e.error == task_errors::INVALID_MANIFEST => Err(e.cause),
            Err(e) => return Err(e),
        };
        match checked {
            Ok(manifest) => {
                let manifest = serde_json::to_value(&manifest).map_err(|e| {
                    TaskError::new(task_errors::INTERNAL, format!("manifest {object}: {e}"))
                })?;
                let mut first = false;
                self.update_run(job_id, run_id, |r| {
                    // Each attempt decides afresh: an attempt whose write lost the race must not
                    // leave `first` set for the retry that finds the winner's manifest.
                    first = false;
                    if r.workflow.manifest.is_some() {
                        return Ok(None);
                    }
                    first = true;
                    r.workflow.manifest = Some(manifest.clone());
                    r.stage_details = Some(StageDetails {
                        stage: Some("Uploading".into()),
                        stage_progress: Some("100%".into()),
                    });
                    r.status_message = Some("Uploaded; waiting to convert".into());
                    Ok(Some(true))
                })
                .await?;
                // `first` is set by whichever attempt committed; a racing duplicate sees the
                // manifest and does nothing.
                if !first {
                    return Ok(UploadOutcome::Duplicate);
                }
                self.signal_upload(job_id, run_id).await?;
                Ok(UploadOutcome::Accepted)
            }
            Err(message) => {
                if let Some(token) = &run.value.workflow.upload_token {
                    match self
                        .workflows
                        .send_task_failure(token, task_errors::INVALID_MANIFEST, &message)
                        .await
                    {
                        Ok(()) | Err(WorkflowError::TaskGone(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(UploadOutcome::Rejected(message))
            }
        }
    }

    /// Reads and checks a manifest ([`Manifest::parse`]), and that each object it lists
    /// exists in staging.
    async fn read_manifest(&self, object: &StagedObject, run: &StagedRun) -> TaskResult<Manifest> {
        let bytes = self
            .staging
            .get_object(object, self.settings.max_manifest_bytes)
            .await?;
        let m = Manifest::parse(&bytes, &object.to_string(), run, &self.settings.staging())?;
        for (i, d) in m.disks.iter().enumerate() {
            let staged = StagedObject {
                bucket: object.bucket.clone(),
                key: d.object_key.clone(),
            };
            if self.staging.object_size(&staged).await?.is_none() {
                return Err(InvalidManifest(format!(
                    "manifest {object}: disk {i}'s object {staged} was not uploaded"
                ))
                .into());
            }
        }
        Ok(m)
    }

    /// Hands the recorded manifest to the parked WaitForUpload task, once.
    pub(super) async fn signal_upload(
        &self,
        job_id: &str,
        run_id: &str,
    ) -> Result<(), DomainError> {
        let (_, run) = self.active_run(job_id, run_id).await?;
        let w = &run.value.workflow;
        let (Some(token), Some(manifest)) = (&w.upload_token, &w.manifest) else {
            return Ok(());
        };
        if w.upload_signalled {
            return Ok(());
        }
        match self.workflows.send_task_success(token, manifest).await {
            Ok(()) | Err(WorkflowError::TaskGone(_)) => {}
            Err(e) => {
                // The tick tries again.
                tracing::warn!(job_id, run_id, error = %e, "could not hand the manifest to the run");
                return Ok(());
            }
        }
        let token = token.clone();
        self.update_run(job_id, run_id, |r| {
            if r.workflow.upload_token.as_deref() != Some(&token) || r.workflow.upload_signalled {
                return Ok(None);
            }
            r.workflow.upload_signalled = true;
            Ok(Some(false))
        })
        .await?;
        Ok(())
    }

    /// A connector reports progress on a `REPLICATE` work item: the run's stage and message
    /// change and the waiting task gets a heartbeat.
    pub async fn report_progress(
        &self,
        connector_id: &str,
        progress: Progress,
    ) -> Result<(), DomainError> {
        let work = self.replicate_work(connector_id, &progress.work_id).await?;
        self.renew_lease(connector_id, &progress.work_id).await?;
        let percent = progress.percent.min(100);
        let mut message = format!(
            "{} {percent}% ({} of {})",
            progress.stage,
            gib(progress.bytes_done),
            gib(progress.bytes_total)
        );
        let note: Option<String> = progress
            .note
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| n.chars().take(MAX_NOTE).collect());
        if let Some(note) = &note {
            message = format!("{message}; {note}");
        }
        let run = self
            .update_run(&work.job_id, &work.run_id, |r| {
                if r.workflow.manifest.is_some() {
                    // Late report after the upload completed: keep the later stages.
                    return Ok(None);
                }
                r.stage_details = Some(StageDetails {
                    stage: Some(progress.stage.clone()),
                    stage_progress: Some(format!("{percent}%")),
                });
                r.status_message = Some(message.clone());
                if note.is_some() {
                    r.workflow.note = note.clone();
                }
                Ok(Some(true))
            })
            .await?;
        if let Some(token) = &run.workflow.upload_token {
            match self.workflows.send_task_heartbeat(token).await {
                Ok(()) | Err(WorkflowError::TaskGone(_)) => {}
                Err(e) => tracing::warn!(error = %e, "could not send the upload heartbeat"),
            }
        }
        Ok(())
    }

    /// A connector could not do a `REPLICATE` work item: the run fails with its message.
    pub async fn work_failed(
        &self,
        connector_id: &str,
        work_id: &str,
        message: &str,
    ) -> Result<(), DomainError> {
        let Ok(work) = self.replicate_work(connector_id, work_id).await else {
            return Ok(());
        };
        let (_, run) = match self.active_run(&work.job_id, &work.run_id).await {
            Ok(found) => found,
            Err(DomainError::OperationNotPermitted(_) | DomainError::JobNotFound(_)) => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        if let Some(token) = &run.value.workflow.upload_token {
            match self
                .workflows
                .send_task_failure(token, task_errors::UPLOAD_FAILED, message)
                .await
            {
                Ok(()) | Err(WorkflowError::TaskGone(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A connector still reporting progress is still working on the item: its lease starts
    /// again, so PollWork does not hand a long upload out a second time while it runs. A lost
    /// race (a poll or another report wrote the item meanwhile) leaves the lease as fresh as
    /// that write made it, so it is not retried.
    async fn renew_lease(&self, connector_id: &str, work_id: &str) -> Result<(), DomainError> {
        let key = keys::work(connector_id, work_id);
        let Some(current) = self.service.read::<Work>(&key).await? else {
            return Ok(());
        };
        let mut work = current.value.clone();
        work.leased_on = Some(self.service.now());
        match self
            .service
            .store
            .write(put(key, &work, current.expect())?)
            .await
        {
            Ok(()) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn replicate_work(
        &self,
        connector_id: &str,
        work_id: &str,
    ) -> Result<ReplicationWork, DomainError> {
        let work = self
            .service
            .read::<Work>(&keys::work(connector_id, work_id))
            .await?
            .ok_or_else(|| {
                DomainError::InvalidParameter(format!(
                    "connector {connector_id} has no work item {work_id}"
                ))
            })?;
        if work.value.kind != WorkKind::Replicate {
            return Err(DomainError::InvalidParameter(format!(
                "work item {work_id} is not replication work"
            )));
        }
        serde_json::from_value(work.value.payload).map_err(|e| DomainError::Corrupt {
            key: work_id.to_string(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A run manifest's notification as EventBridge delivers it (the S3 user guide's sample,
    /// with Tern's bucket and key).
    fn s3_event() -> Value {
        serde_json::from_str(include_str!(
            "../../../../events/s3/manifest-object-created.json"
        ))
        .expect("the sample is JSON")
    }

    #[test]
    fn object_created_events_name_their_object() {
        assert_eq!(
            ObjectCreated::from_event(&s3_event()),
            Some(ObjectCreated {
                bucket: "tern-staging".into(),
                key: "runs/sms-job-2ea64347a2c8f1e9b/sms-run-1d4e5a6b7c8d9e0f1/manifest.json"
                    .into(),
            })
        );
    }

    /// The sample names the run whose manifest it announces, under the default settings.
    #[test]
    fn the_sample_notification_is_a_run_manifest() {
        let object = ObjectCreated::from_event(&s3_event()).unwrap();
        let staging = crate::replication::ReplicationSettings::default().staging();
        assert_eq!(object.bucket, staging.bucket);
        assert_eq!(
            staging.run_of_manifest_key(&object.key),
            Some(StagedRun {
                job_id: "sms-job-2ea64347a2c8f1e9b".into(),
                run_id: "sms-run-1d4e5a6b7c8d9e0f1".into(),
            })
        );
    }

    #[test]
    fn other_events_are_not_object_created() {
        let mut deleted = s3_event();
        deleted["detail-type"] = json!("Object Deleted");
        let mut other_source = s3_event();
        other_source["source"] = json!("tern.sms");
        let mut no_key = s3_event();
        no_key["detail"]["object"] = json!({ "size": 5 });
        for event in [deleted, other_source, no_key, json!("not an event")] {
            assert_eq!(ObjectCreated::from_event(&event), None, "{event}");
        }
    }
}
