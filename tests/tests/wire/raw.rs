//! Raw HTTP: what no SDK would send — malformed JSON, wrong member types, unknown targets, bad
//! signatures — and the exact bytes of responses.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tern_acceptance::{connector_target, now_secs, sms_target, RawResponse, TestServer};

/// The 13 SMS operations of launch, validation, templates and import (the last implemented).
const APP_LAUNCH_OPS: [&str; 13] = [
    "DeleteAppLaunchConfiguration",
    "DeleteAppValidationConfiguration",
    "GenerateChangeSet",
    "GenerateTemplate",
    "GetAppLaunchConfiguration",
    "GetAppValidationConfiguration",
    "GetAppValidationOutput",
    "ImportAppCatalog",
    "LaunchApp",
    "NotifyAppValidationOutput",
    "PutAppLaunchConfiguration",
    "PutAppValidationConfiguration",
    "TerminateApp",
];

/// An awsJson error: status, `__type` in body and header alike, a lower-case `message`.
fn assert_error(r: &RawResponse, status: u16, error_type: &str) {
    assert_eq!(
        r.status,
        status,
        "{error_type}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let body = r.json();
    assert_eq!(body["__type"], error_type, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {body}"
    );
    assert_eq!(r.header("x-amzn-errortype"), Some(error_type));
    assert_eq!(r.header("content-type"), Some("application/x-amz-json-1.1"));
    assert!(r.header("x-amzn-requestid").is_some());
}

async fn admin(server: &TestServer, op: &str, body: &[u8]) -> RawResponse {
    server
        .raw(Some(&sms_target(op)), body, Some(&server.admin()))
        .await
}

#[tokio::test]
async fn success_responses_have_the_awsjson_headers() {
    let server = TestServer::start().await;
    let r = admin(&server, "GetConnectors", b"{}").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-amz-json-1.1"));
    assert!(r
        .header("x-amzn-requestid")
        .is_some_and(|id| !id.is_empty()));
    assert_eq!(
        r.json(),
        json!({"connectorList": []}),
        "no nextToken on the last page"
    );
    // The catalog status is an enum string; absent members are omitted, never null.
    let r = admin(&server, "GetServers", b"{}").await;
    let body = r.json();
    assert_eq!(body["serverCatalogStatus"], "NOT_IMPORTED");
    assert!(
        !body.as_object().unwrap().values().any(Value::is_null),
        "{body}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn empty_bodies_and_unknown_members_are_accepted() {
    let server = TestServer::start().await;
    let r = admin(&server, "GetConnectors", b"").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let r = admin(&server, "GetServers", br#"{"somethingNew":{"x":[1,2]}}"#).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_a_serialization_error() {
    let server = TestServer::start().await;
    for body in [
        &b"{"[..],
        b"{\"maxResults\": }",
        b"not json",
        b"[]",
        b"\"a string\"",
        b"42",
        b"null",
    ] {
        let r = admin(&server, "GetConnectors", body).await;
        assert_error(&r, 400, "SerializationException");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_member_types_are_serialization_errors() {
    let server = TestServer::start().await;
    let seed = now_secs() + 3600;
    let cases = [
        ("GetConnectors", json!({"maxResults": "3"})),
        ("GetConnectors", json!({"nextToken": 5})),
        ("GetServers", json!({"vmServerAddressList": {"vmId": "x"}})),
        (
            "CreateReplicationJob",
            json!({"serverId": 5, "seedReplicationTime": seed, "frequency": 12}),
        ),
        (
            "CreateReplicationJob",
            json!({"serverId": "s-1", "seedReplicationTime": "2026-12-01T10:00:00Z", "frequency": 12}),
        ),
        (
            "CreateReplicationJob",
            json!({"serverId": "s-1", "seedReplicationTime": seed, "frequency": "12"}),
        ),
        (
            "CreateReplicationJob",
            json!({"serverId": "s-1", "seedReplicationTime": seed, "frequency": 12, "runOnce": "yes"}),
        ),
        (
            "UpdateReplicationJob",
            json!({"replicationJobId": ["sms-job-1"]}),
        ),
        (
            "StartOnDemandReplicationRun",
            json!({"replicationJobId": null, "description": 1}),
        ),
    ];
    for (op, body) in cases {
        let r = admin(&server, op, body.to_string().as_bytes()).await;
        let got = r.json();
        assert_eq!(r.status, 400, "{op} {body}: {got}");
        assert_eq!(
            got["__type"], "SerializationException",
            "{op} {body}: {got}"
        );
    }
    // A string outside an enum's values is a well-typed but invalid parameter (spec §1.4).
    let body = json!({"serverId": "s-1", "seedReplicationTime": seed, "frequency": 12, "licenseType": "FREE"});
    let r = admin(&server, "CreateReplicationJob", body.to_string().as_bytes()).await;
    assert_error(&r, 400, "InvalidParameterException");
    assert!(r.json()["message"].as_str().unwrap().contains("FREE"));
    server.shutdown().await;
}

#[tokio::test]
async fn timestamps_are_epoch_seconds_both_ways() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    // Fractional seconds are accepted (Go and JS SDKs send them)...
    let seed = now_secs() + 3600;
    let body = json!({"serverId": ids[0], "seedReplicationTime": seed as f64 + 0.5, "frequency": 12, "licenseType": "BYOL"});
    let r = admin(&server, "CreateReplicationJob", body.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let job_id = r.json()["replicationJobId"].as_str().unwrap().to_owned();
    // ...and timestamps come back as JSON numbers, never strings.
    let r = admin(
        &server,
        "GetReplicationJobs",
        json!({"replicationJobId": job_id}).to_string().as_bytes(),
    )
    .await;
    let job = &r.json()["replicationJobList"][0];
    let t = job["seedReplicationTime"].as_f64().expect("a number");
    assert!((t - (seed as f64 + 0.5)).abs() < 0.001, "{job}");
    assert_eq!(job["licenseType"], "BYOL");
    assert_eq!(job["serverType"], "VIRTUAL_MACHINE");
    assert_eq!(job["vmServer"]["vmServerAddress"]["vmId"], "vm-0");
    let r = admin(&server, "GetServers", b"{}").await;
    assert!(r.json()["lastModifiedOn"].is_number(), "{}", r.json());
    server.shutdown().await;
}

#[tokio::test]
async fn operations_without_output_answer_an_empty_object() {
    let server = TestServer::start().await;
    let (_agent, _ids) = server.import_catalog(1).await;
    let r = admin(&server, "ImportServerCatalog", b"{}").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty() || r.json() == json!({}), "{:?}", r.body);
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_targets() {
    let server = TestServer::start().await;
    let creds = server.admin();
    for target in [
        Some(sms_target("DescribeEverything")),
        Some("SomethingElse_V1.GetConnectors".to_owned()),
        Some("AWSServerMigrationService_V2016_10_24".to_owned()),
        Some(String::new()),
        None,
    ] {
        let r = server.raw(target.as_deref(), b"{}", Some(&creds)).await;
        assert_error(&r, 400, "UnknownOperationException");
    }
    // A connector target under the SMS prefix is not an SMS operation, and vice versa.
    let r = server
        .raw(Some(&sms_target("PollWork")), b"{}", Some(&creds))
        .await;
    assert_error(&r, 400, "UnknownOperationException");
    let r = server
        .raw(
            Some(&connector_target("GetConnectors")),
            b"{}",
            Some(&server.connector()),
        )
        .await;
    assert_error(&r, 400, "UnknownOperationException");
    server.shutdown().await;
}

#[tokio::test]
async fn launch_validation_and_template_operations_answer_their_own_errors() {
    let server = TestServer::start().await;
    for op in APP_LAUNCH_OPS {
        let r = admin(&server, op, b"{}").await;
        let body = r.json();
        let message = body["message"].as_str().unwrap_or_default().to_string();
        if op == "ImportAppCatalog" {
            // No appId; an empty catalog names no applications.
            assert_error(&r, 400, "InvalidParameterException");
            assert!(message.contains("[[applications]]"), "{op}: {body}");
        } else {
            assert_error(&r, 400, "MissingRequiredParameterException");
            assert!(message.contains("appId"), "{op}: {body}");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn unsigned_and_mis_signed_requests_are_refused() {
    let server = TestServer::start().await;
    let target = sms_target("GetConnectors");
    let admin = server.admin();

    let r = server.raw(Some(&target), b"{}", None).await;
    assert_error(&r, 403, "MissingAuthenticationTokenException");

    let unknown = aws_sdk_sms::config::Credentials::new(
        "AKIAUNKNOWNKEY000000",
        "x".repeat(40),
        None,
        None,
        "t",
    );
    let r = server.raw(Some(&target), b"{}", Some(&unknown)).await;
    assert_error(&r, 403, "UnrecognizedClientException");

    let wrong_secret = aws_sdk_sms::config::Credentials::new(
        admin.access_key_id(),
        "y".repeat(40),
        None,
        None,
        "t",
    );
    let r = server.raw(Some(&target), b"{}", Some(&wrong_secret)).await;
    assert_error(&r, 403, "InvalidSignatureException");

    // The body changed after signing.
    let r = server
        .raw_at(
            Some(&target),
            b"{}",
            Some(&admin),
            SystemTime::now(),
            |_| {},
        )
        .await;
    assert_eq!(r.status, 200, "control: the untampered request passes");
    let signed_for_other_body = {
        let url = format!("{}/", server.endpoint());
        tern_connector::signing::sign_post(
            &admin,
            tern_acceptance::REGION,
            &url,
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", &target),
            ],
            b"{\"maxResults\":1}",
            SystemTime::now(),
        )
        .unwrap()
    };
    let r = server
        .raw_at(Some(&target), b"{}", None, SystemTime::now(), |h| {
            h.extend(signed_for_other_body)
        })
        .await;
    assert_error(&r, 403, "InvalidSignatureException");

    // The target header changed after signing.
    let r = server
        .raw_at(Some(&target), b"{}", Some(&admin), SystemTime::now(), |h| {
            for (n, v) in h.iter_mut() {
                if n == "x-amz-target" {
                    *v = sms_target("GetServers");
                }
            }
        })
        .await;
    assert_error(&r, 403, "InvalidSignatureException");

    // Signed 20 minutes ago: stale.
    let r = server
        .raw_at(
            Some(&target),
            b"{}",
            Some(&admin),
            SystemTime::now() - Duration::from_secs(20 * 60),
            |_| {},
        )
        .await;
    assert_error(&r, 403, "InvalidSignatureException");

    // A garbled Authorization header.
    let r = server
        .raw_at(Some(&target), b"{}", Some(&admin), SystemTime::now(), |h| {
            for (n, v) in h.iter_mut() {
                if n == "authorization" {
                    *v = "AWS4-HMAC-SHA256 Credential=garbage".into();
                }
            }
        })
        .await;
    assert_error(&r, 400, "IncompleteSignatureException");
    server.shutdown().await;
}
