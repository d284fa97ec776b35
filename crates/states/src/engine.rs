//! The execution engine: a single-owner core (behind a mutex) that steps "threads" (the root of an
//! execution, each Parallel branch, each Map iteration) and group-commits every change to the store
//! before anything outside can observe it: task handlers are only invoked, and API calls only
//! return, after the transitions that led there are committed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

// Fx hashing: the maps are keyed by ARNs and ids the engine made itself, looked up several times
// per transition; SipHash's flooding resistance buys nothing here and costs a tenth of the time.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::clock::{format_ms, Clock};
use crate::definition::{
    error_matches, is_terminal, Count, Kind, Percentage, State, StateMachine, Transition, WaitFor,
};
use crate::error::{names, EngineError, StateError, StoreError};
use crate::paths::{apply_filter, apply_result_path, ContextSource};
use crate::store::{Batch, ExecutionRecord, ExecutionStatus, StateMachineRecord, Store};
use crate::task::{resource_parts, split_resource, Pattern, TaskRegistry, TaskRequest};

const ACCOUNT: &str = "000000000000";
/// Transitions of one thread before it yields to the others (fairness between executions).
const SLICE: usize = 64;
/// Transitions per group commit.
const BUDGET: usize = 2048;

pub struct EngineConfig {
    pub store: Arc<dyn Store>,
    pub tasks: TaskRegistry,
    pub clock: Arc<dyn Clock>,
    /// Used in ARNs (`arn:aws:states:<region>:000000000000:…`).
    pub region: String,
}

/// What `describe_execution` returns, with the Step Functions member names.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionDescription {
    pub execution_arn: String,
    pub state_machine_arn: String,
    pub name: String,
    pub status: ExecutionStatus,
    /// Milliseconds since the epoch.
    pub start_date: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_date: Option<i64>,
    pub input: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl From<&ExecutionRecord> for ExecutionDescription {
    fn from(r: &ExecutionRecord) -> Self {
        ExecutionDescription {
            execution_arn: r.arn.clone(),
            state_machine_arn: r.state_machine_arn.clone(),
            name: r.name.clone(),
            status: r.status,
            start_date: r.start_ms,
            stop_date: r.stop_ms,
            input: r.input.clone(),
            output: r.output.clone(),
            error: r.error.clone(),
            cause: r.cause.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum FanKind {
    Parallel,
    Map,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Status {
    Ready {
        entered: bool,
    },
    /// A Wait state (`output` is what it passes on) or a retry backoff (`output` is None).
    Sleeping {
        until: i64,
        output: Option<Value>,
    },
    Task {
        token: String,
        resource: String,
        task_input: Value,
        deadline: Option<i64>,
        heartbeat_secs: Option<u64>,
        heartbeat_deadline: Option<i64>,
        /// `.waitForTaskToken` and the handler has returned: only the token can finish the task.
        submitted: bool,
    },
    Fanout {
        kind: FanKind,
        total: u64,
        next: u64,
        running: u64,
        finished: u64,
        failed: u64,
        max_concurrency: u64,
        tolerated_count: Option<u64>,
        tolerated_pct: Option<f64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Thread {
    id: u64,
    parent: Option<u64>,
    index: u64,
    graph: usize,
    state: String,
    input: Value,
    entered_ms: i64,
    retries: Vec<u32>,
    prev_event: u64,
    status: Status,
    /// Children's inputs, stored once in a blob rather than in every write of this row.
    #[serde(skip)]
    items: Option<Arc<FanData>>,
    /// Outputs of the finished children of a Parallel/Map, (index, output) in finishing order.
    /// Stored in result chunks (one per commit) rather than one row per child.
    #[serde(skip)]
    results: Vec<(u64, Value)>,
    /// A row for this thread has been handed to the store, so removing the thread must delete it.
    /// Threads that start and end within one commit never cost a row.
    #[serde(skip)]
    stored: bool,
    /// `input` as JSON text when the previous state's StateExited event already produced it.
    #[serde(skip)]
    input_text: Option<String>,
}

/// One execution's history events of the current commit, in the form `expand_page` reads.
struct Page {
    /// Id of the first event; the others follow one by one.
    first: u64,
    /// Timestamp of the last event (lines carry the difference to the one before).
    last_ms: i64,
    body: String,
}

/// What a Parallel or Map state hands to its children.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FanData {
    effective: Value,
    items: Vec<Value>,
}

struct Exec {
    rec: ExecutionRecord,
    machine: Arc<StateMachine>,
    machine_name: String,
    input: Value,
    threads: HashMap<u64, Thread>,
    /// Threads changed since the last commit.
    dirty: HashSet<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Wake,
    TaskTimeout,
    Heartbeat,
    ExecutionTimeout,
}

type Timer = Reverse<(i64, String, u64, TimerKind)>;

struct Invocation {
    handler: Option<Arc<dyn crate::task::TaskHandler>>,
    request: TaskRequest,
    thread: u64,
}

struct Completion {
    arn: String,
    thread: u64,
    token: String,
    pattern: Pattern,
    result: Result<Value, StateError>,
}

struct Machine {
    rec: StateMachineRecord,
    parsed: Arc<StateMachine>,
}

#[derive(Default)]
struct Core {
    machines: HashMap<String, Machine>,
    execs: HashMap<String, Exec>,
    ready: VecDeque<(String, u64)>,
    timers: BinaryHeap<Timer>,
    tokens: HashMap<String, (String, u64)>,
    completions: VecDeque<Completion>,
    in_flight: usize,
    batch: Batch,
    /// History events of this commit, one page per execution (see `expand_page`).
    pages: HashMap<String, Page>,
    spare_pages: Vec<String>,
    /// Result chunks of this commit: (execution, parent thread) → (chunk key, JSON array body).
    pending_results: HashMap<(String, u64), (u64, String)>,
    dirty_execs: HashSet<String>,
    invocations: Vec<(String, Invocation)>,
    finished_any: bool,
    transitions: u64,
}

struct Shared {
    core: Mutex<Core>,
    store: Arc<dyn Store>,
    tasks: TaskRegistry,
    clock: Arc<dyn Clock>,
    region: String,
    wake: Notify,
    finished: watch::Sender<u64>,
}

/// The engine. Cheap to clone; all clones drive the same executions.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=80).contains(&n)
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>{}[]?*\"#%\\^|~`$&,;:/".contains(c))
}

impl Engine {
    /// Opens the engine over a store and resumes every running execution found in it.
    pub fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        let (finished, _) = watch::channel(0);
        let engine = Engine {
            shared: Arc::new(Shared {
                core: Mutex::new(Core::default()),
                store: config.store,
                tasks: config.tasks,
                clock: config.clock,
                region: config.region,
                wake: Notify::new(),
                finished,
            }),
        };
        engine.resume()?;
        Ok(engine)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        self.shared.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    fn resume(&self) -> Result<(), EngineError> {
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

    fn arn_prefix(&self, kind: &str) -> String {
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
                return Ok(ExecutionDescription::from(&existing.rec));
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

    fn complete_token(
        &self,
        token: &str,
        result: Result<Value, StateError>,
    ) -> Result<(), EngineError> {
        let mut core = self.lock();
        let (arn, tid) = core.token_owner(token)?;
        core.completions.push_back(Completion {
            arn,
            thread: tid,
            token: token.to_string(),
            pattern: Pattern::RequestResponse,
            result,
        });
        drop(core);
        // Apply now so the caller knows the token was consumed and the result is durable.
        self.pump();
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Steps every execution until nothing can move without the clock advancing or an outside
    /// call (task token, stop). Task handlers that are running are awaited. For tests and hosts
    /// that step deterministically with a [`crate::ManualClock`].
    pub async fn run_until_idle(&self) {
        loop {
            let notified = self.shared.wake.notified();
            if self.pump() {
                continue;
            }
            if self.lock().in_flight == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Drives executions on real time until the returned task is aborted. Hosts that do not step
    /// the engine themselves spawn this once.
    pub fn spawn_driver(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                let notified = engine.shared.wake.notified();
                while engine.pump() {
                    tokio::task::yield_now().await;
                }
                let next = engine.lock().timers.peek().map(|Reverse((t, ..))| *t);
                match next {
                    Some(t) => {
                        let wait = (t - engine.now()).max(0) as u64;
                        tokio::select! {
                            _ = notified => {}
                            _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
                        }
                    }
                    None => notified.await,
                }
            }
        })
    }

    /// Waits until the execution is no longer running (needs a driver or another task stepping).
    pub async fn wait_for(&self, arn: &str) -> Result<ExecutionDescription, EngineError> {
        let mut rx = self.shared.finished.subscribe();
        loop {
            let d = self.describe_execution(arn)?;
            if d.status != ExecutionStatus::Running {
                return Ok(d);
            }
            if rx.changed().await.is_err() {
                return Ok(d);
            }
        }
    }

    /// The earliest pending timer (Wait, retry backoff, timeouts), for hosts that step a
    /// [`crate::ManualClock`] forward to it.
    pub fn next_deadline(&self) -> Option<i64> {
        let core = self.lock();
        core.timers.iter().map(|Reverse((t, ..))| *t).min()
    }

    /// Number of state transitions made since the engine was opened.
    pub fn transitions(&self) -> u64 {
        self.lock().transitions
    }

    /// Does one round of work; true if anything moved.
    fn pump(&self) -> bool {
        let now = self.now();
        let mut core = self.lock();
        let mut progressed = false;
        while let Some(c) = core.completions.pop_front() {
            progressed = true;
            core.apply_completion(c, now);
        }
        while let Some(Reverse((t, ..))) = core.timers.peek() {
            if *t > now {
                break;
            }
            let Reverse((t, arn, tid, kind)) = core.timers.pop().expect("peeked");
            progressed |= core.fire_timer(t, &arn, tid, kind, now);
        }
        let mut budget = BUDGET;
        while budget > 0 {
            let Some((arn, tid)) = core.ready.pop_front() else {
                break;
            };
            progressed = true;
            let used = core.run_thread(&self.shared.tasks, &arn, tid, now, SLICE);
            budget = budget.saturating_sub(used.max(1));
        }
        if !progressed && core.invocations.is_empty() {
            return false;
        }
        if let Err(e) = self.commit(&mut core) {
            // Without a durable record nothing may go on; the next pump retries the same batch.
            tracing::error!(error = %e, "states: commit failed");
            return false;
        }
        let finished = std::mem::take(&mut core.finished_any);
        drop(core);
        if finished {
            self.shared.finished.send_modify(|n| *n += 1);
        }
        self.dispatch_invocations();
        true
    }

    fn commit(&self, core: &mut Core) -> Result<(), EngineError> {
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
        // Reuse the history buffers: fresh multi-megabyte allocations cost page faults.
        for (_, _, mut body) in batch.events {
            if core.spare_pages.len() < 4 {
                body.clear();
                core.spare_pages.push(body);
            }
        }
        Ok(())
    }

    fn dispatch_invocations(&self) {
        let invocations = std::mem::take(&mut self.lock().invocations);
        for (arn, inv) in invocations {
            self.lock().in_flight += 1;
            let shared = self.shared.clone();
            let token = inv.request.task_token.clone();
            let pattern = inv.request.pattern;
            tokio::spawn(async move {
                let result = match inv.handler {
                    Some(h) => h.invoke(inv.request).await,
                    None => Err(StateError::new(
                        names::TASK_FAILED,
                        format!(
                            "no task handler is registered for resource '{}'",
                            inv.request.resource
                        ),
                    )),
                };
                let mut core = shared.core.lock().unwrap_or_else(|e| e.into_inner());
                core.in_flight -= 1;
                core.completions.push_back(Completion {
                    arn,
                    thread: inv.thread,
                    token,
                    pattern,
                    result,
                });
                drop(core);
                shared.wake.notify_one();
            });
        }
    }
}

/// The context object (`$$`) as seen from one state, built only when a path asks for it.
struct Ctx<'a> {
    exec: &'a Exec,
    state: &'a str,
    entered_ms: i64,
    retry_count: u32,
    token: Option<&'a str>,
    item: Option<(u64, &'a Value)>,
}

impl ContextSource for Ctx<'_> {
    fn context(&self) -> Value {
        let mut c = json!({
            "Execution": {
                "Id": self.exec.rec.arn,
                "Input": self.exec.input,
                "Name": self.exec.rec.name,
                "RoleArn": format!("arn:aws:iam::{ACCOUNT}:role/tern-states"),
                "StartTime": format_ms(self.exec.rec.start_ms),
                "RedriveCount": 0,
            },
            "State": {
                "EnteredTime": format_ms(self.entered_ms),
                "Name": self.state,
                "RetryCount": self.retry_count,
            },
            "StateMachine": {
                "Id": self.exec.rec.state_machine_arn,
                "Name": self.exec.machine_name,
            },
        });
        if let Some(t) = self.token {
            c["Task"] = json!({ "Token": t });
        }
        if let Some((i, v)) = self.item {
            c["Map"] = json!({"Item": {"Index": i, "Value": v}});
        }
        c
    }
}

enum Outcome {
    Continue(Value),
    End(Value),
    Goto(String, Value),
    Sleep(i64, Value),
    Invoke {
        resource: String,
        task_input: Value,
        timeout: Option<u64>,
        heartbeat: Option<u64>,
    },
    Fanout {
        kind: FanKind,
        effective: Value,
        items: Option<Vec<Value>>,
        total: u64,
        max_concurrency: u64,
        tolerated_count: Option<u64>,
        tolerated_pct: Option<f64>,
    },
}

fn count(
    c: &Option<Count>,
    input: &Value,
    ctx: &dyn ContextSource,
    field: &str,
) -> Result<Option<u64>, StateError> {
    match c {
        None => Ok(None),
        Some(Count::Fixed(n)) => Ok(Some(*n)),
        Some(Count::Path(p)) => {
            let v = p.require(input, ctx, field)?;
            v.as_u64().map(Some).ok_or_else(|| {
                StateError::runtime(format!(
                    "{field}: '{}' must select a non-negative integer, got {v}",
                    p.raw()
                ))
            })
        }
    }
}

/// Runs one state's logic that does not depend on the outside (tasks and children are started
/// by the caller from the returned outcome).
fn execute(
    exec: &Exec,
    t: &Thread,
    state: &State,
    tasks: &TaskRegistry,
    now: i64,
) -> Result<Outcome, StateError> {
    let ctx = Ctx {
        exec,
        state: &state.name,
        entered_ms: t.entered_ms,
        retry_count: t.retries.iter().sum(),
        token: None,
        item: None,
    };
    let raw = &t.input;
    let effective = apply_filter(&state.input_path, raw, &ctx, "InputPath")?;
    let with_parameters = |effective: Value| -> Result<Value, StateError> {
        match &state.parameters {
            Some(tpl) => tpl.eval(&effective, &ctx),
            None => Ok(effective),
        }
    };
    let finish = |result: Value| -> Result<Value, StateError> {
        let merged = apply_result_path(&state.result_path, raw, result)?;
        apply_filter(&state.output_path, &merged, &ctx, "OutputPath")
    };
    match &state.kind {
        Kind::Pass { result } => {
            let r = match result {
                Some(r) => r.clone(),
                None => with_parameters(effective)?,
            };
            Ok(Outcome::Continue(finish(r)?))
        }
        Kind::Task {
            resource,
            timeout,
            heartbeat,
        } => {
            let resource = tasks.substitute(resource);
            let timeout_v = count(timeout, &effective, &ctx, "TimeoutSecondsPath")?;
            let heartbeat_v = count(heartbeat, &effective, &ctx, "HeartbeatSecondsPath")?;
            // `$$.Task.Token` is only meaningful once a token exists; it is filled in by the caller.
            let token_ctx = Ctx {
                token: Some("\u{0}token"),
                ..ctx
            };
            let task_input = match &state.parameters {
                Some(tpl) => tpl.eval(&effective, &token_ctx)?,
                None => effective,
            };
            Ok(Outcome::Invoke {
                resource,
                task_input,
                timeout: timeout_v,
                heartbeat: heartbeat_v,
            })
        }
        Kind::Choice { choices, default } => {
            for c in choices {
                if c.rule.eval(&effective, &ctx)? {
                    let out = apply_filter(&state.output_path, &effective, &ctx, "OutputPath")?;
                    return Ok(Outcome::Goto(c.next.clone(), out));
                }
            }
            match default {
                Some(d) => {
                    let out = apply_filter(&state.output_path, &effective, &ctx, "OutputPath")?;
                    Ok(Outcome::Goto(d.clone(), out))
                }
                None => Err(StateError::new(
                    names::NO_CHOICE_MATCHED,
                    format!(
                        "No Choice Rule matched and no Default is set in state '{}'",
                        state.name
                    ),
                )),
            }
        }
        Kind::Wait(w) => {
            let until = match w {
                WaitFor::Seconds(s) => now + *s as i64 * 1000,
                WaitFor::Timestamp(ts) => *ts,
                WaitFor::SecondsPath(p) => {
                    let v = p.require(&effective, &ctx, "SecondsPath")?;
                    match v.as_u64() {
                        Some(s) => now + s as i64 * 1000,
                        None => {
                            return Err(StateError::runtime(format!(
                                "SecondsPath '{}' must select a non-negative integer, got {v}",
                                p.raw()
                            )))
                        }
                    }
                }
                WaitFor::TimestampPath(p) => {
                    let v = p.require(&effective, &ctx, "TimestampPath")?;
                    match v.as_str().and_then(crate::definition::parse_timestamp) {
                        Some(ts) => ts,
                        None => {
                            return Err(StateError::runtime(format!(
                                "TimestampPath '{}' must select an RFC 3339 timestamp, got {v}",
                                p.raw()
                            )))
                        }
                    }
                }
            };
            let out = apply_filter(&state.output_path, &effective, &ctx, "OutputPath")?;
            Ok(Outcome::Sleep(until, out))
        }
        Kind::Succeed => Ok(Outcome::End(apply_filter(
            &state.output_path,
            &effective,
            &ctx,
            "OutputPath",
        )?)),
        Kind::Fail { error, cause } => {
            let text = |t: &Option<crate::definition::Text>| -> Result<String, StateError> {
                Ok(match t {
                    None => String::new(),
                    Some(crate::definition::Text::Literal(s)) => s.clone(),
                    Some(crate::definition::Text::Path(p)) => match p.require(raw, &ctx, "Fail")? {
                        Value::String(s) => s,
                        other => {
                            return Err(StateError::runtime(format!(
                                "'{}' must select a string, got {other}",
                                p.raw()
                            )))
                        }
                    },
                    Some(crate::definition::Text::Intrinsic(f)) => match f.eval(raw, &ctx)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    },
                })
            };
            Err(StateError::new(text(error)?, text(cause)?))
        }
        Kind::Parallel { branches } => Ok(Outcome::Fanout {
            kind: FanKind::Parallel,
            effective: with_parameters(effective)?,
            items: None,
            total: branches.len() as u64,
            max_concurrency: 0,
            tolerated_count: None,
            tolerated_pct: None,
        }),
        Kind::Map(spec) => {
            let items = match &spec.items_path {
                Some(p) => p.require(&effective, &ctx, "ItemsPath")?,
                None => effective.clone(),
            };
            let Value::Array(items) = items else {
                return Err(StateError::runtime(format!(
                    "ItemsPath must select an array in Map state '{}'",
                    state.name
                )));
            };
            let max_concurrency = count(
                &spec.max_concurrency,
                &effective,
                &ctx,
                "MaxConcurrencyPath",
            )?
            .unwrap_or(0);
            let tolerated_count = count(
                &spec.tolerated_count,
                &effective,
                &ctx,
                "ToleratedFailureCountPath",
            )?;
            let tolerated_pct = match &spec.tolerated_percentage {
                None => None,
                Some(Percentage::Fixed(x)) => Some(*x),
                Some(Percentage::Path(p)) => {
                    let v = p.require(&effective, &ctx, "ToleratedFailurePercentagePath")?;
                    match v.as_f64() {
                        Some(x) if (0.0..=100.0).contains(&x) => Some(x),
                        _ => return Err(StateError::runtime(format!("ToleratedFailurePercentagePath must select a number from 0 to 100, got {v}"))),
                    }
                }
            };
            Ok(Outcome::Fanout {
                kind: FanKind::Map,
                total: items.len() as u64,
                effective,
                items: Some(items),
                max_concurrency,
                tolerated_count,
                tolerated_pct,
            })
        }
    }
}

/// Replaces the placeholder token that `execute` put where `$$.Task.Token` was read.
fn fill_token(v: &mut Value, token: &str) {
    match v {
        Value::String(s) if s == "\u{0}token" => *s = token.to_string(),
        Value::Array(a) => a.iter_mut().for_each(|x| fill_token(x, token)),
        Value::Object(o) => o.values_mut().for_each(|x| fill_token(x, token)),
        _ => {}
    }
}

/// Writes `s` as a JSON string literal, copying the runs that need no escaping in one go.
fn push_json_string(buf: &mut String, s: &str) {
    use std::fmt::Write as _;
    buf.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Escaped bytes are ASCII, so these slice boundaries are character boundaries.
        buf.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(buf, "\\u{:04x}", b);
        } else {
            buf.push_str(escape);
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

/// Appends a non-negative integer without going through `fmt`.
fn push_u64(buf: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

/// Turns a history page written by `Core::emit_with` into the API's events. Line n is event
/// `first + n`: `<ms since the line before (the first: since the epoch)>,<id − previous id>,`
/// then one of
/// * `E|X<state type>,<name as a JSON string><input/output JSON>`: StateEntered / StateExited;
/// * `D<type>,<details JSON>`: the details under `<type in lower camel case>EventDetails`;
/// * `N<type>`: no details; `G<type>,<details key>,<details JSON>`: any other key.
fn expand_page(first: u64, page: &str, out: &mut Vec<Value>) -> Result<(), StoreError> {
    let corrupt = |line: &str| StoreError::Corrupt(format!("bad history line: {line}"));
    let mut json = String::with_capacity(256);
    let mut ms: i64 = 0;
    // Split on '\n' only: `lines()` would also eat a '\r' (none is written, but be exact).
    for (n, line) in page.split('\n').enumerate() {
        let mut parts = line.splitn(3, ',');
        let (Some(ms_delta), Some(back), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(corrupt(line));
        };
        let (Some(id), Ok(dt), Ok(back)) = (
            first.checked_add(n as u64),
            ms_delta.parse::<i64>(),
            back.parse::<u64>(),
        ) else {
            return Err(corrupt(line));
        };
        ms = ms.checked_add(dt).ok_or_else(|| corrupt(line))?;
        let prev = id.checked_sub(back).ok_or_else(|| corrupt(line))?;
        json.clear();
        // Epoch seconds with milliseconds, as the API's timestamps.
        json.push_str(r#"{"timestamp":"#);
        push_u64(&mut json, ms.div_euclid(1000).max(0) as u64);
        let frac = ms.rem_euclid(1000) as u64;
        json.push('.');
        if frac < 100 {
            json.push('0');
        }
        if frac < 10 {
            json.push('0');
        }
        push_u64(&mut json, frac);
        json.push_str(r#","type":""#);
        let mut details_key = String::new();
        let mut details = String::new();
        match body.as_bytes().first() {
            Some(b'N') => json.push_str(&body[1..]),
            Some(b'D') => {
                let (ty, d) = body[1..].split_once(',').ok_or_else(|| corrupt(line))?;
                json.push_str(ty);
                let mut chars = ty.chars();
                details_key.extend(chars.next().map(|c| c.to_ascii_lowercase()));
                details_key.push_str(chars.as_str());
                details_key.push_str("EventDetails");
                details.push_str(d);
            }
            Some(b'G') => {
                let mut parts = body[1..].splitn(3, ',');
                let (Some(ty), Some(key), Some(d)) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(corrupt(line));
                };
                json.push_str(ty);
                details_key.push_str(key);
                details.push_str(d);
            }
            Some(&c @ (b'E' | b'X')) => {
                let (ty, rest) = body[1..].split_once(',').ok_or_else(|| corrupt(line))?;
                let name_len = json_string_len(rest).ok_or_else(|| corrupt(line))?;
                let (name, data) = rest.split_at(name_len);
                let (suffix, field) = if c == b'E' {
                    details_key.push_str("stateEnteredEventDetails");
                    ("StateEntered", "input")
                } else {
                    details_key.push_str("stateExitedEventDetails");
                    ("StateExited", "output")
                };
                json.push_str(ty);
                json.push_str(suffix);
                details.push_str(r#"{"name":"#);
                details.push_str(name);
                details.push_str(",\"");
                details.push_str(field);
                details.push_str("\":");
                push_json_string(&mut details, data);
                details.push_str(",\"");
                details.push_str(field);
                details.push_str(r#"Details":{"truncated":false}}"#);
            }
            _ => return Err(corrupt(line)),
        }
        json.push_str(r#"","id":"#);
        push_u64(&mut json, id);
        json.push_str(r#","previousEventId":"#);
        push_u64(&mut json, prev);
        if !details_key.is_empty() {
            json.push_str(",\"");
            json.push_str(&details_key);
            json.push_str("\":");
            json.push_str(&details);
        }
        json.push('}');
        out.push(serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    }
    Ok(())
}

/// Length in bytes of the JSON string literal that `s` starts with (quotes included).
fn json_string_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// `{"name": …, "index": …}` of the MapIteration* events.
fn iteration_details(name: &str, index: u64) -> String {
    format!(
        r#"{{"name":{},"index":{index}}}"#,
        serde_json::to_string(name).unwrap_or_default()
    )
}

fn error_output(e: &StateError) -> Value {
    json!({"Error": e.error, "Cause": e.cause})
}

impl Core {
    fn dirty_thread(&mut self, arn: &str, id: u64) {
        let Some(e) = self.execs.get_mut(arn) else {
            return;
        };
        if e.dirty.is_empty() {
            self.dirty_execs.insert(arn.to_string());
        }
        e.dirty.insert(id);
    }

    fn token_owner(&self, token: &str) -> Result<(String, u64), EngineError> {
        match self.tokens.get(token) {
            Some((a, t)) => Ok((a.clone(), *t)),
            None if token.len() < 16 => Err(EngineError::InvalidToken(token.to_string())),
            None => Err(EngineError::TaskTimedOut(token.to_string())),
        }
    }

    /// Appends a history event; `thread` chains `previousEventId` per thread.
    fn emit(
        &mut self,
        arn: &str,
        thread: Option<u64>,
        now: i64,
        ty: &str,
        key: &str,
        details: Value,
    ) {
        let details = if key.is_empty() {
            String::new()
        } else {
            details.to_string()
        };
        self.emit_raw(arn, thread, now, &[ty], key, &details);
    }

    fn emit_json(
        &mut self,
        arn: &str,
        thread: Option<u64>,
        now: i64,
        ty: &str,
        key: &str,
        details: &str,
    ) {
        self.emit_raw(arn, thread, now, &[ty], key, details);
    }

    /// StateEntered / StateExited, the hot events, written straight into the page in the compact
    /// form (see [`expand_page`]).
    fn emit_state(
        &mut self,
        arn: &str,
        tid: u64,
        now: i64,
        state: &State,
        entered: bool,
        data: &str,
    ) {
        self.emit_with(arn, Some(tid), now, |buf| {
            buf.push(if entered { 'E' } else { 'X' });
            buf.push_str(state.kind.type_name());
            buf.push(',');
            push_json_string(buf, &state.name);
            buf.push_str(data);
        });
    }

    fn emit_raw(
        &mut self,
        arn: &str,
        thread: Option<u64>,
        now: i64,
        ty: &[&str],
        key: &str,
        details: &str,
    ) {
        // Every details key is the type's name in lower camel case + "EventDetails": say so
        // with one letter instead of spelling the key out.
        let derived = {
            let mut name = ty.iter().flat_map(|p| p.chars());
            let first = name.next();
            let mut key_chars = key.chars();
            key_chars.next() == first.map(|c| c.to_ascii_lowercase())
                && key_chars
                    .as_str()
                    .strip_suffix("EventDetails")
                    .is_some_and(|rest| rest.chars().eq(name))
        };
        self.emit_with(arn, thread, now, |buf| {
            buf.push(if key.is_empty() {
                'N'
            } else if derived {
                'D'
            } else {
                'G'
            });
            for part in ty {
                buf.push_str(part);
            }
            if !key.is_empty() {
                buf.push(',');
                if !derived {
                    buf.push_str(key);
                    buf.push(',');
                }
                buf.push_str(details);
            }
        });
    }

    /// Appends a history event to the execution's page of this commit; `thread` chains
    /// `previousEventId` per thread. Pages hold one line per event in a compact form that
    /// [`expand_page`] turns into the API's JSON on read (a fifth of the bytes of the JSON form,
    /// which is what makes durable histories cheap).
    fn emit_with(
        &mut self,
        arn: &str,
        thread: Option<u64>,
        now: i64,
        body: impl FnOnce(&mut String),
    ) {
        let Some(exec) = self.execs.get_mut(arn) else {
            return;
        };
        let id = exec.rec.next_event;
        exec.rec.next_event += 1;
        let prev = match thread.and_then(|t| exec.threads.get_mut(&t)) {
            Some(t) => std::mem::replace(&mut t.prev_event, id),
            None => id - 1,
        };
        let page = match self.pages.get_mut(arn) {
            Some(p) => p,
            None => {
                self.dirty_execs.insert(arn.to_string());
                let body = self
                    .spare_pages
                    .pop()
                    .unwrap_or_else(|| String::with_capacity(64 * 1024));
                self.pages.entry(arn.to_string()).or_insert(Page {
                    first: id,
                    last_ms: 0,
                    body,
                })
            }
        };
        let buf = &mut page.body;
        if !buf.is_empty() {
            buf.push('\n');
        }
        let dt = now - std::mem::replace(&mut page.last_ms, now);
        if dt < 0 {
            buf.push('-');
        }
        push_u64(buf, dt.unsigned_abs());
        buf.push(',');
        // A thread's previous event always comes before it.
        push_u64(buf, id.saturating_sub(prev));
        buf.push(',');
        body(buf);
    }

    /// Steps one thread up to `slice` transitions; returns how many were made.
    fn run_thread(
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

    fn set_status(&mut self, arn: &str, tid: u64, status: Status) {
        if let Some(t) = self
            .execs
            .get_mut(arn)
            .and_then(|e| e.threads.get_mut(&tid))
        {
            t.status = status;
            self.dirty_thread(arn, tid);
        }
    }

    fn state_of(&self, arn: &str, tid: u64) -> Option<(Arc<StateMachine>, usize, String)> {
        let e = self.execs.get(arn)?;
        let t = e.threads.get(&tid)?;
        Some((e.machine.clone(), t.graph, t.state.clone()))
    }

    fn exit_event(&mut self, arn: &str, tid: u64, state: &State, now: i64, out: &Value) {
        if matches!(state.kind, Kind::Fail { .. }) {
            return;
        }
        self.emit_state(arn, tid, now, state, false, &out.to_string());
    }

    fn transition(&mut self, arn: &str, tid: u64, state: &State, now: i64, out: Value) {
        match &state.transition {
            Transition::Next(n) => self.goto(arn, tid, state, now, n.clone(), out),
            _ => {
                self.exit_event(arn, tid, state, now, &out);
                self.end_thread(arn, tid, now, Ok(out));
            }
        }
    }

    fn goto(&mut self, arn: &str, tid: u64, state: &State, now: i64, next: String, out: Value) {
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
    fn finish_state(&mut self, arn: &str, tid: u64, now: i64, result: Value) {
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

    fn requeue(&mut self, arn: &str, tid: u64) {
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
    fn handle_error(&mut self, arn: &str, tid: u64, state: &State, now: i64, err: StateError) {
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

    #[allow(clippy::too_many_arguments)]
    fn schedule_task(
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

    fn apply_completion(&mut self, c: Completion, now: i64) {
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

    fn fire_timer(&mut self, when: i64, arn: &str, tid: u64, kind: TimerKind, now: i64) -> bool {
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

    fn task_timed_out(&mut self, arn: &str, tid: u64, now: i64, token: &str, err: StateError) {
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

    #[allow(clippy::too_many_arguments)]
    fn fan_out(
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
    fn launch(&mut self, arn: &str, tid: u64, state: &State, now: i64) {
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
    fn drop_children(&mut self, arn: &str, tid: u64) {
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

    fn fail_fanout(&mut self, arn: &str, tid: u64, state: &State, now: i64, err: StateError) {
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
    fn clear_results(&mut self, arn: &str, tid: u64) {
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
    fn forget_results(&mut self, arn: &str, tid: u64) {
        let key = (arn.to_string(), tid);
        self.pending_results.remove(&key);
        self.batch.results.retain(|r| r.0 != arn || r.1 != tid);
        self.batch.deleted_results.push(key);
    }

    /// Records a finished child's output in its parent, in memory and in this commit's chunk.
    fn add_result(&mut self, arn: &str, pid: u64, index: u64, value: Value) {
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

    fn clear_items(&mut self, arn: &str, tid: u64) {
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
    fn collect(&mut self, arn: &str, tid: u64, state: &State, now: i64) {
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

    /// A thread reached the end of its graph (or failed without a catcher).
    fn end_thread(&mut self, arn: &str, tid: u64, now: i64, result: Result<Value, StateError>) {
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

    fn end_execution(
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

#[cfg(test)]
mod tests {
    use super::{expand_page, push_json_string, push_u64};
    use serde_json::json;

    #[test]
    fn history_pages_expand_every_line_form() {
        let page = "1700000000123,1,NParallelStateStarted\n\
                    0,1,GCustom,oddKey,{\"a\":[1,\",\"]}\n\
                    -3,2,DTaskStarted,{\"resource\":\"r\"}\n\
                    1000,1,XPass,\"a\\\"b,\"{\"v\":\"x,y\"}";
        let mut out = Vec::new();
        expand_page(5, page, &mut out).unwrap();
        assert_eq!(
            out,
            [
                json!({"timestamp": 1_700_000_000.123, "type": "ParallelStateStarted", "id": 5, "previousEventId": 4}),
                json!({"timestamp": 1_700_000_000.123, "type": "Custom", "id": 6, "previousEventId": 5,
                       "oddKey": {"a": [1, ","]}}),
                json!({"timestamp": 1_700_000_000.12, "type": "TaskStarted", "id": 7, "previousEventId": 5,
                       "taskStartedEventDetails": {"resource": "r"}}),
                json!({"timestamp": 1_700_000_001.12, "type": "PassStateExited", "id": 8, "previousEventId": 7,
                       "stateExitedEventDetails": {"name": "a\"b,", "output": "{\"v\":\"x,y\"}",
                                                   "outputDetails": {"truncated": false}}}),
            ]
        );
    }

    #[test]
    fn corrupt_history_lines_are_errors() {
        for page in [
            "garbage",
            "1,1",
            "x,1,NPass",
            "1,9,NPass",
            "1,1,Qwhat",
            "1,1,EPass,\"unterminated",
            "1,1,EPass,noquote{}",
            "1,1,DTaskStarted",
            "9223372036854775807,1,NA\n1,1,NB",
        ] {
            let mut out = Vec::new();
            assert!(expand_page(5, page, &mut out).is_err(), "{page}");
        }
    }

    #[test]
    fn integers_are_written_in_decimal() {
        for n in [0u64, 7, 10, 1_704_067_200, u64::MAX] {
            let mut buf = String::new();
            push_u64(&mut buf, n);
            assert_eq!(buf, n.to_string());
        }
    }

    #[test]
    fn json_strings_round_trip() {
        for s in ["plain", "q\"uote\\back", "line\nbreak\ttab\u{1}", "ünï €"] {
            let mut buf = String::new();
            push_json_string(&mut buf, s);
            assert_eq!(serde_json::from_str::<String>(&buf).unwrap(), s);
        }
    }
}
