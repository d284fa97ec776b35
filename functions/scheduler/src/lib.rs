//! The scheduler Lambda, invoked every minute by EventBridge Scheduler: one tick of the core's
//! scheduler (the one `tern serve` runs every second). Due runs are created and their
//! executions started with a name derived from the run id, so Step Functions itself refuses a
//! second start of the same run (exactly once even when two ticks overlap); runs that come
//! due while one is still going are recorded MISSED; ended and long-paused jobs are deleted;
//! manifests whose hand-over was lost are handed over again; state changes the stream
//! consumer left behind are published.

use serde_json::{json, Value};
use tern_core::replication::Replication;
use tern_fn_common::diagnostic;

/// Runs one tick; answers what it did. The invocation's payload (Scheduler's) carries nothing
/// the tick needs.
pub async fn handle(replication: &Replication) -> Result<Value, lambda_runtime::Diagnostic> {
    match replication.tick().await {
        Ok(report) => {
            tracing::info!(
                runs_created = report.runs_created.len(),
                runs_missed = report.runs_missed.len(),
                executions_started = report.executions_started.len(),
                jobs_ended = report.jobs_ended.len(),
                uploads_resignalled = report.uploads_resignalled,
                "tick done"
            );
            Ok(json!({
                "runsCreated": report.runs_created,
                "runsMissed": report.runs_missed,
                "executionsStarted": report.executions_started,
                "jobsEnded": report.jobs_ended,
                "uploadsResignalled": report.uploads_resignalled,
                "appsLaunched": report.apps_launched,
            }))
        }
        // The next minute's tick does the same work; the error shows in the function's metrics.
        Err(e) => Err(diagnostic(
            if e.is_transient() {
                "Tern.Transient"
            } else {
                "Tern.Internal"
            },
            e.to_string(),
        )),
    }
}
