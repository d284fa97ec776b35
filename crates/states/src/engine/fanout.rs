//! Parallel and Map: starting children while MaxConcurrency allows, gathering their outputs in
//! order, tolerated failures, and dropping children when the state fails.

use std::sync::Arc;

use serde_json::{json, Value};

use super::history::iteration_details;
use super::states::Ctx;
use super::{Core, FanData, FanKind, Status, Thread};
use crate::definition::{Kind, State};
use crate::error::StateError;

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fan_out(
        &mut self,
        arn: &str,
        tid: u64,
        state: &State,
        now: i64,
        kind: FanKind,
        effective: Value,
        items: Option<Vec<Value>>,
        total: u64,
        max_concurrency: u64,
        tolerated_count: Option<u64>,
        tolerated_pct: Option<f64>,
    ) {
        match kind {
            FanKind::Parallel => {
                self.emit(arn, Some(tid), now, "ParallelStateStarted", "", Value::Null)
            }
            FanKind::Map => self.emit(
                arn,
                Some(tid),
                now,
                "MapStateStarted",
                "mapStateStartedEventDetails",
                json!({"length": total}),
            ),
        }
        let data = FanData {
            effective,
            items: items.unwrap_or_default(),
        };
        match serde_json::to_string(&data) {
            Ok(body) => self.batch.blobs.push((arn.to_string(), tid, body)),
            Err(e) => tracing::error!(error = %e, "states: cannot serialize Map items"),
        }
        if let Some(t) = self
            .execs
            .get_mut(arn)
            .and_then(|e| e.threads.get_mut(&tid))
        {
            t.items = Some(Arc::new(data));
        }
        self.set_status(
            arn,
            tid,
            Status::Fanout {
                kind,
                total,
                next: 0,
                running: 0,
                finished: 0,
                failed: 0,
                max_concurrency,
                tolerated_count,
                tolerated_pct,
            },
        );
        if total == 0 {
            self.collect(arn, tid, state, now);
            return;
        }
        self.launch(arn, tid, state, now);
    }

    /// Starts children while concurrency allows.
    pub(super) fn launch(&mut self, arn: &str, tid: u64, state: &State, now: i64) {
        loop {
            let (kind, index, child) = {
                let exec = &self.execs[arn];
                let parent = &exec.threads[&tid];
                let Status::Fanout {
                    kind,
                    total,
                    next,
                    running,
                    max_concurrency,
                    ..
                } = &parent.status
                else {
                    return;
                };
                if *next >= *total || (*max_concurrency > 0 && *running >= *max_concurrency) {
                    return;
                }
                let index = *next;
                let Some(data) = parent.items.as_ref() else {
                    return;
                };
                let child = match (kind, &state.kind) {
                    (FanKind::Parallel, Kind::Parallel { branches }) => {
                        Ok((branches[index as usize], data.effective.clone()))
                    }
                    (FanKind::Map, Kind::Map(spec)) => {
                        let item = data
                            .items
                            .get(index as usize)
                            .cloned()
                            .unwrap_or(Value::Null);
                        match &spec.item_selector {
                            None => Ok((spec.iterator, item)),
                            Some(tpl) => {
                                let ctx = Ctx {
                                    exec,
                                    state: &state.name,
                                    entered_ms: parent.entered_ms,
                                    retry_count: parent.retries.iter().sum(),
                                    token: None,
                                    item: Some((index, &item)),
                                };
                                tpl.eval(&data.effective, &ctx).map(|i| (spec.iterator, i))
                            }
                        }
                    }
                    _ => return,
                };
                (
                    *kind,
                    index,
                    child.map(|(g, i)| (g, exec.machine.graphs[g].start_at.clone(), i)),
                )
            };
            let (graph, start_at, input) = match child {
                Ok(c) => c,
                Err(e) => {
                    self.fail_fanout(arn, tid, state, now, e);
                    return;
                }
            };
            let exec = self.execs.get_mut(arn).expect("exists");
            let id = exec.rec.next_thread;
            exec.rec.next_thread += 1;
            let parent_prev = exec.threads[&tid].prev_event;
            exec.threads.insert(
                id,
                Thread {
                    id,
                    parent: Some(tid),
                    index,
                    graph,
                    state: start_at,
                    input,
                    entered_ms: now,
                    retries: Vec::new(),
                    prev_event: parent_prev,
                    status: Status::Ready { entered: false },
                    items: None,
                    results: Vec::new(),
                    stored: false,
                    input_text: None,
                },
            );
            if let Some(Status::Fanout { next, running, .. }) =
                exec.threads.get_mut(&tid).map(|t| &mut t.status)
            {
                *next += 1;
                *running += 1;
            }
            self.dirty_execs.insert(arn.to_string());
            self.dirty_thread(arn, tid);
            self.dirty_thread(arn, id);
            if kind == FanKind::Map {
                self.emit_json(
                    arn,
                    Some(id),
                    now,
                    "MapIterationStarted",
                    "mapIterationStartedEventDetails",
                    &iteration_details(&state.name, index),
                );
            }
            self.ready.push_back((arn.to_string(), id));
        }
    }

    /// Removes every descendant of `tid` (their tokens become invalid).
    pub(super) fn drop_children(&mut self, arn: &str, tid: u64) {
        let Some(exec) = self.execs.get_mut(arn) else {
            return;
        };
        let mut stack = vec![tid];
        let mut removed = Vec::new();
        let mut fanouts = Vec::new();
        while let Some(p) = stack.pop() {
            let kids: Vec<u64> = exec
                .threads
                .values()
                .filter(|t| t.parent == Some(p))
                .map(|t| t.id)
                .collect();
            for k in kids {
                if let Some(t) = exec.threads.remove(&k) {
                    if let Status::Task { token, .. } = &t.status {
                        self.tokens.remove(token);
                    }
                    if t.items.is_some() {
                        self.batch.deleted_blobs.push((arn.to_string(), k));
                    }
                    removed.push((k, t.stored));
                    // Only a Parallel/Map still waiting has children (and results) of its own.
                    if matches!(t.status, Status::Fanout { .. }) {
                        stack.push(k);
                        fanouts.push(k);
                    }
                }
            }
        }
        for (k, stored) in removed {
            exec.dirty.remove(&k);
            if stored {
                self.batch.deleted_threads.push((arn.to_string(), k));
            }
        }
        for k in fanouts {
            self.forget_results(arn, k);
        }
    }

    pub(super) fn fail_fanout(
        &mut self,
        arn: &str,
        tid: u64,
        state: &State,
        now: i64,
        err: StateError,
    ) {
        self.drop_children(arn, tid);
        self.clear_items(arn, tid);
        self.clear_results(arn, tid);
        let ty = if matches!(state.kind, Kind::Map(_)) {
            "MapStateFailed"
        } else {
            "ParallelStateFailed"
        };
        self.emit(arn, Some(tid), now, ty, "", Value::Null);
        self.set_status(arn, tid, Status::Ready { entered: true });
        self.handle_error(arn, tid, state, now, err);
        self.requeue(arn, tid);
    }

    /// Forgets the children's results of a Parallel/Map that is done (or being dropped).
    pub(super) fn clear_results(&mut self, arn: &str, tid: u64) {
        if let Some(t) = self
            .execs
            .get_mut(arn)
            .and_then(|e| e.threads.get_mut(&tid))
        {
            t.results = Vec::new();
        }
        self.forget_results(arn, tid);
    }

    /// Drops the stored result chunks of a Parallel/Map: this commit's, those of a failed commit
    /// being retried, and (by a delete that runs before this commit's inserts) earlier ones.
    pub(super) fn forget_results(&mut self, arn: &str, tid: u64) {
        let key = (arn.to_string(), tid);
        self.pending_results.remove(&key);
        self.batch.results.retain(|r| r.0 != arn || r.1 != tid);
        self.batch.deleted_results.push(key);
    }

    /// Records a finished child's output in its parent, in memory and in this commit's chunk.
    pub(super) fn add_result(&mut self, arn: &str, pid: u64, index: u64, value: Value) {
        use std::fmt::Write as _;
        let (_, body) = self
            .pending_results
            .entry((arn.to_string(), pid))
            .or_insert_with(|| (index, String::from("[")));
        if body.len() > 1 {
            body.push(',');
        }
        let _ = write!(body, "[{index},{value}]");
        if let Some(p) = self
            .execs
            .get_mut(arn)
            .and_then(|e| e.threads.get_mut(&pid))
        {
            p.results.push((index, value));
        }
    }

    pub(super) fn clear_items(&mut self, arn: &str, tid: u64) {
        if let Some(t) = self
            .execs
            .get_mut(arn)
            .and_then(|e| e.threads.get_mut(&tid))
        {
            if t.items.take().is_some() {
                self.batch.deleted_blobs.push((arn.to_string(), tid));
            }
        }
    }

    /// All children are done: gather their outputs in order and finish the parent state.
    pub(super) fn collect(&mut self, arn: &str, tid: u64, state: &State, now: i64) {
        let mut kids = self
            .execs
            .get_mut(arn)
            .and_then(|e| e.threads.get_mut(&tid))
            .map(|t| std::mem::take(&mut t.results))
            .unwrap_or_default();
        kids.sort_unstable_by_key(|k| k.0);
        let result = Value::Array(kids.into_iter().map(|k| k.1).collect());
        self.drop_children(arn, tid);
        self.clear_items(arn, tid);
        self.clear_results(arn, tid);
        let ty = if matches!(state.kind, Kind::Map(_)) {
            "MapStateSucceeded"
        } else {
            "ParallelStateSucceeded"
        };
        self.emit(arn, Some(tid), now, ty, "", Value::Null);
        self.set_status(arn, tid, Status::Ready { entered: true });
        self.finish_state(arn, tid, now, result);
    }
}
