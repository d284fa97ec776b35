//! Stand-ins for the stack's two API Gateway HTTP APIs, for tests and local runs of the
//! handler: HTTP servers that turn each request into the payload-2.0 event the route delivers
//! and answer with what [`Handler::handle`] answers.
//!
//! * [`serve`]: the `SmsEndpoint`, without an authorizer. The request context carries no
//!   identity; clients' own SigV4 signatures (service `sms`) are verified by the handler, as in
//!   the deployed stack.
//! * [`serve_iam`]: the `ApiEndpoint`, behind the IAM authorizer. Signatures for `execute-api`
//!   are checked against the identities given (what IAM knows) before the handler runs, and the
//!   handler gets the caller's ARN in `authorizer.iam`, as API Gateway delivers it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerIamDescription,
    ApiGatewayV2httpRequestContext,
};
use lambda_http::request::RequestContext;
use lambda_http::Body;

use crate::Handler;

/// Serves `handler` on a new listener at 127.0.0.1; answers its base URL. The server runs
/// on the current Tokio runtime until that ends.
pub async fn serve(handler: Arc<Handler>) -> std::io::Result<String> {
    listen(Gateway { handler, iam: None }).await
}

/// [`serve`] behind a stand-in of the IAM authorizer: a request must be signed for
/// `execute-api` in `region` with one of `identities` (a key pair, and the ARN of the caller
/// it belongs to, such as `arn:aws:sts::ACCOUNT:assumed-role/TernConnector/SESSION`).
/// Refused requests never reach the handler: 403 with API Gateway's `{"message":"Forbidden"}`.
pub async fn serve_iam(
    handler: Arc<Handler>,
    region: &str,
    identities: impl IntoIterator<Item = (tern_sigv4::KeyPair, String)>,
) -> std::io::Result<String> {
    listen(Gateway {
        handler,
        iam: Some(Arc::new(tern_sigv4::Verifier::new(
            region,
            "execute-api",
            identities,
        ))),
    })
    .await
}

#[derive(Clone)]
struct Gateway {
    handler: Arc<Handler>,
    /// The IAM authorizer's stand-in: signing identities and their caller ARNs.
    iam: Option<Arc<tern_sigv4::Verifier<String>>>,
}

async fn listen(gateway: Gateway) -> std::io::Result<String> {
    let app = axum::Router::new().fallback(forward).with_state(gateway);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the stand-in gateway stopped");
        }
    });
    Ok(format!("http://{addr}"))
}

async fn forward(
    State(gateway): State<Gateway>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.request_id = Some(uuid::Uuid::new_v4().to_string());
    if let Some(iam) = &gateway.iam {
        let now = std::time::SystemTime::now();
        match iam.verify(&method, &uri, &headers, &body, now) {
            Ok(arn) => {
                let mut identity = ApiGatewayRequestAuthorizerIamDescription::default();
                identity.access_key = tern_sigv4::claimed_key(&headers).ok();
                identity.account_id = arn.split(':').nth(4).map(str::to_owned);
                identity.user_arn = Some(arn);
                let mut authorizer = ApiGatewayRequestAuthorizer::default();
                authorizer.iam = Some(identity);
                context.authorizer = Some(authorizer);
            }
            Err(e) => {
                tracing::info!(error = %e, "the IAM authorizer refused a request");
                return axum::response::Response::builder()
                    .status(403)
                    .header("content-type", "application/json")
                    .header("x-amzn-errortype", "ForbiddenException")
                    .body(axum::body::Body::from(r#"{"message":"Forbidden"}"#))
                    .expect("a static response");
            }
        }
    }
    let mut request = lambda_http::http::Request::new(Body::Binary(body.to_vec()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
        .extensions_mut()
        .insert(RequestContext::ApiGatewayV2(context));
    let response = gateway.handler.handle(request).await;
    let (parts, body) = response.into_parts();
    axum::response::Response::from_parts(parts, axum::body::Body::from(body.as_ref().to_vec()))
}
