//! The domain's one error enum. Each variant is a distinct outcome the API maps to one wire
//! error shape (see `tern_api`'s error table); messages are written for the API's caller.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A value is malformed or out of range, or names something that does not exist where the
    /// operation has no more specific "not found" error.
    #[error("{0}")]
    InvalidParameter(String),
    /// A required member is absent or empty.
    #[error("{0}")]
    MissingParameter(String),
    #[error("{0}")]
    JobNotFound(String),
    /// The server already has a replication job that is not terminated.
    #[error("{0}")]
    JobAlreadyExists(String),
    #[error("{0}")]
    ServerCannotBeReplicated(String),
    #[error("{0}")]
    NoConnectorsAvailable(String),
    /// The on-demand run allowance of the job is used up for the current window.
    #[error("{0}")]
    RunLimitExceeded(String),
    /// A configured limit (e.g. active jobs) would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// The operation conflicts with the current state (run already active, job terminated…).
    #[error("{0}")]
    OperationNotPermitted(String),
    /// Optimistic writes kept conflicting; the caller may retry.
    #[error("too much contention on {0}; retry")]
    Contention(String),
    /// A stored item does not parse: a bug or a damaged store. For logs only.
    #[error("corrupt stored item {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DomainError {
    /// True when the failure was a lost optimistic-write race, which the use case retries.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, DomainError::Store(StoreError::ConditionFailed { .. }))
    }
}

pub type Result<T, E = DomainError> = std::result::Result<T, E>;
