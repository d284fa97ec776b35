//! The upload-complete Lambda: EventBridge delivers the staging bucket's S3 "Object Created"
//! events; a run's manifest resumes the execution waiting in `WaitForUpload`
//! (`SendTaskSuccess` with the token the run stored, or the run is failed with a named error
//! when the manifest is unusable). Everything else is ignored.
//!
//! EventBridge delivers at least once and in no particular order: the core records the
//! manifest with a condition, so a repeated or late event changes nothing twice. A failure the
//! core calls transient (the table or Step Functions unreachable) is returned as an error, so
//! that Lambda's asynchronous retries deliver the event again; the scheduler's tick also looks
//! for manifests of runs still waiting, should every retry fail.

use serde_json::{json, Value};
use tern_core::replication::{task_errors, ObjectCreated, Replication, UploadOutcome};
use tern_fn_common::diagnostic;

/// Handles one EventBridge event; answers what was made of it (for the logs and tests).
pub async fn handle(
    replication: &Replication,
    event: &Value,
) -> Result<Value, lambda_runtime::Diagnostic> {
    let Some(object) = ObjectCreated::from_event(event) else {
        tracing::warn!("not an S3 Object Created event; ignored");
        return Ok(json!({"outcome": "Ignored", "reason": "not an S3 Object Created event"}));
    };
    match replication
        .upload_complete(&object.bucket, &object.key)
        .await
    {
        Ok(outcome) => {
            let (name, reason) = match &outcome {
                UploadOutcome::Accepted => ("Accepted", None),
                UploadOutcome::Duplicate => ("Duplicate", None),
                UploadOutcome::Ignored(r) => ("Ignored", Some(r.clone())),
                UploadOutcome::Rejected(r) => ("Rejected", Some(r.clone())),
            };
            tracing::info!(bucket = %object.bucket, key = %object.key, outcome = name, reason, "upload notification handled");
            Ok(json!({"outcome": name, "reason": reason}))
        }
        Err(e) if e.error == task_errors::TRANSIENT => {
            tracing::warn!(error = %e, "upload notification failed; EventBridge retries it");
            Err(diagnostic(e.error, e.cause))
        }
        Err(e) => {
            // Retrying cannot help (e.g. the run is gone); the answer says why.
            tracing::warn!(error = %e, "upload notification refused");
            Ok(json!({"outcome": "Refused", "reason": e.to_string()}))
        }
    }
}
