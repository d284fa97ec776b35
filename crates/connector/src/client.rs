//! A small awsJson 1.1 client for the connector operations, SigV4-signed.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tern_api::connector::op;
use tern_api::{CONNECTOR_TARGET_PREFIX, CONTENT_TYPE};

use crate::signing::{sign_post_as, SIGNING_NAME};
use crate::ConnectorError;

/// Temporary credentials are fetched again this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Calls `TernConnectorService_V1.<Operation>` on one endpoint with one identity.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    url: String,
    region: String,
    signing_name: &'static str,
    provider: SharedCredentialsProvider,
    /// The provider's last credentials, used until they are about to expire. The SDK's own
    /// identity cache needs a whole SDK client's runtime around it; this client is a plain
    /// HTTP client, and a provider such as the default chain fetches anew on every call.
    cached: std::sync::Arc<std::sync::Mutex<Option<Credentials>>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials' own Debug redacts the secret; the rest is harmless.
        f.debug_struct("ApiClient")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("signing_name", &self.signing_name)
            .field("credentials", &self.cached_credentials())
            .finish()
    }
}

impl ApiClient {
    /// `endpoint` is the API's base URL (`http://127.0.0.1:8080`); requests go to `POST /`,
    /// signed for service `sms` with fixed (Tern-issued) keys.
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Self, ConnectorError> {
        Self::with_provider(
            endpoint,
            region,
            SharedCredentialsProvider::new(credentials),
            SIGNING_NAME,
            timeout,
        )
    }

    /// [`ApiClient::new`] signing for `signing_name` with the credentials of `provider`,
    /// fetched again shortly before they expire.
    pub fn with_provider(
        endpoint: &str,
        region: &str,
        provider: SharedCredentialsProvider,
        signing_name: &'static str,
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
            signing_name,
            provider,
            cached: Default::default(),
        })
    }

    fn cached_credentials(&self) -> Option<Credentials> {
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The credentials to sign with now: the cached ones unless they expire within
    /// [`REFRESH_BEFORE_EXPIRY`].
    async fn credentials(&self) -> Result<Credentials, ConnectorError> {
        let fresh = |c: &Credentials| {
            c.expiry()
                .is_none_or(|at| at > SystemTime::now() + REFRESH_BEFORE_EXPIRY)
        };
        if let Some(c) = self.cached_credentials().filter(fresh) {
            return Ok(c);
        }
        let c = self.provider.provide_credentials().await.map_err(|e| {
            ConnectorError::Credentials(format!(
                "the API credentials could not be refreshed: {}",
                aws_credential_types::provider::error::CredentialsError::to_string(&e)
            ))
        })?;
        *self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c.clone());
        Ok(c)
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
        let credentials = self.credentials().await?;
        let signed = sign_post_as(
            self.signing_name,
            &credentials,
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hands out credentials valid for `lifetime`, counting the fetches.
    #[derive(Debug)]
    struct Counting {
        fetches: AtomicUsize,
        lifetime: Option<Duration>,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst);
            let expiry = self.lifetime.map(|l| SystemTime::now() + l);
            aws_credential_types::provider::future::ProvideCredentials::ready(Ok(Credentials::new(
                format!("ASIA{n}"),
                "s",
                None,
                expiry,
                "test",
            )))
        }
    }

    #[tokio::test]
    async fn credentials_are_fetched_again_only_when_about_to_expire() {
        for (lifetime, second_key) in [
            (None, "ASIA0"),
            (Some(Duration::from_secs(3600)), "ASIA0"),
            (Some(Duration::from_secs(60)), "ASIA1"),
        ] {
            let provider = Counting {
                fetches: AtomicUsize::new(0),
                lifetime,
            };
            let client = ApiClient::with_provider(
                "http://127.0.0.1:1",
                "us-east-1",
                SharedCredentialsProvider::new(provider),
                crate::signing::IAM_SIGNING_NAME,
                Duration::from_secs(1),
            )
            .unwrap();
            assert_eq!(client.credentials().await.unwrap().access_key_id(), "ASIA0");
            assert_eq!(
                client.credentials().await.unwrap().access_key_id(),
                second_key,
                "{lifetime:?}"
            );
        }
    }

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
