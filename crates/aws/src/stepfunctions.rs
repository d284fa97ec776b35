//! The [`Workflows`] port on AWS Step Functions: executions of the stack's state machines, and
//! the answers to the task tokens they wait on.
//!
//! | port | Step Functions | errors |
//! |---|---|---|
//! | `start_execution` | StartExecution (idempotent by name and input for 90 days) | `ExecutionAlreadyExists` → `AlreadyExists`; `StateMachineDoesNotExist` → `NoSuchMachine` |
//! | `stop_execution` | StopExecution on the execution's ARN (derived from the machine's) | `ExecutionDoesNotExist` → success (nothing to stop) |
//! | `send_task_success` / `_failure` / `_heartbeat` | SendTaskSuccess / SendTaskFailure / SendTaskHeartbeat | `TaskDoesNotExist`, `TaskTimedOut`, `InvalidToken` → `TaskGone` |
//!
//! Throttling, timeouts, dropped connections and 5xx answers are `Transient` everywhere; the
//! callers' own retries (the state machine's Retry, the tick) handle them.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sfn::error::ProvideErrorMetadata;
use aws_sdk_sfn::operation::send_task_failure::SendTaskFailureError;
use aws_sdk_sfn::operation::send_task_heartbeat::SendTaskHeartbeatError;
use aws_sdk_sfn::operation::send_task_success::SendTaskSuccessError;
use aws_sdk_sfn::operation::start_execution::StartExecutionError;
use aws_sdk_sfn::operation::stop_execution::StopExecutionError;
use aws_sdk_sfn::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use serde_json::Value;
use tern_core::workflows::{execution_arn, WorkflowError, Workflows};

use crate::sdk::{classify, Failure};

/// Step Functions, with the ARN of each state machine Tern runs by its name in
/// `statemachines/` (e.g. `replication-run`).
#[derive(Debug, Clone)]
pub struct StepFunctions {
    client: Client,
    machines: HashMap<String, String>,
}

impl StepFunctions {
    pub fn new(client: Client, machines: HashMap<String, String>) -> Self {
        Self { client, machines }
    }
}

/// What a modeled Step Functions error means to the port, decided on the typed error (its code
/// is only filled in when it came off the wire).
enum Meaning {
    TaskGone,
    AlreadyExists,
    NoSuchMachine,
    Other,
}

fn workflow_error<E>(
    operation: &str,
    error: &SdkError<E, HttpResponse>,
    meaning: impl Fn(&E) -> Meaning,
) -> WorkflowError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let f: Failure = classify(operation, error);
    let meaning = error.as_service_error().map_or(Meaning::Other, meaning);
    match meaning {
        Meaning::TaskGone => WorkflowError::TaskGone(f.message),
        Meaning::AlreadyExists => WorkflowError::AlreadyExists(f.message),
        Meaning::NoSuchMachine => WorkflowError::NoSuchMachine(f.message),
        Meaning::Other if f.transient => WorkflowError::Transient {
            message: f.message,
            source: None,
        },
        Meaning::Other => WorkflowError::internal(f.message),
    }
}

#[async_trait]
impl Workflows for StepFunctions {
    async fn start_execution(
        &self,
        machine: &str,
        name: &str,
        input: &Value,
    ) -> Result<String, WorkflowError> {
        let arn = self
            .machines
            .get(machine)
            .ok_or_else(|| WorkflowError::NoSuchMachine(machine.to_owned()))?;
        let out = self
            .client
            .start_execution()
            .state_machine_arn(arn)
            .name(name)
            .input(input.to_string())
            .send()
            .await
            .map_err(|e| {
                workflow_error("StartExecution", &e, |e| match e {
                    StartExecutionError::ExecutionAlreadyExists(_) => Meaning::AlreadyExists,
                    StartExecutionError::StateMachineDoesNotExist(_)
                    | StartExecutionError::StateMachineDeleting(_) => Meaning::NoSuchMachine,
                    _ => Meaning::Other,
                })
            })?;
        Ok(out.execution_arn)
    }

    async fn send_task_success(&self, token: &str, output: &Value) -> Result<(), WorkflowError> {
        self.client
            .send_task_success()
            .task_token(token)
            .output(output.to_string())
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                workflow_error("SendTaskSuccess", &e, |e| match e {
                    SendTaskSuccessError::TaskDoesNotExist(_)
                    | SendTaskSuccessError::TaskTimedOut(_)
                    | SendTaskSuccessError::InvalidToken(_) => Meaning::TaskGone,
                    _ => Meaning::Other,
                })
            })
    }

    async fn send_task_failure(
        &self,
        token: &str,
        error: &str,
        cause: &str,
    ) -> Result<(), WorkflowError> {
        // Step Functions bounds `error` at 256 and `cause` at 32,768 characters.
        self.client
            .send_task_failure()
            .task_token(token)
            .error(clip(error, 256))
            .cause(clip(cause, 32_768))
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                workflow_error("SendTaskFailure", &e, |e| match e {
                    SendTaskFailureError::TaskDoesNotExist(_)
                    | SendTaskFailureError::TaskTimedOut(_)
                    | SendTaskFailureError::InvalidToken(_) => Meaning::TaskGone,
                    _ => Meaning::Other,
                })
            })
    }

    async fn send_task_heartbeat(&self, token: &str) -> Result<(), WorkflowError> {
        self.client
            .send_task_heartbeat()
            .task_token(token)
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                workflow_error("SendTaskHeartbeat", &e, |e| match e {
                    SendTaskHeartbeatError::TaskDoesNotExist(_)
                    | SendTaskHeartbeatError::TaskTimedOut(_)
                    | SendTaskHeartbeatError::InvalidToken(_) => Meaning::TaskGone,
                    _ => Meaning::Other,
                })
            })
    }

    async fn stop_execution(
        &self,
        machine: &str,
        name: &str,
        cause: &str,
    ) -> Result<(), WorkflowError> {
        let machine_arn = self
            .machines
            .get(machine)
            .ok_or_else(|| WorkflowError::NoSuchMachine(machine.to_owned()))?;
        let arn = execution_arn(machine_arn, name).ok_or_else(|| {
            WorkflowError::internal(format!("{machine_arn} is not a state machine ARN"))
        })?;
        let stopped = self
            .client
            .stop_execution()
            .execution_arn(arn)
            .error("Tern.Stopped")
            .cause(clip(cause, 32_768))
            .send()
            .await;
        match stopped {
            Ok(_) => Ok(()),
            // Never started (the run was deleted before its execution began): nothing to stop.
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(StopExecutionError::ExecutionDoesNotExist(_))
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(workflow_error("StopExecution", &e, |_| Meaning::Other)),
        }
    }
}

/// At most `max` characters of `s`.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
