//! Wire-compatibility tests: the `aws-sdk-sms` crate (and raw HTTP where no SDK would go) against
//! an in-process `tern serve` on an ephemeral port. Codes and shapes are those of the SMS spec
//! (`shared/spec/sms-api.md`).

mod app_launch;
mod apps;
mod catalog;
mod changed;
mod connectors;
mod delete;
mod hostile;
mod jobs;
mod limits;
mod preflight;
mod raw;
mod replication;
mod runs;
mod s3;

use aws_sdk_sms::error::{ProvideErrorMetadata, SdkError};

/// The error code of a failed SDK call (panics on success, naming what was expected).
pub fn code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    result: Result<T, SdkError<E, R>>,
) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("no error code in {e:?}"))
            .to_owned(),
    }
}

/// The error code and message of a failed SDK call.
pub fn code_and_message<
    T: std::fmt::Debug,
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
>(
    result: Result<T, SdkError<E, R>>,
) -> (String, String) {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => (
            e.code()
                .unwrap_or_else(|| panic!("no error code in {e:?}"))
                .to_owned(),
            e.message().unwrap_or_default().to_owned(),
        ),
    }
}
