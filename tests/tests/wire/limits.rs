//! Request bodies over the server's limit: the client gets its 413 in the SMS error shape even
//! when it writes the whole body before reading anything (as Python's http.client and reqwest
//! do), instead of a broken pipe.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use serde_json::Value;
use tern_acceptance::{sms_target, TestServer};
use tern_local::server::MAX_BODY_BYTES;

/// A JSON object of about `size` bytes.
fn big_body(size: usize) -> Vec<u8> {
    let mut body = b"{\"description\":\"".to_vec();
    body.resize(size - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn assert_too_large(status: u16, content_type: Option<&str>, body: &[u8]) {
    assert_eq!(status, 413, "{:?}", String::from_utf8_lossy(body));
    assert_eq!(content_type, Some("application/x-amz-json-1.1"));
    let json: Value = serde_json::from_slice(body).expect("a JSON error body");
    assert_eq!(json["__type"], "RequestEntityTooLargeException", "{json}");
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains(&MAX_BODY_BYTES.to_string())),
        "{json}"
    );
}

/// Writes all of `request` on a blocking socket, as a script would, then reads the response
/// to its end: (status, content-type, connection, body).
async fn write_all_then_read(
    server: &TestServer,
    request: Vec<u8>,
) -> (u16, Option<String>, Option<String>, Vec<u8>) {
    let addr = server.running_server().addr();
    let reply = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        let limit = Some(Duration::from_secs(30));
        stream.set_read_timeout(limit).expect("timeout");
        stream.set_write_timeout(limit).expect("timeout");
        stream
            .write_all(&request)
            .expect("the whole request is written without a broken pipe");
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).expect("read the reply");
        reply
    })
    .await
    .expect("client thread");
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    (
        status,
        header("content-type"),
        header("connection"),
        reply[split + 4..].to_vec(),
    )
}

fn head(server: &TestServer, framing: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-amz-json-1.1\r\n\
         x-amz-target: {}\r\n{framing}\r\n\r\n",
        server.running_server().addr(),
        sms_target("GetConnectors"),
    )
    .into_bytes()
}

#[tokio::test]
async fn a_client_that_writes_7_mib_before_reading_gets_the_413() {
    let server = TestServer::start().await;
    let body = big_body(7 << 20);
    let mut request = head(&server, &format!("content-length: {}", body.len()));
    request.extend_from_slice(&body);
    let (status, content_type, connection, body) = write_all_then_read(&server, request).await;
    assert_too_large(status, content_type.as_deref(), &body);
    assert_eq!(connection.as_deref(), Some("close"));
    server.shutdown().await;
}

#[tokio::test]
async fn reqwest_reads_the_413_of_a_signed_oversized_request() {
    let server = TestServer::start().await;
    let body = big_body(MAX_BODY_BYTES + 1024);
    let r = server
        .raw(
            Some(&sms_target("UpdateReplicationJob")),
            &body,
            Some(&server.admin()),
        )
        .await;
    assert_too_large(r.status, r.header("content-type"), &r.body);
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("RequestEntityTooLargeException")
    );
    // The server keeps serving.
    let r = server
        .raw(
            Some(&sms_target("GetConnectors")),
            b"{}",
            Some(&server.admin()),
        )
        .await;
    assert_eq!(r.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_the_413() {
    // No declared length: the limit is found while reading, and the rest is still drained.
    let server = TestServer::start().await;
    let mut request = head(&server, "transfer-encoding: chunked");
    for _ in 0..7 {
        request.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
        request.extend(std::iter::repeat_n(b' ', 1 << 20));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (status, content_type, _, body) = write_all_then_read(&server, request).await;
    assert_too_large(status, content_type.as_deref(), &body);
    server.shutdown().await;
}
