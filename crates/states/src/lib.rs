//! Tern States: a durable Amazon States Language engine (JSONPath query language).
//!
//! * [`StateMachine::parse`] validates a definition and lists every problem with its JSON path.
//! * [`Engine`] runs executions with an API shaped like Step Functions (start, describe, stop,
//!   list, history, send task success/failure/heartbeat), persisting progress through a [`Store`]
//!   ([`SqliteStore`] or [`MemoryStore`]) and resuming every running execution when reopened.
//! * Task resources are resolved through a [`TaskRegistry`] of async [`TaskHandler`]s.
//! * Tests step the engine deterministically: [`Engine::run_until_idle`] with a [`ManualClock`].
//!
//! Store commits run synchronously on the calling task (SQLite writes are short group commits);
//! task handlers run as spawned tokio tasks, so a handler may call back into the engine (for
//! example `send_task_success`).
//!
//! See the crate README for what is supported and the delivery guarantee of task invocations.

mod choice;
mod clock;
mod definition;
mod engine;
mod error;
mod intrinsics;
mod paths;
mod store;
mod task;

pub use clock::{format_ms, Clock, ManualClock, SystemClock};
pub use definition::StateMachine;
pub use engine::{Engine, EngineConfig, ExecutionDescription};
pub use error::{names, EngineError, Problem, StateError, StoreError, ValidationErrors};
pub use store::{
    Batch, ExecutionRecord, ExecutionStatus, MemoryStore, Snapshot, SqliteStore,
    StateMachineRecord, Store,
};
pub use task::{split_resource, FnHandler, Pattern, TaskHandler, TaskRegistry, TaskRequest};
