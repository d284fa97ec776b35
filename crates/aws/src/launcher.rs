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
//! | `send_command` | the instance's tag `UserForSMSApplicationValidation` (EC2 DescribeTags; SSM ListTagsForResource for `mi-`), then SSM SendCommand of `AWS-RunRemoteScript` (the script's S3 path, the command line, `executionTimeout`, the output bucket and prefix) | not tagged → `Failed` naming the tag |
//! | `command_status` | SSM GetCommandInvocation (status, exit code, the output's first 24,000 characters); once ended, ListCommands for where SSM wrote the whole output | an invocation SSM does not know yet → in progress |
//!
//! Throttling, timeouts, dropped connections and 5xx answers are `Transient`; everything else
//! (access denied, a template CloudFormation refuses, a launch role it may not assume) is
//! `Failed` with CloudFormation's code and message. A template over CloudFormation's
//! 51,200-byte `TemplateBody` limit is put in the template bucket
//! ([`CfnLauncher::with_template_bucket`], `apps/<stack name>/launch-template.json`) and
//! created from its `TemplateURL` (up to 1 MiB); without a bucket it is refused before any
//! call, saying so.

use async_trait::async_trait;
use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use aws_sdk_cloudformation::operation::create_stack::CreateStackError;
use aws_sdk_cloudformation::types::{ResourceStatus, Stack, StackEvent, StackStatus, Tag};
use aws_sdk_cloudformation::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use serde_json::Value;
use tern_core::launcher::{
    CommandRequest, CommandState, CommandStatus, LaunchError, Launcher, StackState,
    VALIDATION_INSTANCE_TAG,
};

use crate::images::tags::MANAGED_BY;
use crate::sdk::classify;

/// The SSM document app-level validations run: it downloads the script from S3 on the
/// instance and runs the command line there (shell or PowerShell by the instance's OS).
pub const RUN_REMOTE_SCRIPT: &str = "AWS-RunRemoteScript";

/// CloudFormation's limit on a `TemplateBody`, in bytes.
pub const TEMPLATE_BODY_LIMIT: usize = 51_200;
/// CloudFormation's limit on a template read from `TemplateURL`, in bytes.
pub const TEMPLATE_URL_LIMIT: usize = 1_048_576;

/// How CreateStack gets the template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateSource {
    Body(String),
    /// An S3 URL, for a template over [`TEMPLATE_BODY_LIMIT`].
    Url(String),
}

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
    /// Reads the instances' consoles (GetAppValidationOutput's USERDATA validations) and
    /// their tags (the SSM validations' instance).
    ec2: Option<aws_sdk_ec2::Client>,
    /// Runs the app-level SSM validations (Run Command).
    ssm: Option<aws_sdk_ssm::Client>,
    /// Where a template over the `TemplateBody` limit is put for CloudFormation to read.
    templates: Option<(aws_sdk_s3::Client, String)>,
}

impl CfnLauncher {
    pub fn new(client: Client, settings: CfnLauncherSettings) -> Self {
        Self {
            client,
            settings,
            ec2: None,
            ssm: None,
            templates: None,
        }
    }

    /// Puts templates over CloudFormation's 51,200-byte `TemplateBody` limit in `bucket`
    /// (under `apps/<stack name>/`), handing CloudFormation their `TemplateURL`.
    pub fn with_template_bucket(
        mut self,
        s3: aws_sdk_s3::Client,
        bucket: impl Into<String>,
    ) -> Self {
        self.templates = Some((s3, bucket.into()));
        self
    }

    /// How CreateStack gets `body`: inline when it fits, else put in the template bucket and
    /// named by URL; refused when there is no bucket or it is over 1 MiB.
    async fn template_source(
        &self,
        stack_name: &str,
        body: String,
    ) -> Result<TemplateSource, LaunchError> {
        if body.len() <= TEMPLATE_BODY_LIMIT {
            return Ok(TemplateSource::Body(body));
        }
        let Some((s3, bucket)) = &self.templates else {
            return Err(LaunchError::Failed(format!(
                "the template is {} bytes, over CloudFormation's {TEMPLATE_BODY_LIMIT}-byte \
                 TemplateBody limit, and this deployment has no bucket for TemplateURL; split \
                 the application into smaller ones",
                body.len()
            )));
        };
        if body.len() > TEMPLATE_URL_LIMIT {
            return Err(LaunchError::Failed(format!(
                "the template is {} bytes, over CloudFormation's {TEMPLATE_URL_LIMIT}-byte \
                 limit for a template in S3; split the application into smaller ones",
                body.len()
            )));
        }
        let key = format!("apps/{stack_name}/launch-template.json");
        s3.put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/json")
            .body(body.into_bytes().into())
            .send()
            .await
            .map_err(|e| launch_error("S3", "PutObject", &e))?;
        Ok(TemplateSource::Url(format!(
            "https://{bucket}.s3.{}.amazonaws.com/{key}",
            self.settings.region
        )))
    }

    /// Runs app-level validation scripts with SSM Run Command through this client (the
    /// instance's tag is read with the EC2 client of [`Self::with_ec2`]).
    pub fn with_ssm(mut self, ssm: aws_sdk_ssm::Client) -> Self {
        self.ssm = Some(ssm);
        self
    }

    /// Reads the stack instances' serial consoles with this EC2 client (without one,
    /// `console_output` answers none).
    pub fn with_ec2(mut self, ec2: aws_sdk_ec2::Client) -> Self {
        self.ec2 = Some(ec2);
        self
    }

    /// Refuses an instance that does not carry [`VALIDATION_INSTANCE_TAG`]`=true`: an EC2
    /// instance's tags from EC2, a managed instance's (`mi-`) from SSM.
    async fn check_validation_tag(
        &self,
        ssm: &aws_sdk_ssm::Client,
        ec2: &aws_sdk_ec2::Client,
        instance: &str,
    ) -> Result<(), LaunchError> {
        use aws_sdk_ec2::types::Filter;
        let values: Vec<String> = if instance.starts_with("mi-") {
            ssm.list_tags_for_resource()
                .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::ManagedInstance)
                .resource_id(instance)
                .send()
                .await
                .map_err(|e| launch_error("SSM", "ListTagsForResource", &e))?
                .tag_list()
                .iter()
                .filter(|t| t.key() == VALIDATION_INSTANCE_TAG)
                .map(|t| t.value().to_owned())
                .collect()
        } else {
            ec2.describe_tags()
                .filters(
                    Filter::builder()
                        .name("resource-id")
                        .values(instance)
                        .build(),
                )
                .filters(
                    Filter::builder()
                        .name("key")
                        .values(VALIDATION_INSTANCE_TAG)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| launch_error("EC2", "DescribeTags", &e))?
                .tags()
                .iter()
                .filter_map(|t| t.value().map(str::to_owned))
                .collect()
        };
        if values.iter().any(|v| v.eq_ignore_ascii_case("true")) {
            Ok(())
        } else {
            Err(LaunchError::Failed(format!(
                "instance {instance} does not carry the tag {VALIDATION_INSTANCE_TAG}=true (or is not in {}); tag the instance that should run the script, with an instance profile that may read the script's bucket",
                self.settings.region
            )))
        }
    }

    /// Where SSM wrote command `command`'s output on `instance`: `<prefix>/<command>/<instance>`
    /// in the output bucket it was sent with, if any.
    async fn output_location(
        &self,
        ssm: &aws_sdk_ssm::Client,
        command: &str,
        instance: &str,
    ) -> Option<(String, String)> {
        let out = match ssm.list_commands().command_id(command).send().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(command, error = %launch_error("SSM", "ListCommands", &e), "cannot read where the command's output went");
                return None;
            }
        };
        let c = out.commands().first()?;
        let bucket = c.output_s3_bucket_name().filter(|b| !b.is_empty())?;
        let prefix = c.output_s3_key_prefix().unwrap_or_default();
        let key = if prefix.is_empty() {
            format!("{command}/{instance}")
        } else {
            format!("{}/{command}/{instance}", prefix.trim_end_matches('/'))
        };
        Some((bucket.to_owned(), key))
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
            Err(e) => Err(launch_error("CloudFormation", "DescribeStacks", &e)),
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
                let e = launch_error("CloudFormation", "DescribeStackEvents", &e);
                tracing::warn!(stack = stack_id, error = %e, "the failed resource's reason is not known");
                message
            }
        }
    }

    async fn create(
        &self,
        stack_name: &str,
        template: &TemplateSource,
        role_arn: &str,
        token: Option<String>,
    ) -> Result<String, SdkError<CreateStackError, HttpResponse>> {
        let (body, url) = match template {
            TemplateSource::Body(b) => (Some(b.clone()), None),
            TemplateSource::Url(u) => (None, Some(u.clone())),
        };
        let out = self
            .client
            .create_stack()
            .stack_name(stack_name)
            .set_template_body(body)
            .set_template_url(url)
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
/// with the service's code and message where it sent them, as `<Service> <Operation>: …`.
fn launch_error<E>(service: &str, operation: &str, error: &SdkError<E, HttpResponse>) -> LaunchError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = classify(operation, error);
    let message = match error.as_service_error() {
        Some(e) => match (e.code(), e.message()) {
            (Some(code), Some(m)) => format!("{service} {operation}: {code}: {m}"),
            (Some(code), None) => format!("{service} {operation}: {code}"),
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
        let body = self
            .template_source(stack_name, template.to_string())
            .await?;
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
                    return Err(launch_error("CloudFormation", "CreateStack", &e));
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
                    .map_err(|e| launch_error("CloudFormation", "CreateStack", &e))
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
            Err(e) => return Err(launch_error("CloudFormation", "DescribeStacks", &e)),
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
            Err(e) => Err(launch_error("CloudFormation", "DeleteStack", &e)),
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
            Err(e) => return Err(launch_error("CloudFormation", "DescribeStackResource", &e)),
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
            Err(e) => return Err(launch_error("EC2", "GetConsoleOutput", &e)),
        };
        use base64::Engine;
        Ok(out.output().map(|b64| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap_or_else(|_| b64.as_bytes().to_vec());
            String::from_utf8_lossy(&bytes).into_owned()
        }))
    }

    /// The instance downloads the script from S3 itself (with its instance profile).
    fn carries_scripts(&self) -> bool {
        false
    }

    async fn send_command(&self, req: &CommandRequest) -> Result<String, LaunchError> {
        let (Some(ssm), Some(ec2)) = (&self.ssm, &self.ec2) else {
            return Err(LaunchError::Unavailable(
                "this deployment was not given SSM to run validation scripts".into(),
            ));
        };
        self.check_validation_tag(ssm, ec2, &req.instance_id)
            .await?;
        let path = format!(
            "https://s3.{}.amazonaws.com/{}/{}",
            self.settings.region, req.script_bucket, req.script_key
        );
        let comment: String = req.comment.chars().take(100).collect();
        let out = ssm
            .send_command()
            .document_name(RUN_REMOTE_SCRIPT)
            .instance_ids(&req.instance_id)
            .parameters("sourceType", vec!["S3".into()])
            .parameters(
                "sourceInfo",
                vec![serde_json::json!({ "path": path }).to_string()],
            )
            .parameters("commandLine", vec![req.command.clone()])
            .parameters("executionTimeout", vec![req.timeout_seconds.to_string()])
            .comment(comment)
            .set_output_s3_bucket_name(req.output_bucket.clone())
            .output_s3_key_prefix(&req.output_prefix)
            .send()
            .await
            .map_err(|e| launch_error("SSM", "SendCommand", &e))?;
        out.command()
            .and_then(|c| c.command_id())
            .map(str::to_owned)
            .ok_or_else(|| LaunchError::Failed("SSM SendCommand answered no command id".into()))
    }

    async fn command_status(
        &self,
        command_id: &str,
        instance_id: &str,
    ) -> Result<CommandStatus, LaunchError> {
        use aws_sdk_ssm::types::CommandInvocationStatus as S;
        let Some(ssm) = &self.ssm else {
            return Err(LaunchError::Unavailable(
                "this deployment was not given SSM to follow validation scripts".into(),
            ));
        };
        let out = match ssm
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance_id)
            .send()
            .await
        {
            Ok(o) => o,
            // Just sent: SSM does not know the invocation yet.
            Err(e) if e.code() == Some("InvocationDoesNotExist") => {
                return Ok(CommandStatus {
                    state: CommandState::InProgress,
                    output: String::new(),
                    output_location: None,
                })
            }
            Err(e) => return Err(launch_error("SSM", "GetCommandInvocation", &e)),
        };
        let code = out.response_code();
        let state = match out.status() {
            Some(S::Success) => CommandState::Succeeded,
            Some(S::TimedOut) => CommandState::TimedOut,
            Some(S::Failed) => CommandState::Failed {
                code: (code >= 0).then_some(code),
                reason: out.status_details().unwrap_or("Failed").to_owned(),
            },
            Some(S::Cancelled | S::Cancelling) => CommandState::Failed {
                code: None,
                reason: "the command was cancelled".into(),
            },
            _ => CommandState::InProgress,
        };
        let output = [out.standard_output_content(), out.standard_error_content()]
            .into_iter()
            .flatten()
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        let output_location = if state == CommandState::InProgress {
            None
        } else {
            self.output_location(ssm, command_id, instance_id).await
        };
        Ok(CommandStatus {
            state,
            output,
            output_location,
        })
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
