//! The adapter edge for runtimes that call task functions by name with JSON (the local States
//! engine; a Lambda handler per function can call the typed methods directly instead).

use serde::Serialize;
use serde_json::Value;

use super::contract::*;
use super::handle::Replication;

fn output<T: Serialize>(out: TaskResult<T>) -> TaskResult<Value> {
    out.and_then(|o| {
        serde_json::to_value(o).map_err(|e| {
            TaskError::new(
                task_errors::INTERNAL,
                format!("task output does not serialise: {e}"),
            )
        })
    })
}

impl Replication {
    /// Runs task function `function` (see [`functions`]) on `input`: decodes it into the
    /// function's contract type (`Tern.InvalidInput` when it does not fit), runs it, and
    /// encodes its output.
    #[tracing::instrument(name = "replication_task", skip(self, input))]
    pub async fn handle_task(&self, function: &str, input: &Value) -> TaskResult<Value> {
        let out = match function {
            functions::PREPARE => match PrepareInput::from_value(input) {
                Ok(i) => output(self.prepare(i).await),
                Err(e) => Err(e),
            },
            functions::WAIT_FOR_UPLOAD => match WaitForUploadInput::from_value(input) {
                Ok(i) => output(self.wait_for_upload(i).await),
                Err(e) => Err(e),
            },
            functions::IMPORT | functions::APPLY_DELTA => match ImportInput::from_value(input) {
                Ok(i) => output(self.start_snapshots(i).await),
                Err(e) => Err(e),
            },
            functions::WRITE_BLOCKS => match WriteBlocksInput::from_value(input) {
                Ok(i) => output(self.write_blocks(i).await),
                Err(e) => Err(e),
            },
            functions::CHECK_SNAPSHOTS => match CheckSnapshotsInput::from_value(input) {
                Ok(i) => output(self.check_snapshots(i).await),
                Err(e) => Err(e),
            },
            functions::REGISTER_IMAGE => match RegisterImageInput::from_value(input) {
                Ok(i) => output(self.register_image(i).await),
                Err(e) => Err(e),
            },
            functions::RETAIN => match RetainInput::from_value(input) {
                Ok(i) => output(self.retain(i).await),
                Err(e) => Err(e),
            },
            functions::COMPLETE => match CompleteInput::from_value(input) {
                Ok(i) => output(self.complete(i).await),
                Err(e) => Err(e),
            },
            functions::RECORD_FAILURE => match RecordFailureInput::from_value(input) {
                Ok(i) => output(self.record_failure(i).await),
                Err(e) => Err(e),
            },
            other => Err(TaskError::new(
                task_errors::INVALID_INPUT,
                format!("no replication task function {other}"),
            )),
        };
        // Announce what the task changed without waiting for the next tick.
        self.publish_after_task().await;
        if let Err(e) = &out {
            if e.error != task_errors::SNAPSHOTS_PENDING {
                tracing::warn!(function, error = %e.error, cause = %e.cause, "replication task failed");
            }
        }
        out
    }
}
