//! Errors: the ones a state raises while running (matched by Retry/Catch) and the ones the API returns.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The predefined error names of the States Language.
pub mod names {
    pub const ALL: &str = "States.ALL";
    pub const TASK_FAILED: &str = "States.TaskFailed";
    pub const TIMEOUT: &str = "States.Timeout";
    pub const HEARTBEAT_TIMEOUT: &str = "States.HeartbeatTimeout";
    pub const RUNTIME: &str = "States.Runtime";
    pub const PERMISSIONS: &str = "States.Permissions";
    pub const RESULT_PATH_MATCH_FAILURE: &str = "States.ResultPathMatchFailure";
    pub const PARAMETER_PATH_FAILURE: &str = "States.ParameterPathFailure";
    pub const BRANCH_FAILED: &str = "States.BranchFailed";
    pub const NO_CHOICE_MATCHED: &str = "States.NoChoiceMatched";
    pub const INTRINSIC_FAILURE: &str = "States.IntrinsicFailure";
    pub const EXCEED_TOLERATED_FAILURE_THRESHOLD: &str = "States.ExceedToleratedFailureThreshold";
    pub const ITEM_READER_FAILED: &str = "States.ItemReaderFailed";
    pub const RESULT_WRITER_FAILED: &str = "States.ResultWriterFailed";
    pub const DATA_LIMIT_EXCEEDED: &str = "States.DataLimitExceeded";
    pub const QUERY_EVALUATION_ERROR: &str = "States.QueryEvaluationError";
}

/// An error raised inside an execution: a name that Retry/Catch match, and a cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateError {
    pub error: String,
    pub cause: String,
}

impl StateError {
    pub fn new(error: impl Into<String>, cause: impl Into<String>) -> StateError {
        StateError {
            error: error.into(),
            cause: cause.into(),
        }
    }

    pub fn runtime(cause: impl Into<String>) -> StateError {
        StateError::new(names::RUNTIME, cause)
    }

    pub fn intrinsic(cause: impl Into<String>) -> StateError {
        StateError::new(names::INTRINSIC_FAILURE, cause)
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.cause)
    }
}

/// One problem in a definition, located by the JSON path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// Every problem found in a definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationErrors(pub Vec<Problem>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid state machine definition ({} problems)",
            self.0.len()
        )?;
        for p in &self.0 {
            write!(f, "\n  {}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// Errors of the execution API, named like the Step Functions API errors they stand for.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    InvalidDefinition(#[from] ValidationErrors),
    #[error("invalid name '{0}': 1 to 80 characters, no whitespace, brackets, wildcards or control characters")]
    InvalidName(String),
    #[error("state machine already exists with a different definition: {0}")]
    StateMachineAlreadyExists(String),
    #[error("state machine does not exist: {0}")]
    StateMachineDoesNotExist(String),
    #[error("execution already exists: {0}")]
    ExecutionAlreadyExists(String),
    #[error("execution does not exist: {0}")]
    ExecutionDoesNotExist(String),
    #[error("invalid execution input: {0}")]
    InvalidExecutionInput(String),
    #[error("task token is not valid: {0}")]
    InvalidToken(String),
    #[error("task timed out or is no longer waiting: {0}")]
    TaskTimedOut(String),
    #[error("invalid output: {0}")]
    InvalidOutput(String),
    #[error("storage failed")]
    Store(#[from] StoreError),
}
