//! moto's server, started per test on a free port and killed when dropped (also when the test
//! panics). Without moto installed a test that needs it is skipped with a notice, unless `CI` is
//! set: then a missing emulator fails, so CI cannot pass without exercising the AWS adapters.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const INSTALL: &str = "pip install 'moto[server]>=5,<6'";

/// How moto is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `moto_server` as shipped: every request on its own thread.
    Threaded,
    /// One request at a time. moto checks a condition and applies a write (or snapshots and
    /// restores a table around a transaction) in separate steps without a lock, so concurrent
    /// requests interleave and lose updates inside the emulator; DynamoDB applies each request
    /// atomically, and a single-threaded moto does too, which concurrency tests need.
    SingleThreaded,
    /// Threaded, behind a WSGI filter for S3: moto 5.2 serializes several S3 results with an
    /// `<OperationResponse>` root where S3 (and so the Rust SDK, which checks the root) uses the
    /// model's name (`CompleteMultipartUploadResult`, `ListPartsResult`, …). The filter renames
    /// those roots and nothing else; with a moto that gets them right it changes nothing.
    /// It also turns the `BlockIndex` strings of moto's EBS `ListSnapshotBlocks` /
    /// `ListChangedBlocks` answers into the integers of EBS's model.
    S3RootsFixed,
    /// [`Flavor::S3RootsFixed`], one request at a time (see [`Flavor::SingleThreaded`]): for
    /// pipelines whose handlers write the table concurrently.
    S3RootsFixedSingleThreaded,
}

const SERVE: &str = r#"
import re
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
ROOTS = {
    b"CompleteMultipartUploadResponse": b"CompleteMultipartUploadResult",
    b"CreateMultipartUploadResponse": b"InitiateMultipartUploadResult",
    b"ListPartsResponse": b"ListPartsResult",
    b"ListMultipartUploadsResponse": b"ListMultipartUploadsResult",
    b"ListObjectsV2Response": b"ListBucketResult",
}

def fixed(environ, start_response):
    seen = {}
    def capture(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers
        return lambda data: None
    body = b"".join(app(environ, capture))
    head = body[:400]
    headers = seen["headers"]
    for wrong, right in ROOTS.items():
        if head.lstrip().startswith(b"<?xml") and ((b"<" + wrong + b" ") in head or (b"<" + wrong + b">") in head):
            body = body.replace(b"<" + wrong, b"<" + right, 1)
            body = body.replace(b"</" + wrong + b">", b"</" + right + b">")
            # Only a rewritten body changes length (a HEAD answer keeps the object's).
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
            break
    if head.startswith(b"{") and b'"BlockIndex": "' in body:
        body = re.sub(rb'"BlockIndex": "(\d+)"', rb'"BlockIndex": \1', body)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
    start_response(seen["status"], headers)
    return [body]

port, flavor = int(sys.argv[1]), sys.argv[2]
if flavor == "single":
    run_simple("127.0.0.1", port, app, threaded=False)
elif flavor == "s3":
    run_simple("127.0.0.1", port, fixed, threaded=True)
elif flavor == "s3single":
    run_simple("127.0.0.1", port, fixed, threaded=False)
else:
    run_simple("127.0.0.1", port, app, threaded=True)
"#;

/// A running moto server.
pub struct Moto {
    child: Child,
    port: u16,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto on a free port and waits (at most 60 s) until it accepts connections.
    /// `None`, after a notice naming `what` would have been tested, when moto is not installed
    /// and `CI` is not set.
    pub fn start(flavor: Flavor, what: &str) -> Option<Moto> {
        if !installed() {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto is not installed and CI is set; install it with {INSTALL}"
            );
            // The real stderr: the harness swallows eprintln! of a passing test.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: {what} needs moto for python3 ({INSTALL}) ***\n"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port for moto: {e}"));
        let flavor = match flavor {
            Flavor::Threaded => "threaded",
            Flavor::SingleThreaded => "single",
            Flavor::S3RootsFixed => "s3",
            Flavor::S3RootsFixedSingleThreaded => "s3single",
        };
        let child = Command::new("python3")
            .args(["-c", SERVE, &port.to_string(), flavor])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto: {e}"));
        let mut moto = Moto {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let up = crate::poll::until(Duration::from_secs(60), Duration::from_millis(50), || {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited before listening: {status}");
            }
            TcpStream::connect(("127.0.0.1", moto.port)).ok()
        });
        assert!(
            up.is_some(),
            "moto did not listen on port {port} within 60 s"
        );
        Some(moto)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server, werkzeug.serving"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
