//! Test support: a moto S3 server, an S3 client that logs every request it sends, and disk
//! images made with qemu-img.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextMut,
    BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_sdk_s3::error::BoxError;
use aws_sdk_s3::Client;
use rand::{Rng, SeedableRng};

const INSTALL: &str = "pip install 'moto[server]>=5,<6'";

/// moto's own application behind a small WSGI filter. moto 5.2 serializes several S3 results
/// with an `<OperationResponse>` root where S3 (and so the Rust SDK, which checks the root)
/// uses the model's name (`CompleteMultipartUploadResult`, `ListPartsResult`, …); boto3 does not
/// check, so moto does not notice. The filter renames those roots and nothing else; with a moto
/// that gets them right it changes nothing.
const MOTO: &str = r#"
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

ROOTS = {
    b"CompleteMultipartUploadResponse": b"CompleteMultipartUploadResult",
    b"CreateMultipartUploadResponse": b"InitiateMultipartUploadResult",
    b"ListPartsResponse": b"ListPartsResult",
    b"ListMultipartUploadsResponse": b"ListMultipartUploadsResult",
    b"ListObjectsV2Response": b"ListBucketResult",
}
app = DomainDispatcherApplication(create_backend_app)

def fixed(environ, start_response):
    seen = {}
    def capture(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers
        return lambda data: None
    body = b"".join(app(environ, capture))
    head = body[:400]
    for wrong, right in ROOTS.items():
        if head.lstrip().startswith(b"<?xml") and ((b"<" + wrong + b" ") in head or (b"<" + wrong + b">") in head):
            body = body.replace(b"<" + wrong, b"<" + right, 1)
            body = body.replace(b"</" + wrong + b">", b"</" + right + b">")
            break
    headers = [(k, v) for k, v in seen["headers"] if k.lower() != "content-length"]
    headers.append(("Content-Length", str(len(body))))
    start_response(seen["status"], headers)
    return [body]

run_simple("127.0.0.1", int(sys.argv[1]), fixed, threaded=True)
"#;

/// A running moto server, killed when dropped (also when the test panics).
pub struct Moto {
    child: Child,
    pub endpoint: String,
    pub log: RequestLog,
}

/// Every request the client put on the wire: method, URI and body length.
#[derive(Clone, Debug, Default)]
pub struct RequestLog(Arc<Mutex<Vec<Request>>>);

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub body_len: u64,
}

impl Request {
    pub fn is_upload_part(&self) -> bool {
        self.method == "PUT" && self.uri.contains("partNumber=")
    }
}

impl RequestLog {
    pub fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = ctx.request();
        let body_len = req
            .headers()
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .or_else(|| req.body().content_length())
            .unwrap_or(0);
        self.0.lock().unwrap().push(Request {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            body_len,
        });
        Ok(())
    }
}

#[derive(Debug)]
struct BreakParts {
    broken: Vec<usize>,
    seen: Arc<Mutex<usize>>,
}

impl Intercept for BreakParts {
    fn name(&self) -> &'static str {
        "BreakParts"
    }

    fn modify_before_transmit(
        &self,
        ctx: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = ctx.request_mut();
        if req.method() == "PUT" && req.uri().contains("partNumber=") {
            let mut seen = self.seen.lock().unwrap();
            *seen += 1;
            if self.broken.contains(&*seen) {
                // Port 1 on loopback refuses connections.
                let uri = req.uri().replacen(
                    &req.uri()[..req.uri().find("/staging").unwrap()],
                    "http://127.0.0.1:1",
                    1,
                );
                req.set_uri(uri)?;
            }
        }
        Ok(())
    }
}

/// Replaces the first `count` CompleteMultipartUpload answers with what `tern serve` (s3s)
/// sends when assembling the object fails after it started answering, e.g. on a full disk: a
/// 200 whose body holds an error document after a second XML declaration, which the SDK
/// reads as an error it cannot parse.
#[derive(Debug)]
struct FailCompletes {
    count: usize,
    seen: Arc<Mutex<usize>>,
    complete_in_flight: Arc<Mutex<bool>>,
}

const COMPLETE_FAILED_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>   \
    <?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
    <Message>We encountered an internal error. Please try again.</Message></Error>";

impl Intercept for FailCompletes {
    fn name(&self) -> &'static str {
        "FailCompletes"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // The request is gone by the time the answer is read: note here what it was (the
        // Complete is the only call in flight when it is sent).
        let r = ctx.request();
        let complete = r.method() == "POST" && r.uri().contains("?uploadId=");
        *self.complete_in_flight.lock().unwrap() = complete;
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if !std::mem::take(&mut *self.complete_in_flight.lock().unwrap()) {
            return Ok(());
        }
        let mut seen = self.seen.lock().unwrap();
        *seen += 1;
        if *seen <= self.count {
            let res = ctx.response_mut();
            *res.status_mut() = 200u16.try_into()?;
            *res.body_mut() = aws_sdk_s3::primitives::SdkBody::from(COMPLETE_FAILED_BODY);
        }
        Ok(())
    }
}

impl Moto {
    /// Starts moto on a free port. `None` (after a loud notice) when moto is not installed and
    /// `CI` is not set; under CI a missing moto fails the test.
    pub fn start() -> Option<Moto> {
        let installed = Command::new("python3")
            .args(["-c", "import moto.server, werkzeug.serving"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto is not installed and CI is set; install it with {INSTALL}"
            );
            eprintln!(
                "\n\n*** SKIPPED: the replication tests need moto for python3 ({INSTALL}) ***\n\n"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-c", MOTO, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto: {e}"));
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log: RequestLog::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("moto exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "moto did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    pub fn client(&self) -> Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .interceptor(self.log.clone())
            .build();
        Client::from_conf(conf)
    }

    /// A client that sends the UploadPart attempts numbered in `broken` (1-based, counting
    /// every attempt) to a closed port: a real connection failure. The SDK's own retries are
    /// off, so only Tern's retry policy can recover.
    pub fn client_with_broken_parts(&self, broken: &[usize]) -> Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .retry_config(RetryConfig::disabled())
            .interceptor(BreakParts {
                broken: broken.to_vec(),
                seen: Arc::default(),
            })
            .interceptor(self.log.clone())
            .build();
        Client::from_conf(conf)
    }

    /// A client whose first `count` CompleteMultipartUpload calls fail like one on a full
    /// `tern serve` (see [`FailCompletes`]); the SDK's own retries are off.
    pub fn client_with_failing_completes(&self, count: usize) -> Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .retry_config(RetryConfig::disabled())
            .interceptor(FailCompletes {
                count,
                seen: Arc::default(),
                complete_in_flight: Arc::default(),
            })
            .interceptor(self.log.clone())
            .build();
        Client::from_conf(conf)
    }

    pub async fn bucket(&self, name: &str) -> Client {
        let c = self.client();
        c.create_bucket().bucket(name).send().await.unwrap();
        self.log.take();
        c
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn qemu_img(args: &[&str]) -> String {
    run(Command::new("qemu-img").args(args))
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub const BLOCK: u64 = 512 * 1024;

/// A raw image of `size` bytes: random data in scattered runs (some block-aligned, some not),
/// a run of text, and holes everywhere else.
pub fn make_raw(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size as usize];
    let mut at = 0u64;
    while at < size {
        let len = rng.random_range(64 * 1024..3 * BLOCK).min(size - at);
        if rng.random_bool(0.45) {
            rng.fill(&mut data[at as usize..(at + len) as usize]);
        }
        at += len + rng.random_range(0..2 * BLOCK);
    }
    let text = b"Tern replicates this text block. ".repeat(4096);
    let t = (size / 3) as usize;
    let n = text.len().min(data.len() - t);
    data[t..t + n].copy_from_slice(&text[..n]);
    std::fs::write(path, &data).unwrap();
    data
}

/// Overwrites `blocks` (block indexes) with fresh random bytes and `zeroed` with zeros.
pub fn change_blocks(data: &mut [u8], blocks: &[u64], zeroed: &[u64], seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for b in blocks {
        let s = (b * BLOCK) as usize;
        rng.fill(&mut data[s..s + BLOCK as usize]);
    }
    for b in zeroed {
        let s = (b * BLOCK) as usize;
        data[s..s + BLOCK as usize].fill(0);
    }
}

/// Converts a raw image to another format with qemu-img.
pub fn convert(raw: &Path, out: &Path, fmt: &str, opts: &[&str]) {
    let mut args = vec!["convert", "-f", "raw", "-O", fmt];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[p(raw), p(out)]);
    qemu_img(&args);
}

pub async fn get(s3: &Client, bucket: &str, key: &str) -> Vec<u8> {
    s3.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetObject {key}: {e:?}"))
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
        .to_vec()
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}
