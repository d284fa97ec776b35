//! `tern states validate` and `tern states run`, driven through the built binary.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

fn tern(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .output()
        .expect("run tern");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.code().unwrap_or(-1),
        value,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn write(dir: &Path, name: &str, v: Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.to_string_lossy().to_string()
}

#[test]
fn validate_lists_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.asl.json",
        json!({"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}),
    );
    let (code, out, _) = tern(&["states", "validate", &good]);
    assert_eq!((code, out), (0, json!({"valid": true})));

    let bad = write(
        dir.path(),
        "bad.asl.json",
        json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Nope"}, "B": {"Type": "Task", "End": true}}}),
    );
    let (code, out, _) = tern(&["states", "validate", &bad]);
    assert_eq!(code, 1);
    let paths: Vec<&str> = out["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"$.States['A'].Next"), "{paths:?}");
    assert!(paths.contains(&"$.States['B'].Resource"), "{paths:?}");
    assert!(
        paths.contains(&"$.States['B']"),
        "unreachable state reported: {paths:?}"
    );
}

#[test]
fn run_prints_the_output_and_runs_tasks_as_commands() {
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "flow.asl.json",
        json!({"StartAt": "Double", "States": {
            "Double": {"Type": "Task", "Resource": "arn:aws:lambda:local:0:function:${Fn}", "ResultPath": "$.doubled", "Next": "Check"},
            "Check": {"Type": "Choice", "Choices": [{"Variable": "$.doubled.v", "NumericEquals": 42, "Next": "Ask"}], "Default": "Bad"},
            "Ask": {"Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken", "ResultPath": "$.answer", "End": true},
            "Bad": {"Type": "Fail", "Error": "WrongNumber"}}}),
    );
    let (code, out, stderr) = tern(&[
        "states",
        "run",
        &def,
        "--input",
        r#"{"n": 21}"#,
        "--substitution",
        "Fn=double",
        "--task",
        r#"arn:aws:lambda:local:0:function:double=python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"v": d["n"]*2}))'"#,
        "--task",
        r#"arn:aws:states:::sqs:sendMessage=echo "{\"token_len\": ${#TERN_TASK_TOKEN}}""#,
    ]);
    assert_eq!(code, 0, "{out} {stderr}");
    assert_eq!(
        out,
        json!({"n": 21, "doubled": {"v": 42}, "answer": {"token_len": 64}})
    );
}

#[test]
fn failing_commands_fail_the_task_with_their_error() {
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "fail.asl.json",
        json!({"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "custom:named", "Catch": [{"ErrorEquals": ["Custom.Error"], "ResultPath": "$.err", "Next": "U"}], "Next": "U"},
            "U": {"Type": "Task", "Resource": "custom:plain", "End": true}}}),
    );
    let (code, out, _) = tern(&[
        "states",
        "run",
        &def,
        "--history",
        "--task",
        r#"custom:named=echo '{"error": "Custom.Error", "cause": "named failure"}' >&2; exit 3"#,
        "--task",
        "custom:plain=echo boom >&2; exit 1",
    ]);
    assert_eq!(code, 1);
    assert_eq!(out["status"], "FAILED");
    assert_eq!(out["error"], "States.TaskFailed");
    assert!(out["cause"].as_str().unwrap().contains("boom"), "{out}");
    let history = out["history"].as_array().unwrap();
    let failed: Vec<&Value> = history
        .iter()
        .filter(|e| e["type"] == "TaskFailed")
        .collect();
    assert_eq!(failed[0]["taskFailedEventDetails"]["error"], "Custom.Error");
    assert_eq!(
        failed[0]["taskFailedEventDetails"]["cause"],
        "named failure"
    );
    assert_eq!(history.last().unwrap()["type"], "ExecutionFailed");
}

#[test]
fn run_with_history_and_real_waits() {
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "wait.asl.json",
        json!({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 1, "Next": "P"}, "P": {"Type": "Pass", "Result": "ok", "End": true}}}),
    );
    let (code, out, _) = tern(&["states", "run", &def, "--history"]);
    assert_eq!(code, 0);
    assert_eq!(out["output"], "ok");
    let types: Vec<&str> = out["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "ExecutionStarted",
            "WaitStateEntered",
            "WaitStateExited",
            "PassStateEntered",
            "PassStateExited",
            "ExecutionSucceeded"
        ]
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["states", "run", &def, "--input", "not json"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--input is not valid JSON"));
}
