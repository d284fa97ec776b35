use serde_json::{json, Map};

use super::*;
use crate::workflows::WorkflowError;

const ASL: &str = include_str!("../../../../../statemachines/replication-run.asl.json");

fn asl() -> Value {
    serde_json::from_str(ASL).expect("the state machine is JSON")
}

fn error_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "ErrorEquals" {
                    out.extend(
                        v.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|e| e.as_str().map(String::from)),
                    );
                } else if k == "Error" {
                    out.extend(v.as_str().map(String::from));
                } else {
                    error_names(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| error_names(v, out)),
        _ => {}
    }
}

/// Every error name the state machine matches or raises (other than the States.* names
/// the runtime produces) is one a task of ours can fail with: a typo in the ASL would
/// otherwise silently never match.
#[test]
fn every_error_name_in_the_state_machine_is_produced_by_a_task() {
    let mut names = Vec::new();
    error_names(&asl(), &mut names);
    assert!(names.len() > 10, "found {names:?}");
    let images = [
        ImagesError::NOT_FOUND,
        ImagesError::INVALID_IMAGE,
        ImagesError::INVALID_PARAMETER,
        ImagesError::IN_USE,
        ImagesError::TRANSIENT,
        ImagesError::INTERNAL,
    ];
    for name in names.iter().filter(|n| !n.starts_with("States.")) {
        assert!(
            task_errors::ALL.contains(&name.as_str()) || images.contains(&name.as_str()),
            "{name} appears in replication-run.asl.json but no task produces it"
        );
    }
}

/// Each `${…FunctionArn}` of the state machine names a function `handle_task` knows, and
/// every function is used.
#[test]
fn substitutions_and_functions_match_the_state_machine() {
    let mut used = Vec::new();
    let mut rest = ASL;
    while let Some(start) = rest.find("${") {
        let end = rest[start..].find('}').expect("closed substitution") + start;
        used.push(&rest[start + 2..end]);
        rest = &rest[end..];
    }
    used.sort();
    used.dedup();
    let mut known: Vec<&str> = functions::SUBSTITUTIONS.iter().map(|(n, _)| *n).collect();
    known.sort();
    assert_eq!(used, known);
}

#[test]
fn task_errors_from_domain_errors_keep_their_meaning() {
    let e: TaskError = DomainError::Contention("job".into()).into();
    assert_eq!(e.error, task_errors::TRANSIENT);
    let e: TaskError = DomainError::JobNotFound("gone".into()).into();
    assert_eq!(e.error, task_errors::RUN_NOT_ACTIVE);
    let e: TaskError = ImagesError::InvalidImage("not a vmdk".into()).into();
    assert_eq!(
        (e.error.as_str(), e.cause.as_str()),
        ("Images.InvalidImage", "not a vmdk")
    );
    let e: TaskError = InvalidManifest("lists no disks".into()).into();
    assert_eq!(
        (e.error.as_str(), e.cause.as_str()),
        (task_errors::INVALID_MANIFEST, "lists no disks")
    );
    // A dependency's failure that reached a use case keeps the name the ASL matches on.
    let e: TaskError = DomainError::from(ImagesError::InUse("snap-1 backs ami-1".into())).into();
    assert_eq!(e.error, ImagesError::IN_USE);
    let e: TaskError = DomainError::from(WorkflowError::Transient {
        message: "throttled".into(),
        source: None,
    })
    .into();
    assert_eq!(e.error, task_errors::TRANSIENT);
    let e: TaskError = DomainError::from(WorkflowError::internal("no such machine")).into();
    assert_eq!(e.error, task_errors::INTERNAL);
}

#[test]
fn malformed_or_empty_inputs_are_invalid_input() {
    let e = RunInput::from_value(&json!({ "jobId": "sms-job-1" })).unwrap_err();
    assert_eq!(e.error, task_errors::INVALID_INPUT);
    assert!(e.cause.contains("runId"), "{e}");
    let e = WaitForUploadInput::from_value(&json!({
        "jobId": "sms-job-1", "runId": "sms-run-1", "taskToken": ""
    }))
    .unwrap_err();
    assert_eq!(
        (e.error.as_str(), e.cause.as_str()),
        (
            task_errors::INVALID_INPUT,
            "task input member taskToken is empty"
        )
    );
    let e = CheckSnapshotsInput::from_value(&json!({
        "jobId": "j", "runId": "r", "tasks": [{ "index": "zero", "taskId": "t" }]
    }))
    .unwrap_err();
    assert_eq!(e.error, task_errors::INVALID_INPUT);
}

/// `$.a.b` or `$$.Task.Token` (the only paths the state machine uses) against `doc`.
fn path(doc: &Value, context: &Value, p: &str) -> Value {
    let (root, rest) = match p.strip_prefix("$$") {
        Some(rest) => (context, rest),
        None => (doc, p.strip_prefix('$').expect("a path")),
    };
    rest.split('.')
        .filter(|s| !s.is_empty())
        .fold(root.clone(), |v, k| {
            v.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{p} is not in {doc}"))
        })
}

/// A state's Parameters (for a `waitForTaskToken` state, its Payload) resolved against `doc`.
fn parameters(state: &Value, doc: &Value, context: &Value) -> Value {
    let params = &state["Parameters"];
    let params = params.get("Payload").unwrap_or(params);
    let mut out = Map::new();
    for (k, v) in params.as_object().expect("Parameters") {
        match k.strip_suffix(".$") {
            Some(name) => {
                out.insert(name.into(), path(doc, context, v.as_str().expect("a path")));
            }
            None => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Runs state `name`: its Parameters must build exactly the function's typed input (nothing
/// missing, nothing the type does not carry), and `output` goes where its ResultPath says.
fn step<I: TaskInput + Serialize, O: Serialize>(
    machine: &Value,
    name: &str,
    function: &str,
    doc: &mut Value,
    output: &O,
) -> I {
    let state = &machine["States"][name];
    let resource = state["Resource"].as_str().unwrap();
    let arn = state["Parameters"]["FunctionName"]
        .as_str()
        .unwrap_or(resource);
    let substitution = functions::SUBSTITUTIONS
        .iter()
        .find(|(_, f)| *f == function)
        .unwrap()
        .0;
    assert_eq!(arn, format!("${{{substitution}}}"), "{name}");
    let context = json!({ "Task": { "Token": "token-1" } });
    let given = parameters(state, doc, &context);
    let typed = I::from_value(&given).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(serde_json::to_value(&typed).unwrap(), given, "{name}");
    let result_path = state["ResultPath"].as_str().unwrap();
    let member = result_path.strip_prefix("$.").unwrap();
    doc[member] = serde_json::to_value(output).unwrap();
    typed
}

/// The typed inputs and outputs carry exactly what the state machine passes from state to
/// state, along the seed path, the incremental path and the failure path.
#[test]
fn the_state_machine_data_flow_matches_the_typed_contract() {
    let machine = asl();
    let start = RunInput {
        job_id: "sms-job-1".into(),
        run_id: "sms-run-2".into(),
    };
    for seed in [true, false] {
        let mut doc = serde_json::to_value(&start).unwrap();
        let prepared = PrepareOutput {
            seed,
            staging_bucket: "tern-staging".into(),
            staging_prefix: "runs/sms-job-1/sms-run-2/".into(),
            upload_heartbeat_seconds: 900,
            upload_timeout_seconds: 604800,
        };
        let input: PrepareInput =
            step(&machine, "Prepare", functions::PREPARE, &mut doc, &prepared);
        assert_eq!(input, start);

        let wait = &machine["States"]["WaitForUpload"];
        for (p, expected) in [
            ("HeartbeatSecondsPath", 900),
            ("TimeoutSecondsPath", 604800),
        ] {
            let got = path(&doc, &Value::Null, wait[p].as_str().unwrap());
            assert_eq!(got, expected, "{p}");
        }
        let manifest: Manifest = serde_json::from_value(json!({
            "formatVersion": 1, "jobId": "sms-job-1", "runId": "sms-run-2",
            "disks": [{ "index": 0, "kind": if seed { "seed-vmdk" } else { "delta" },
                        "key": "runs/sms-job-1/sms-run-2/disk-0.vmdk", "size": 3,
                        "virtualSize": 1024, "sha256": "00" }]
        }))
        .unwrap();
        let input: WaitForUploadInput = step(
            &machine,
            "WaitForUpload",
            functions::WAIT_FOR_UPLOAD,
            &mut doc,
            &manifest,
        );
        assert_eq!(input.task_token, "token-1");

        let choice = &machine["States"]["SeedOrIncremental"]["Choices"][0];
        let chosen = path(&doc, &Value::Null, choice["Variable"].as_str().unwrap()) == json!(true);
        assert_eq!(chosen, seed);
        let (state, function) = if seed {
            ("Import", functions::IMPORT)
        } else {
            ("ApplyDelta", functions::APPLY_DELTA)
        };
        let write = BlockWrite {
            index: 0,
            task_id: "ebs-delta/snap-0/tern-staging/runs/sms-job-1/sms-run-2/disk-0.delta".into(),
            first: 2_000,
            count: 17,
        };
        let tasks = ImportOutput {
            tasks: vec![SnapshotTask {
                index: 0,
                task_id: "import-snap-task-1".into(),
            }],
            writes: if seed { vec![] } else { vec![write.clone()] },
        };
        let input: ImportInput = step(&machine, state, function, &mut doc, &tasks);
        assert_eq!(input.manifest, manifest);
        assert_eq!(machine["States"][state]["Next"], "WriteBlocks");

        // WriteBlocks maps its ItemProcessor's one task over the writes and keeps no result.
        let map = &machine["States"]["WriteBlocks"];
        assert_eq!(map["Type"], "Map");
        assert_eq!(map["ResultPath"], Value::Null);
        assert_eq!(map["Next"], "WaitForSnapshots");
        let items = path(&doc, &Value::Null, map["ItemsPath"].as_str().unwrap());
        assert_eq!(items, serde_json::to_value(&tasks.writes).unwrap());
        for (i, item) in items.as_array().unwrap().iter().enumerate() {
            let context = json!({ "Map": { "Item": { "Index": i, "Value": item } } });
            let processor = &map["ItemProcessor"];
            let task = &processor["States"][processor["StartAt"].as_str().unwrap()];
            assert_eq!(task["Resource"], "${WriteBlocksFunctionArn}");
            assert_eq!(task["End"], true);
            let given = parameters(
                &json!({ "Parameters": map["ItemSelector"] }),
                &doc,
                &context,
            );
            let typed = WriteBlocksInput::from_value(&given).unwrap();
            assert_eq!(serde_json::to_value(&typed).unwrap(), given);
            assert_eq!(typed.write, write);
            assert_eq!(
                (typed.job_id.as_str(), typed.run_id.as_str()),
                ("sms-job-1", "sms-run-2")
            );
        }

        let snapshots = CheckSnapshotsOutput {
            snapshots: vec![SnapshotRef {
                index: 0,
                snapshot_id: "snap-1".into(),
                volume_size: 1,
            }],
        };
        let input: CheckSnapshotsInput = step(
            &machine,
            "WaitForSnapshots",
            functions::CHECK_SNAPSHOTS,
            &mut doc,
            &snapshots,
        );
        assert_eq!(input.tasks, tasks.tasks);

        let image = Image {
            image_id: "ami-1".into(),
            snapshot_ids: vec!["snap-1".into()],
        };
        let input: RegisterImageInput = step(
            &machine,
            "RegisterImage",
            functions::REGISTER_IMAGE,
            &mut doc,
            &image,
        );
        assert_eq!(input.snapshots, snapshots.snapshots);

        let input: RetainInput = step(
            &machine,
            "Retain",
            functions::RETAIN,
            &mut doc,
            &RetainOutput::default(),
        );
        assert_eq!(input.image, image);
        let input: CompleteInput = step(
            &machine,
            "Complete",
            functions::COMPLETE,
            &mut doc,
            &CompleteOutput {
                image_id: "ami-1".into(),
            },
        );
        assert_eq!(input.image, image);
    }

    // A Catch puts the error at $.error; RecordFailure reads it from there.
    for state in ["Prepare", "WaitForUpload", "Import", "Complete"] {
        let catch = &machine["States"][state]["Catch"][0];
        assert_eq!(catch["ResultPath"], "$.error", "{state}");
        assert_eq!(catch["Next"], "RecordFailure", "{state}");
    }
    let mut doc = serde_json::to_value(&start).unwrap();
    doc["error"] = json!({ "Error": "Tern.UploadFailed", "Cause": "disk unreadable" });
    let input: RecordFailureInput = step(
        &machine,
        "RecordFailure",
        functions::RECORD_FAILURE,
        &mut doc,
        &RecordFailureOutput {
            recorded: true,
            message: Some("Run failed".into()),
        },
    );
    assert_eq!(input.error.error.as_deref(), Some("Tern.UploadFailed"));
    assert_eq!(input.error.cause.as_deref(), Some("disk unreadable"));
}
