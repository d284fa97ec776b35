//! The domain's one error enum. Each variant is a distinct outcome the API maps to one wire
//! error shape (see `tern_api`'s error table); messages are written for the API's caller.
//!
//! A failure of a dependency keeps its port's own error, with its kind and source chain, all the
//! way up: a store outage, a workflow engine that cannot start an execution, an image service or
//! a staging bucket that is throttled are different things to an operator reading the log and to
//! the state machine's Retry rules. [`DomainError::dependency`] names which one failed;
//! [`DomainError::is_transient`] is the one place that decides whether a caller may try again.

use crate::events::BusError;
use crate::images::ImagesError;
use crate::staging::StagingError;
use crate::store::StoreError;
use crate::workflows::WorkflowError;

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
    /// The image service (EC2 / EBS, or the local block store) failed.
    #[error("image service: {0}")]
    Images(#[from] ImagesError),
    /// The workflow engine (Step Functions, or the local States engine) failed.
    #[error("workflow engine: {0}")]
    Workflows(#[from] WorkflowError),
    /// The staging bucket (S3, or the local S3 endpoint) failed.
    #[error("staging bucket: {0}")]
    Staging(#[from] StagingError),
    /// The event bus (EventBridge, or the local bus) refused or failed.
    #[error("event bus: {0}")]
    Bus(#[from] BusError),
}

/// Which of the domain's dependencies an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Store,
    Images,
    Workflows,
    Staging,
    Bus,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Store => "store",
            Dependency::Images => "images",
            Dependency::Workflows => "workflows",
            Dependency::Staging => "staging",
            Dependency::Bus => "bus",
        }
    }
}

impl DomainError {
    /// True when the failure was a lost optimistic-write race, which the use case retries.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, DomainError::Store(StoreError::ConditionFailed { .. }))
    }

    /// The dependency that failed, or `None` for the domain's own refusals.
    pub fn dependency(&self) -> Option<Dependency> {
        match self {
            DomainError::Store(_) => Some(Dependency::Store),
            DomainError::Images(_) => Some(Dependency::Images),
            DomainError::Workflows(_) => Some(Dependency::Workflows),
            DomainError::Staging(_) => Some(Dependency::Staging),
            DomainError::Bus(_) => Some(Dependency::Bus),
            _ => None,
        }
    }

    /// True when the same call may succeed later unchanged: lost write races, throttling, and
    /// dependencies that are unreachable or overloaded. Refusals, bad input and bugs are not.
    pub fn is_transient(&self) -> bool {
        match self {
            DomainError::Contention(_) => true,
            DomainError::Store(e) => matches!(
                e,
                StoreError::ConditionFailed { .. }
                    | StoreError::Throttled(_)
                    | StoreError::Unavailable { .. }
            ),
            DomainError::Images(e) => e.is_retryable(),
            DomainError::Workflows(e) => matches!(e, WorkflowError::Transient { .. }),
            DomainError::Staging(e) => matches!(e, StagingError::Transient { .. }),
            DomainError::Bus(e) => e.is_transient(),
            _ => false,
        }
    }
}

pub type Result<T, E = DomainError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_errors_name_their_dependency_and_keep_their_kind() {
        let e: DomainError = WorkflowError::Transient {
            message: "locked".into(),
            source: None,
        }
        .into();
        assert_eq!(e.dependency(), Some(Dependency::Workflows));
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "workflow engine: locked");

        let e: DomainError = ImagesError::InvalidImage("not a VMDK".into()).into();
        assert_eq!(e.dependency(), Some(Dependency::Images));
        assert!(!e.is_transient());

        let e: DomainError = StoreError::Invalid("item too large".into()).into();
        assert_eq!(e.dependency(), Some(Dependency::Store));
        assert!(!e.is_transient());

        let e = DomainError::InvalidParameter("frequency".into());
        assert_eq!(e.dependency(), None);
        assert!(!e.is_transient());
    }
}
