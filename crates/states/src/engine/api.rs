//! The API shaped like Step Functions: registering machines; starting, describing, listing and
//! stopping executions; history; the task-token calls.

use std::cmp::Reverse;
use std::sync::Arc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde_json::{json, Value};

use super::history::expand_page;
use super::{
    valid_name, Completion, Engine, Exec, ExecutionDescription, Machine, Status, Thread, TimerKind,
    ACCOUNT,
};
use crate::definition::StateMachine;
use crate::error::{EngineError, StateError};
use crate::store::{ExecutionRecord, ExecutionStatus, StateMachineRecord};
use crate::task::Pattern;

impl Engine {
    pub(super) fn arn_prefix(&self, kind: &str) -> String {
        format!("arn:aws:states:{}:{ACCOUNT}:{kind}:", self.shared.region)
    }

    /// Registers a state machine (idempotent for an identical definition). Returns its ARN.
    pub fn create_state_machine(
        &self,
        name: &str,
        definition: &str,
    ) -> Result<String, EngineError> {
        if !valid_name(name) {
            return Err(EngineError::InvalidName(name.to_string()));
        }
        let parsed = StateMachine::parse(definition)?;
        let arn = format!("{}{name}", self.arn_prefix("stateMachine"));
        let mut core = self.lock();
        if let Some(m) = core.machines.get(&arn) {
            if m.rec.definition == definition {
                return Ok(arn);
            }
            return Err(EngineError::StateMachineAlreadyExists(arn));
        }
        let rec = StateMachineRecord {
            arn: arn.clone(),
            name: name.to_string(),
            definition: definition.to_string(),
            created_ms: self.now(),
        };
        core.batch.state_machines.push(rec.clone());
        core.machines.insert(
            arn.clone(),
            Machine {
                rec,
                parsed: Arc::new(parsed),
            },
        );
        self.commit(&mut core)?;
        Ok(arn)
    }

    /// Starts an execution. A running execution with the same name and input is returned as is
    /// (idempotent start); any other reuse of a name is `ExecutionAlreadyExists`.
    pub fn start_execution(
        &self,
        state_machine_arn: &str,
        name: Option<&str>,
        input: &str,
    ) -> Result<ExecutionDescription, EngineError> {
        let input_value: Value = serde_json::from_str(input)
            .map_err(|e| EngineError::InvalidExecutionInput(e.to_string()))?;
        let name = name
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if !valid_name(&name) {
            return Err(EngineError::InvalidName(name));
        }
        let now = self.now();
        let mut core = self.lock();
        let Some(machine) = core.machines.get(state_machine_arn) else {
            return Err(EngineError::StateMachineDoesNotExist(
                state_machine_arn.to_string(),
            ));
        };
        let sm_name = machine.rec.name.clone();
        let parsed = machine.parsed.clone();
        let arn = format!("{}{sm_name}:{name}", self.arn_prefix("execution"));
        if let Some(existing) = core.execs.get(&arn) {
            if existing.rec.status == ExecutionStatus::Running && existing.input == input_value {
                let desc = ExecutionDescription::from(&existing.rec);
                // A start whose commit failed is only done once the retried commit is durable.
                self.commit(&mut core)?;
                return Ok(desc);
            }
            return Err(EngineError::ExecutionAlreadyExists(arn));
        }
        let rec = ExecutionRecord {
            arn: arn.clone(),
            name,
            state_machine_arn: state_machine_arn.to_string(),
            status: ExecutionStatus::Running,
            input: input_value.to_string(),
            output: None,
            error: None,
            cause: None,
            start_ms: now,
            stop_ms: None,
            next_thread: 1,
            next_event: 1,
        };
        let root = Thread {
            id: 0,
            parent: None,
            index: 0,
            graph: 0,
            state: parsed.root().start_at.clone(),
            input: input_value.clone(),
            entered_ms: now,
            retries: Vec::new(),
            prev_event: 0,
            status: Status::Ready { entered: false },
            items: None,
            results: Vec::new(),
            stored: false,
            input_text: None,
        };
        if let Some(t) = parsed.timeout_seconds {
            core.timers.push(Reverse((
                now + t as i64 * 1000,
                arn.clone(),
                0,
                TimerKind::ExecutionTimeout,
            )));
        }
        let mut threads = HashMap::default();
        threads.insert(0, root);
        core.execs.insert(
            arn.clone(),
            Exec {
                rec,
                machine: parsed,
                machine_name: sm_name,
                input: input_value.clone(),
                threads,
                dirty: HashSet::default(),
            },
        );
        let role = format!("arn:aws:iam::{ACCOUNT}:role/tern-states");
        core.emit(&arn, Some(0), now, "ExecutionStarted", "executionStartedEventDetails", json!({
            "input": input_value.to_string(), "inputDetails": {"truncated": false}, "roleArn": role}));
        core.dirty_thread(&arn, 0);
        core.ready.push_back((arn.clone(), 0));
        self.commit(&mut core)?;
        let desc = ExecutionDescription::from(&core.execs[&arn].rec);
        drop(core);
        self.shared.wake.notify_one();
        Ok(desc)
    }

    pub fn describe_execution(&self, arn: &str) -> Result<ExecutionDescription, EngineError> {
        let core = self.lock();
        core.execs
            .get(arn)
            .map(|e| ExecutionDescription::from(&e.rec))
            .ok_or_else(|| EngineError::ExecutionDoesNotExist(arn.to_string()))
    }

    /// Executions, newest first, optionally of one state machine and/or one status.
    pub fn list_executions(
        &self,
        state_machine_arn: Option<&str>,
        status: Option<ExecutionStatus>,
    ) -> Vec<ExecutionDescription> {
        let core = self.lock();
        let mut out: Vec<ExecutionDescription> = core
            .execs
            .values()
            .filter(|e| state_machine_arn.is_none_or(|a| e.rec.state_machine_arn == a))
            .filter(|e| status.is_none_or(|s| e.rec.status == s))
            .map(|e| ExecutionDescription::from(&e.rec))
            .collect();
        out.sort_by(|a, b| b.start_date.cmp(&a.start_date).then(a.name.cmp(&b.name)));
        out
    }

    /// History events shaped like GetExecutionHistory's `events`.
    pub fn get_execution_history(&self, arn: &str) -> Result<Vec<Value>, EngineError> {
        if !self.lock().execs.contains_key(arn) {
            return Err(EngineError::ExecutionDoesNotExist(arn.to_string()));
        }
        let mut out = Vec::new();
        for (first, page) in self.shared.store.events(arn)? {
            expand_page(first, &page, &mut out)?;
        }
        Ok(out)
    }

    pub fn stop_execution(
        &self,
        arn: &str,
        error: Option<&str>,
        cause: Option<&str>,
    ) -> Result<ExecutionDescription, EngineError> {
        let now = self.now();
        let mut core = self.lock();
        let Some(exec) = core.execs.get(arn) else {
            return Err(EngineError::ExecutionDoesNotExist(arn.to_string()));
        };
        if exec.rec.status == ExecutionStatus::Running {
            let err = StateError::new(error.unwrap_or(""), cause.unwrap_or(""));
            core.end_execution(arn, now, ExecutionStatus::Aborted, Err(err));
            self.commit(&mut core)?;
            self.shared.finished.send_modify(|n| *n += 1);
        } else {
            // A stop whose commit failed is only done once the retried commit is durable.
            self.commit(&mut core)?;
        }
        Ok(ExecutionDescription::from(&core.execs[arn].rec))
    }

    pub fn send_task_success(&self, token: &str, output: &str) -> Result<(), EngineError> {
        let value: Value =
            serde_json::from_str(output).map_err(|e| EngineError::InvalidOutput(e.to_string()))?;
        self.complete_token(token, Ok(value))
    }

    pub fn send_task_failure(
        &self,
        token: &str,
        error: &str,
        cause: &str,
    ) -> Result<(), EngineError> {
        self.complete_token(token, Err(StateError::new(error, cause)))
    }

    pub fn send_task_heartbeat(&self, token: &str) -> Result<(), EngineError> {
        let now = self.now();
        let mut core = self.lock();
        let (arn, tid) = core.token_owner(token)?;
        let Some(t) = core
            .execs
            .get_mut(&arn)
            .and_then(|e| e.threads.get_mut(&tid))
        else {
            return Err(EngineError::TaskTimedOut(token.to_string()));
        };
        if let Status::Task {
            heartbeat_secs: Some(h),
            heartbeat_deadline,
            ..
        } = &mut t.status
        {
            let d = now + *h as i64 * 1000;
            *heartbeat_deadline = Some(d);
            core.timers
                .push(Reverse((d, arn.clone(), tid, TimerKind::Heartbeat)));
            core.dirty_thread(&arn, tid);
            self.commit(&mut core)?;
        }
        Ok(())
    }

    pub(super) fn complete_token(
        &self,
        token: &str,
        result: Result<Value, StateError>,
    ) -> Result<(), EngineError> {
        let mut core = self.lock();
        let (arn, tid) = match core.token_owner(token) {
            Ok(owner) => owner,
            // An earlier call's result was applied but its commit failed: this call succeeds
            // once the retried commit does, so a caller that retries learns when it is durable.
            Err(_) if core.undurable_tokens.contains(token) => {
                self.commit(&mut core)?;
                drop(core);
                self.shared.wake.notify_one();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        core.completions.push_back(Completion {
            arn,
            thread: tid,
            token: token.to_string(),
            pattern: Pattern::RequestResponse,
            result,
        });
        drop(core);
        // Apply now so the caller knows the token was consumed and the result is durable.
        let pumped = self.pump();
        self.shared.wake.notify_one();
        if let Err(e) = pumped {
            // Not durable: the caller must try again (the driver retries the commit meanwhile).
            self.lock().undurable_tokens.insert(token.to_string());
            return Err(e);
        }
        Ok(())
    }
}
