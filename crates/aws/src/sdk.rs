//! What every adapter here needs to tell of an SDK failure: whether the same call may succeed
//! later (throttling, a timeout, a dropped connection, a 5xx) or not, and the service's error
//! code when it sent one. Each adapter maps these onto its port's error kinds.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// An SDK failure, classified.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The service's error code (`ThrottlingException`, `NoSuchKey`, …), when it answered.
    pub code: Option<String>,
    pub transient: bool,
    /// The whole error with its chain, for logs and error messages.
    pub message: String,
}

/// Codes that mean "not now" on every service Tern calls.
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalServerError",
    "InternalError",
    "InternalFailure",
    "InternalException",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestThrottledException",
    "ConcurrentLimitExceededException",
    "InsufficientCapacity",
];

pub(crate) fn classify<E>(operation: &str, error: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!("{operation}: {}", DisplayErrorContext(error));
    match error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().map(str::to_owned);
            let status = service.raw().status().as_u16();
            let transient = code
                .as_deref()
                .is_some_and(|c| TRANSIENT_CODES.contains(&c))
                || status >= 500
                || status == 429;
            Failure {
                code,
                transient,
                message,
            }
        }
        // Never reached the service, or no usable answer: the same call may go through later.
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure {
                code: None,
                transient: true,
                message,
            }
        }
        _ => Failure {
            code: None,
            transient: false,
            message,
        },
    }
}
