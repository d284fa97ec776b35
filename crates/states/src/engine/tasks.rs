//! Task states and timers: task tokens, scheduling invocations, applying their results, and
//! firing Wait wake-ups, task timeouts, heartbeat timeouts and execution timeouts.

use std::cmp::Reverse;

use serde_json::{json, Value};

use super::states::fill_token;
use super::{Completion, Core, Invocation, Status, TimerKind};
use crate::definition::{Kind, State};
use crate::error::{names, EngineError, StateError};
use crate::store::ExecutionStatus;
use crate::task::{resource_parts, split_resource, Pattern, TaskRegistry, TaskRequest};

impl Core {
    pub(super) fn token_owner(&self, token: &str) -> Result<(String, u64), EngineError> {
        match self.tokens.get(token) {
            Some((a, t)) => Ok((a.clone(), *t)),
            None if token.len() < 16 => Err(EngineError::InvalidToken(token.to_string())),
            None => Err(EngineError::TaskTimedOut(token.to_string())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn schedule_task(
        &mut self,
        tasks: &TaskRegistry,
        arn: &str,
        tid: u64,
        state: &State,
        now: i64,
        resource: String,
        task_input: &mut Value,
        timeout: Option<u64>,
        heartbeat: Option<u64>,
    ) {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        fill_token(task_input, &token);
        let (rtype, rname) = resource_parts(&resource);
        let mut details = json!({"resourceType": rtype, "resource": rname, "region": "local", "parameters": task_input.to_string()});
        if let Some(t) = timeout {
            details["timeoutInSeconds"] = json!(t);
        }
        if let Some(h) = heartbeat {
            details["heartbeatInSeconds"] = json!(h);
        }
        self.emit(
            arn,
            Some(tid),
            now,
            "TaskScheduled",
            "taskScheduledEventDetails",
            details,
        );
        self.emit(
            arn,
            Some(tid),
            now,
            "TaskStarted",
            "taskStartedEventDetails",
            json!({"resourceType": rtype, "resource": rname}),
        );
        let deadline = timeout.map(|t| now + t as i64 * 1000);
        let heartbeat_deadline = heartbeat.map(|h| now + h as i64 * 1000);
        if let Some(d) = deadline {
            self.timers
                .push(Reverse((d, arn.to_string(), tid, TimerKind::TaskTimeout)));
        }
        if let Some(d) = heartbeat_deadline {
            self.timers
                .push(Reverse((d, arn.to_string(), tid, TimerKind::Heartbeat)));
        }
        self.tokens.insert(token.clone(), (arn.to_string(), tid));
        self.set_status(
            arn,
            tid,
            Status::Task {
                token: token.clone(),
                resource: resource.clone(),
                task_input: task_input.clone(),
                deadline,
                heartbeat_secs: heartbeat,
                heartbeat_deadline,
                submitted: false,
            },
        );
        let inv = Invocation {
            handler: tasks.lookup(&resource),
            request: TaskRequest {
                pattern: split_resource(&resource).1,
                resource,
                input: task_input.clone(),
                task_token: token,
                execution_arn: arn.to_string(),
                state_name: state.name.clone(),
            },
            thread: tid,
        };
        self.invocations.push((arn.to_string(), inv));
    }

    pub(super) fn apply_completion(&mut self, c: Completion, now: i64) {
        let Some(t) = self
            .execs
            .get(&c.arn)
            .and_then(|e| e.threads.get(&c.thread))
        else {
            return;
        };
        let Status::Task { token, .. } = &t.status else {
            return;
        };
        if *token != c.token {
            return; // a late result of an attempt that timed out or was retried
        }
        let Some((machine, graph, name)) = self.state_of(&c.arn, c.thread) else {
            return;
        };
        let state = &machine.graphs[graph].states[&name];
        let Kind::Task { resource, .. } = &state.kind else {
            return;
        };
        let (rtype, rname) = resource_parts(resource);
        match c.result {
            Ok(v) if c.pattern == Pattern::WaitForTaskToken => {
                if let Some(t) = self
                    .execs
                    .get_mut(&c.arn)
                    .and_then(|e| e.threads.get_mut(&c.thread))
                {
                    if let Status::Task { submitted, .. } = &mut t.status {
                        *submitted = true;
                    }
                }
                self.dirty_thread(&c.arn, c.thread);
                self.emit(
                    &c.arn,
                    Some(c.thread),
                    now,
                    "TaskSubmitted",
                    "taskSubmittedEventDetails",
                    json!({"resourceType": rtype, "resource": rname, "output": v.to_string()}),
                );
            }
            Ok(v) => {
                self.tokens.remove(&c.token);
                self.emit(
                    &c.arn,
                    Some(c.thread),
                    now,
                    "TaskSucceeded",
                    "taskSucceededEventDetails",
                    json!({"resourceType": rtype, "resource": rname, "output": v.to_string()}),
                );
                self.finish_state(&c.arn, c.thread, now, v);
            }
            Err(e) => {
                self.tokens.remove(&c.token);
                self.emit(&c.arn, Some(c.thread), now, "TaskFailed", "taskFailedEventDetails", json!({"resourceType": rtype, "resource": rname, "error": e.error, "cause": e.cause}));
                self.handle_error(&c.arn, c.thread, state, now, e);
            }
        }
    }

    pub(super) fn fire_timer(
        &mut self,
        when: i64,
        arn: &str,
        tid: u64,
        kind: TimerKind,
        now: i64,
    ) -> bool {
        let Some(exec) = self.execs.get(arn) else {
            return false;
        };
        if exec.rec.status != ExecutionStatus::Running {
            return false;
        }
        if kind == TimerKind::ExecutionTimeout {
            let err = StateError::new(names::TIMEOUT, "The execution exceeded its TimeoutSeconds");
            self.end_execution(arn, now, ExecutionStatus::TimedOut, Err(err));
            return true;
        }
        let Some(t) = exec.threads.get(&tid) else {
            return false;
        };
        match (&kind, &t.status) {
            (TimerKind::Wake, Status::Sleeping { until, output }) if *until == when => {
                let output = output.clone();
                match output {
                    None => self.set_status(arn, tid, Status::Ready { entered: true }),
                    Some(out) => {
                        let Some((machine, graph, name)) = self.state_of(arn, tid) else {
                            return false;
                        };
                        let state = &machine.graphs[graph].states[&name];
                        self.set_status(arn, tid, Status::Ready { entered: true });
                        self.transition(arn, tid, state, now, out);
                    }
                }
                self.requeue(arn, tid);
                true
            }
            (
                TimerKind::TaskTimeout,
                Status::Task {
                    deadline: Some(d),
                    token,
                    ..
                },
            ) if *d == when => {
                let token = token.clone();
                self.task_timed_out(
                    arn,
                    tid,
                    now,
                    &token,
                    StateError::new(names::TIMEOUT, "Task timed out"),
                );
                true
            }
            (
                TimerKind::Heartbeat,
                Status::Task {
                    heartbeat_deadline: Some(d),
                    token,
                    ..
                },
            ) if *d == when => {
                let token = token.clone();
                self.task_timed_out(
                    arn,
                    tid,
                    now,
                    &token,
                    StateError::new(names::HEARTBEAT_TIMEOUT, "No heartbeat received in time"),
                );
                true
            }
            _ => false,
        }
    }

    pub(super) fn task_timed_out(
        &mut self,
        arn: &str,
        tid: u64,
        now: i64,
        token: &str,
        err: StateError,
    ) {
        self.tokens.remove(token);
        let Some((machine, graph, name)) = self.state_of(arn, tid) else {
            return;
        };
        let state = &machine.graphs[graph].states[&name];
        let rtype = match &state.kind {
            Kind::Task { resource, .. } => resource_parts(resource),
            _ => (String::new(), String::new()),
        };
        self.emit(arn, Some(tid), now, "TaskTimedOut", "taskTimedOutEventDetails", json!({"resourceType": rtype.0, "resource": rtype.1, "error": err.error, "cause": err.cause}));
        self.handle_error(arn, tid, state, now, err);
    }
}
