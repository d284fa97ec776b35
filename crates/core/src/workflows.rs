//! The `Workflows` port: start state machine executions and answer the tasks they wait on.
//!
//! In the AWS deployment this is Step Functions (StartExecution, SendTaskSuccess/Failure/
//! Heartbeat); on one machine it is the Tern States engine running the same
//! `statemachines/*.asl.json` files.

use async_trait::async_trait;
use serde_json::Value;

/// The state machines Tern runs, by the file name they have in `statemachines/`.
pub const REPLICATION_RUN: &str = "replication-run";

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The task token is unknown, already answered, or its task timed out. Answering a token
    /// twice is expected with at-least-once notifications; callers treat this as done.
    #[error("task token is no longer valid: {0}")]
    TaskGone(String),
    /// An execution with this name exists with a different input.
    #[error("{0}")]
    AlreadyExists(String),
    #[error("no state machine named {0}")]
    NoSuchMachine(String),
    /// Throttled or unreachable; the same call may succeed later.
    #[error("{message}")]
    Transient {
        message: String,
        #[source]
        source: Option<Source>,
    },
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Source>,
    },
}

impl WorkflowError {
    pub fn internal(message: impl Into<String>) -> Self {
        WorkflowError::Internal {
            message: message.into(),
            source: None,
        }
    }
}

#[async_trait]
pub trait Workflows: Send + Sync {
    /// Starts an execution of `machine` named `name`. Idempotent by name: starting the same
    /// name with the same input again returns the existing execution's id.
    async fn start_execution(
        &self,
        machine: &str,
        name: &str,
        input: &Value,
    ) -> Result<String, WorkflowError>;

    async fn send_task_success(&self, token: &str, output: &Value) -> Result<(), WorkflowError>;

    async fn send_task_failure(
        &self,
        token: &str,
        error: &str,
        cause: &str,
    ) -> Result<(), WorkflowError>;

    async fn send_task_heartbeat(&self, token: &str) -> Result<(), WorkflowError>;

    /// Stops the execution of `machine` named `name` (Step Functions' StopExecution: the
    /// execution ends ABORTED and runs no further state). Idempotent: an execution that
    /// already ended, or was never started, is left as it is and the call succeeds.
    async fn stop_execution(
        &self,
        machine: &str,
        name: &str,
        cause: &str,
    ) -> Result<(), WorkflowError>;
}

/// The ARN of execution `name` of the state machine `state_machine_arn`, as Step Functions
/// forms it (`arn:…:stateMachine:<machine>` → `arn:…:execution:<machine>:<name>`), or `None`
/// when the ARN is not a state machine's.
pub fn execution_arn(state_machine_arn: &str, name: &str) -> Option<String> {
    let (head, machine) = state_machine_arn.split_once(":stateMachine:")?;
    (!machine.is_empty() && !machine.contains(':'))
        .then(|| format!("{head}:execution:{machine}:{name}"))
}

#[cfg(test)]
mod tests {
    use super::execution_arn;

    #[test]
    fn execution_arns_are_formed_as_step_functions_forms_them() {
        assert_eq!(
            execution_arn(
                "arn:aws:states:eu-west-1:123456789012:stateMachine:replication-run",
                "sms-run-1"
            )
            .as_deref(),
            Some("arn:aws:states:eu-west-1:123456789012:execution:replication-run:sms-run-1")
        );
        assert_eq!(execution_arn("arn:aws:lambda:x:1:function:f", "n"), None);
        assert_eq!(execution_arn("arn:aws:states:r:1:stateMachine:", "n"), None);
    }
}
