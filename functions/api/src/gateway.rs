//! A stand-in for the stack's `SmsEndpoint` (an API Gateway HTTP API route without an
//! authorizer), for tests and local runs of the handler: an HTTP server that turns each request
//! into the payload-2.0 event the route delivers — the request as the client sent it, a request
//! context with no identity — and answers with what [`Handler::handle`] answers. Clients' own
//! SigV4 signatures (service `sms`) are then verified by the handler, as in the deployed stack.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
use lambda_http::request::RequestContext;
use lambda_http::Body;

use crate::Handler;

/// Serves `handler` on a new listener at 127.0.0.1; answers its base URL. The server runs
/// on the current Tokio runtime until that ends.
pub async fn serve(handler: Arc<Handler>) -> std::io::Result<String> {
    let app = axum::Router::new().fallback(forward).with_state(handler);
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
    State(handler): State<Arc<Handler>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let mut request = lambda_http::http::Request::new(Body::Binary(body.to_vec()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.request_id = Some(uuid::Uuid::new_v4().to_string());
    request
        .extensions_mut()
        .insert(RequestContext::ApiGatewayV2(context));
    let response = handler.handle(request).await;
    let (parts, body) = response.into_parts();
    axum::response::Response::from_parts(parts, axum::body::Body::from(body.as_ref().to_vec()))
}
