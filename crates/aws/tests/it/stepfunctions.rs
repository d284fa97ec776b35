//! `StepFunctions` (the `Workflows` port) on moto, and its error mapping with mocks.

use std::collections::HashMap;

use aws_sdk_sfn::error::ErrorMetadata;
use aws_sdk_sfn::operation::send_task_heartbeat::SendTaskHeartbeatError;
use aws_sdk_sfn::operation::send_task_success::SendTaskSuccessError;
use aws_sdk_sfn::types::error::{InvalidToken, TaskTimedOut};
use aws_smithy_mocks::{mock, mock_client};
use serde_json::json;
use tern_aws::StepFunctions;
use tern_core::workflows::{WorkflowError, Workflows};
use tern_test_support::moto::{Flavor, Moto};

const PASS: &str = r#"{"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": true}}}"#;

#[tokio::test]
async fn executions_start_once_per_name_on_moto() {
    let Some(moto) = Moto::start(Flavor::Threaded, "the Step Functions adapter") else {
        return;
    };
    let client = aws_sdk_sfn::Client::new(&crate::moto_config(&moto.endpoint));
    let arn = client
        .create_state_machine()
        .name("replication-run")
        .definition(PASS)
        .role_arn("arn:aws:iam::123456789012:role/tern-states")
        .send()
        .await
        .expect("create the state machine")
        .state_machine_arn;
    let machines = HashMap::from([("replication-run".to_string(), arn.clone())]);
    let sfn = StepFunctions::new(client, machines);

    let input = json!({"jobId": "sms-job-1", "runId": "sms-run-1"});
    let first = sfn
        .start_execution("replication-run", "sms-run-1", &input)
        .await
        .expect("start");
    let again = sfn
        .start_execution("replication-run", "sms-run-1", &input)
        .await
        .expect("the same name and input start nothing new");
    assert_eq!(first, again);
    match sfn
        .start_execution("replication-run", "sms-run-1", &json!({"other": true}))
        .await
    {
        Err(WorkflowError::AlreadyExists(m)) => assert!(m.contains("StartExecution"), "{m}"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(matches!(
        sfn.start_execution("no-such-workflow", "x", &input).await,
        Err(WorkflowError::NoSuchMachine(_))
    ));
    let gone = StepFunctions::new(
        aws_sdk_sfn::Client::new(&crate::moto_config(&moto.endpoint)),
        HashMap::from([(
            "replication-run".to_string(),
            arn.replace("replication-run", "deleted-machine"),
        )]),
    );
    match gone.start_execution("replication-run", "x", &input).await {
        Err(WorkflowError::NoSuchMachine(_)) => {}
        other => panic!("expected NoSuchMachine, got {other:?}"),
    }
}

/// A token answered twice, timed out or malformed is gone, not a failure: notifications arrive
/// at least once. Throttling is transient.
#[tokio::test]
async fn task_token_errors_map_to_the_port() {
    let timed_out = mock!(aws_sdk_sfn::Client::send_task_success).then_error(|| {
        SendTaskSuccessError::TaskTimedOut(TaskTimedOut::builder().message("expired").build())
    });
    let invalid = mock!(aws_sdk_sfn::Client::send_task_heartbeat).then_error(|| {
        SendTaskHeartbeatError::InvalidToken(InvalidToken::builder().message("bad").build())
    });
    let client = mock_client!(aws_sdk_sfn, [&timed_out, &invalid]);
    let sfn = StepFunctions::new(client, HashMap::new());
    assert!(matches!(
        sfn.send_task_success("t", &json!({})).await,
        Err(WorkflowError::TaskGone(_))
    ));
    assert!(matches!(
        sfn.send_task_heartbeat("t").await,
        Err(WorkflowError::TaskGone(_))
    ));

    let throttled = mock!(aws_sdk_sfn::Client::send_task_failure).then_error(|| {
        aws_sdk_sfn::operation::send_task_failure::SendTaskFailureError::generic(
            ErrorMetadata::builder()
                .code("ThrottlingException")
                .message("Rate exceeded")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_sfn, [&throttled]);
    let sfn = StepFunctions::new(client, HashMap::new());
    match sfn
        .send_task_failure("t", "Tern.InvalidManifest", &"x".repeat(40_000))
        .await
    {
        Err(WorkflowError::Transient { message, .. }) => {
            assert!(message.contains("Rate exceeded"), "{message}")
        }
        other => panic!("expected Transient, got {other:?}"),
    }
}

/// DeleteReplicationJob stops the run's execution: StopExecution on the ARN derived from the
/// machine's, ABORTED afterwards; stopping again, or a name never started, succeeds.
#[tokio::test]
async fn executions_stop_once_and_stopping_again_changes_nothing_on_moto() {
    let Some(moto) = Moto::start(Flavor::Threaded, "the Step Functions adapter") else {
        return;
    };
    let client = aws_sdk_sfn::Client::new(&crate::moto_config(&moto.endpoint));
    const WAIT: &str = r#"{"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": true}}}"#;
    let arn = client
        .create_state_machine()
        .name("replication-run")
        .definition(WAIT)
        .role_arn("arn:aws:iam::123456789012:role/tern-states")
        .send()
        .await
        .expect("create the state machine")
        .state_machine_arn;
    let sfn = StepFunctions::new(
        client.clone(),
        HashMap::from([("replication-run".to_string(), arn)]),
    );
    let execution = sfn
        .start_execution(
            "replication-run",
            "sms-run-2",
            &json!({"runId": "sms-run-2"}),
        )
        .await
        .expect("start");
    let status = |client: aws_sdk_sfn::Client, arn: String| async move {
        client
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
            .expect("describe")
            .status
    };
    assert_eq!(
        status(client.clone(), execution.clone()).await,
        aws_sdk_sfn::types::ExecutionStatus::Running
    );
    sfn.stop_execution(
        "replication-run",
        "sms-run-2",
        "the replication job was deleted",
    )
    .await
    .expect("stop");
    assert_eq!(
        status(client.clone(), execution.clone()).await,
        aws_sdk_sfn::types::ExecutionStatus::Aborted
    );
    sfn.stop_execution("replication-run", "sms-run-2", "again")
        .await
        .expect("stopping a stopped execution succeeds");
    sfn.stop_execution("replication-run", "sms-run-never", "never started")
        .await
        .expect("an execution never started has nothing to stop");
    assert!(matches!(
        sfn.stop_execution("no-such-workflow", "x", "c").await,
        Err(WorkflowError::NoSuchMachine(_))
    ));
}
