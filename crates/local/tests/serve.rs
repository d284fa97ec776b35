//! `tern serve` as a client sees it: SigV4 acceptance and refusal, transport errors, the
//! credentials file, and graceful shutdown. Requests are signed here with `aws-sigv4` and sent
//! over a plain TCP socket so that every byte on the wire is under the test's control.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use tern_local::{Credentials, Running, ServeConfig};
use tern_test_support::poll::until_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// The event bus tests share this binary: one integration-test binary per crate keeps link time down.
mod bus;

const SMS: &str = "AWSServerMigrationService_V2016_10_24";

async fn start(dir: &Path) -> Running {
    tern_local::start(ServeConfig::new(dir, "127.0.0.1:0".parse().unwrap()))
        .await
        .expect("server starts")
}

/// What a signed request varies in; `Default` is a correct admin request.
struct Signing<'a> {
    creds: &'a Credentials,
    region: &'a str,
    service: &'a str,
    time: SystemTime,
}

impl<'a> Signing<'a> {
    fn new(creds: &'a Credentials) -> Self {
        Self {
            creds,
            region: "us-east-1",
            service: "sms",
            time: SystemTime::now(),
        }
    }
}

/// Signs `POST /` with the given target and body; returns the headers to send.
fn signed_headers(
    addr: SocketAddr,
    target: &str,
    body: &[u8],
    s: &Signing<'_>,
) -> Vec<(String, String)> {
    let host = addr.to_string();
    let mut headers = vec![
        ("host".to_owned(), host.clone()),
        (
            "content-type".to_owned(),
            "application/x-amz-json-1.1".to_owned(),
        ),
        ("x-amz-target".to_owned(), target.to_owned()),
    ];
    let identity = aws_credential_types::Credentials::new(
        &s.creds.access_key_id,
        &s.creds.secret_access_key,
        None,
        None,
        "test",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(s.region)
        .name(s.service)
        .time(s.time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let request = SignableRequest::new(
        "POST",
        format!("http://{host}/"),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    for (name, value) in instructions.headers() {
        headers.push((name.to_owned(), value.to_owned()));
    }
    headers
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
    text: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error_type(&self) -> &str {
        self.body["__type"].as_str().unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }

    /// Every error carries the same code in the header and the body, and the awsJson framing.
    fn assert_error(&self, status: u16, error_type: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.error_type(), error_type, "body: {}", self.body);
        assert_eq!(self.header("x-amzn-errortype"), Some(error_type));
        assert_eq!(
            self.header("content-type"),
            Some("application/x-amz-json-1.1")
        );
        assert!(!self.message().is_empty());
    }
}

/// Sends raw request bytes and reads the whole response (the request says `Connection: close`).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    parse_reply(&buf)
}

/// Reads exactly one response (headers, then `content-length` bytes) off a kept-alive connection.
async fn read_one_reply(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let length: usize = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    buf.extend_from_slice(&body);
    parse_reply(&buf)
}

fn parse_reply(buf: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").expect("complete response");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let text = body.to_owned();
    let body = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

fn raw_request(method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k == "host") {
        raw.push_str("host: localhost\r\n");
    }
    raw.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    raw
}

async fn call(server: &Running, target: &str, body: &[u8], signing: &Signing<'_>) -> Reply {
    let headers = signed_headers(server.addr(), target, body, signing);
    exchange(server.addr(), &raw_request("POST", "/", &headers, body)).await
}

#[tokio::test]
async fn a_correctly_signed_admin_request_reaches_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let reply = call(
        &server,
        &format!("{SMS}.GetConnectors"),
        b"{}",
        &Signing::new(server.admin()),
    )
    .await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    assert!(reply.body.is_object());
    assert_eq!(
        reply.header("content-type"),
        Some("application/x-amz-json-1.1")
    );
    let request_id = reply.header("x-amzn-requestid").expect("request id");
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
    assert_eq!(reply.header("x-amzn-errortype"), None);
    server.shutdown().await;
}

#[tokio::test]
async fn unsigned_and_malformed_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let target = format!("{SMS}.GetConnectors");

    let unsigned = vec![("x-amz-target".to_owned(), target.clone())];
    let reply = exchange(server.addr(), &raw_request("POST", "/", &unsigned, b"{}")).await;
    reply.assert_error(403, "MissingAuthenticationTokenException");
    assert!(reply.header("x-amzn-requestid").is_some());

    let mut headers = signed_headers(server.addr(), &target, b"{}", &Signing::new(server.admin()));
    for (k, v) in headers.iter_mut() {
        if k == "authorization" {
            *v = v.split(", Signature=").next().unwrap().to_owned();
        }
    }
    let reply = exchange(server.addr(), &raw_request("POST", "/", &headers, b"{}")).await;
    reply.assert_error(400, "IncompleteSignatureException");
    assert!(
        reply.message().contains("'Signature'"),
        "{}",
        reply.message()
    );

    headers.retain(|(k, _)| k != "x-amz-date");
    headers.push(("authorization".into(), "AWS4-HMAC-SHA256 Credential=X/20260101/us-east-1/sms/aws4_request, SignedHeaders=host;x-amz-date, Signature=00".into()));
    let reply = exchange(server.addr(), &raw_request("POST", "/", &headers, b"{}")).await;
    reply.assert_error(400, "IncompleteSignatureException");
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_secret_unknown_key_and_tampered_body_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let target = format!("{SMS}.GetConnectors");

    let wrong_secret = Credentials {
        access_key_id: server.admin().access_key_id.clone(),
        secret_access_key: "x".repeat(40),
    };
    let reply = call(&server, &target, b"{}", &Signing::new(&wrong_secret)).await;
    reply.assert_error(403, "InvalidSignatureException");
    assert!(
        reply
            .message()
            .starts_with("The request signature we calculated does not match"),
        "{}",
        reply.message()
    );

    let unknown = Credentials::generate();
    let reply = call(&server, &target, b"{}", &Signing::new(&unknown)).await;
    reply.assert_error(403, "UnrecognizedClientException");

    // Signed for one body, sent with another.
    let headers = signed_headers(server.addr(), &target, b"{}", &Signing::new(server.admin()));
    let reply = exchange(
        server.addr(),
        &raw_request("POST", "/", &headers, b"{\"maxResults\":1}"),
    )
    .await;
    reply.assert_error(403, "InvalidSignatureException");
    server.shutdown().await;
}

#[tokio::test]
async fn stale_and_wrongly_scoped_signatures_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let target = format!("{SMS}.GetConnectors");
    let admin = server.admin();

    let stale = Signing {
        time: SystemTime::now() - Duration::from_secs(20 * 60),
        ..Signing::new(admin)
    };
    let reply = call(&server, &target, b"{}", &stale).await;
    reply.assert_error(403, "InvalidSignatureException");
    assert!(
        reply.message().starts_with("Signature expired: "),
        "{}",
        reply.message()
    );

    let future = Signing {
        time: SystemTime::now() + Duration::from_secs(20 * 60),
        ..Signing::new(admin)
    };
    let reply = call(&server, &target, b"{}", &future).await;
    reply.assert_error(403, "InvalidSignatureException");

    // Within the allowed skew is fine.
    let skewed = Signing {
        time: SystemTime::now() - Duration::from_secs(10 * 60),
        ..Signing::new(admin)
    };
    assert_eq!(call(&server, &target, b"{}", &skewed).await.status, 200);

    let wrong_service = Signing {
        service: "ec2",
        ..Signing::new(admin)
    };
    let reply = call(&server, &target, b"{}", &wrong_service).await;
    reply.assert_error(403, "InvalidSignatureException");
    assert!(
        reply.message().contains("correct service: 'sms'"),
        "{}",
        reply.message()
    );

    let wrong_region = Signing {
        region: "eu-west-1",
        ..Signing::new(admin)
    };
    let reply = call(&server, &target, b"{}", &wrong_region).await;
    reply.assert_error(403, "InvalidSignatureException");
    assert!(
        reply.message().contains("not 'eu-west-1'"),
        "{}",
        reply.message()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_connector_key_cannot_call_administrative_operations() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let reply = call(
        &server,
        &format!("{SMS}.GetConnectors"),
        b"{}",
        &Signing::new(server.connector()),
    )
    .await;
    assert_eq!(reply.status, 400, "body: {}", reply.body);
    assert_eq!(
        reply.error_type(),
        "AccessDeniedException",
        "body: {}",
        reply.body
    );
    assert_eq!(
        reply.header("x-amzn-errortype"),
        Some("AccessDeniedException")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn post_slash_is_the_api_everything_else_s3_and_bodies_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;

    // Not `POST /`: the S3 staging store, which answers in S3's XML error shape.
    for (method, path) in [
        ("GET", "/"),
        ("PUT", "/tern-staging/things"),
        ("GET", "/tern-staging"),
    ] {
        let reply = exchange(server.addr(), &raw_request(method, path, &[], b"")).await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.text);
        assert!(
            reply.text.contains("<Code>AccessDenied</Code>"),
            "{method} {path}: {}",
            reply.text
        );
    }

    // Declared larger than the server would ever drain: refused on the declared length alone,
    // before any of the body is read (so the test need not send it). Bodies over the limit but
    // within the drain bound are read to their end first (tests/tests/wire/limits.rs).
    let too_big = tern_local::server::DRAIN_BYTES + 1;
    let raw = format!("POST / HTTP/1.1\r\nhost: localhost\r\ncontent-length: {too_big}\r\nconnection: close\r\n\r\n");
    let reply = exchange(server.addr(), raw.as_bytes()).await;
    reply.assert_error(413, "RequestEntityTooLargeException");
    server.shutdown().await;
}

#[tokio::test]
async fn credentials_file_is_private_complete_and_stable_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path()).await;
    let (admin, connector) = (first.admin().clone(), first.connector().clone());
    let file = first.credentials_file().to_owned();
    assert_eq!(file, dir.path().join("credentials"));
    assert_ne!(admin.access_key_id, connector.access_key_id);

    let text = std::fs::read_to_string(&file).unwrap();
    for expected in [
        "[default]".to_owned(),
        "[connector]".to_owned(),
        format!("aws_access_key_id = {}", admin.access_key_id),
        format!("aws_secret_access_key = {}", admin.secret_access_key),
        format!("aws_access_key_id = {}", connector.access_key_id),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    first.shutdown().await;

    let second = start(dir.path()).await;
    assert_eq!(second.admin(), &admin);
    assert_eq!(second.connector(), &connector);
    // The old keys still sign valid requests.
    let reply = call(
        &second,
        &format!("{SMS}.GetConnectors"),
        b"{}",
        &Signing::new(&admin),
    )
    .await;
    assert_eq!(reply.status, 200, "body: {}", reply.body);
    second.shutdown().await;
}

#[tokio::test]
async fn administrator_keys_from_the_caller_replace_generated_ones() {
    let dir = tempfile::tempdir().unwrap();
    let given = Credentials {
        access_key_id: "MYADMIN1".into(),
        secret_access_key: "given/secret+value".into(),
    };
    let cfg = ServeConfig {
        credentials: Some(given.clone()),
        ..ServeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap())
    };
    let server = tern_local::start(cfg).await.unwrap();
    assert_eq!(server.admin(), &given);
    let target = format!("{SMS}.GetConnectors");
    assert_eq!(
        call(&server, &target, b"{}", &Signing::new(&given))
            .await
            .status,
        200
    );
    let text = std::fs::read_to_string(server.credentials_file()).unwrap();
    assert!(
        !text.contains("given/secret+value"),
        "the given secret must not be written:\n{text}"
    );
    assert!(text.contains("[connector]"));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_configuration_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServeConfig {
        region: "US East".into(),
        ..ServeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap())
    };
    let err = tern_local::start(cfg).await.err().expect("refused");
    assert!(err.to_string().contains("invalid region"), "{err}");

    std::fs::write(
        dir.path().join("credentials"),
        "[default]\naws_access_key_id = ONLYID\n",
    )
    .unwrap();
    let err = tern_local::start(ServeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap()))
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("aws_secret_access_key is missing"),
        "{err}"
    );

    let taken = start(tempfile::tempdir().unwrap().path()).await;
    let err = tern_local::start(ServeConfig::new(
        tempfile::tempdir().unwrap().path(),
        taken.addr(),
    ))
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    taken.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_then_closes_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr();
    let body = b"{}";
    let headers = signed_headers(
        addr,
        &format!("{SMS}.GetConnectors"),
        body,
        &Signing::new(server.admin()),
    );
    let raw = raw_request("POST", "/", &headers, body);
    // Keep-alive: the same connection carries a first, complete request (proof that the server
    // has accepted the connection and serves it) and then the one left in flight.
    let keep_alive = String::from_utf8(raw.clone())
        .unwrap()
        .replace("connection: close\r\n", "")
        .into_bytes();

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&keep_alive).await.unwrap();
    assert_eq!(read_one_reply(&mut stream).await.status, 200);

    // Everything but the last body byte: the request is in flight when shutdown starts.
    stream.write_all(&raw[..raw.len() - 1]).await.unwrap();
    // The server reads what came and waits for the rest: no reply within 300 ms.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await;
    assert!(early.is_err(), "a reply to an incomplete request");
    let mut shutdown = tokio::spawn(server.shutdown());
    let finished = tokio::time::timeout(Duration::from_millis(100), &mut shutdown).await;
    assert!(
        finished.is_err(),
        "shutdown must wait for the request in flight"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections once shutdown started"
    );

    stream.write_all(&raw[raw.len() - 1..]).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    assert_eq!(parse_reply(&buf).status, 200);

    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown completes")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener must be closed"
    );
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr();
    drop(server);
    let closed = until_async(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { TcpStream::connect(addr).await.is_err().then_some(()) },
    )
    .await;
    assert!(closed.is_some(), "still listening 5 s after the drop");
}
