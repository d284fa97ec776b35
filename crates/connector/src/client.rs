//! A small awsJson 1.1 client for the connector operations, SigV4-signed.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tern_api::connector::op;
use tern_api::{CONNECTOR_TARGET_PREFIX, CONTENT_TYPE};

use crate::signing::sign_post;
use crate::ConnectorError;

/// Calls `TernConnectorService_V1.<Operation>` on one endpoint with one set of credentials.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    url: String,
    region: String,
    credentials: Credentials,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials' own Debug redacts the secret; the rest is harmless.
        f.debug_struct("ApiClient")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("access_key_id", &self.credentials.access_key_id())
            .finish()
    }
}

impl ApiClient {
    /// `endpoint` is the API's base URL (`http://127.0.0.1:8080`); requests go to `POST /`.
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Self, ConnectorError> {
        let mut url = endpoint.trim_end_matches('/').to_owned();
        url.push('/');
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|source| ConnectorError::Http {
                operation: "client setup".into(),
                source,
            })?;
        Ok(Self {
            http,
            url,
            region: region.to_owned(),
            credentials,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls one connector operation (one of [`op::ALL`]).
    #[tracing::instrument(skip(self, input), fields(operation = operation))]
    pub async fn call<I: Serialize, O: DeserializeOwned>(
        &self,
        operation: &str,
        input: &I,
    ) -> Result<O, ConnectorError> {
        debug_assert!(op::ALL.contains(&operation));
        let body = serde_json::to_vec(input).map_err(|e| ConnectorError::Protocol {
            operation: operation.into(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let target = format!("{CONNECTOR_TARGET_PREFIX}.{operation}");
        let headers = [
            ("content-type", CONTENT_TYPE),
            ("x-amz-target", target.as_str()),
        ];
        let signed = sign_post(
            &self.credentials,
            &self.region,
            &self.url,
            &headers,
            &body,
            SystemTime::now(),
        )?;
        let mut request = self.http.post(&self.url).body(body);
        for (name, value) in headers.iter().copied() {
            request = request.header(name, value);
        }
        for (name, value) in &signed {
            request = request.header(name.as_str(), value.as_str());
        }
        let http_err = |source| ConnectorError::Http {
            operation: operation.into(),
            source,
        };
        let response = request.send().await.map_err(http_err)?;
        let status = response.status().as_u16();
        let header_type = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.map_err(http_err)?;
        if (200..300).contains(&status) {
            let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
                b"{}"
            } else {
                &bytes
            };
            return serde_json::from_slice(bytes).map_err(|e| ConnectorError::Protocol {
                operation: operation.into(),
                message: format!("cannot decode the response: {e}"),
            });
        }
        let (code, message) = error_parts(header_type.as_deref(), &bytes, status);
        Err(ConnectorError::Service {
            operation: operation.into(),
            status,
            code,
            message,
        })
    }
}

/// Error code and message of an awsJson error response, resolved the way the Smithy awsJson
/// protocol says clients do: header first, then body `__type`/`code`, sanitised to the bare
/// shape name.
fn error_parts(header: Option<&str>, body: &[u8], status: u16) -> (String, String) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let raw = header
        .map(str::to_owned)
        .or_else(|| {
            json.get("__type")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .or_else(|| json.get("code").and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP {status}"));
    let code = raw.split(':').next().unwrap_or_default();
    let code = code.rsplit('#').next().unwrap_or_default().to_owned();
    let message = json
        .get("message")
        .or_else(|| json.get("Message"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_sanitised_like_aws_clients_do() {
        let (code, message) = error_parts(
            None,
            br#"{"__type":"com.amazonaws.sms#InvalidParameterException:http://internal","message":"bad"}"#,
            400,
        );
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("InvalidParameterException", "bad")
        );
        let (code, _) = error_parts(Some("AccessDeniedException"), b"not json", 403);
        assert_eq!(code, "AccessDeniedException");
        let (code, message) = error_parts(None, b"", 502);
        assert_eq!((code.as_str(), message.as_str()), ("HTTP 502", ""));
    }
}
