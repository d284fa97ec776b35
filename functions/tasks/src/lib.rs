//! The `replication-run` state machine's task functions on Lambda.
//!
//! One binary serves every task; `template.yaml` declares one function resource per task,
//! each with `TERN_TASK_FUNCTION` naming its task (`prepare`, `import`, …: the core's
//! [`functions`]) and its own role allowing exactly the calls that task makes. One binary
//! because the tasks share every dependency (a build, a zip, one cold-start profile); one
//! resource per task so that each gets least privilege and its own timeout, and the ASL file
//! stays the one `tern serve` runs, with one substitution per task.
//!
//! The payload is the task's typed input as the ASL's `Parameters` build it; the answer is
//! its typed output. A failure is returned as a Lambda error whose `errorType` is the task
//! error's name (`Tern.Transient`, `Images.NotFound`, …), which is what the state machine's
//! Retry and Catch lists match.

use serde_json::Value;
use tern_core::replication::{functions, Replication};
use tern_fn_common::{diagnostic, ConfigError};

/// The variable naming the task a function resource runs.
pub const TASK_FUNCTION: &str = "TERN_TASK_FUNCTION";

/// The task this function runs, checked against the core's task functions.
pub fn task_function(value: Option<String>) -> Result<&'static str, ConfigError> {
    let value = value.ok_or(ConfigError::Missing(TASK_FUNCTION))?;
    functions::SUBSTITUTIONS
        .iter()
        .map(|(_, f)| *f)
        .find(|f| *f == value.trim())
        .ok_or_else(|| ConfigError::Invalid {
            name: TASK_FUNCTION,
            problem: format!(
                "{value:?} is not a task function; one of: {}",
                functions::SUBSTITUTIONS
                    .iter()
                    .map(|(_, f)| *f)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// Runs `function` on `payload`.
pub async fn handle(
    replication: &Replication,
    function: &str,
    payload: Value,
) -> Result<Value, lambda_runtime::Diagnostic> {
    replication
        .handle_task(function, &payload)
        .await
        .map_err(|e| diagnostic(e.error, e.cause))
}
