//! The API layer's error enum and **the one place** where errors become wire responses.
//!
//! | error | `__type` | HTTP |
//! |---|---|---|
//! | bad value, unknown id, bad `nextToken`, `maxResults` < 1, a request that would store a record over the item limit | `InvalidParameterException` | 400 |
//! | required member absent or empty | `MissingRequiredParameterException` | 400 |
//! | unknown job (Update/DeleteReplicationJob) | `ReplicationJobNotFoundException` | 400 |
//! | server already has a live job | `ReplicationJobAlreadyExistsException` | 400 |
//! | server vanished or without disks | `ServerCannotBeReplicatedException` | 400 |
//! | no healthy/associated connector | `NoConnectorsAvailableException` | 400 |
//! | on-demand run allowance used up | `ReplicationRunLimitExceededException` | 400 |
//! | state conflict, configured limit reached, operation not in this release | `OperationNotPermittedException` | 400 |
//! | malformed JSON, body not an object, member of the wrong JSON type | `SerializationException` | 400 |
//! | unknown or missing `X-Amz-Target` | `UnknownOperationException` | 400 |
//! | principal may not call the operation | `AccessDeniedException` | 400 |
//! | write contention, or a dependency (store, workflow engine, image service, staging bucket, event bus) throttled or unreachable | `TemporarilyUnavailableException` | 503 |
//! | a dependency that refused for good, anything else (corrupt data, bugs) | `InternalError` (message without internals) | 500 |
//!
//! Which dependency failed, and how, is in the log line written here (`dependency`, `error`,
//! with the source chain); the client's message names none of it.
//!
//! Client errors use 400 as the SMS API Reference documents (spec §1.4, §8.1); flip a status in
//! [`STATUS`] if a client ever needs the Smithy values.

use serde_json::json;
use tern_core::store::StoreError;
use tern_core::DomainError;

use crate::Response;

/// HTTP status per error shape.
pub const STATUS: &[(&str, u16)] = &[
    ("InvalidParameterException", 400),
    ("MissingRequiredParameterException", 400),
    ("UnauthorizedOperationException", 400),
    ("OperationNotPermittedException", 400),
    ("ReplicationJobNotFoundException", 400),
    ("ReplicationJobAlreadyExistsException", 400),
    ("ServerCannotBeReplicatedException", 400),
    ("NoConnectorsAvailableException", 400),
    ("ReplicationRunLimitExceededException", 400),
    ("DryRunOperationException", 400),
    ("SerializationException", 400),
    ("UnknownOperationException", 400),
    ("AccessDeniedException", 400),
    ("InternalError", 500),
    ("TemporarilyUnavailableException", 503),
];

fn status_of(shape: &str) -> u16 {
    STATUS
        .iter()
        .find(|(s, _)| *s == shape)
        .map_or(500, |(_, code)| *code)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{0}")]
    Serialization(String),
    #[error("{0}")]
    UnknownOperation(String),
    #[error("{0}")]
    AccessDenied(String),
    /// An operation whose part (launcher, replication workflow) this host was started without;
    /// the message names the part.
    #[error("{0}")]
    NotConfigured(String),
}

impl ApiError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        ApiError::Domain(DomainError::InvalidParameter(msg.into()))
    }

    pub(crate) fn unknown_operation(name: &str) -> Self {
        ApiError::UnknownOperation(format!("unknown operation {name}"))
    }

    pub(crate) fn missing(msg: impl Into<String>) -> Self {
        ApiError::Domain(DomainError::MissingParameter(msg.into()))
    }

    /// Error shape name and the message the client may see.
    fn shape_and_message(&self) -> (&'static str, String) {
        use DomainError as D;
        let shown = self.to_string();
        match self {
            ApiError::Serialization(_) => ("SerializationException", shown),
            ApiError::UnknownOperation(_) => ("UnknownOperationException", shown),
            ApiError::AccessDenied(_) => ("AccessDeniedException", shown),
            ApiError::NotConfigured(_) => ("OperationNotPermittedException", shown),
            ApiError::Domain(d) => match d {
                D::InvalidParameter(_) => ("InvalidParameterException", shown),
                D::MissingParameter(_) => ("MissingRequiredParameterException", shown),
                D::JobNotFound(_) => ("ReplicationJobNotFoundException", shown),
                D::JobAlreadyExists(_) => ("ReplicationJobAlreadyExistsException", shown),
                D::ServerCannotBeReplicated(_) => ("ServerCannotBeReplicatedException", shown),
                D::NoConnectorsAvailable(_) => ("NoConnectorsAvailableException", shown),
                D::RunLimitExceeded(_) => ("ReplicationRunLimitExceededException", shown),
                D::LimitExceeded(_) | D::OperationNotPermitted(_) => {
                    ("OperationNotPermittedException", shown)
                }
                D::Store(StoreError::TooLarge { bytes, limit, .. }) => (
                    "InvalidParameterException",
                    format!(
                        "the request is too large to store: it makes a record of {bytes} bytes, more than the {limit} allowed; send fewer or shorter values"
                    ),
                ),
                d if d.is_transient() => (
                    "TemporarilyUnavailableException",
                    "the service is temporarily unavailable; retry".into(),
                ),
                D::Contention(_)
                | D::Corrupt { .. }
                | D::Store(_)
                | D::Images(_)
                | D::Workflows(_)
                | D::Staging(_)
                | D::Bus(_) => ("InternalError", "an internal error occurred".into()),
            },
        }
    }

    /// The wire response for this error. Server-side failures are logged with their cause here,
    /// and only here, since the client gets a message without internals.
    pub fn into_response(self) -> Response {
        let (shape, message) = self.shape_and_message();
        let message = clip(message);
        let status = status_of(shape);
        let dependency = match &self {
            ApiError::Domain(d) => d.dependency().map(|d| d.as_str()),
            _ => None,
        };
        if status >= 500 {
            tracing::error!(error = ?self, error_type = shape, dependency, "request failed");
        } else {
            tracing::debug!(error = %self, error_type = shape, "request refused");
        }
        Response {
            status,
            body: json!({ "__type": shape, "message": message })
                .to_string()
                .into_bytes(),
            error_type: Some(shape.to_string()),
        }
    }
}

/// Longest message a client gets, in bytes. Messages quote what the client sent (an unknown
/// id, an enum value); a 1 MiB id must not come back as a 1 MiB error, nor fill the logs.
pub const MAX_MESSAGE_BYTES: usize = 512;

fn clip(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internals_never_reach_the_client() {
        let e = ApiError::Domain(DomainError::Corrupt {
            key: "JOB/x".into(),
            message: "secret".into(),
        });
        let r = e.into_response();
        assert_eq!(r.status, 500);
        let body = String::from_utf8(r.body).unwrap();
        assert!(
            body.contains("\"InternalError\"") && !body.contains("secret"),
            "{body}"
        );

        let e = ApiError::Domain(DomainError::Store(StoreError::Unavailable {
            message: "disk /var/x failed".into(),
            source: None,
        }));
        let r = e.into_response();
        assert_eq!(r.status, 503);
        assert_eq!(
            r.error_type.as_deref(),
            Some("TemporarilyUnavailableException")
        );
        assert!(!String::from_utf8(r.body).unwrap().contains("/var/x"));
    }

    /// A dependency's failure keeps its kind up to this table: throttled or unreachable is a
    /// 503 the SDKs retry, a refusal for good is a 500; neither shows the cause to the client.
    #[test]
    fn dependency_failures_keep_their_kind() {
        use tern_core::images::ImagesError;
        use tern_core::staging::StagingError;
        use tern_core::workflows::WorkflowError;
        let cases: Vec<(DomainError, u16)> = vec![
            (
                WorkflowError::Transient {
                    message: "states.db: database is locked".into(),
                    source: None,
                }
                .into(),
                503,
            ),
            (
                WorkflowError::internal("states.db: disk image is malformed").into(),
                500,
            ),
            (
                ImagesError::transient_from(
                    "ec2 throttled at /var/x",
                    std::io::Error::other("RequestLimitExceeded"),
                )
                .into(),
                503,
            ),
            (
                ImagesError::InvalidImage("/var/x not a VMDK".into()).into(),
                500,
            ),
            (
                StagingError::Transient {
                    message: "SlowDown /var/x".into(),
                    source: None,
                }
                .into(),
                503,
            ),
        ];
        for (e, status) in cases {
            let shown = e.to_string();
            let r = ApiError::Domain(e).into_response();
            assert_eq!(r.status, status, "{shown}");
            let body = String::from_utf8(r.body).unwrap();
            assert!(
                !body.contains("/var/x") && !body.contains("states.db"),
                "{body}"
            );
        }
    }

    #[test]
    fn a_record_over_the_item_limit_is_the_callers_error() {
        let e = ApiError::Domain(DomainError::Store(StoreError::TooLarge {
            key: tern_core::store::Key::new("SERVER#1", "s-1"),
            bytes: 500_000,
            limit: 399_936,
        }));
        let r = e.into_response();
        assert_eq!(r.status, 400);
        let body = String::from_utf8(r.body).unwrap();
        assert!(body.contains("InvalidParameterException"), "{body}");
        assert!(
            body.contains("500000 bytes") && !body.contains("SERVER#"),
            "{body}"
        );
    }

    #[test]
    fn messages_quoting_huge_inputs_are_clipped() {
        let id = "é".repeat(1 << 20);
        let r = ApiError::invalid(format!("there is no connector {id}")).into_response();
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(
            message.len() <= MAX_MESSAGE_BYTES,
            "{} bytes",
            message.len()
        );
        assert!(message.starts_with("there is no connector é") && message.ends_with('…'));
        let short = ApiError::invalid("maxResults must be at least 1").into_response();
        assert!(String::from_utf8(short.body)
            .unwrap()
            .contains("\"maxResults must be at least 1\""));
    }

    #[test]
    fn every_shape_has_a_status() {
        for shape in [
            "InvalidParameterException",
            "AccessDeniedException",
            "InternalError",
        ] {
            assert_ne!(status_of(shape), 0);
        }
        assert_eq!(status_of("TemporarilyUnavailableException"), 503);
    }
}
