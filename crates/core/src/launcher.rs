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
}
