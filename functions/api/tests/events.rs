//! Feeds the sample API Gateway events in `events/api/` to the Lambda handler, without a Lambda
//! runtime, over an in-memory store. The same files work with `sam local invoke -e`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lambda_http::{Body, Response};
use serde_json::Value;
use tern_api::{Api, Deps};
use tern_core::{MemoryStore, RandomIds, SystemClock};
use tern_fn_api::{Config, Handler};

const CONNECTOR_ROLE: &str = "TernConnector";

fn events_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/api")
}

fn handler() -> Handler {
    let api = Api::new(Deps {
        store: Arc::new(MemoryStore::new()),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        config: tern_core::Config::default(),
    });
    Handler::new(api, CONNECTOR_ROLE)
}

fn load(name: &str) -> lambda_http::Request {
    let text =
        std::fs::read_to_string(events_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    lambda_http::request::from_str(&text)
        .unwrap_or_else(|e| panic!("{name} is not an API Gateway v2 event: {e}"))
}

struct Reply {
    status: u16,
    error_header: Option<String>,
    request_id: Option<String>,
    body: Value,
}

async fn invoke(handler: &Handler, event: &str) -> Reply {
    reply(handler.handle(load(event)).await)
}

fn reply(response: Response<Body>) -> Reply {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/x-amz-json-1.1")
    );
    let body = serde_json::from_slice(response.body().as_ref()).expect("JSON body");
    Reply {
        status: response.status().as_u16(),
        error_header: header("x-amzn-errortype"),
        request_id: header("x-amzn-requestid"),
        body,
    }
}

impl Reply {
    fn error_type(&self) -> Option<&str> {
        self.body["__type"].as_str()
    }

    fn assert_error(&self, status: u16, error_type: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.error_type(), Some(error_type), "body: {}", self.body);
        assert_eq!(self.error_header.as_deref(), Some(error_type));
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn an_administrator_lists_connectors() {
    let reply = invoke(&handler(), "admin-get-connectors.json").await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    assert_eq!(reply.error_header, None);
    assert!(reply.body.is_object());
    // API Gateway's request id is passed on, so the log line and the client see the same id.
    assert_eq!(reply.request_id.as_deref(), Some("Jb2cvhpLIAMEV7Q="));
}

#[tokio::test]
async fn a_base64_encoded_body_is_decoded() {
    let reply = invoke(&handler(), "admin-get-replication-jobs-base64.json").await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    assert!(reply.body.is_object());
}

#[tokio::test]
async fn a_connector_registers_and_is_refused_administrative_operations() {
    let handler = handler();
    let reply = invoke(&handler, "connector-register.json").await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    assert!(
        reply.body["connectorId"]
            .as_str()
            .is_some_and(|id| id.starts_with("c-")),
        "body: {}",
        reply.body
    );

    let reply = invoke(&handler, "connector-calls-admin-operation.json").await;
    reply.assert_error(400, "AccessDeniedException");
}

#[tokio::test]
async fn an_administrator_is_refused_connector_operations() {
    let reply = invoke(&handler(), "admin-calls-connector-operation.json").await;
    reply.assert_error(400, "AccessDeniedException");
}

#[tokio::test]
async fn malformed_json_is_a_serialization_error() {
    let reply = invoke(&handler(), "admin-malformed-json.json").await;
    reply.assert_error(400, "SerializationException");
}

#[tokio::test]
async fn a_request_without_iam_identity_is_refused() {
    let reply = invoke(&handler(), "no-iam-identity.json").await;
    reply.assert_error(403, "MissingAuthenticationTokenException");
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let handler = handler();
    let text = std::fs::read_to_string(events_dir().join("admin-get-connectors.json")).unwrap();
    let mut event: Value = serde_json::from_str(&text).unwrap();

    event["requestContext"]["http"]["method"] = "GET".into();
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let refused = reply(handler.handle(request).await);
    refused.assert_error(405, "MethodNotAllowedException");

    event["requestContext"]["http"]["method"] = "POST".into();
    event["rawPath"] = "/admin".into();
    event["requestContext"]["http"]["path"] = "/admin".into();
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let refused = reply(handler.handle(request).await);
    refused.assert_error(404, "NotFoundException");
}

#[tokio::test]
async fn every_sample_event_is_a_valid_api_gateway_v2_event() {
    let mut count = 0;
    for entry in std::fs::read_dir(events_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            load(path.file_name().unwrap().to_str().unwrap());
            count += 1;
        }
    }
    assert!(count >= 7, "expected the sample events, found {count}");
}

/// `template.yaml` must give the function every variable its configuration requires (its
/// permissions are checked exactly by functions/tests' template test).
#[test]
fn the_template_configures_the_function() {
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml"))
            .unwrap();
    for name in Config::VARIABLES {
        // AWS_REGION is set by Lambda itself and may not be declared.
        if name != "AWS_REGION" {
            assert!(
                template.contains(&format!("{name}:")),
                "template.yaml does not set {name}"
            );
        }
    }
}

/// The AWS deployment's events carry `EventSource` (TERN_EVENT_SOURCE), default `tern.sms`;
/// an `aws.` source, which EventBridge would refuse on every PutEvents, fails at start.
#[test]
fn the_event_source_comes_from_the_stack_and_is_never_aws() {
    let config = |vars: &[(&str, &str)]| {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tern_core::Config::from_env(move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .unwrap()
    };
    assert_eq!(tern_fn_api::event_source(&config(&[])).unwrap(), "tern.sms");
    assert_eq!(
        tern_fn_api::event_source(&config(&[("TERN_EVENT_SOURCE", "acme.migrations")])).unwrap(),
        "acme.migrations"
    );
    let err = tern_fn_api::event_source(&config(&[("TERN_EVENT_SOURCE", "aws.sms")])).unwrap_err();
    assert!(err.to_string().contains("TERN_EVENT_SOURCE"), "{err}");

    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml"))
            .unwrap();
    assert!(template.contains("  EventSource:\n    Type: String\n    Default: tern.sms\n"));
    assert!(template.contains("TERN_EVENT_SOURCE: !Ref EventSource"));
}
