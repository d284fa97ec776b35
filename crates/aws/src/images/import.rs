//! Seeds: EC2 `ImportSnapshot` of the staged stream-optimized VMDK, and its task's status.

use aws_sdk_ec2::types::{
    ResourceType, SnapshotDiskContainer, SnapshotTaskDetail, Tag, TagSpecification, UserBucket,
};
use tern_core::images::{ImagesError, StagedObject, TaskFailure, TaskStatus};

use super::{client_token, images_error, tags, Ec2Images};
use crate::sdk::classify;

/// Codes EC2 answers for an import task id it does not know.
const UNKNOWN_TASK: &[&str] = &[
    "InvalidConversionTaskId",
    "InvalidConversionTaskId.Malformed",
    "InvalidImportSnapshotTaskId.NotFound",
];

impl Ec2Images {
    pub(super) async fn import_snapshot(
        &self,
        source: &StagedObject,
        description: &str,
    ) -> Result<String, ImagesError> {
        let out = self
            .ec2
            .import_snapshot()
            .description(description)
            // The same staged object always gives the same token, so a retried Import state
            // gets the task it started before instead of a second import.
            .client_token(client_token(&["import", &source.bucket, &source.key]))
            .role_name(&self.settings.vmimport_role)
            .disk_container(
                SnapshotDiskContainer::builder()
                    .format("VMDK")
                    .description(description)
                    .user_bucket(
                        UserBucket::builder()
                            .s3_bucket(&source.bucket)
                            .s3_key(&source.key)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::ImportSnapshotTask)
                    .tags(
                        Tag::builder()
                            .key(tags::MANAGED_BY)
                            .value(&self.settings.managed_by)
                            .build(),
                    )
                    .tags(
                        Tag::builder()
                            .key(tags::SOURCE)
                            .value(source.to_string())
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                let f = classify("ImportSnapshot", &e);
                match f.code.as_deref() {
                    // The role or the object is wrong: importing the same thing again fails
                    // again, and the message names what to fix.
                    Some("InvalidParameter" | "InvalidParameterValue") => {
                        ImagesError::InvalidImage(f.message)
                    }
                    _ => images_error(f, &[]),
                }
            })?;
        out.import_task_id.ok_or_else(|| {
            ImagesError::internal(format!(
                "ImportSnapshot of {source} answered without a task id"
            ))
        })
    }

    pub(super) async fn describe_import(&self, task_id: &str) -> Result<TaskStatus, ImagesError> {
        let out = self
            .ec2
            .describe_import_snapshot_tasks()
            .import_task_ids(task_id)
            .send()
            .await
            .map_err(|e| images_error(classify("DescribeImportSnapshotTasks", &e), UNKNOWN_TASK))?;
        let detail = out
            .import_snapshot_tasks()
            .iter()
            .find(|t| t.import_task_id() == Some(task_id))
            .and_then(|t| t.snapshot_task_detail())
            .ok_or_else(|| ImagesError::NotFound(format!("no import task {task_id}")))?;
        match detail.status().unwrap_or_default() {
            "completed" => {
                let snapshot_id = detail.snapshot_id().ok_or_else(|| {
                    ImagesError::internal(format!(
                        "import task {task_id} completed without a snapshot id"
                    ))
                })?;
                let (snapshot, _) = self.snapshot(snapshot_id).await?;
                Ok(TaskStatus::Completed { snapshot })
            }
            "active" | "pending" => Ok(active(detail)),
            other => Ok(failed(task_id, other, detail.status_message())),
        }
    }
}

fn active(detail: &SnapshotTaskDetail) -> TaskStatus {
    let percent = detail
        .progress()
        .and_then(|p| p.trim().trim_end_matches('%').parse::<u8>().ok())
        .unwrap_or(0)
        .min(99);
    // EC2 reports the image's size (bytes, as a float) and a percentage of the work done.
    let total = detail
        .disk_image_size()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| s as u64)
        .unwrap_or(0);
    TaskStatus::Active {
        progress_percent: percent,
        bytes_done: total / 100 * percent as u64,
        bytes_total: total,
        message: detail.status_message().unwrap_or("active").to_string(),
    }
}

/// A task EC2 deleted (or reports in a state Tern does not know) failed. EC2's message is
/// kept verbatim; `ClientError` messages are about the image itself (format, OS, damage).
fn failed(task_id: &str, status: &str, message: Option<&str>) -> TaskStatus {
    let message = match message {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => format!("import task {task_id} ended in state {status}"),
    };
    let lower = message.to_ascii_lowercase();
    let kind = if lower.contains("nosuchkey")
        || lower.contains("does not exist")
        || lower.contains("not found")
    {
        TaskFailure::NotFound
    } else if message.starts_with("ClientError") {
        TaskFailure::InvalidImage
    } else {
        TaskFailure::Internal
    };
    TaskStatus::Failed { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_ec2s_message_and_say_whose_fault() {
        let f = failed(
            "import-snap-1",
            "deleted",
            Some("ClientError: Disk validation failed [Unsupported VMDK File Format]"),
        );
        assert_eq!(
            f,
            TaskStatus::Failed {
                kind: TaskFailure::InvalidImage,
                message: "ClientError: Disk validation failed [Unsupported VMDK File Format]"
                    .into()
            }
        );
        let f = failed(
            "import-snap-1",
            "deleted",
            Some("ServerError: the S3 object does not exist"),
        );
        assert!(matches!(
            f,
            TaskStatus::Failed {
                kind: TaskFailure::NotFound,
                ..
            }
        ));
        match failed("import-snap-1", "deleting", None) {
            TaskStatus::Failed { kind, message } => {
                assert_eq!(kind, TaskFailure::Internal);
                assert_eq!(message, "import task import-snap-1 ended in state deleting");
            }
            other => panic!("{other:?}"),
        }
    }
}
