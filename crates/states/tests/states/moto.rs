//! Runs the corpus machines that have no Task state in moto's Step Functions and checks that moto
//! agrees with the corpus (and so with the engine). Places where moto is wrong are listed, with
//! the reason, in `tests/corpus/moto-known-differences.json` instead of being copied.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use tern_states::StateMachine;
use tern_test_support::moto::{Flavor, Moto};
use tern_test_support::poll::until_async;

use crate::common::{check, corpus_dir, load_corpus};
use crate::corpus::machine_name;

/// moto's Step Functions over plain HTTP (awsJson 1.0 calls need no SDK).
struct StepFunctions {
    _server: Moto,
    base: String,
    http: reqwest::Client,
}

impl StepFunctions {
    async fn call(&self, op: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(&self.base)
            .header("X-Amz-Target", format!("AWSStepFunctions.{op}"))
            .header("Content-Type", "application/x-amz-json-1.0")
            // moto routes by the service in the credential scope; the signature is not checked.
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/states/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status.is_success(), "{op}: HTTP {status}: {text}");
        Ok(serde_json::from_str(&text)?)
    }
}

/// Starts moto and lets its Step Functions run the states of the machines it is given. `None`
/// when moto is not installed (and `CI` is not set).
async fn start_moto() -> Option<StepFunctions> {
    let server = Moto::start(Flavor::Threaded, "corpus_agrees_with_moto")?;
    let sfn = StepFunctions {
        base: format!("{}/", server.endpoint),
        _server: server,
        http: reqwest::Client::new(),
    };
    sfn.http
        .post(format!("{}moto-api/config", sfn.base))
        .body(json!({"stepfunctions": {"execute_state_machine": true}}).to_string())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("configure moto's Step Functions");
    Some(sfn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_agrees_with_moto() {
    let known: Value = serde_json::from_str(
        &std::fs::read_to_string(corpus_dir().join("moto-known-differences.json")).unwrap(),
    )
    .unwrap();
    let known: HashMap<String, String> = known["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["case"].as_str().unwrap().to_string(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let Some(moto) = start_moto().await else {
        return;
    };
    let mut ran = 0;
    let mut failures = Vec::new();
    let mut now_agreeing = Vec::new();
    for (name, case) in load_corpus() {
        let def = case.definition.to_string();
        if StateMachine::parse(&def)
            .expect("corpus definitions are valid")
            .has_task()
        {
            continue;
        }
        ran += 1;
        // moto 5.2 deep-copies its whole backend when it starts an execution, which fails once
        // any earlier execution exists (it holds a lock): reset before each case and run them
        // one at a time.
        moto.http
            .post(format!("{}moto-api/reset", moto.base))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("reset moto");
        let started = async {
            let sm = moto
                .call("CreateStateMachine", json!({"name": machine_name(&name), "definition": def, "roleArn": "arn:aws:iam::123456789012:role/tern-states"}))
                .await?;
            let arn = sm["stateMachineArn"].as_str().unwrap_or_default().to_string();
            moto.call("StartExecution", json!({"stateMachineArn": arn, "name": "run", "input": case.input.to_string()})).await
        }
        .await;
        let ex = match started {
            Ok(ex) => ex,
            Err(e) => {
                if !known.contains_key(&name) {
                    failures.push(format!("{name}: moto refused it: {e}"));
                }
                continue;
            }
        };
        let arn = ex["executionArn"].as_str().unwrap().to_string();
        let describe = || async {
            moto.call("DescribeExecution", json!({"executionArn": arn}))
                .await
                .unwrap()
        };
        // moto_server is a separate process with its own (wall) clock: a bounded poll is the one
        // way to wait for it.
        let ended = until_async(
            Duration::from_secs(30),
            Duration::from_millis(20),
            || async {
                let d = describe().await;
                (d["status"] != "RUNNING").then_some(d)
            },
        )
        .await;
        // Still running after the bound: compared as is, so the case fails with moto's status.
        let d = match ended {
            Some(d) => d,
            None => describe().await,
        };
        // moto's DescribeExecution returns string outputs without JSON quoting; the history's
        // ExecutionSucceeded event has them right.
        let mut output = d["output"].as_str().map(str::to_string);
        if d["status"] == "SUCCEEDED" {
            let h = moto
                .call("GetExecutionHistory", json!({"executionArn": arn}))
                .await
                .unwrap();
            let events = h["events"].as_array().cloned().unwrap_or_default();
            output = events
                .iter()
                .find(|e| e["type"] == "ExecutionSucceeded")
                .and_then(|e| e["executionSucceededEventDetails"]["output"].as_str())
                .map(str::to_string);
        }
        let res = check(
            &case.expected,
            d["status"].as_str().unwrap_or(""),
            output.as_deref(),
            d["error"].as_str(),
            d["cause"].as_str(),
        );
        match (res, known.get(&name)) {
            (Err(msg), None) => failures.push(format!("{name}: moto gives {msg}")),
            (Ok(()), Some(_)) => now_agreeing.push(name.clone()),
            _ => {}
        }
    }
    assert!(ran >= 100, "too few corpus machines ran in moto: {ran}");
    if !now_agreeing.is_empty() {
        eprintln!("note: moto now agrees on cases listed as known differences: {now_agreeing:?}");
    }
    eprintln!(
        "moto ran {ran} corpus machines ({} known differences)",
        known.len()
    );
    assert!(
        failures.is_empty(),
        "moto disagrees with the corpus on {} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
