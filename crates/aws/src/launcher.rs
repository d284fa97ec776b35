//! The [`Launcher`] port on AWS CloudFormation: LaunchApp's template becomes a stack, run as
//! the launch role the application's launch configuration names.
//!
//! | port | CloudFormation | errors |
//! |---|---|---|
//! | `check` | nothing (the calls themselves say what is wrong) | — |
//! | `create_stack` | CreateStack: the template as compact JSON `TemplateBody`, `RoleARN` from the role name and the deployment's account, a `ClientRequestToken` derived from the stack name, the deployment's `tern:managed-by` tag | `AlreadyExistsException` → DescribeStacks by name, its id (idempotent by name) |
//! | `stack_state` | DescribeStacks by stack id; for a failed stack also DescribeStackEvents, whose first failed resource of the last operation is added to the stack's reason | a stack that no longer exists → `DeleteComplete` |
//! | `delete_stack` | DeleteStack by stack id | a stack that no longer exists → success |
//! | `console_output` | DescribeStackResource (the instance's id), then EC2 GetConsoleOutput (latest) | no stack, resource or instance yet → none |
//!
//! Throttling, timeouts, dropped connections and 5xx answers are `Transient`; everything else
//! (access denied, a template CloudFormation refuses, a launch role it may not assume) is
//! `Failed` with CloudFormation's code and message. A template over CloudFormation's
//! 51,200-byte `TemplateBody` limit is refused before any call, saying so (Tern does not stage
//! templates for `TemplateURL`).

use async_trait::async_trait;
use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use aws_sdk_cloudformation::operation::create_stack::CreateStackError;
use aws_sdk_cloudformation::types::{ResourceStatus, Stack, StackEvent, StackStatus, Tag};
use aws_sdk_cloudformation::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use serde_json::Value;
use tern_core::launcher::{LaunchError, Launcher, StackState};

use crate::images::tags::MANAGED_BY;
use crate::sdk::classify;

/// CloudFormation's limit on a `TemplateBody`, in bytes.
pub const TEMPLATE_BODY_LIMIT: usize = 51_200;

/// Where the launcher runs: the account and region the launch role lives in, and the value of
/// the [`MANAGED_BY`] tag that tells this deployment's stacks from others'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CfnLauncherSettings {
    pub account_id: String,
    pub region: String,
    pub managed_by: String,
}

/// CloudFormation stacks as the [`Launcher`] port.
#[derive(Debug, Clone)]
pub struct CfnLauncher {
    client: Client,
    settings: CfnLauncherSettings,
    /// Reads the instances' consoles (GetAppValidationOutput's USERDATA validations).
    ec2: Option<aws_sdk_ec2::Client>,
}

impl CfnLauncher {
    pub fn new(client: Client, settings: CfnLauncherSettings) -> Self {
        Self {
            client,
            settings,
            ec2: None,
        }
    }

    /// Reads the stack instances' serial consoles with this EC2 client (without one,
    /// `console_output` answers none).
    pub fn with_ec2(mut self, ec2: aws_sdk_ec2::Client) -> Self {
        self.ec2 = Some(ec2);
        self
    }

    /// The ARN of the launch role `role` (a role name, or already an ARN).
    pub fn role_arn(&self, role: &str) -> String {
        role_arn(&self.settings.region, &self.settings.account_id, role)
    }

    /// The live stack named `name` (any state but DELETE_COMPLETE), if there is one.
    async fn live_stack(&self, name: &str) -> Result<Option<Stack>, LaunchError> {
        match self.client.describe_stacks().stack_name(name).send().await {
            Ok(out) => Ok(out
                .stacks()
                .iter()
                .find(|s| s.stack_status() != Some(&StackStatus::DeleteComplete))
                .cloned()),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(launch_error("DescribeStacks", &e)),
        }
    }

    /// Answers the id of the live stack `name` that a refused CreateStack met, or why not.
    async fn existing(&self, name: &str) -> Result<Option<String>, LaunchError> {
        let Some(stack) = self.live_stack(name).await? else {
            return Ok(None);
        };
        if stack.stack_status() == Some(&StackStatus::DeleteInProgress) {
            return Err(LaunchError::Failed(format!(
                "the stack {name} of an earlier launch is still being deleted; LaunchApp again once it is gone"
            )));
        }
        stack
            .stack_id()
            .map(|id| Some(id.to_owned()))
            .ok_or_else(|| {
                LaunchError::Failed(format!(
                    "CloudFormation described the stack {name} without its id"
                ))
            })
    }

    /// `message` (the stack's reason) with the failed resource's own, when the stack's events
    /// can be read; otherwise `message` alone (the failure is reported either way).
    async fn with_cause(&self, stack_id: &str, message: String) -> String {
        match self
            .client
            .describe_stack_events()
            .stack_name(stack_id)
            .send()
            .await
        {
            Ok(out) => match first_failure(out.stack_events()) {
                Some(cause) => format!("{message}; {cause}"),
                None => message,
            },
            Err(e) => {
                let e = launch_error("DescribeStackEvents", &e);
                tracing::warn!(stack = stack_id, error = %e, "the failed resource's reason is not known");
                message
            }
        }
    }

    async fn create(
        &self,
        stack_name: &str,
        body: &str,
        role_arn: &str,
        token: Option<String>,
    ) -> Result<String, SdkError<CreateStackError, HttpResponse>> {
        let out = self
            .client
            .create_stack()
            .stack_name(stack_name)
            .template_body(body)
            .role_arn(role_arn)
            .set_client_request_token(token)
            .tags(
                Tag::builder()
                    .key(MANAGED_BY)
                    .value(&self.settings.managed_by)
                    .build(),
            )
            .send()
            .await?;
        Ok(out.stack_id.unwrap_or_default())
    }
}

/// What failed in the stack's last operation, from its events (newest first): the oldest
/// resource failure since the stack's own CREATE_IN_PROGRESS or DELETE_IN_PROGRESS, as
/// `Logical: reason`. Resources cancelled because another failed are left out: a rolled-back
/// stack's own reason only lists the failed resources, this says why.
pub fn first_failure(events: &[StackEvent]) -> Option<String> {
    let mut first = None;
    for e in events {
        let status = e.resource_status();
        if e.resource_type() == Some("AWS::CloudFormation::Stack") {
            if matches!(
                status,
                Some(ResourceStatus::CreateInProgress | ResourceStatus::DeleteInProgress)
            ) {
                break;
            }
            continue;
        }
        let failed = status.is_some_and(|s| s.as_str().ends_with("_FAILED"));
        let reason = e.resource_status_reason().unwrap_or_default();
        if failed && !reason.is_empty() && !reason.to_ascii_lowercase().contains("cancelled") {
            first = Some(format!(
                "{}: {reason}",
                e.logical_resource_id().unwrap_or("a resource")
            ));
        }
    }
    first
}

/// `arn:<partition>:iam::<account>:role/<name>`; a value that is already an ARN is kept.
pub fn role_arn(region: &str, account_id: &str, role: &str) -> String {
    if role.starts_with("arn:") {
        return role.to_owned();
    }
    let partition = if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    };
    format!("arn:{partition}:iam::{account_id}:role/{role}")
}

/// The `ClientRequestToken` of the stack's CreateStack: a retried create of the same stack is
/// recognised by CloudFormation. Tokens are `[a-zA-Z0-9][-a-zA-Z0-9]*`, at most 128 characters.
pub fn create_token(stack_name: &str) -> String {
    let clean: String = stack_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(100)
        .collect();
    format!("tern-create-{clean}")
}

/// A stack status as the launch status follows it; `reason` is the stack's status reason.
pub fn state_of(status: &StackStatus, reason: Option<&str>) -> StackState {
    let why = || {
        reason.filter(|r| !r.trim().is_empty()).map_or_else(
            || format!("stack status {}", status.as_str()),
            |r| format!("{} ({})", r, status.as_str()),
        )
    };
    match status {
        StackStatus::CreateInProgress | StackStatus::ReviewInProgress => {
            StackState::CreateInProgress
        }
        StackStatus::CreateComplete
        | StackStatus::UpdateComplete
        | StackStatus::UpdateRollbackComplete
        | StackStatus::ImportComplete
        | StackStatus::ImportRollbackComplete => StackState::CreateComplete,
        StackStatus::CreateFailed
        | StackStatus::RollbackInProgress
        | StackStatus::RollbackComplete
        | StackStatus::RollbackFailed
        | StackStatus::UpdateFailed
        | StackStatus::UpdateRollbackFailed
        | StackStatus::ImportRollbackFailed => StackState::CreateFailed(why()),
        StackStatus::DeleteInProgress => StackState::DeleteInProgress,
        StackStatus::DeleteComplete => StackState::DeleteComplete,
        StackStatus::DeleteFailed => StackState::DeleteFailed(why()),
        // UPDATE_IN_PROGRESS, UPDATE_ROLLBACK_IN_PROGRESS, IMPORT_IN_PROGRESS, … and statuses
        // newer than this SDK: someone is changing the stack; it has not settled yet.
        _ => StackState::CreateInProgress,
    }
}

/// CloudFormation answers a stack id or name it does not know (any more) with a
/// `ValidationError` "Stack with id … does not exist".
fn is_gone<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    error.as_service_error().is_some_and(|e| {
        e.code() == Some("ValidationError")
            && e.message().is_some_and(|m| m.contains("does not exist"))
    })
}

/// An SDK failure as the port's error: transient ones `Transient`, the rest `Failed`, both
/// with CloudFormation's code and message where it sent them.
fn launch_error<E>(operation: &str, error: &SdkError<E, HttpResponse>) -> LaunchError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = classify(operation, error);
    let message = match error.as_service_error() {
        Some(e) => match (e.code(), e.message()) {
            (Some(code), Some(m)) => format!("CloudFormation {operation}: {code}: {m}"),
            (Some(code), None) => format!("CloudFormation {operation}: {code}"),
            _ => f.message,
        },
        None => f.message,
    };
    if f.transient {
        LaunchError::Transient(message)
    } else {
        LaunchError::Failed(message)
    }
}

#[async_trait]
impl Launcher for CfnLauncher {
    async fn check(&self) -> Result<(), LaunchError> {
        Ok(())
    }

    async fn create_stack(
        &self,
        stack_name: &str,
        template: &Value,
        role_name: Option<&str>,
    ) -> Result<String, LaunchError> {
        let role = role_name
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                LaunchError::Failed(
                    "the launch configuration names no roleName: Tern's CloudFormation stacks run \
                 only as a launch role (PutAppLaunchConfiguration with roleName)"
                        .into(),
                )
            })?;
        let body = template.to_string();
        if body.len() > TEMPLATE_BODY_LIMIT {
            return Err(LaunchError::Failed(format!(
                "the template is {} bytes, over CloudFormation's {TEMPLATE_BODY_LIMIT}-byte \
                 TemplateBody limit, and Tern does not stage templates for TemplateURL; split \
                 the application into smaller ones",
                body.len()
            )));
        }
        let role_arn = self.role_arn(role);
        let created = self
            .create(stack_name, &body, &role_arn, Some(create_token(stack_name)))
            .await;
        match created {
            Ok(id) if !id.is_empty() => Ok(id),
            Ok(_) => Err(LaunchError::Failed(format!(
                "CloudFormation created the stack {stack_name} without answering its id"
            ))),
            Err(e) => {
                let exists = matches!(
                    e.as_service_error(),
                    Some(CreateStackError::AlreadyExistsException(_))
                );
                let token_used = matches!(
                    e.as_service_error(),
                    Some(CreateStackError::TokenAlreadyExistsException(_))
                );
                if !(exists || token_used) {
                    return Err(launch_error("CreateStack", &e));
                }
                if let Some(id) = self.existing(stack_name).await? {
                    return Ok(id);
                }
                if exists {
                    // Gone between the two calls: the next LaunchApp creates it afresh.
                    return Err(LaunchError::Transient(format!(
                        "the stack {stack_name} existed at CreateStack and was gone just after; \
                         LaunchApp again"
                    )));
                }
                // The token belongs to an earlier stack of this name, deleted since: this is
                // a new launch, not a retry.
                self.create(stack_name, &body, &role_arn, None)
                    .await
                    .map_err(|e| launch_error("CreateStack", &e))
            }
        }
    }

    async fn stack_state(&self, stack_id: &str) -> Result<StackState, LaunchError> {
        let out = match self
            .client
            .describe_stacks()
            .stack_name(stack_id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_gone(&e) => return Ok(StackState::DeleteComplete),
            Err(e) => return Err(launch_error("DescribeStacks", &e)),
        };
        let Some(stack) = out.stacks().first() else {
            return Ok(StackState::DeleteComplete);
        };
        let Some(status) = stack.stack_status() else {
            return Err(LaunchError::Failed(format!(
                "CloudFormation described the stack {stack_id} without its status"
            )));
        };
        let state = state_of(status, stack.stack_status_reason());
        Ok(match state {
            StackState::CreateFailed(m) => {
                StackState::CreateFailed(self.with_cause(stack_id, m).await)
            }
            StackState::DeleteFailed(m) => {
                StackState::DeleteFailed(self.with_cause(stack_id, m).await)
            }
            other => other,
        })
    }

    async fn delete_stack(&self, stack_id: &str) -> Result<(), LaunchError> {
        match self.client.delete_stack().stack_name(stack_id).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(launch_error("DeleteStack", &e)),
        }
    }

    async fn console_output(
        &self,
        stack_id: &str,
        logical_id: &str,
    ) -> Result<Option<String>, LaunchError> {
        let Some(ec2) = &self.ec2 else {
            return Ok(None);
        };
        let resource = match self
            .client
            .describe_stack_resource()
            .stack_name(stack_id)
            .logical_resource_id(logical_id)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if is_gone(&e) || e.code() == Some("ValidationError") => return Ok(None),
            Err(e) => return Err(launch_error("DescribeStackResource", &e)),
        };
        let Some(instance) = resource
            .stack_resource_detail()
            .and_then(|d| d.physical_resource_id())
            .filter(|id| id.starts_with("i-"))
        else {
            return Ok(None);
        };
        let out = match ec2
            .get_console_output()
            .instance_id(instance)
            .latest(true)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidInstanceID")) => {
                return Ok(None)
            }
            Err(e) => return Err(launch_error("GetConsoleOutput", &e)),
        };
        use base64::Engine;
        Ok(out.output().map(|b64| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap_or_else(|_| b64.as_bytes().to_vec());
            String::from_utf8_lossy(&bytes).into_owned()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_follow_the_partition_and_keep_arns() {
        assert_eq!(
            role_arn("eu-west-1", "123456789012", "sms-launch"),
            "arn:aws:iam::123456789012:role/sms-launch"
        );
        assert_eq!(
            role_arn("cn-north-1", "123456789012", "sms-launch"),
            "arn:aws-cn:iam::123456789012:role/sms-launch"
        );
        assert_eq!(
            role_arn("us-gov-west-1", "123456789012", "r"),
            "arn:aws-us-gov:iam::123456789012:role/r"
        );
        let arn = "arn:aws:iam::210987654321:role/other";
        assert_eq!(role_arn("eu-west-1", "123456789012", arn), arn);
    }

    #[test]
    fn tokens_are_valid_and_stable() {
        let t = create_token("sms-app-0123456789abcdef0");
        assert_eq!(t, "tern-create-sms-app-0123456789abcdef0");
        assert_eq!(create_token("sms-app-0123456789abcdef0"), t);
        let odd = create_token(&"a_b.".repeat(60));
        assert!(odd.len() <= 128, "{}", odd.len());
        assert!(odd.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn statuses_map_onto_the_launch_states() {
        use StackState::*;
        assert_eq!(
            state_of(&StackStatus::CreateInProgress, None),
            CreateInProgress
        );
        assert_eq!(state_of(&StackStatus::CreateComplete, None), CreateComplete);
        assert_eq!(
            state_of(&StackStatus::UpdateInProgress, None),
            CreateInProgress
        );
        assert_eq!(
            state_of(&StackStatus::DeleteInProgress, None),
            DeleteInProgress
        );
        assert_eq!(state_of(&StackStatus::DeleteComplete, None), DeleteComplete);
        assert_eq!(
            state_of(
                &StackStatus::RollbackComplete,
                Some("The following resource(s) failed to create: [Web].")
            ),
            CreateFailed(
                "The following resource(s) failed to create: [Web]. (ROLLBACK_COMPLETE)".into()
            )
        );
        assert_eq!(
            state_of(&StackStatus::CreateFailed, None),
            CreateFailed("stack status CREATE_FAILED".into())
        );
        assert_eq!(
            state_of(
                &StackStatus::DeleteFailed,
                Some("instance i-1 is protected")
            ),
            DeleteFailed("instance i-1 is protected (DELETE_FAILED)".into())
        );
        assert_eq!(
            state_of(&StackStatus::from("SOMETHING_NEW"), None),
            CreateInProgress
        );
    }
}
