//! The replication-run state machine's WriteBlocks Map on the local States engine, with scripted
//! task functions: one `write-blocks` invocation per range ApplyDelta returned (a transient
//! failure re-runs only its iteration), none for an empty list (what the local image service
//! returns, so `tern serve` runs the same file unchanged), and a failed range fails the run
//! through RecordFailure before any snapshot is polled.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tern_core::replication::functions;
use tern_local::replication::{function_resource, substituted_definition};
use tern_states::{
    Engine, EngineConfig, ExecutionStatus, FnHandler, ManualClock, MemoryStore, StateError,
    TaskRegistry, TaskRequest,
};

type Calls = Arc<Mutex<Vec<(String, Value)>>>;

/// What the scripted write-blocks function does with a range.
#[derive(Clone, Copy)]
enum Writes {
    /// Succeeds, except the first attempt at the range starting at 2,000 (throttled).
    ThrottledOnce,
    /// Fails every range as a damaged delta.
    Damaged,
}

fn registry(
    writes: Value,
    behaviour: Writes,
    calls: Calls,
    tokens: Arc<Mutex<Vec<String>>>,
) -> TaskRegistry {
    let mut reg = TaskRegistry::new();
    for (_, function) in functions::SUBSTITUTIONS {
        let (calls, writes) = (calls.clone(), writes.clone());
        reg.register(
            &function_resource(function),
            Arc::new(FnHandler(move |req: TaskRequest| {
                let (calls, writes) = (calls.clone(), writes.clone());
                async move {
                    let earlier = calls
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|(f, i)| *f == *function && *i == req.input)
                        .count();
                    calls
                        .lock()
                        .unwrap()
                        .push((function.to_string(), req.input.clone()));
                    Ok(match *function {
                        functions::PREPARE => json!({
                            "seed": false, "stagingBucket": "staging",
                            "stagingPrefix": "runs/sms-job-1/sms-run-2/",
                            "uploadHeartbeatSeconds": 900, "uploadTimeoutSeconds": 3600
                        }),
                        functions::APPLY_DELTA => json!({
                            "tasks": [{ "index": 0, "taskId": "ebs-delta/snap-1/staging/k" }],
                            "writes": writes
                        }),
                        functions::WRITE_BLOCKS => {
                            let write = &req.input["write"];
                            match behaviour {
                                Writes::ThrottledOnce
                                    if write["first"] == 2_000 && earlier == 0 =>
                                {
                                    return Err(StateError::new(
                                        "Images.Transient",
                                        "Rate exceeded",
                                    ))
                                }
                                Writes::ThrottledOnce => json!({ "blocksWritten": write["count"] }),
                                Writes::Damaged => {
                                    return Err(StateError::new(
                                        "Images.InvalidImage",
                                        "block 7: SHA-256 mismatch",
                                    ))
                                }
                            }
                        }
                        functions::CHECK_SNAPSHOTS => {
                            json!([{ "index": 0, "snapshotId": "snap-2", "volumeSize": 1 }])
                        }
                        functions::REGISTER_IMAGE => {
                            json!({ "imageId": "ami-1", "snapshotIds": ["snap-2"] })
                        }
                        functions::RETAIN => json!({ "deregistered": [] }),
                        functions::COMPLETE => json!({ "imageId": "ami-1" }),
                        functions::RECORD_FAILURE => json!({ "recorded": true }),
                        other => panic!("unexpected function {other}"),
                    })
                }
            })),
        );
    }
    // WaitForUpload: the connector's manifest arrives with the token.
    reg.register(
        "arn:aws:states:::lambda:invoke",
        Arc::new(FnHandler(move |req: TaskRequest| {
            let tokens = tokens.clone();
            async move {
                tokens.lock().unwrap().push(req.task_token);
                Ok(Value::Null)
            }
        })),
    );
    reg
}

/// Runs one execution of the real state machine to its end; returns it and every call made.
async fn run(
    writes: Value,
    behaviour: Writes,
) -> (tern_states::ExecutionDescription, Vec<(String, Value)>) {
    let calls: Calls = Arc::default();
    let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
    let clock = ManualClock::new(1_000);
    let engine = Engine::open(EngineConfig {
        store: Arc::new(MemoryStore::default()),
        tasks: registry(writes, behaviour, calls.clone(), tokens.clone()),
        clock: Arc::new(clock.clone()),
        region: "local".into(),
    })
    .unwrap();
    let machine = engine
        .create_state_machine("replication-run", &substituted_definition())
        .unwrap();
    let arn = engine
        .start_execution(
            &machine,
            Some("sms-run-2"),
            &json!({ "jobId": "sms-job-1", "runId": "sms-run-2" }).to_string(),
        )
        .unwrap()
        .execution_arn;
    for _ in 0..1_000 {
        engine.run_until_idle().await;
        let d = engine.describe_execution(&arn).unwrap();
        if d.status != ExecutionStatus::Running {
            return (d, calls.lock().unwrap().clone());
        }
        let parked: Vec<String> = tokens.lock().unwrap().drain(..).collect();
        for token in &parked {
            engine
                .send_task_success(token, &json!({ "disks": [] }).to_string())
                .unwrap();
        }
        if parked.is_empty() {
            // A Retry's backoff: jump the clock instead of sleeping.
            let next = engine
                .next_deadline()
                .expect("the execution waits for something");
            clock.set_ms(next);
        }
    }
    panic!("the execution did not end");
}

fn inputs_of(calls: &[(String, Value)], function: &str) -> Vec<Value> {
    calls
        .iter()
        .filter(|(f, _)| f == function)
        .map(|(_, i)| i.clone())
        .collect()
}

fn write(first: u64, count: u64) -> Value {
    json!({ "index": 0, "taskId": "ebs-delta/snap-1/staging/k", "first": first, "count": count })
}

#[tokio::test]
async fn every_range_is_written_once_before_the_snapshots_are_polled() {
    let writes = json!([write(0, 2_000), write(2_000, 2_000), write(4_000, 17)]);
    let (done, calls) = run(writes.clone(), Writes::ThrottledOnce).await;
    assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
    let mut written = inputs_of(&calls, functions::WRITE_BLOCKS);
    written.sort_by_key(|i| i["write"]["first"].as_u64());
    let expected: Vec<Value> = [0, 1, 1, 2]
        .iter()
        .map(|&i| json!({ "jobId": "sms-job-1", "runId": "sms-run-2", "write": writes[i] }))
        .collect();
    assert_eq!(written, expected, "the throttled range alone ran twice");
    let order: Vec<&str> = calls.iter().map(|(f, _)| f.as_str()).collect();
    let last_write = order
        .iter()
        .rposition(|f| *f == functions::WRITE_BLOCKS)
        .unwrap();
    let first_poll = order
        .iter()
        .position(|f| *f == functions::CHECK_SNAPSHOTS)
        .unwrap();
    assert!(last_write < first_poll, "{order:?}");
    assert_eq!(
        inputs_of(&calls, functions::CHECK_SNAPSHOTS)[0]["tasks"],
        json!([{ "index": 0, "taskId": "ebs-delta/snap-1/staging/k" }])
    );
}

#[tokio::test]
async fn an_empty_list_of_ranges_goes_straight_to_the_snapshots() {
    let (done, calls) = run(json!([]), Writes::ThrottledOnce).await;
    assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
    assert!(inputs_of(&calls, functions::WRITE_BLOCKS).is_empty());
    assert_eq!(inputs_of(&calls, functions::COMPLETE).len(), 1);
}

#[tokio::test]
async fn a_damaged_range_fails_the_run_with_its_error() {
    let (done, calls) = run(json!([write(0, 5)]), Writes::Damaged).await;
    assert_eq!(done.status, ExecutionStatus::Failed, "{done:?}");
    assert!(inputs_of(&calls, functions::CHECK_SNAPSHOTS).is_empty());
    let failure = &inputs_of(&calls, functions::RECORD_FAILURE)[0]["error"];
    assert_eq!(failure["Error"], "Images.InvalidImage");
    assert!(
        failure["Cause"]
            .as_str()
            .unwrap()
            .contains("SHA-256 mismatch"),
        "{failure}"
    );
}
