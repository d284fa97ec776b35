//! The `Workflows` port over the Tern States engine, and the task registry that routes the
//! replication-run state machine's tasks to [`Replication::handle_task`].

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde_json::Value;
use tern_core::replication::{functions, Replication};
use tern_core::workflows::{execution_arn, WorkflowError, Workflows, REPLICATION_RUN};
use tern_states::{Engine, EngineError, StateError, TaskHandler, TaskRegistry, TaskRequest};

/// The state machine file the AWS deployment uses too.
pub const REPLICATION_RUN_ASL: &str =
    include_str!("../../../../statemachines/replication-run.asl.json");

/// Local resource of a task function: what `${…FunctionArn}` becomes on one machine.
pub fn function_resource(function: &str) -> String {
    format!("tern:function:{function}")
}

/// The definition with every `${…FunctionArn}` replaced, as SAM's DefinitionSubstitutions do.
pub fn substituted_definition() -> String {
    let mut def = REPLICATION_RUN_ASL.to_string();
    for (name, function) in functions::SUBSTITUTIONS {
        def = def.replace(&format!("${{{name}}}"), &function_resource(function));
    }
    def
}

/// Invokes replication task functions; set once the [`Replication`] it serves exists (the
/// engine and the use cases need each other).
#[derive(Clone, Default)]
pub struct ReplicationTasks {
    replication: Arc<OnceLock<Replication>>,
}

impl ReplicationTasks {
    pub fn set(&self, replication: Replication) {
        let _ = self.replication.set(replication);
    }

    async fn call(&self, function: &str, input: &Value) -> Result<Value, StateError> {
        let replication = self.replication.get().ok_or_else(|| {
            StateError::new("Tern.Transient", "the replication service is starting")
        })?;
        let out = replication.handle_task(function, input).await;
        let run_id = input
            .get("runId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        crate::pause::point(function, run_id).await;
        out.map_err(|e| StateError::new(&e.error, &e.cause))
    }

    /// The registry: one handler per `tern:function:<name>` resource, plus
    /// `arn:aws:states:::lambda:invoke`, which calls the function named by `FunctionName` with
    /// `Payload` (how the state machine waits for a task token, as on AWS).
    pub fn registry(&self) -> TaskRegistry {
        let mut registry = TaskRegistry::new();
        for (_, function) in functions::SUBSTITUTIONS {
            registry.register(
                &function_resource(function),
                Arc::new(Direct {
                    tasks: self.clone(),
                    function,
                }),
            );
        }
        registry.register(
            "arn:aws:states:::lambda:invoke",
            Arc::new(LambdaInvoke {
                tasks: self.clone(),
            }),
        );
        registry
    }
}

struct Direct {
    tasks: ReplicationTasks,
    function: &'static str,
}

#[async_trait]
impl TaskHandler for Direct {
    async fn invoke(&self, request: TaskRequest) -> Result<Value, StateError> {
        self.tasks.call(self.function, &request.input).await
    }
}

struct LambdaInvoke {
    tasks: ReplicationTasks,
}

#[async_trait]
impl TaskHandler for LambdaInvoke {
    async fn invoke(&self, request: TaskRequest) -> Result<Value, StateError> {
        let name = request
            .input
            .get("FunctionName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let function = name.strip_prefix("tern:function:").ok_or_else(|| {
            StateError::new(
                "Lambda.ResourceNotFoundException",
                format!("no local function {name:?}"),
            )
        })?;
        let payload = request.input.get("Payload").cloned().unwrap_or(Value::Null);
        let out = self.tasks.call(function, &payload).await?;
        // lambda:invoke returns the function's result under `Payload`.
        Ok(serde_json::json!({ "Payload": out, "StatusCode": 200 }))
    }
}

/// [`Workflows`] on the local engine.
pub struct LocalWorkflows {
    engine: Engine,
    /// ARN of the replication-run state machine, registered once.
    replication_run: String,
}

fn map(e: EngineError) -> WorkflowError {
    match e {
        EngineError::InvalidToken(m) | EngineError::TaskTimedOut(m) => WorkflowError::TaskGone(m),
        EngineError::ExecutionAlreadyExists(m) => WorkflowError::AlreadyExists(m),
        EngineError::StateMachineDoesNotExist(m) => WorkflowError::NoSuchMachine(m),
        EngineError::Store(s) => WorkflowError::Transient {
            message: "the workflow store failed".into(),
            source: Some(Box::new(s)),
        },
        other => WorkflowError::internal(other.to_string()),
    }
}

impl LocalWorkflows {
    /// Registers Tern's state machines on `engine`.
    pub fn new(engine: Engine) -> Result<Self, EngineError> {
        let replication_run =
            engine.create_state_machine(REPLICATION_RUN, &substituted_definition())?;
        Ok(Self {
            engine,
            replication_run,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

#[async_trait]
impl Workflows for LocalWorkflows {
    async fn start_execution(
        &self,
        machine: &str,
        name: &str,
        input: &Value,
    ) -> Result<String, WorkflowError> {
        if machine != REPLICATION_RUN {
            return Err(WorkflowError::NoSuchMachine(machine.to_string()));
        }
        self.engine
            .start_execution(&self.replication_run, Some(name), &input.to_string())
            .map(|d| d.execution_arn)
            .map_err(map)
    }

    async fn send_task_success(&self, token: &str, output: &Value) -> Result<(), WorkflowError> {
        self.engine
            .send_task_success(token, &output.to_string())
            .map_err(map)
    }

    async fn send_task_failure(
        &self,
        token: &str,
        error: &str,
        cause: &str,
    ) -> Result<(), WorkflowError> {
        self.engine
            .send_task_failure(token, error, cause)
            .map_err(map)
    }

    async fn send_task_heartbeat(&self, token: &str) -> Result<(), WorkflowError> {
        self.engine.send_task_heartbeat(token).map_err(map)
    }

    async fn stop_execution(
        &self,
        machine: &str,
        name: &str,
        cause: &str,
    ) -> Result<(), WorkflowError> {
        if machine != REPLICATION_RUN {
            return Err(WorkflowError::NoSuchMachine(machine.to_string()));
        }
        let arn = execution_arn(&self.replication_run, name).ok_or_else(|| {
            WorkflowError::internal(format!(
                "{} is not a state machine ARN",
                self.replication_run
            ))
        })?;
        match self
            .engine
            .stop_execution(&arn, Some("Tern.Stopped"), Some(cause))
        {
            // The engine stops a running execution and leaves an ended one as it is.
            Ok(_) | Err(EngineError::ExecutionDoesNotExist(_)) => Ok(()),
            Err(e) => Err(map(e)),
        }
    }
}

/// tern-core's clock as the engine's, so that `tern serve` decides schedules and workflow timers
/// (Wait, Retry backoff, task timeouts and heartbeats) by one time: a test that moves a
/// `tern_core::ManualClock` moves the engine too.
pub struct EngineClock(pub Arc<dyn tern_core::Clock>);

impl EngineClock {
    /// The core clock cannot say when it moves, so a waiter looks again this often: a moved
    /// clock is noticed within it, the system clock at its deadline.
    const RECHECK: std::time::Duration = std::time::Duration::from_millis(200);
}

#[async_trait]
impl tern_states::Clock for EngineClock {
    fn now_ms(&self) -> i64 {
        (self.0.now().unix_timestamp_nanos() / 1_000_000) as i64
    }

    async fn wait_until(&self, deadline_ms: i64) {
        loop {
            let left = deadline_ms - self.now_ms();
            if left <= 0 {
                return;
            }
            let left = std::time::Duration::from_millis(left as u64);
            tokio::time::sleep(left.min(Self::RECHECK)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{EngineClock, LocalWorkflows, ReplicationTasks};
    use std::sync::Arc;
    use tern_core::workflows::{WorkflowError, Workflows, REPLICATION_RUN};
    use tern_states::Clock as _;
    use tern_states::{Engine, EngineConfig, ExecutionStatus, ManualClock, MemoryStore};

    /// DeleteReplicationJob stops the run's execution: ABORTED afterwards, and stopping again
    /// or stopping a name never started succeeds. The engine's driver is not spawned, so the
    /// execution stays where it started until it is stopped.
    #[tokio::test]
    async fn executions_stop_once_and_stopping_again_changes_nothing() {
        let engine = Engine::open(EngineConfig {
            store: Arc::new(MemoryStore::new()),
            tasks: ReplicationTasks::default().registry(),
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            region: "local".into(),
        })
        .unwrap();
        let workflows = LocalWorkflows::new(engine.clone()).unwrap();
        let input = serde_json::json!({"jobId": "sms-job-1", "runId": "sms-run-1"});
        let arn = workflows
            .start_execution(REPLICATION_RUN, "sms-run-1", &input)
            .await
            .unwrap();
        assert_eq!(
            engine.describe_execution(&arn).unwrap().status,
            ExecutionStatus::Running
        );
        workflows
            .stop_execution(
                REPLICATION_RUN,
                "sms-run-1",
                "the replication job was deleted",
            )
            .await
            .unwrap();
        let stopped = engine.describe_execution(&arn).unwrap();
        assert_eq!(stopped.status, ExecutionStatus::Aborted);
        assert_eq!(
            stopped.cause.as_deref(),
            Some("the replication job was deleted")
        );
        workflows
            .stop_execution(REPLICATION_RUN, "sms-run-1", "again")
            .await
            .expect("stopping a stopped execution succeeds");
        assert_eq!(
            engine.describe_execution(&arn).unwrap().cause.as_deref(),
            Some("the replication job was deleted")
        );
        workflows
            .stop_execution(REPLICATION_RUN, "sms-run-never", "never started")
            .await
            .expect("an execution never started has nothing to stop");
        assert!(matches!(
            workflows.stop_execution("other", "x", "c").await,
            Err(WorkflowError::NoSuchMachine(_))
        ));
    }

    #[tokio::test]
    async fn the_engine_clock_follows_a_moved_core_clock() {
        let start = time::macros::datetime!(2026-01-01 00:00 UTC);
        let core = Arc::new(tern_core::ManualClock::new(start));
        let clock = EngineClock(core.clone());
        let start_ms = start.unix_timestamp() * 1000;
        assert_eq!(clock.now_ms(), start_ms);
        let deadline = start_ms + 3_600_000;
        let waiter = tokio::spawn(async move { clock.wait_until(deadline).await });
        core.advance(std::time::Duration::from_secs(3600));
        // An hour of core time passes in one step: the wait ends without an hour of real time.
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the wait noticed the moved clock")
            .unwrap();
    }
}
