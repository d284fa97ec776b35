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

use std::sync::Arc;

use tern_core::{Clock, Config, Ids, Store};

/// The API: one instance per process, shared by every request.
pub struct Api {
    #[allow(dead_code)] // used once dispatch lands
    deps: Deps,
}

/// What the API needs from its host.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn Ids>,
    pub config: Config,
}

impl Api {
    pub fn new(deps: Deps) -> Self {
        Self { deps }
    }

    /// Handles one request. `target` is the `X-Amz-Target` header (None when absent); `body` the
    /// raw request body (an empty body counts as `{}`). Never panics, never leaks internals.
    pub async fn handle(&self, target: Option<&str>, body: &[u8], principal: &Principal) -> Response {
        let _ = (target, body, principal);
        Response {
            status: 400,
            body: br#"{"__type":"UnknownOperationException","message":"not implemented yet"}"#.to_vec(),
            error_type: Some("UnknownOperationException".into()),
        }
    }
}
