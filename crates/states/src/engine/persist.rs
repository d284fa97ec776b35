//! Durability: resuming every running execution from the store's snapshot, and the group commit
//! of each round's changes.

use std::cmp::Reverse;
use std::sync::Arc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde_json::Value;

use super::{Core, Engine, Exec, FanData, Invocation, Machine, Status, Thread, TimerKind};
use crate::definition::StateMachine;
use crate::error::EngineError;
use crate::store::ExecutionStatus;
use crate::task::{split_resource, TaskRequest};

impl Engine {
    pub(super) fn resume(&self) -> Result<(), EngineError> {
        let snap = self.shared.store.load()?;
        let mut core = self.lock();
        for rec in snap.state_machines {
            let parsed = StateMachine::parse(&rec.definition)?;
            core.machines.insert(
                rec.arn.clone(),
                Machine {
                    rec,
                    parsed: Arc::new(parsed),
                },
            );
        }
        let mut blobs: HashMap<(String, u64), String> = snap
            .blobs
            .into_iter()
            .map(|(a, i, b)| ((a, i), b))
            .collect();
        let mut results: HashMap<(String, u64), Vec<String>> = HashMap::default();
        for (a, i, b) in snap.results {
            results.entry((a, i)).or_default().push(b);
        }
        for rec in snap.executions {
            let Some(m) = core.machines.get(&rec.state_machine_arn) else {
                tracing::warn!(execution = %rec.arn, "execution of an unknown state machine ignored");
                continue;
            };
            let input = serde_json::from_str(&rec.input).unwrap_or(Value::Null);
            let exec = Exec {
                machine: m.parsed.clone(),
                machine_name: m.rec.name.clone(),
                input,
                threads: HashMap::default(),
                dirty: HashSet::default(),
                rec,
            };
            if exec.rec.status == ExecutionStatus::Running {
                if let Some(t) = exec.machine.timeout_seconds {
                    core.timers.push(Reverse((
                        exec.rec.start_ms + t as i64 * 1000,
                        exec.rec.arn.clone(),
                        0,
                        TimerKind::ExecutionTimeout,
                    )));
                }
            }
            core.execs.insert(exec.rec.arn.clone(), exec);
        }
        let mut resumed_tasks = 0;
        for (arn, id, body) in snap.threads {
            let mut t: Thread = serde_json::from_str(&body)
                .map_err(|e| crate::error::StoreError::Corrupt(e.to_string()))?;
            t.stored = true;
            if let Some(chunks) = results.remove(&(arn.clone(), id)) {
                for chunk in chunks {
                    let part: Vec<(u64, Value)> = serde_json::from_str(&chunk)
                        .map_err(|e| crate::error::StoreError::Corrupt(e.to_string()))?;
                    t.results.extend(part);
                }
            }
            if let Some(b) = blobs.remove(&(arn.clone(), id)) {
                let items: FanData = serde_json::from_str(&b)
                    .map_err(|e| crate::error::StoreError::Corrupt(e.to_string()))?;
                t.items = Some(Arc::new(items));
            }
            let Some(exec) = core.execs.get(&arn) else {
                continue;
            };
            if exec.rec.status != ExecutionStatus::Running {
                continue;
            }
            match &t.status {
                Status::Ready { .. } => core.ready.push_back((arn.clone(), id)),
                Status::Sleeping { until, .. } => {
                    core.timers
                        .push(Reverse((*until, arn.clone(), id, TimerKind::Wake)))
                }
                Status::Task {
                    token,
                    resource,
                    task_input,
                    deadline,
                    heartbeat_deadline,
                    submitted,
                    ..
                } => {
                    core.tokens.insert(token.clone(), (arn.clone(), id));
                    if let Some(d) = deadline {
                        core.timers
                            .push(Reverse((*d, arn.clone(), id, TimerKind::TaskTimeout)));
                    }
                    if let Some(d) = heartbeat_deadline {
                        core.timers
                            .push(Reverse((*d, arn.clone(), id, TimerKind::Heartbeat)));
                    }
                    // At-least-once: a task whose result was not committed before the restart runs again.
                    if !submitted {
                        resumed_tasks += 1;
                        let inv = Invocation {
                            handler: self.shared.tasks.lookup(resource),
                            request: TaskRequest {
                                resource: resource.clone(),
                                pattern: split_resource(resource).1,
                                input: task_input.clone(),
                                task_token: token.clone(),
                                execution_arn: arn.clone(),
                                state_name: t.state.clone(),
                            },
                            thread: id,
                        };
                        core.invocations.push((arn.clone(), inv));
                    }
                }
                _ => {}
            }
            if let Some(exec) = core.execs.get_mut(&arn) {
                exec.threads.insert(id, t);
            }
        }
        tracing::info!(
            executions = core.execs.len(),
            resumed_tasks,
            "states engine resumed"
        );
        drop(core);
        self.dispatch_invocations();
        Ok(())
    }

    pub(super) fn commit(&self, core: &mut Core) -> Result<(), EngineError> {
        for arn in std::mem::take(&mut core.dirty_execs) {
            let Some(e) = core.execs.get_mut(&arn) else {
                continue;
            };
            for id in std::mem::take(&mut e.dirty) {
                if let Some(t) = e.threads.get_mut(&id) {
                    let body = serde_json::to_string(t)
                        .map_err(|e| crate::error::StoreError::Corrupt(e.to_string()))?;
                    t.stored = true;
                    core.batch.threads.push((arn.clone(), id, body));
                }
            }
            core.batch.executions.push(e.rec.clone());
        }
        for ((arn, thread), (chunk, mut body)) in core.pending_results.drain() {
            body.push(']');
            core.batch.results.push((arn, thread, chunk, body));
        }
        for (arn, page) in core.pages.drain() {
            core.batch.events.push((arn, page.first, page.body));
        }
        let batch = std::mem::take(&mut core.batch);
        if let Err(e) = self.shared.store.commit(&batch) {
            core.batch = batch;
            return Err(e.into());
        }
        core.undurable_tokens.clear();
        if !core.invocations.is_empty() {
            // Task invocations left by a pump whose commit failed are durable now: the driver
            // hands them out (an API call's commit may have been the one that succeeded).
            self.shared.wake.notify_one();
        }
        // Reuse the history buffers: fresh multi-megabyte allocations cost page faults.
        for (_, _, mut body) in batch.events {
            if core.spare_pages.len() < 4 {
                body.clear();
                core.spare_pages.push(body);
            }
        }
        Ok(())
    }
}

impl Core {
    pub(super) fn dirty_thread(&mut self, arn: &str, id: u64) {
        let Some(e) = self.execs.get_mut(arn) else {
            return;
        };
        if e.dirty.is_empty() {
            self.dirty_execs.insert(arn.to_string());
        }
        e.dirty.insert(id);
    }
}
