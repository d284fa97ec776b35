//! The execution API: start (idempotent by name), describe, list, stop, history, task tokens,
//! heartbeats, retry timing, the driver on the engine's clock.

use std::sync::Arc;

use serde_json::{json, Value};
use tern_states::{
    EngineError, ExecutionStatus, FnHandler, MemoryStore, StateError, TaskRegistry, TaskRequest,
};

use crate::common::{scripted_registry, Harness, Parked, Reply, EPOCH_MS};

const PARK: &str = r#"{"StartAt": "T", "States": {"T": {"Type": "Task",
    "Resource": "arn:aws:states:::events:putEvents.waitForTaskToken", "HeartbeatSeconds": 10,
    "Parameters": {"t.$": "$$.Task.Token"},
    "Catch": [{"ErrorEquals": ["Rejected"], "ResultPath": "$.why", "Next": "No"}], "End": true},
    "No": {"Type": "Pass", "End": true}}}"#;

fn parking_harness() -> (Harness, Parked) {
    let parked = Parked::default();
    let p = parked.clone();
    let mut reg = TaskRegistry::new();
    reg.register(
        "arn:aws:states:::events:putEvents",
        Arc::new(FnHandler(move |req: TaskRequest| {
            let p = p.clone();
            async move {
                assert_eq!(
                    req.input["t"],
                    json!(req.task_token),
                    "$$.Task.Token reaches the parameters"
                );
                p.lock().unwrap().push((req.task_token, None));
                Ok::<Value, StateError>(Value::Null)
            }
        })),
    );
    (
        Harness::new(
            Arc::new(MemoryStore::new()),
            reg,
            tern_states::ManualClock::new(EPOCH_MS),
            parked.clone(),
        ),
        parked,
    )
}

#[tokio::test]
async fn invalid_definitions_list_every_problem() {
    let h = Harness::new(
        Arc::new(MemoryStore::new()),
        TaskRegistry::new(),
        tern_states::ManualClock::new(EPOCH_MS),
        Parked::default(),
    );
    let err = h
        .engine
        .create_state_machine("bad", r#"{"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B"}, "C": {"Type": "Wait", "Seconds": -1, "End": true}}}"#)
        .unwrap_err();
    let EngineError::InvalidDefinition(v) = err else {
        panic!("{err}")
    };
    let paths: Vec<&str> = v.0.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"$.States['A'].Next"), "{paths:?}");
    assert!(paths.contains(&"$.States['C'].Seconds"), "{paths:?}");
    assert!(matches!(
        h.engine.create_state_machine(
            "has space",
            r#"{"StartAt":"A","States":{"A":{"Type":"Succeed"}}}"#
        ),
        Err(EngineError::InvalidName(_))
    ));
}

#[tokio::test]
async fn start_is_idempotent_by_name_and_stop_aborts() {
    let (h, parked) = parking_harness();
    let sm = h.engine.create_state_machine("park", PARK).unwrap();
    let a = h
        .engine
        .start_execution(&sm, Some("one"), r#"{"x": 1}"#)
        .unwrap();
    let again = h
        .engine
        .start_execution(&sm, Some("one"), r#"{"x": 1}"#)
        .unwrap();
    assert_eq!(a.execution_arn, again.execution_arn);
    assert!(matches!(
        h.engine.start_execution(&sm, Some("one"), r#"{"x": 2}"#),
        Err(EngineError::ExecutionAlreadyExists(_))
    ));
    let b = h.engine.start_execution(&sm, Some("two"), "{}").unwrap();
    h.engine.run_until_idle().await;
    assert_eq!(parked.lock().unwrap().len(), 2);
    assert_eq!(
        h.engine
            .list_executions(Some(&sm), Some(ExecutionStatus::Running))
            .len(),
        2
    );

    let stopped = h
        .engine
        .stop_execution(&b.execution_arn, Some("Manual"), Some("operator"))
        .unwrap();
    assert_eq!(stopped.status, ExecutionStatus::Aborted);
    assert_eq!(stopped.error.as_deref(), Some("Manual"));
    let history = h.engine.get_execution_history(&b.execution_arn).unwrap();
    assert_eq!(history.last().unwrap()["type"], "ExecutionAborted");
    // The stopped execution's token is no longer accepted.
    let tokens: Vec<String> = parked.lock().unwrap().iter().map(|t| t.0.clone()).collect();
    let results: Vec<bool> = tokens
        .iter()
        .map(|t| h.engine.send_task_success(t, "{}").is_ok())
        .collect();
    assert_eq!(
        results.iter().filter(|ok| **ok).count(),
        1,
        "only the running execution's token works"
    );
    h.engine.run_until_idle().await;
    assert_eq!(
        h.engine
            .describe_execution(&a.execution_arn)
            .unwrap()
            .status,
        ExecutionStatus::Succeeded
    );
    assert_eq!(
        h.engine
            .list_executions(None, Some(ExecutionStatus::Aborted))
            .len(),
        1
    );
    assert!(matches!(
        h.engine.send_task_success("nonsense", "{}"),
        Err(EngineError::InvalidToken(_))
    ));
    assert!(matches!(
        h.engine.describe_execution("arn:nope"),
        Err(EngineError::ExecutionDoesNotExist(_))
    ));
}

#[tokio::test]
async fn heartbeats_keep_a_parked_task_alive_and_failure_is_caught() {
    let (h, parked) = parking_harness();
    let sm = h.engine.create_state_machine("park", PARK).unwrap();
    let e = h.engine.start_execution(&sm, None, r#"{"k": 1}"#).unwrap();
    h.engine.run_until_idle().await;
    let token = parked.lock().unwrap()[0].0.clone();
    for _ in 0..3 {
        h.clock.advance_secs(8);
        h.engine.send_task_heartbeat(&token).unwrap();
        h.engine.run_until_idle().await;
        assert_eq!(
            h.engine
                .describe_execution(&e.execution_arn)
                .unwrap()
                .status,
            ExecutionStatus::Running
        );
    }
    h.engine
        .send_task_failure(&token, "Rejected", "no budget")
        .unwrap();
    h.engine.run_until_idle().await;
    let d = h.engine.describe_execution(&e.execution_arn).unwrap();
    assert_eq!(d.status, ExecutionStatus::Succeeded);
    assert_eq!(
        serde_json::from_str::<Value>(&d.output.unwrap()).unwrap(),
        json!({"k": 1, "why": {"Error": "Rejected", "Cause": "no budget"}})
    );

    // Without heartbeats the same task times out.
    let e = h.engine.start_execution(&sm, None, "{}").unwrap();
    h.engine.run_until_idle().await;
    h.clock.advance_secs(11);
    h.engine.run_until_idle().await;
    let d = h.engine.describe_execution(&e.execution_arn).unwrap();
    assert_eq!(d.error.as_deref(), Some("States.HeartbeatTimeout"));
}

#[tokio::test]
async fn history_is_shaped_like_get_execution_history() {
    let fn_arn = "arn:aws:lambda:us-east-1:123456789012:function:${Worker}";
    let mut tasks = std::collections::HashMap::new();
    tasks.insert(
        fn_arn.replace("${Worker}", "worker"),
        vec![serde_json::from_value(json!({"echo": true})).unwrap()],
    );
    let mut reg = scripted_registry(&tasks, Parked::default());
    reg.substitution("Worker", "worker");
    let h = Harness::new(
        Arc::new(MemoryStore::new()),
        reg,
        tern_states::ManualClock::new(EPOCH_MS),
        Parked::default(),
    );
    let def =
        json!({"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": fn_arn, "End": true}}})
            .to_string();
    let sm = h.engine.create_state_machine("hist", &def).unwrap();
    let e = h
        .engine
        .start_execution(&sm, Some("h1"), r#"{"a": 1}"#)
        .unwrap();
    let d = h.finish(&e.execution_arn).await;
    assert_eq!(d.status, ExecutionStatus::Succeeded);
    let events = h.engine.get_execution_history(&e.execution_arn).unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "ExecutionStarted",
            "TaskStateEntered",
            "TaskScheduled",
            "TaskStarted",
            "TaskSucceeded",
            "TaskStateExited",
            "ExecutionSucceeded"
        ]
    );
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev["id"], json!(i + 1));
        assert_eq!(ev["previousEventId"], json!(i));
        assert_eq!(ev["timestamp"], json!(EPOCH_MS as f64 / 1000.0));
    }
    assert_eq!(events[1]["stateEnteredEventDetails"]["name"], "T");
    assert_eq!(events[1]["stateEnteredEventDetails"]["input"], r#"{"a":1}"#);
    assert_eq!(
        events[2]["taskScheduledEventDetails"]["resourceType"],
        "lambda"
    );
    assert_eq!(
        events[2]["taskScheduledEventDetails"]["resource"],
        "arn:aws:lambda:us-east-1:123456789012:function:worker"
    );
    assert_eq!(
        events[6]["executionSucceededEventDetails"]["output"],
        r#"{"a":1}"#
    );
}

#[tokio::test]
async fn retry_intervals_follow_backoff_and_max_delay() {
    let fn_arn = "arn:aws:lambda:us-east-1:123456789012:function:flaky";
    let mut tasks = std::collections::HashMap::new();
    let fail: Reply = serde_json::from_value(json!({"error": "Flaky"})).unwrap();
    tasks.insert(
        fn_arn.to_string(),
        vec![
            fail.clone(),
            fail.clone(),
            fail.clone(),
            serde_json::from_value(json!({"output": 1})).unwrap(),
        ],
    );
    let h = Harness::new(
        Arc::new(MemoryStore::new()),
        scripted_registry(&tasks, Parked::default()),
        tern_states::ManualClock::new(EPOCH_MS),
        Parked::default(),
    );
    let def = json!({"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": fn_arn, "End": true,
        "Retry": [{"ErrorEquals": ["Flaky"], "IntervalSeconds": 2, "BackoffRate": 3, "MaxDelaySeconds": 5, "MaxAttempts": 5}]}}})
    .to_string();
    let sm = h.engine.create_state_machine("retry", &def).unwrap();
    let e = h.engine.start_execution(&sm, None, "{}").unwrap();
    assert_eq!(
        h.finish(&e.execution_arn).await.status,
        ExecutionStatus::Succeeded
    );
    let scheduled: Vec<i64> = h
        .engine
        .get_execution_history(&e.execution_arn)
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "TaskScheduled")
        .map(|e| (e["timestamp"].as_f64().unwrap() * 1000.0).round() as i64 - EPOCH_MS)
        .collect();
    // 2 s, then 6 s capped to 5, then 18 s capped to 5.
    assert_eq!(scheduled, [0, 2_000, 7_000, 12_000]);
}

/// The driver waits for timers on the engine's clock: with a manual clock an hour-long Wait ends
/// as soon as the clock is moved past it, and not before (no wall-clock sleep in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_waits_on_the_engine_clock() {
    let clock = tern_states::ManualClock::new(EPOCH_MS);
    let engine = tern_states::Engine::open(tern_states::EngineConfig {
        store: Arc::new(MemoryStore::new()),
        tasks: TaskRegistry::new(),
        clock: Arc::new(clock.clone()),
        region: "local".into(),
    })
    .unwrap();
    let sm = engine
        .create_state_machine(
            "rt",
            r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 3600, "Next": "V"},
                "V": {"Type": "Wait", "Seconds": 60, "End": true}}}"#,
        )
        .unwrap();
    let e = engine.start_execution(&sm, None, r#"{"v": 1}"#).unwrap();
    engine.run_until_idle().await;
    assert_eq!(engine.next_deadline(), Some(EPOCH_MS + 3_600_000));
    let driver = engine.spawn_driver();
    clock.advance_secs(3599);
    // Let the driver see the clock short of the deadline: the execution must still be waiting.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(engine.next_deadline(), Some(EPOCH_MS + 3_600_000));
    clock.advance_secs(1);
    // The second Wait is armed by the driver once the first ends; move the clock past it too.
    let second = EPOCH_MS + 3_660_000;
    let arn = e.execution_arn.clone();
    let d = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if engine.next_deadline() == Some(second) {
                clock.set_ms(second);
                return engine.wait_for(&arn).await;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the driver followed the manual clock")
    .unwrap();
    assert_eq!(d.status, ExecutionStatus::Succeeded);
    assert_eq!(d.stop_date, Some(second));
    driver.abort();
}

/// History pages are stored compactly and expanded on read: names and payloads with quotes,
/// commas, backslashes and line breaks come back exactly, from memory and from SQLite.
#[tokio::test]
async fn history_keeps_awkward_names_and_payloads_exact() {
    let dir = tempfile::tempdir().unwrap();
    let stores: [Arc<dyn tern_states::Store>; 2] = [
        Arc::new(MemoryStore::new()),
        Arc::new(tern_states::SqliteStore::open(&dir.path().join("h.db")).unwrap()),
    ];
    let first = r#"Say "hi", \ now"#;
    let def = json!({"StartAt": first, "States": {
        first: {"Type": "Pass", "Result": {"text": "a,b\n\"c\"\\ é", "n": [1, 2]}, "ResultPath": "$.r", "Next": "M"},
        "M": {"Type": "Map", "ItemsPath": "$.r.n", "ItemProcessor": {"StartAt": "I,1", "States": {
            "I,1": {"Type": "Pass", "End": true}}}, "ResultPath": null, "End": true}}})
    .to_string();
    for store in stores {
        let h = Harness::new(
            store,
            TaskRegistry::new(),
            tern_states::ManualClock::new(EPOCH_MS),
            Parked::default(),
        );
        let sm = h.engine.create_state_machine("awkward", &def).unwrap();
        let input = json!({"x": "tab\there,\r\n"});
        let e = h
            .engine
            .start_execution(&sm, Some("a"), &input.to_string())
            .unwrap();
        let d = h.finish(&e.execution_arn).await;
        assert_eq!(d.status, ExecutionStatus::Succeeded, "{d:?}");
        let events = h.engine.get_execution_history(&e.execution_arn).unwrap();
        let after_first =
            json!({"x": "tab\there,\r\n", "r": {"text": "a,b\n\"c\"\\ é", "n": [1, 2]}});
        let ts = EPOCH_MS as f64 / 1000.0;
        assert_eq!(
            events[1],
            json!({"timestamp": ts, "type": "PassStateEntered", "id": 2, "previousEventId": 1,
                   "stateEnteredEventDetails": {"name": first, "input": input.to_string(),
                                                "inputDetails": {"truncated": false}}})
        );
        assert_eq!(
            events[2],
            json!({"timestamp": ts, "type": "PassStateExited", "id": 3, "previousEventId": 2,
                   "stateExitedEventDetails": {"name": first, "output": after_first.to_string(),
                                               "outputDetails": {"truncated": false}}})
        );
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "ExecutionStarted",
                "PassStateEntered",
                "PassStateExited",
                "MapStateEntered",
                "MapStateStarted",
                "MapIterationStarted",
                "MapIterationStarted",
                "PassStateEntered",
                "PassStateExited",
                "MapIterationSucceeded",
                "PassStateEntered",
                "PassStateExited",
                "MapIterationSucceeded",
                "MapStateSucceeded",
                "MapStateExited",
                "ExecutionSucceeded"
            ]
        );
        assert_eq!(
            events[4]["mapStateStartedEventDetails"],
            json!({"length": 2})
        );
        assert_eq!(
            events[12]["mapIterationSucceededEventDetails"],
            json!({"name": "M", "index": 1})
        );
        assert_eq!(events[10]["stateEnteredEventDetails"]["name"], "I,1");
        assert_eq!(events[10]["stateEnteredEventDetails"]["input"], "2");
        // Each iteration chains its own events: back to its MapIterationStarted (id 7).
        assert_eq!(events[10]["previousEventId"], 7);
        assert!(events[13].get("mapStateSucceededEventDetails").is_none());
        assert_eq!(
            events[15]["executionSucceededEventDetails"]["output"],
            after_first.to_string()
        );
    }
}
