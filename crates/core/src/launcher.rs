//! The `Launcher` port: runs an application's CloudFormation template as a stack.
//!
//! In AWS this is CloudFormation itself (a stack made from the template GenerateTemplate writes,
//! with the launch role). On one machine (`tern serve`) it is a local launcher that runs each
//! `AWS::EC2::Instance` of the template as a QEMU guest; where it cannot (QEMU missing) it says
//! so in [`LaunchError::Unavailable`], and LaunchApp fails with that message before anything is
//! written.

use async_trait::async_trait;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// This host cannot launch at all; the message says what to install or configure.
    #[error("{0}")]
    Unavailable(String),
    /// The launcher refused or failed this stack (bad template, no capacity…).
    #[error("{0}")]
    Failed(String),
    /// Throttled or unreachable; the same call may succeed later.
    #[error("{0}")]
    Transient(String),
}

/// A stack's state, as the launch status follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackState {
    CreateInProgress,
    CreateComplete,
    CreateFailed(String),
    DeleteInProgress,
    DeleteComplete,
    DeleteFailed(String),
}

/// A script run on one instance for an app-level validation (SMS `SSMValidationParameters`):
/// SSM Run Command in AWS (the instance downloads the script from S3 itself), the local
/// instance's command channel on `tern serve` (the script's bytes are sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    pub instance_id: String,
    /// The script's S3 location (bucket, key).
    pub script_bucket: String,
    pub script_key: String,
    /// The script itself, read from staging by the core when the launcher
    /// [carries scripts](Launcher::carries_scripts) (empty otherwise).
    pub script: Vec<u8>,
    /// The script's file name where it is run (its key's last part, made safe).
    pub script_name: String,
    pub script_type: crate::enums::ScriptType,
    /// The command line to run in the script's directory: the validation's `command`, or one
    /// that runs the script (`sh <name>`, `.\<name>` for PowerShell).
    pub command: String,
    pub timeout_seconds: u32,
    /// Where the command's output is kept (SSM's `OutputS3BucketName` and key prefix).
    pub output_bucket: Option<String>,
    pub output_prefix: String,
    /// Says who sent it (SSM's `Comment`, at most 100 characters).
    pub comment: String,
}

/// Where a command sent with [`Launcher::send_command`] stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandState {
    /// Sent, not started or still running.
    InProgress,
    /// Ended with exit status 0.
    Succeeded,
    /// Ended otherwise: the exit status when there is one, and why.
    Failed { code: Option<i32>, reason: String },
    /// Still running when its execution timeout passed.
    TimedOut,
}

/// A command's state and the end of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandStatus {
    pub state: CommandState,
    pub output: String,
    /// Where the whole output was written, when the launcher wrote it (SSM's output bucket);
    /// `None`: the core keeps `output` where the request asked.
    pub output_location: Option<(String, String)>,
}

#[async_trait]
pub trait Launcher: Send + Sync {
    /// Whether this host can launch; `Unavailable` says what is missing. Called before
    /// anything of a launch is written.
    async fn check(&self) -> Result<(), LaunchError>;

    /// Creates stack `stack_name` from `template` (a CloudFormation document), assuming
    /// `role_name` where the launcher has roles; returns the stack id. Idempotent by name: a
    /// stack of that name that exists already is answered with its id.
    async fn create_stack(
        &self,
        stack_name: &str,
        template: &Value,
        role_name: Option<&str>,
    ) -> Result<String, LaunchError>;

    async fn stack_state(&self, stack_id: &str) -> Result<StackState, LaunchError>;

    /// Starts deleting the stack (its instances). Deleting a deleted stack succeeds.
    async fn delete_stack(&self, stack_id: &str) -> Result<(), LaunchError>;

    /// The serial console output so far of the stack's instance `logical_id`: where the
    /// USERDATA validation scripts Tern adds to an instance's user data print their markers.
    /// `None`: this launcher cannot read consoles, or the instance has none (yet).
    async fn console_output(
        &self,
        _stack_id: &str,
        _logical_id: &str,
    ) -> Result<Option<String>, LaunchError> {
        Ok(None)
    }

    /// Whether [`Self::send_command`] takes the script's bytes to the instance (the local
    /// launcher) rather than the instance downloading it from S3 itself (SSM).
    fn carries_scripts(&self) -> bool {
        true
    }

    /// Sends `req`'s script to run on its instance; answers the command's id. `Failed` when
    /// the instance may not run it (no tag `UserForSMSApplicationValidation=true`, not
    /// running, unknown), `Unavailable` when this launcher runs no commands.
    async fn send_command(&self, _req: &CommandRequest) -> Result<String, LaunchError> {
        Err(LaunchError::Unavailable(
            "this deployment cannot run commands on instances".into(),
        ))
    }

    /// Where command `command_id` on `instance_id` stands.
    async fn command_status(
        &self,
        command_id: &str,
        _instance_id: &str,
    ) -> Result<CommandStatus, LaunchError> {
        Err(LaunchError::Failed(format!("no command {command_id}")))
    }
}

/// The tag an instance must carry to run app-level validation scripts (as SMS required).
pub const VALIDATION_INSTANCE_TAG: &str = "UserForSMSApplicationValidation";
