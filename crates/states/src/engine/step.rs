//! Stepping a thread through its graph: entering states, transitions, Retry and Catch, and the
//! end of threads (handing their output to the parent) and of executions.

use std::cmp::Reverse;
use std::sync::Arc;

use serde_json::{json, Value};

use super::history::iteration_details;
use super::states::{execute, Ctx, Outcome};
use super::{Core, Status, TimerKind};
use crate::definition::{error_matches, is_terminal, Kind, State, StateMachine, Transition};
use crate::error::{names, StateError};
use crate::paths::{apply_filter, apply_result_path};
use crate::store::ExecutionStatus;
use crate::task::TaskRegistry;

pub(super) fn error_output(e: &StateError) -> Value {
    json!({"Error": e.error, "Cause": e.cause})
}

impl Core {
    /// Steps one thread up to `slice` transitions; returns how many were made.
    pub(super) fn run_thread(
        &mut self,
        tasks: &TaskRegistry,
        arn: &str,
        tid: u64,
        now: i64,
        slice: usize,
    ) -> usize {
        let mut used = 0;
        while used < slice {
            let Some(exec) = self.execs.get(arn) else {
                return used;
            };
            if exec.rec.status != ExecutionStatus::Running {
                return used;
            }
            let Some(t) = exec.threads.get(&tid) else {
                return used;
            };
            let Status::Ready { entered } = t.status else {
                return used;
            };
            let machine = exec.machine.clone();
            let Some(state) = machine.graphs[t.graph].states.get(&t.state) else {
                let e = StateError::runtime(format!("state '{}' does not exist", t.state));
                self.end_thread(arn, tid, now, Err(e));
                return used;
            };
            used += 1;
            self.transitions += 1;
            if !entered {
                let mut input = String::new();
                if let Some(t) = self
                    .execs
                    .get_mut(arn)
                    .and_then(|e| e.threads.get_mut(&tid))
                {
                    input = t.input_text.take().unwrap_or_else(|| t.input.to_string());
                    t.status = Status::Ready { entered: true };
                    t.entered_ms = now;
                    if !state.retry.is_empty() || !t.retries.is_empty() {
                        t.retries = vec![0; state.retry.len()];
                    }
                }
                self.emit_state(arn, tid, now, state, true, &input);
            }
            self.dirty_thread(arn, tid);
            let exec = &self.execs[arn];
            let t = &exec.threads[&tid];
            match execute(exec, t, state, tasks, now) {
                Ok(Outcome::Continue(out)) => self.transition(arn, tid, state, now, out),
                Ok(Outcome::Goto(next, out)) => self.goto(arn, tid, state, now, next, out),
                Ok(Outcome::End(out)) => {
                    self.exit_event(arn, tid, state, now, &out);
                    self.end_thread(arn, tid, now, Ok(out));
                }
                Ok(Outcome::Sleep(until, out)) => {
                    if until <= now {
                        self.transition(arn, tid, state, now, out);
                    } else {
                        self.set_status(
                            arn,
                            tid,
                            Status::Sleeping {
                                until,
                                output: Some(out),
                            },
                        );
                        self.timers
                            .push(Reverse((until, arn.to_string(), tid, TimerKind::Wake)));
                        return used;
                    }
                }
                Ok(Outcome::Invoke {
                    resource,
                    mut task_input,
                    timeout,
                    heartbeat,
                }) => {
                    self.schedule_task(
                        tasks,
                        arn,
                        tid,
                        state,
                        now,
                        resource,
                        &mut task_input,
                        timeout,
                        heartbeat,
                    );
                    return used;
                }
                Ok(Outcome::Fanout {
                    kind,
                    effective,
                    items,
                    total,
                    max_concurrency,
                    tolerated_count,
                    tolerated_pct,
                }) => {
                    self.fan_out(
                        arn,
                        tid,
                        state,
                        now,
                        kind,
                        effective,
                        items,
                        total,
                        max_concurrency,
                        tolerated_count,
                        tolerated_pct,
                    );
                    return used;
                }
                Err(e) => {
                    self.handle_error(arn, tid, state, now, e);
                }
            }
        }
        // Out of slice: let others run, come back later.
        if matches!(
            self.execs
                .get(arn)
                .and_then(|e| e.threads.get(&tid))
                .map(|t| &t.status),
            Some(Status::Ready { .. })
        ) {
            self.ready.push_back((arn.to_string(), tid));
        }
        used
    }

    pub(super) fn set_status(&mut self, arn: &str, tid: u64, status: Status) {
        if let Some(t) = self
            .execs
            .get_mut(arn)
            .and_then(|e| e.threads.get_mut(&tid))
        {
            t.status = status;
            self.dirty_thread(arn, tid);
        }
    }

    pub(super) fn state_of(
        &self,
        arn: &str,
        tid: u64,
    ) -> Option<(Arc<StateMachine>, usize, String)> {
        let e = self.execs.get(arn)?;
        let t = e.threads.get(&tid)?;
        Some((e.machine.clone(), t.graph, t.state.clone()))
    }

    pub(super) fn exit_event(&mut self, arn: &str, tid: u64, state: &State, now: i64, out: &Value) {
        if matches!(state.kind, Kind::Fail { .. }) {
            return;
        }
        self.emit_state(arn, tid, now, state, false, &out.to_string());
    }

    pub(super) fn transition(&mut self, arn: &str, tid: u64, state: &State, now: i64, out: Value) {
        match &state.transition {
            Transition::Next(n) => self.goto(arn, tid, state, now, n.clone(), out),
            _ => {
                self.exit_event(arn, tid, state, now, &out);
                self.end_thread(arn, tid, now, Ok(out));
            }
        }
    }

    pub(super) fn goto(
        &mut self,
        arn: &str,
        tid: u64,
        state: &State,
        now: i64,
        next: String,
        out: Value,
    ) {
        // The output is the next state's input: serialize it once for both history events.
        let text = out.to_string();
        if !matches!(state.kind, Kind::Fail { .. }) {
            self.emit_state(arn, tid, now, state, false, &text);
        }
        if let Some(t) = self
            .execs
            .get_mut(arn)
            .and_then(|e| e.threads.get_mut(&tid))
        {
            t.state = next;
            t.input = out;
            t.input_text = Some(text);
            t.status = Status::Ready { entered: false };
            self.dirty_thread(arn, tid);
        }
        // The caller keeps stepping this thread while its slice lasts.
        let _ = now;
    }

    /// Applies ResultSelector, ResultPath and OutputPath to a Task/Parallel/Map result and moves on.
    pub(super) fn finish_state(&mut self, arn: &str, tid: u64, now: i64, result: Value) {
        let Some((machine, graph, name)) = self.state_of(arn, tid) else {
            return;
        };
        let state = &machine.graphs[graph].states[&name];
        let exec = &self.execs[arn];
        let t = &exec.threads[&tid];
        let ctx = Ctx {
            exec,
            state: &state.name,
            entered_ms: t.entered_ms,
            retry_count: t.retries.iter().sum(),
            token: None,
            item: None,
        };
        let out = (|| {
            let selected = match &state.result_selector {
                Some(tpl) => tpl.eval(&result, &ctx)?,
                None => result,
            };
            let merged = apply_result_path(&state.result_path, &t.input, selected)?;
            apply_filter(&state.output_path, &merged, &ctx, "OutputPath")
        })();
        match out {
            Ok(out) => {
                self.transition(arn, tid, state, now, out);
                self.requeue(arn, tid);
            }
            Err(e) => self.handle_error(arn, tid, state, now, e),
        }
    }

    pub(super) fn requeue(&mut self, arn: &str, tid: u64) {
        if matches!(
            self.execs
                .get(arn)
                .and_then(|e| e.threads.get(&tid))
                .map(|t| &t.status),
            Some(Status::Ready { .. })
        ) {
            self.ready.push_back((arn.to_string(), tid));
        }
    }

    /// Retry, then Catch, else the thread fails.
    pub(super) fn handle_error(
        &mut self,
        arn: &str,
        tid: u64,
        state: &State,
        now: i64,
        err: StateError,
    ) {
        if !is_terminal(&err.error) {
            let retries = self.execs[arn].threads[&tid].retries.clone();
            for (i, r) in state.retry.iter().enumerate() {
                if !error_matches(&r.error_equals, &err.error) {
                    continue;
                }
                let done = retries.get(i).copied().unwrap_or(0);
                if done < r.max_attempts {
                    let mut delay = r.interval_seconds * r.backoff_rate.powi(done as i32);
                    if let Some(max) = r.max_delay_seconds {
                        delay = delay.min(max);
                    }
                    if r.jitter_full {
                        delay *= rand::random::<f64>();
                    }
                    let until = now + (delay * 1000.0) as i64;
                    if let Some(t) = self
                        .execs
                        .get_mut(arn)
                        .and_then(|e| e.threads.get_mut(&tid))
                    {
                        if t.retries.len() < state.retry.len() {
                            t.retries.resize(state.retry.len(), 0);
                        }
                        t.retries[i] += 1;
                    }
                    self.set_status(
                        arn,
                        tid,
                        Status::Sleeping {
                            until,
                            output: None,
                        },
                    );
                    self.timers
                        .push(Reverse((until, arn.to_string(), tid, TimerKind::Wake)));
                    return;
                }
                break;
            }
            for c in &state.catch {
                if error_matches(&c.error_equals, &err.error) {
                    let raw = self.execs[arn].threads[&tid].input.clone();
                    match apply_result_path(&c.result_path, &raw, error_output(&err)) {
                        Ok(out) => {
                            self.goto(arn, tid, state, now, c.next.clone(), out);
                            self.requeue(arn, tid);
                        }
                        Err(e) => self.end_thread(arn, tid, now, Err(e)),
                    }
                    return;
                }
            }
        }
        self.end_thread(arn, tid, now, Err(err));
    }

    /// A thread reached the end of its graph (or failed without a catcher).
    pub(super) fn end_thread(
        &mut self,
        arn: &str,
        tid: u64,
        now: i64,
        result: Result<Value, StateError>,
    ) {
        let Some(parent) = self
            .execs
            .get(arn)
            .and_then(|e| e.threads.get(&tid))
            .map(|t| t.parent)
        else {
            return;
        };
        let Some(pid) = parent else {
            let status = if result.is_ok() {
                ExecutionStatus::Succeeded
            } else {
                ExecutionStatus::Failed
            };
            self.end_execution(arn, now, status, result);
            return;
        };
        let index = self.execs[arn].threads[&tid].index;
        let failed = result.is_err();
        let err = result.as_ref().err().cloned();
        let Some((machine, graph, name)) = self.state_of(arn, pid) else {
            return;
        };
        let state = &machine.graphs[graph].states[&name];
        let is_map = matches!(state.kind, Kind::Map(_));
        if is_map {
            let (ty, key) = if failed {
                ("MapIterationFailed", "mapIterationFailedEventDetails")
            } else {
                ("MapIterationSucceeded", "mapIterationSucceededEventDetails")
            };
            self.emit_json(
                arn,
                Some(tid),
                now,
                ty,
                key,
                &iteration_details(&state.name, index),
            );
        }
        // The child is done: its output lives on in the parent's results, not as a thread.
        if let Some(exec) = self.execs.get_mut(arn) {
            exec.dirty.remove(&tid);
            if exec.threads.remove(&tid).is_some_and(|t| t.stored) {
                self.batch.deleted_threads.push((arn.to_string(), tid));
            }
        }
        let output = match result {
            Ok(output) => output,
            Err(error) => error_output(&error),
        };
        self.add_result(arn, pid, index, output);
        let Some(p) = self
            .execs
            .get_mut(arn)
            .and_then(|e| e.threads.get_mut(&pid))
        else {
            return;
        };
        let Status::Fanout {
            total,
            running,
            finished,
            failed: nfailed,
            tolerated_count,
            tolerated_pct,
            ..
        } = &mut p.status
        else {
            return;
        };
        *running = running.saturating_sub(1);
        if failed {
            *nfailed += 1;
        } else {
            *finished += 1;
        }
        let tolerant = tolerated_count.is_some() || tolerated_pct.is_some();
        let over = *nfailed > 0
            && (!tolerant
                || tolerated_count.is_some_and(|c| *nfailed > c)
                || tolerated_pct
                    .is_some_and(|pct| (*nfailed as f64) * 100.0 / (*total as f64) > pct));
        let all_done = *finished + *nfailed == *total;
        self.dirty_thread(arn, pid);
        if over {
            let e = err.expect("failed child has an error");
            let e = if tolerant && is_map {
                StateError::new(
                    names::EXCEED_TOLERATED_FAILURE_THRESHOLD,
                    format!("The Map state failed more items than tolerated; last error: {e}"),
                )
            } else {
                e
            };
            self.fail_fanout(arn, pid, state, now, e);
        } else if all_done {
            self.collect(arn, pid, state, now);
        } else {
            self.launch(arn, pid, state, now);
        }
    }

    pub(super) fn end_execution(
        &mut self,
        arn: &str,
        now: i64,
        status: ExecutionStatus,
        result: Result<Value, StateError>,
    ) {
        self.drop_children(arn, 0);
        let Some(exec) = self.execs.get_mut(arn) else {
            return;
        };
        exec.dirty.remove(&0);
        if let Some(t) = exec.threads.remove(&0) {
            if let Status::Task { token, .. } = &t.status {
                self.tokens.remove(token);
            }
            if t.items.is_some() {
                self.batch.deleted_blobs.push((arn.to_string(), 0));
            }
            if t.stored {
                self.batch.deleted_threads.push((arn.to_string(), 0));
            }
            if matches!(t.status, Status::Fanout { .. }) {
                self.forget_results(arn, 0);
            }
        }
        let Some(exec) = self.execs.get_mut(arn) else {
            return;
        };
        exec.rec.status = status;
        exec.rec.stop_ms = Some(now);
        let (ty, key, details) = match (&status, &result) {
            (_, Ok(v)) => {
                exec.rec.output = Some(v.to_string());
                (
                    "ExecutionSucceeded",
                    "executionSucceededEventDetails",
                    json!({"output": v.to_string(), "outputDetails": {"truncated": false}}),
                )
            }
            (s, Err(e)) => {
                exec.rec.error = Some(e.error.clone());
                exec.rec.cause = Some(e.cause.clone());
                match s {
                    ExecutionStatus::Aborted => (
                        "ExecutionAborted",
                        "executionAbortedEventDetails",
                        json!({"error": e.error, "cause": e.cause}),
                    ),
                    ExecutionStatus::TimedOut => (
                        "ExecutionTimedOut",
                        "executionTimedOutEventDetails",
                        json!({"error": e.error, "cause": e.cause}),
                    ),
                    _ => (
                        "ExecutionFailed",
                        "executionFailedEventDetails",
                        json!({"error": e.error, "cause": e.cause}),
                    ),
                }
            }
        };
        self.emit(arn, None, now, ty, key, details);
        self.dirty_execs.insert(arn.to_string());
        self.finished_any = true;
    }
}
