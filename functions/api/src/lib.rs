//! The `api` Lambda's handler: Tern's SMS-compatible API behind an API Gateway HTTP API with
//! IAM authorization (payload format 2.0).
//!
//! API Gateway has already checked the caller's SigV4 signature and IAM permission
//! (`execute-api:Invoke`) before the function runs; the verified identity arrives in
//! `requestContext.authorizer.iam`. This module turns that identity into a [`Principal`] — a
//! connector when the caller is a session of the configured connector role, an administrator
//! otherwise — and hands the `X-Amz-Target` header and the (base64-decoded) body to
//! [`tern_api::Api::handle`]. A request without an IAM identity is refused: it means the route
//! was deployed without IAM auth, and nobody must get in by that mistake.
//!
//! Configuration comes from the environment once, at cold start ([`Config::from_env`]):
//!
//! | variable | meaning |
//! |---|---|
//! | `TERN_TABLE_NAME` | the DynamoDB table |
//! | `TERN_CONNECTOR_ROLE_NAME` | the IAM role connectors assume; its sessions are connector principals |
//! | `AWS_REGION` | set by Lambda itself |

use std::time::Instant;

pub mod gateway;

use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
use lambda_http::http::{header, HeaderValue, Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt as _, Response};
use tern_api::{Api, Principal, Response as ApiResponse, CONTENT_TYPE};

/// Settings read once at cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub table_name: String,
    pub region: String,
    pub connector_role_name: String,
}

pub use tern_fn_common::{event_source, ConfigError};

impl Config {
    pub const TABLE_NAME: &'static str = "TERN_TABLE_NAME";
    pub const CONNECTOR_ROLE_NAME: &'static str = "TERN_CONNECTOR_ROLE_NAME";
    pub const REGION: &'static str = "AWS_REGION";
    /// Every variable the function needs; `template.yaml` must set the `TERN_*` ones.
    pub const VARIABLES: [&'static str; 3] =
        [Self::TABLE_NAME, Self::CONNECTOR_ROLE_NAME, Self::REGION];

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `lookup` returns a variable's value; tests pass a map instead of the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError::Missing(name))
        };
        let connector_role_name = get(Self::CONNECTOR_ROLE_NAME)?;
        // IAM role names: 1–64 of [A-Za-z0-9+=,.@_-]. A slash would mean a path or an ARN was
        // given, which would never match a caller and silently make every connector an admin.
        let valid_role = connector_role_name.len() <= 64
            && connector_role_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
        if !valid_role {
            return Err(ConfigError::Invalid {
                name: Self::CONNECTOR_ROLE_NAME,
                problem: format!(
                    "{connector_role_name:?} is not an IAM role name (give the name, not the ARN)"
                ),
            });
        }
        Ok(Self {
            table_name: get(Self::TABLE_NAME)?,
            region: get(Self::REGION)?,
            connector_role_name,
        })
    }
}

/// The deployment's API: its table and limits, with replication (the staging bucket, the state
/// machine) and the CloudFormation launcher of LaunchApp / TerminateApp attached. The function's
/// `main` and the handler tests build it the same way.
pub fn deployment_api(d: &tern_fn_common::Deployment) -> Api {
    let api = Api::new(tern_api::Deps {
        store: d.store.clone(),
        clock: std::sync::Arc::new(tern_core::SystemClock),
        ids: std::sync::Arc::new(tern_core::RandomIds),
        config: d.service.config().clone(),
    });
    api.attach_replication(d.replication.clone());
    api.attach_launcher(d.launcher.clone());
    api
}

/// Why a request was refused before reaching the API.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    status: u16,
    error_type: &'static str,
    message: String,
}

/// Verification for the signed API: clients that sign for service `sms` (unmodified SMS
/// clients) cannot pass API Gateway's IAM authorizer, which accepts only `execute-api`
/// signatures, so the stack gives them a second HTTP API without an authorizer
/// (`SmsEndpoint`) and the function checks their signature itself against Tern-issued keys
/// (`tern keys issue`), with the verifier `tern serve` uses.
struct SignedRoute {
    verifier: tern_sigv4::Verifier<()>,
    keys: tern_core::Service,
}

/// The Lambda handler: one per execution environment, shared by every invocation.
pub struct Handler {
    api: Api,
    connector_role_name: String,
    signed: Option<SignedRoute>,
}

impl Handler {
    pub fn new(api: Api, connector_role_name: impl Into<String>) -> Self {
        Self {
            api,
            connector_role_name: connector_role_name.into(),
            signed: None,
        }
    }

    /// Admits requests that arrive without an IAM identity (from the signed API) when they are
    /// signed for service `sms` in `region` with a key that `keys` (the table's use cases)
    /// holds and has not revoked. The IAM API never forwards a request without an identity,
    /// so a request with one is always judged by that identity.
    pub fn with_signed_route(mut self, keys: tern_core::Service, region: &str) -> Self {
        self.signed = Some(SignedRoute {
            verifier: tern_sigv4::Verifier::new(region, "sms", std::iter::empty()),
            keys,
        });
        self
    }

    /// Handles one API Gateway request. Never fails: every problem becomes an awsJson error
    /// response, so the function never reports an invocation error for a client's mistake.
    pub async fn handle(&self, request: Request) -> Response<Body> {
        let started = Instant::now();
        let context = match request.request_context_ref() {
            #[allow(unreachable_patterns)] // only the HTTP API payload is compiled in
            Some(RequestContext::ApiGatewayV2(context)) => Some(context),
            _ => None,
        };
        let request_id = context
            .and_then(|c| c.request_id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let target = request
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok());

        let (response, kind) = match self.admit(&request, context).await {
            Err(refusal) => (error(refusal), None),
            Ok(principal) => {
                let kind = match principal {
                    Principal::Admin { .. } => "admin",
                    Principal::Connector { .. } => "connector",
                };
                let body: &[u8] = request.body().as_ref();
                (self.api.handle(target, body, &principal).await, Some(kind))
            }
        };
        tracing::info!(
            request_id = %request_id,
            operation = target.map(truncate_for_log).unwrap_or("-"),
            principal = kind.unwrap_or("-"),
            status = response.status,
            error_type = response.error_type.as_deref().unwrap_or("-"),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        to_http(response, &request_id)
    }

    async fn admit(
        &self,
        request: &Request,
        context: Option<&ApiGatewayV2httpRequestContext>,
    ) -> Result<Principal, Refusal> {
        if request.uri().path() != "/" {
            return Err(Refusal {
                status: 404,
                error_type: "NotFoundException",
                message: format!(
                    "No route for {}: the API is served at POST /",
                    request.uri().path()
                ),
            });
        }
        if request.method() != Method::POST {
            return Err(Refusal {
                status: 405,
                error_type: "MethodNotAllowedException",
                message: format!(
                    "Method {} is not allowed: the API accepts only POST /",
                    request.method()
                ),
            });
        }
        if let Some(p) = context.and_then(|c| principal(c, &self.connector_role_name)) {
            return Ok(p);
        }
        match &self.signed {
            Some(signed) => signed.verify(request).await,
            None => Err(no_identity()),
        }
    }
}

impl SignedRoute {
    /// The principal of a correctly signed request, or AWS's refusal (the same codes and
    /// messages as `tern serve`: UnrecognizedClientException for an unknown or revoked key,
    /// InvalidSignatureException for a wrong secret or an expired signature, …).
    async fn verify(&self, request: &Request) -> Result<Principal, Refusal> {
        let refuse = |e: tern_sigv4::AuthError| Refusal {
            status: e.status(),
            error_type: e.error_type(),
            message: e.to_string(),
        };
        let id = tern_sigv4::claimed_key(request.headers()).map_err(refuse)?;
        let key = self.keys.usable_access_key(&id).await.map_err(|e| {
            tracing::error!(error = %e, "cannot read access keys");
            Refusal {
                status: 503,
                error_type: "TemporarilyUnavailableException",
                message: "Access keys cannot be read right now; retry".into(),
            }
        })?;
        let role = self
            .verifier
            .verify_with(
                request.method(),
                request.uri(),
                request.headers(),
                request.body().as_ref(),
                std::time::SystemTime::now(),
                |_| key,
            )
            .map_err(refuse)?;
        Ok(match role {
            tern_core::service::KeyRole::Admin => Principal::Admin { id },
            tern_core::service::KeyRole::Connector => Principal::Connector { id },
        })
    }
}

fn no_identity() -> Refusal {
    Refusal {
        status: 403,
        error_type: "MissingAuthenticationTokenException",
        message:
            "Request is missing Authentication Token: no IAM caller identity in the request context"
                .into(),
    }
}

/// The principal API Gateway's IAM authorizer verified, if any.
pub fn principal(
    context: &ApiGatewayV2httpRequestContext,
    connector_role_name: &str,
) -> Option<Principal> {
    let iam = context.authorizer.as_ref()?.iam.as_ref()?;
    let arn = iam.user_arn.as_deref().filter(|a| !a.is_empty())?;
    let id = arn.to_owned();
    if role_name(arn).is_some_and(|role| role.eq_ignore_ascii_case(connector_role_name)) {
        Some(Principal::Connector { id })
    } else {
        Some(Principal::Admin { id })
    }
}

/// The role behind a caller ARN: `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` (how a role's
/// session appears to API Gateway) or `arn:aws:iam::ACCOUNT:role/PATH/ROLE`. Role names are
/// unique without regard to case in IAM, hence the case-insensitive comparison above.
fn role_name(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (prefix, _partition, service, _region, _account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if prefix != "arn" {
        return None;
    }
    match service {
        "sts" => {
            let mut segments = resource.strip_prefix("assumed-role/")?.split('/');
            segments.next().filter(|r| !r.is_empty())
        }
        "iam" => resource
            .strip_prefix("role/")?
            .rsplit('/')
            .next()
            .filter(|r| !r.is_empty()),
        _ => None,
    }
}

/// Targets come from the client: keep log lines short whatever it sends.
fn truncate_for_log(target: &str) -> &str {
    match target.char_indices().nth(120) {
        Some((i, _)) => &target[..i],
        None => target,
    }
}

fn error(refusal: Refusal) -> ApiResponse {
    let body = serde_json::json!({ "__type": refusal.error_type, "message": refusal.message });
    ApiResponse {
        status: refusal.status,
        body: serde_json::to_vec(&body).unwrap_or_default(),
        error_type: Some(refusal.error_type.to_owned()),
    }
}

fn to_http(response: ApiResponse, request_id: &str) -> Response<Body> {
    let body = match String::from_utf8(response.body) {
        Ok(text) => Body::Text(text),
        Err(err) => Body::Binary(err.into_bytes()),
    };
    let mut http = Response::new(body);
    *http.status_mut() =
        StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = http.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-RequestId", id);
    }
    if let Some(error_type) = response
        .error_type
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert("X-Amzn-ErrorType", error_type);
    }
    if response.status == 405 {
        headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    http
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_read_from_session_and_role_arns() {
        assert_eq!(
            role_name("arn:aws:sts::123456789012:assumed-role/TernConnector/vc-lab-1"),
            Some("TernConnector")
        );
        assert_eq!(
            role_name("arn:aws:iam::123456789012:role/tern/TernConnector"),
            Some("TernConnector")
        );
        assert_eq!(
            role_name("arn:aws-us-gov:sts::123456789012:assumed-role/R/s"),
            Some("R")
        );
        assert_eq!(
            role_name("arn:aws:iam::123456789012:user/TernConnector"),
            None
        );
        assert_eq!(
            role_name("arn:aws:sts::123456789012:federated-user/TernConnector"),
            None
        );
        assert_eq!(role_name("TernConnector"), None);
        assert_eq!(role_name("arn:aws:sts::1:assumed-role//s"), None);
    }

    #[test]
    fn config_names_what_is_missing_or_wrong() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let ok = Config::from_lookup(env(&[
            ("TERN_TABLE_NAME", "tern"),
            ("TERN_CONNECTOR_ROLE_NAME", "TernConnector"),
            ("AWS_REGION", "eu-west-1"),
        ]))
        .unwrap();
        assert_eq!(ok.connector_role_name, "TernConnector");
        assert_eq!(ok.region, "eu-west-1");
        assert_eq!(
            Config::from_lookup(env(&[
                ("TERN_CONNECTOR_ROLE_NAME", "R"),
                ("AWS_REGION", "x")
            ])),
            Err(ConfigError::Missing("TERN_TABLE_NAME"))
        );
        let err = Config::from_lookup(env(&[
            ("TERN_TABLE_NAME", "tern"),
            (
                "TERN_CONNECTOR_ROLE_NAME",
                "arn:aws:iam::1:role/TernConnector",
            ),
            ("AWS_REGION", "eu-west-1"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("not an IAM role name"), "{err}");
    }
}
