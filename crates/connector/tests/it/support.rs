//! Test support: moto's S3 with clients that log every request they send, and (from
//! `tern-test-support`) disk images made with qemu-img.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
use tern_test_support::moto::Flavor;

/// moto's S3, and the log of what this test's clients sent it.
pub struct Moto {
    _server: tern_test_support::moto::Moto,
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
        let server =
            tern_test_support::moto::Moto::start(Flavor::S3RootsFixed, "the replication tests")?;
        Some(Moto {
            endpoint: server.endpoint.clone(),
            _server: server,
            log: RequestLog::default(),
        })
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

pub use tern_test_support::qemu::{change_blocks, convert, make_raw, p, qemu_img, BLOCK};

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
