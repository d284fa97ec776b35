//! The awsJson 1.1 protocol of Tern's SMS-compatible API.
//!
//! Transport adapters (`tern serve`'s axum server, the `api` Lambda) authenticate the caller,
//! turn it into a [`Principal`], and call [`Api::handle`] with the `X-Amz-Target` header and the
//! raw body. Everything else — parsing, validation, dispatch, and turning errors into wire
//! responses — happens here, once.

/// Target prefix of the administrative (SMS) operations.
pub const SMS_TARGET_PREFIX: &str = "AWSServerMigrationService_V2016_10_24";
/// Target prefix of the connector-facing operations.
pub const CONNECTOR_TARGET_PREFIX: &str = "TernConnectorService_V1";
/// Content type of every request and response body.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// Who is calling, as established by the transport's authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An administrator: may call the SMS operations, never the connector ones.
    Admin { id: String },
    /// A connector appliance: may call the connector operations, never the SMS ones.
    Connector { id: String },
}

/// A wire response, ready for any transport.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    /// JSON body (`{}` for operations without output members).
    pub body: Vec<u8>,
    /// The bare error shape name when this is an error; transports send it as `X-Amzn-ErrorType`.
    pub error_type: Option<String>,
}
