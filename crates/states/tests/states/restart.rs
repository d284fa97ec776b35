//! Durability: an engine is killed (its runtime dropped, with handlers still running) and a new
//! one opened on the same SQLite file must finish every execution with the right output.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tern_states::{
    Engine, EngineConfig, ExecutionStatus, FnHandler, ManualClock, SqliteStore, StateError,
    TaskRegistry, TaskRequest,
};

use crate::common::{Harness, Parked, EPOCH_MS};

const WAIT: &str = r#"{"StartAt": "W", "States": {
    "W": {"Type": "Wait", "Seconds": 3600, "Next": "Done"},
    "Done": {"Type": "Pass", "Parameters": {"waited.$": "$.n"}, "End": true}}}"#;

const MAP: &str = r#"{"StartAt": "M", "States": {
    "M": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 3,
          "ItemProcessor": {"StartAt": "W", "States": {
              "W": {"Type": "Wait", "Seconds": 10, "Next": "Sq"},
              "Sq": {"Type": "Pass", "Parameters": {"v.$": "States.MathAdd($, $)"}, "OutputPath": "$.v", "End": true}}},
          "End": true}}}"#;

const TOKEN: &str = r#"{"StartAt": "Ask", "States": {
    "Ask": {"Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
            "Parameters": {"token.$": "$$.Task.Token"}, "ResultPath": "$.answer", "TimeoutSeconds": 86400, "End": true}}}"#;

/// A task that completes in the first life and a task that is running when the engine dies.
const TASKS: &str = r#"{"StartAt": "First", "States": {
    "First": {"Type": "Task", "Resource": "arn:aws:lambda:local:000000000000:function:first", "ResultPath": "$.first", "Next": "Second"},
    "Second": {"Type": "Task", "Resource": "arn:aws:lambda:local:000000000000:function:second", "ResultPath": "$.second", "End": true}}}"#;

#[derive(Default)]
struct Counters {
    first: AtomicUsize,
    second: AtomicUsize,
}

fn registry(counters: Arc<Counters>, parked: Parked, second_hangs: bool) -> TaskRegistry {
    let mut reg = TaskRegistry::new();
    let c = counters.clone();
    reg.register(
        "arn:aws:lambda:local:000000000000:function:first",
        Arc::new(FnHandler(move |_req: TaskRequest| {
            let c = c.clone();
            async move {
                c.first.fetch_add(1, Ordering::SeqCst);
                Ok::<Value, StateError>(json!("first done"))
            }
        })),
    );
    let c = counters.clone();
    reg.register(
        "arn:aws:lambda:local:000000000000:function:second",
        Arc::new(FnHandler(move |_req: TaskRequest| {
            let c = c.clone();
            async move {
                c.second.fetch_add(1, Ordering::SeqCst);
                if second_hangs {
                    // The crash happens while this invocation is in flight.
                    std::future::pending::<()>().await;
                }
                Ok::<Value, StateError>(json!("second done"))
            }
        })),
    );
    reg.register(
        "arn:aws:states:::sqs:sendMessage",
        Arc::new(FnHandler(move |req: TaskRequest| {
            let parked = parked.clone();
            async move {
                parked.lock().unwrap().push((req.task_token, None));
                Ok::<Value, StateError>(Value::Null)
            }
        })),
    );
    reg
}

#[test]
fn killed_engine_resumes_waits_maps_tokens_and_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tern.db");
    let clock = ManualClock::new(EPOCH_MS);
    let counters = Arc::new(Counters::default());
    let parked = Parked::default();

    // First life.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (arns, token) = rt.block_on(async {
        let store = Arc::new(SqliteStore::open(&db).unwrap());
        let engine = Engine::open(EngineConfig {
            store,
            tasks: registry(counters.clone(), parked.clone(), true),
            clock: Arc::new(clock.clone()),
            region: "local".into(),
        })
        .unwrap();
        let mut arns = Vec::new();
        for (name, def, input) in [
            ("wait", WAIT, json!({"n": 1})),
            ("map", MAP, json!({"items": [1, 2, 3, 4, 5, 6, 7]})),
            ("token", TOKEN, json!({"q": "approve?"})),
            ("tasks", TASKS, json!({})),
        ] {
            let sm = engine.create_state_machine(name, def).unwrap();
            arns.push(
                engine
                    .start_execution(&sm, Some("e1"), &input.to_string())
                    .unwrap()
                    .execution_arn,
            );
        }
        // run_until_idle would wait for the hanging handler forever: step with a timeout instead.
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            engine.run_until_idle(),
        )
        .await;
        // Half the Map: the first batch of 3 iterations finishes, the next 3 start waiting.
        clock.advance_secs(10);
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            engine.run_until_idle(),
        )
        .await;
        for arn in &arns {
            assert_eq!(
                engine.describe_execution(arn).unwrap().status,
                ExecutionStatus::Running,
                "{arn}"
            );
        }
        let token = parked.lock().unwrap().pop().expect("the token task ran").0;
        (arns, token)
    });
    assert_eq!(counters.first.load(Ordering::SeqCst), 1);
    assert_eq!(counters.second.load(Ordering::SeqCst), 1);
    // The crash: the runtime goes away with the second task's handler still running.
    rt.shutdown_background();

    // Second life on the same file.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(SqliteStore::open(&db).unwrap());
        let h = Harness::new(
            store,
            registry(counters.clone(), parked.clone(), false),
            clock.clone(),
            parked.clone(),
        );
        // The parked token is still valid after the restart.
        h.engine
            .send_task_success(&token, r#"{"ok": true}"#)
            .unwrap();
        let mut outputs = Vec::new();
        for arn in &arns {
            let d = h.finish(arn).await;
            assert_eq!(d.status, ExecutionStatus::Succeeded, "{arn}: {d:?}");
            outputs.push(serde_json::from_str::<Value>(d.output.as_deref().unwrap()).unwrap());
        }
        assert_eq!(outputs[0], json!({"waited": 1}));
        assert_eq!(outputs[1], json!([2, 4, 6, 8, 10, 12, 14]));
        assert_eq!(outputs[2], json!({"q": "approve?", "answer": {"ok": true}}));
        assert_eq!(
            outputs[3],
            json!({"first": "first done", "second": "second done"})
        );
        // The Wait kept its deadline: it ended an hour after the start, not an hour after the restart.
        let wait = h.engine.describe_execution(&arns[0]).unwrap();
        assert_eq!(wait.stop_date.unwrap() - wait.start_date, 3_600_000);
        // History continues with fresh ids after the restart.
        let history = h.engine.get_execution_history(&arns[1]).unwrap();
        let ids: Vec<u64> = history.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    });
    // At-least-once: the task that was in flight during the crash ran again; the one whose
    // result was committed did not.
    assert_eq!(counters.first.load(Ordering::SeqCst), 1);
    assert_eq!(counters.second.load(Ordering::SeqCst), 2);
}

/// Finished Map iterations cost no thread row of their own: their outputs go to one result chunk
/// per commit, which a restart reads back, and a finished execution leaves no live rows at all.
#[tokio::test]
async fn map_results_are_stored_in_chunks_and_cleared_when_done() {
    use tern_states::Store;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tern.db");
    let clock = ManualClock::new(EPOCH_MS);
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let engine = Engine::open(EngineConfig {
        store: store.clone(),
        tasks: TaskRegistry::new(),
        clock: Arc::new(clock.clone()),
        region: "local".into(),
    })
    .unwrap();
    let sm = engine.create_state_machine("map", MAP).unwrap();
    let arn = engine
        .start_execution(&sm, Some("m"), r#"{"items": [1, 2, 3, 4, 5, 6, 7]}"#)
        .unwrap()
        .execution_arn;
    engine.run_until_idle().await;
    clock.advance_secs(10);
    engine.run_until_idle().await;
    // Three iterations finished, three are waiting: the root and the three waiting ones have rows.
    let snap = store.load().unwrap();
    let mut ids: Vec<u64> = snap.threads.iter().map(|t| t.1).collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 4, 5, 6]);
    assert_eq!(snap.results.len(), 1, "{:?}", snap.results);
    let chunk: Value = serde_json::from_str(&snap.results[0].2).unwrap();
    assert_eq!(chunk, json!([[0, 2], [1, 4], [2, 6]]));
    drop(engine);

    // A new engine on the same file picks the chunk up and finishes the Map.
    let h = Harness::new(
        store.clone(),
        TaskRegistry::new(),
        clock.clone(),
        Parked::default(),
    );
    let d = h.finish(&arn).await;
    assert_eq!(d.status, ExecutionStatus::Succeeded, "{d:?}");
    assert_eq!(d.output.as_deref(), Some("[2,4,6,8,10,12,14]"));
    let snap = store.load().unwrap();
    assert!(snap.threads.is_empty(), "{:?}", snap.threads);
    assert!(snap.results.is_empty(), "{:?}", snap.results);
    assert!(snap.blobs.is_empty(), "{:?}", snap.blobs);
    let history = h.engine.get_execution_history(&arn).unwrap();
    let succeeded = history
        .iter()
        .filter(|e| e["type"] == "MapIterationSucceeded")
        .count();
    assert_eq!(succeeded, 7);
}

/// A store whose commits fail while `full` is set, like SQLite on a full disk.
struct FlakyStore {
    inner: SqliteStore,
    full: Arc<std::sync::atomic::AtomicBool>,
    failed: AtomicUsize,
}

impl tern_states::Store for FlakyStore {
    fn commit(&self, batch: &tern_states::Batch) -> Result<(), tern_states::StoreError> {
        if self.full.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(tern_states::StoreError::Corrupt(
                "database or disk is full".into(),
            ));
        }
        self.inner.commit(batch)
    }
    fn load(&self) -> Result<tern_states::Snapshot, tern_states::StoreError> {
        self.inner.load()
    }
    fn events(&self, arn: &str) -> Result<Vec<(u64, String)>, tern_states::StoreError> {
        self.inner.events(arn)
    }
}

/// A task result whose commit fails is not lost: the driver retries the commit (no outside
/// call needed) and the execution goes on once the store accepts writes again. A token result
/// whose commit failed is reported as a store error, and the caller's retry succeeds once it is
/// durable. Neither task runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_retried_when_the_store_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Arc::new(FlakyStore {
        inner: SqliteStore::open(&dir.path().join("tern.db")).unwrap(),
        full: full.clone(),
        failed: AtomicUsize::new(0),
    });
    let counters = Arc::new(Counters::default());
    let parked = Parked::default();
    let mut reg = registry(counters.clone(), parked.clone(), false);
    // `first` fills the disk as it finishes: the commit of its result fails.
    let f = full.clone();
    let c = counters.clone();
    reg.register(
        "arn:aws:lambda:local:000000000000:function:first",
        Arc::new(FnHandler(move |_req: TaskRequest| {
            let (f, c) = (f.clone(), c.clone());
            async move {
                c.first.fetch_add(1, Ordering::SeqCst);
                f.store(true, Ordering::SeqCst);
                Ok::<Value, StateError>(json!("first done"))
            }
        })),
    );
    let engine = Engine::open(EngineConfig {
        store: store.clone(),
        tasks: reg,
        clock: Arc::new(ManualClock::new(EPOCH_MS)),
        region: "local".into(),
    })
    .unwrap();
    let _driver = engine.spawn_driver();
    let tasks = engine.create_state_machine("tasks", TASKS).unwrap();
    let arn = engine
        .start_execution(&tasks, Some("e1"), "{}")
        .unwrap()
        .execution_arn;
    let wait = std::time::Duration::from_secs(10);
    until("a commit failed twice (retried)", || {
        store.failed.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(
        counters.second.load(Ordering::SeqCst),
        0,
        "ran ahead of the store"
    );
    full.store(false, Ordering::SeqCst);
    let d = tokio::time::timeout(wait, engine.wait_for(&arn))
        .await
        .expect("the execution ends once the store recovers")
        .unwrap();
    assert_eq!(d.status, ExecutionStatus::Succeeded, "{d:?}");
    assert_eq!(counters.first.load(Ordering::SeqCst), 1);
    assert_eq!(counters.second.load(Ordering::SeqCst), 1);

    // A token answered while the store is full.
    let asking = engine.create_state_machine("token", TOKEN).unwrap();
    let arn = engine
        .start_execution(&asking, Some("e2"), r#"{"q": "approve?"}"#)
        .unwrap()
        .execution_arn;
    until("the token task parks", || {
        !parked.lock().unwrap().is_empty()
    })
    .await;
    let token = parked.lock().unwrap().pop().unwrap().0;
    full.store(true, Ordering::SeqCst);
    assert!(matches!(
        engine.send_task_success(&token, r#"{"ok": true}"#),
        Err(tern_states::EngineError::Store(_))
    ));
    // Retried while still full: still not durable.
    assert!(matches!(
        engine.send_task_success(&token, r#"{"ok": true}"#),
        Err(tern_states::EngineError::Store(_))
    ));
    full.store(false, Ordering::SeqCst);
    engine
        .send_task_success(&token, r#"{"ok": true}"#)
        .expect("the retry succeeds once the result is durable");
    let d = tokio::time::timeout(wait, engine.wait_for(&arn))
        .await
        .expect("the execution ends")
        .unwrap();
    assert_eq!(d.status, ExecutionStatus::Succeeded, "{d:?}");
    assert_eq!(
        serde_json::from_str::<Value>(d.output.as_deref().unwrap()).unwrap(),
        json!({"q": "approve?", "answer": {"ok": true}})
    );
}

/// Polls `cond` every 10 ms for at most 10 s.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let every = std::time::Duration::from_millis(10);
    let met =
        tern_test_support::poll::until_async(std::time::Duration::from_secs(10), every, || {
            let met = cond().then_some(());
            async move { met }
        })
        .await;
    assert!(met.is_some(), "timed out waiting until {what}");
}
