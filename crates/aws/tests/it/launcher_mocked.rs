//! `CfnLauncher` on the CloudFormation answers moto never gives: access denied (a launch role
//! the function may not pass), throttling, a request token left by an earlier stack of the same
//! name, a stack of that name still being deleted, and a failed stack's events.

use aws_sdk_cloudformation::error::ErrorMetadata;
use aws_sdk_cloudformation::operation::create_stack::{CreateStackError, CreateStackOutput};
use aws_sdk_cloudformation::operation::describe_stack_events::{
    DescribeStackEventsError, DescribeStackEventsOutput,
};
use aws_sdk_cloudformation::operation::describe_stacks::{
    DescribeStacksError, DescribeStacksOutput,
};
use aws_sdk_cloudformation::types::error::{AlreadyExistsException, TokenAlreadyExistsException};
use aws_sdk_cloudformation::types::{ResourceStatus, Stack, StackEvent, StackStatus};
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use serde_json::json;
use tern_aws::{CfnLauncher, CfnLauncherSettings};
use tern_core::launcher::{LaunchError, Launcher, StackState};

const NAME: &str = "sms-app-0123456789abcdef0";
const ID: &str = "arn:aws:cloudformation:eu-west-1:123456789012:stack/sms-app-0123456789abcdef0/2";

fn launcher(client: aws_sdk_cloudformation::Client) -> CfnLauncher {
    CfnLauncher::new(
        client,
        CfnLauncherSettings {
            account_id: "123456789012".into(),
            region: "eu-west-1".into(),
            managed_by: "tern:tests".into(),
        },
    )
}

fn template() -> serde_json::Value {
    json!({"Resources": {"Web": {"Type": "AWS::EC2::Instance",
        "Properties": {"ImageId": "ami-1", "InstanceType": "t3.micro"}}}})
}

fn stack(status: StackStatus) -> Stack {
    Stack::builder()
        .stack_id(ID)
        .stack_name(NAME)
        .stack_status(status)
        .creation_time(aws_smithy_types::DateTime::from_secs(0))
        .build()
}

#[tokio::test]
async fn a_role_the_function_may_not_pass_is_failed_with_cloudformations_message() {
    let denied = mock!(aws_sdk_cloudformation::Client::create_stack)
        .match_requests(|r| {
            r.role_arn() == Some("arn:aws:iam::123456789012:role/other-role")
                && r.client_request_token() == Some("tern-create-sms-app-0123456789abcdef0")
                && r.tags().iter().any(|t| t.key() == Some("tern:managed-by"))
        })
        .then_error(|| {
            CreateStackError::generic(
                ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("User: arn:aws:sts::123456789012:assumed-role/tern-ApiFunctionRole/x is not authorized to perform: iam:PassRole on resource: arn:aws:iam::123456789012:role/other-role")
                    .build(),
            )
        });
    let client = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, [&denied]);
    let err = launcher(client)
        .create_stack(NAME, &template(), Some("other-role"))
        .await
        .unwrap_err();
    assert_eq!(denied.num_calls(), 1);
    match err {
        LaunchError::Failed(m) => assert!(
            m.contains("CreateStack: AccessDenied") && m.contains("iam:PassRole on resource"),
            "{m}"
        ),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn throttling_is_transient() {
    let throttled = mock!(aws_sdk_cloudformation::Client::describe_stacks).then_error(|| {
        DescribeStacksError::generic(
            ErrorMetadata::builder()
                .code("Throttling")
                .message("Rate exceeded")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, [&throttled]);
    match launcher(client).stack_state(ID).await {
        Err(LaunchError::Transient(m)) => assert!(m.contains("Rate exceeded"), "{m}"),
        other => panic!("expected Transient, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_of_an_earlier_stack_of_the_name_starts_a_new_stack() {
    // The token was spent on the stack of an earlier launch, deleted since: no live stack of
    // the name, so this launch creates one without the token.
    let token_used = mock!(aws_sdk_cloudformation::Client::create_stack)
        .match_requests(|r| r.client_request_token().is_some())
        .then_error(|| {
            CreateStackError::TokenAlreadyExistsException(
                TokenAlreadyExistsException::builder()
                    .message("Another Stack operation was already requested with this token.")
                    .build(),
            )
        });
    let gone = mock!(aws_sdk_cloudformation::Client::describe_stacks)
        .match_requests(|r| r.stack_name() == Some(NAME))
        .then_error(|| {
            DescribeStacksError::generic(
                ErrorMetadata::builder()
                    .code("ValidationError")
                    .message(format!("Stack with id {NAME} does not exist"))
                    .build(),
            )
        });
    let fresh = mock!(aws_sdk_cloudformation::Client::create_stack)
        .match_requests(|r| r.client_request_token().is_none())
        .then_output(|| CreateStackOutput::builder().stack_id(ID).build());
    let client = mock_client!(
        aws_sdk_cloudformation,
        RuleMode::MatchAny,
        [&token_used, &gone, &fresh]
    );
    let id = launcher(client)
        .create_stack(NAME, &template(), Some("sms-launch"))
        .await
        .unwrap();
    assert_eq!(id, ID);
    assert_eq!(
        (token_used.num_calls(), gone.num_calls(), fresh.num_calls()),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_stack_of_the_name_still_being_deleted_is_said_so() {
    let exists = mock!(aws_sdk_cloudformation::Client::create_stack).then_error(|| {
        CreateStackError::AlreadyExistsException(
            AlreadyExistsException::builder()
                .message(format!("Stack [{NAME}] already exists"))
                .build(),
        )
    });
    let deleting = mock!(aws_sdk_cloudformation::Client::describe_stacks).then_output(|| {
        DescribeStacksOutput::builder()
            .stacks(stack(StackStatus::DeleteInProgress))
            .build()
    });
    let client = mock_client!(
        aws_sdk_cloudformation,
        RuleMode::MatchAny,
        [&exists, &deleting]
    );
    match launcher(client)
        .create_stack(NAME, &template(), Some("sms-launch"))
        .await
    {
        Err(LaunchError::Failed(m)) => {
            assert!(m.contains("still being deleted") && m.contains(NAME), "{m}")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn event(logical: &str, kind: &str, status: ResourceStatus, reason: Option<&str>) -> StackEvent {
    StackEvent::builder()
        .stack_id(ID)
        .stack_name(NAME)
        .event_id(format!("{logical}-{}", status.as_str()))
        .logical_resource_id(logical)
        .resource_type(kind)
        .resource_status(status)
        .set_resource_status_reason(reason.map(str::to_owned))
        .timestamp(aws_smithy_types::DateTime::from_secs(0))
        .build()
}

#[tokio::test]
async fn a_rolled_back_stack_says_which_resource_failed_and_why() {
    let rolled_back = mock!(aws_sdk_cloudformation::Client::describe_stacks).then_output(|| {
        let mut s = stack(StackStatus::RollbackComplete);
        s.stack_status_reason =
            Some("The following resource(s) failed to create: [Web, Database].".into());
        DescribeStacksOutput::builder().stacks(s).build()
    });
    const STACK: &str = "AWS::CloudFormation::Stack";
    const INSTANCE: &str = "AWS::EC2::Instance";
    // Newest first, as CloudFormation lists them; an older launch's failure sits behind the
    // stack's CREATE_IN_PROGRESS and is not this launch's cause.
    let events = mock!(aws_sdk_cloudformation::Client::describe_stack_events)
        .match_requests(|r| r.stack_name() == Some(ID))
        .then_output(|| {
            DescribeStackEventsOutput::builder()
                .stack_events(event(
                    NAME,
                    STACK,
                    ResourceStatus::from("ROLLBACK_COMPLETE"),
                    None,
                ))
                .stack_events(event("Web", INSTANCE, ResourceStatus::DeleteComplete, None))
                .stack_events(event(
                    NAME,
                    STACK,
                    ResourceStatus::from("ROLLBACK_IN_PROGRESS"),
                    Some("The following resource(s) failed to create: [Web, Database]."),
                ))
                .stack_events(event(
                    "Database",
                    INSTANCE,
                    ResourceStatus::CreateFailed,
                    Some("Resource creation cancelled"),
                ))
                .stack_events(event(
                    "Web",
                    INSTANCE,
                    ResourceStatus::CreateFailed,
                    Some(
                        "The image id '[ami-0abc]' does not exist (Service: Ec2, Status Code: 400)",
                    ),
                ))
                .stack_events(event(
                    "Web",
                    INSTANCE,
                    ResourceStatus::CreateInProgress,
                    None,
                ))
                .stack_events(event(
                    NAME,
                    STACK,
                    ResourceStatus::CreateInProgress,
                    Some("User Initiated"),
                ))
                .stack_events(event(
                    "Old",
                    INSTANCE,
                    ResourceStatus::CreateFailed,
                    Some("an older launch"),
                ))
                .build()
        });
    let client = mock_client!(
        aws_sdk_cloudformation,
        RuleMode::MatchAny,
        [&rolled_back, &events]
    );
    match launcher(client).stack_state(ID).await.unwrap() {
        StackState::CreateFailed(m) => {
            assert!(
                m.starts_with("The following resource(s) failed to create: [Web, Database]. (ROLLBACK_COMPLETE)")
                    && m.ends_with("; Web: The image id '[ami-0abc]' does not exist (Service: Ec2, Status Code: 400)"),
                "{m}"
            );
        }
        other => panic!("expected CreateFailed, got {other:?}"),
    }
    assert_eq!(events.num_calls(), 1);
}

#[tokio::test]
async fn unreadable_events_leave_the_stacks_own_reason() {
    let failed = mock!(aws_sdk_cloudformation::Client::describe_stacks).then_output(|| {
        let mut s = stack(StackStatus::DeleteFailed);
        s.stack_status_reason = Some("The following resource(s) failed to delete: [Web].".into());
        DescribeStacksOutput::builder().stacks(s).build()
    });
    let denied = mock!(aws_sdk_cloudformation::Client::describe_stack_events).then_error(|| {
        DescribeStackEventsError::generic(
            ErrorMetadata::builder()
                .code("AccessDenied")
                .message("not authorized to perform: cloudformation:DescribeStackEvents")
                .build(),
        )
    });
    let client = mock_client!(
        aws_sdk_cloudformation,
        RuleMode::MatchAny,
        [&failed, &denied]
    );
    assert_eq!(
        launcher(client).stack_state(ID).await.unwrap(),
        StackState::DeleteFailed(
            "The following resource(s) failed to delete: [Web]. (DELETE_FAILED)".into()
        )
    );
}
