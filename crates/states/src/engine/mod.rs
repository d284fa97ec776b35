//! The execution engine: a single-owner core (behind a mutex) that steps "threads" (the root of an
//! execution, each Parallel branch, each Map iteration) and group-commits every change to the store
//! before anything outside can observe it: task handlers are only invoked, and API calls only
//! return, after the transitions that led there are committed.
//!
//! `api` is the public surface, `driver` the loop that pumps work and commits, `persist` the
//! resume and group commit, `step` a thread's way through its graph (Retry/Catch, ends),
//! `states` what each state kind computes, `tasks` task tokens and timers, `fanout` Parallel
//! and Map, `history` the compact event pages.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

// Fx hashing: the maps are keyed by ARNs and ids the engine made itself, looked up several times
// per transition; SipHash's flooding resistance buys nothing here and costs a tenth of the time.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::clock::Clock;
use crate::definition::StateMachine;
use crate::error::{EngineError, StateError};
use crate::store::{Batch, ExecutionRecord, ExecutionStatus, StateMachineRecord, Store};
use crate::task::{Pattern, TaskRegistry, TaskRequest};

mod api;
mod driver;
mod fanout;
mod history;
mod persist;
mod states;
mod step;
mod tasks;

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
    /// Tokens whose result was applied in memory by a call whose commit then failed; cleared by
    /// the next successful commit.
    undurable_tokens: HashSet<String>,
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
}
