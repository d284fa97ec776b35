//! S3 calls with Tern's own retry policy, the bandwidth limiter, and the resumable multipart
//! upload of one object from a stream of parts.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::state::{JobState, PartRecord, UploadRecord};
use super::stream::Part;
use super::{ReplicateError, RetryPolicy};

/// Error codes that no retry can fix: credentials, permissions, malformed requests.
const PERMANENT_CODES: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidArgument",
    "InvalidRequest",
    "InvalidBucketName",
    "NoSuchBucket",
    "NoSuchUpload",
    "InvalidPart",
    "InvalidPartOrder",
    "EntityTooSmall",
    "EntityTooLarge",
    "MalformedXML",
    "InvalidDigest",
    "BadDigest",
    "KeyTooLongError",
    "AccountProblem",
    "ValidationError",
];

/// Error codes that are retried even though they come with a 4xx status.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
];

/// Turns an SDK error into ours, deciding whether it is worth retrying: connection failures,
/// timeouts, throttling and 5xx are; access and validation errors are not.
pub fn s3_error<E>(operation: &'static str, e: SdkError<E>) -> ReplicateError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (code, retryable) = match &e {
        SdkError::ConstructionFailure(_) => (None, false),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (None, true)
        }
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().map(str::to_string);
            let status = ctx.raw().status().as_u16();
            let retryable = match code.as_deref() {
                Some(c) if PERMANENT_CODES.contains(&c) => false,
                Some(c) if TRANSIENT_CODES.contains(&c) => true,
                // An error document in a 200 answer: S3 (and `tern serve`) send one when a
                // CompleteMultipartUpload fails after the answer started (an internal error, a
                // full disk while assembling), and S3 says to retry it. Its body may not even
                // parse (no code) when the server wrote it badly.
                _ => status >= 500 || status == 429 || status == 408 || status == 200,
            };
            (code, retryable)
        }
        _ => (None, true),
    };
    ReplicateError::S3 {
        operation,
        code,
        retryable,
        message: DisplayErrorContext(&e).to_string(),
    }
}

/// Calls `f` until it succeeds, fails permanently, or the attempts run out, sleeping with
/// exponential backoff and full jitter between attempts.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    operation: &'static str,
    mut f: F,
) -> Result<T, ReplicateError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ReplicateError>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                let cap = policy
                    .base_delay
                    .saturating_mul(1u32 << (attempt - 1).min(20))
                    .min(policy.max_delay);
                let delay = cap.mul_f64(rand::random::<f64>());
                tracing::warn!(operation, attempt, ?delay, error = %e, "S3 call failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A token bucket around part uploads: sending `n` bytes costs `n` tokens, refilled at `rate`
/// bytes per second, holding at most one second's worth. A part bigger than the bucket waits
/// until the bucket is full and leaves it in debt, so the average rate never exceeds `rate`.
#[derive(Debug)]
pub struct Limiter {
    rate: Option<u64>,
    tokens: f64,
    at: Instant,
}

impl Limiter {
    pub fn new(rate: Option<u64>) -> Limiter {
        let rate = rate.filter(|r| *r > 0);
        Limiter {
            rate,
            tokens: rate.unwrap_or(0) as f64,
            at: Instant::now(),
        }
    }

    /// How long to wait at `now` before sending `n` bytes; the tokens are taken.
    pub fn reserve(&mut self, now: Instant, n: u64) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let rate = rate as f64;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
        // Start as soon as the bucket holds min(n, capacity); the rest is debt.
        let need = (n as f64).min(rate);
        let wait = if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / rate)
        };
        self.tokens -= n as f64;
        wait
    }

    /// Waits until `n` bytes may be sent. The lock is held only to take the tokens, never
    /// across the sleep.
    pub async fn acquire(limiter: &std::sync::Mutex<Limiter>, n: u64) {
        let wait = limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(Instant::now(), n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Where an object goes and how to record it.
pub struct Target<'a> {
    pub s3: &'a Client,
    pub bucket: &'a str,
    pub state: &'a JobState,
    pub run_id: &'a str,
    pub disk: usize,
    pub retry: &'a RetryPolicy,
}

/// What happened to the parts of one object in this invocation.
#[derive(Debug, Default, Clone, Copy)]
pub struct PartCounts {
    pub sent: u64,
    pub skipped: u64,
    pub bytes_sent: u64,
    pub bytes_skipped: u64,
}

/// Called after each part is sent or skipped: (bytes of this object done, virtual bytes done).
pub type PartProgress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// Starts a new multipart upload and records it.
pub async fn create(
    t: &Target<'_>,
    key: &str,
    kind: super::manifest::ObjectKind,
    part_size: u64,
) -> Result<UploadRecord, ReplicateError> {
    let out = retry(t.retry, "CreateMultipartUpload", || async {
        t.s3.create_multipart_upload()
            .bucket(t.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", e))
    })
    .await?;
    let upload_id = out.upload_id().ok_or_else(|| ReplicateError::S3 {
        operation: "CreateMultipartUpload",
        code: None,
        retryable: false,
        message: "the response has no UploadId".into(),
    })?;
    let rec = UploadRecord {
        key: key.to_string(),
        kind,
        upload_id: upload_id.to_string(),
        part_size,
        parts: Vec::new(),
        bytes_sent: 0,
        completed: None,
    };
    t.state.save_upload(t.run_id, t.disk, &rec)?;
    Ok(rec)
}

/// Keeps only the recorded parts that S3 still has with the same ETag and size. `Ok(false)`
/// when the upload itself is gone (aborted, expired by a lifecycle rule): start a new one.
pub async fn reconcile(t: &Target<'_>, rec: &mut UploadRecord) -> Result<bool, ReplicateError> {
    let mut listed = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = retry(t.retry, "ListParts", || async {
            t.s3.list_parts()
                .bucket(t.bucket)
                .key(&rec.key)
                .upload_id(&rec.upload_id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .map_err(|e| s3_error("ListParts", e))
        })
        .await;
        let page = match page {
            Ok(p) => p,
            Err(ReplicateError::S3 { code: Some(c), .. }) if c == "NoSuchUpload" => {
                return Ok(false)
            }
            Err(e) => return Err(e),
        };
        for p in page.parts() {
            listed.push((p.part_number(), p.e_tag().map(str::to_string), p.size()));
        }
        match page.next_part_number_marker() {
            Some(m) if page.is_truncated() == Some(true) => marker = Some(m.to_string()),
            _ => break,
        }
    }
    let before = rec.parts.len();
    rec.parts.retain(|r| {
        listed.iter().any(|(n, etag, size)| {
            *n == Some(r.number)
                && etag.as_deref().map(unquote) == Some(unquote(&r.etag))
                && *size == Some(r.size as i64)
        })
    });
    if rec.parts.len() != before {
        tracing::warn!(
            key = %rec.key,
            dropped = before - rec.parts.len(),
            "recorded parts missing from S3 will be sent again"
        );
        t.state.save_upload(t.run_id, t.disk, rec)?;
    }
    Ok(true)
}

fn unquote(s: &str) -> &str {
    s.trim_matches('"')
}

/// The stream regenerated on resume differs from what was uploaded before: the source disk
/// changed, so the upload must start over.
#[derive(Debug)]
pub struct StreamChanged {
    pub part: i32,
}

/// Sends the parts arriving on `rx`, skipping those already recorded (after checking that the
/// regenerated bytes are the same), recording each part sent. Stops early with
/// [`ReplicateError::Interrupted`] after `fail_after` parts sent in this invocation.
#[allow(clippy::too_many_arguments)]
pub async fn send_parts(
    t: &Target<'_>,
    rec: &mut UploadRecord,
    rx: &mut mpsc::Receiver<Part>,
    limiter: &std::sync::Mutex<Limiter>,
    fail_after: Option<u64>,
    counts: &mut PartCounts,
    progress: PartProgress<'_>,
) -> Result<Result<(), StreamChanged>, ReplicateError> {
    let mut number: i32 = 0;
    let mut done: u64 = 0;
    while let Some(part) = rx.recv().await {
        number += 1;
        let len = part.bytes.len() as u64;
        // Hashing 25 MiB takes tens of milliseconds: not on the async threads.
        let (bytes, sha, md5) = tokio::task::spawn_blocking(move || {
            let sha = hex::encode(Sha256::digest(&part.bytes));
            let md5 = <[u8; 16]>::from(Md5::digest(&part.bytes));
            (part.bytes, sha, md5)
        })
        .await
        .map_err(|e| ReplicateError::Internal(format!("hashing a part: {e}")))?;
        let virtual_done = part.virtual_done;
        if let Some(r) = rec.part(number) {
            if r.size != len || r.sha256 != sha {
                return Ok(Err(StreamChanged { part: number }));
            }
            counts.skipped += 1;
            counts.bytes_skipped += len;
            done += len;
            progress(done, virtual_done);
            continue;
        }
        if fail_after.is_some_and(|n| counts.sent >= n) {
            return Err(ReplicateError::Interrupted {
                parts_sent: counts.sent,
            });
        }
        let body = bytes::Bytes::from(bytes);
        let md5_b64 = base64::engine::general_purpose::STANDARD.encode(md5);
        let mut attempts_bytes = 0u64;
        let (key, upload_id) = (rec.key.as_str(), rec.upload_id.as_str());
        let etag = retry(t.retry, "UploadPart", || {
            let body = body.clone();
            let md5_b64 = md5_b64.clone();
            attempts_bytes += len;
            async move {
                Limiter::acquire(limiter, len).await;
                t.s3.upload_part()
                    .bucket(t.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_md5(md5_b64)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| s3_error("UploadPart", e))
            }
        })
        .await?
        .e_tag()
        .map(str::to_string)
        .ok_or_else(|| ReplicateError::S3 {
            operation: "UploadPart",
            code: None,
            retryable: false,
            message: format!("part {number} of {}: the response has no ETag", rec.key),
        })?;
        // Without SSE-KMS the ETag of a part is the MD5 of its bytes: a free end-to-end check.
        let plain = unquote(&etag);
        if plain.len() == 32
            && plain.bytes().all(|b| b.is_ascii_hexdigit())
            && !plain.eq_ignore_ascii_case(&hex::encode(md5))
        {
            return Err(ReplicateError::S3 {
                operation: "UploadPart",
                code: Some("BadDigest".into()),
                retryable: false,
                message: format!(
                    "part {number} of {}: S3 reports ETag {plain}, the bytes sent have MD5 {}",
                    rec.key,
                    hex::encode(md5)
                ),
            });
        }
        rec.parts.push(PartRecord {
            number,
            etag,
            size: len,
            sha256: sha,
        });
        rec.bytes_sent += attempts_bytes;
        t.state.save_upload(t.run_id, t.disk, rec)?;
        counts.sent += 1;
        counts.bytes_sent += len;
        done += len;
        progress(done, virtual_done);
    }
    Ok(Ok(()))
}

/// Completes the upload with the recorded parts. A completion whose response was lost leaves
/// no upload to complete; then the object itself is checked instead.
pub async fn complete(
    t: &Target<'_>,
    rec: &UploadRecord,
    object_size: u64,
) -> Result<(), ReplicateError> {
    let mut parts = rec.parts.clone();
    parts.sort_by_key(|p| p.number);
    let completed = CompletedMultipartUpload::builder()
        .set_parts(Some(
            parts
                .iter()
                .map(|p| {
                    CompletedPart::builder()
                        .part_number(p.number)
                        .e_tag(&p.etag)
                        .build()
                })
                .collect(),
        ))
        .build();
    let r = retry(t.retry, "CompleteMultipartUpload", || async {
        t.s3.complete_multipart_upload()
            .bucket(t.bucket)
            .key(&rec.key)
            .upload_id(&rec.upload_id)
            .multipart_upload(completed.clone())
            .send()
            .await
            .map_err(|e| s3_error("CompleteMultipartUpload", e))
    })
    .await;
    match r {
        Ok(_) => Ok(()),
        Err(ReplicateError::S3 { code: Some(c), .. }) if c == "NoSuchUpload" => {
            let head = retry(t.retry, "HeadObject", || async {
                t.s3.head_object()
                    .bucket(t.bucket)
                    .key(&rec.key)
                    .send()
                    .await
                    .map_err(|e| s3_error("HeadObject", e))
            })
            .await?;
            if head.content_length() == Some(object_size as i64) {
                Ok(())
            } else {
                Err(ReplicateError::S3 {
                    operation: "CompleteMultipartUpload",
                    code: Some("NoSuchUpload".into()),
                    retryable: false,
                    message: format!(
                        "the upload of {} is gone and the object is not there",
                        rec.key
                    ),
                })
            }
        }
        Err(e) => Err(e),
    }
}

/// Aborts an upload we give up on, so its parts stop costing storage. Failures are logged,
/// not returned: a lifecycle rule removes whatever remains.
pub async fn abort(t: &Target<'_>, rec: &UploadRecord) {
    let r = retry(t.retry, "AbortMultipartUpload", || async {
        t.s3.abort_multipart_upload()
            .bucket(t.bucket)
            .key(&rec.key)
            .upload_id(&rec.upload_id)
            .send()
            .await
            .map_err(|e| s3_error("AbortMultipartUpload", e))
    })
    .await;
    if let Err(e) = r {
        tracing::warn!(key = %rec.key, error = %e, "could not abort the multipart upload");
    }
}

/// Writes a small object in one PutObject (the manifest).
pub async fn put(t: &Target<'_>, key: &str, body: Vec<u8>) -> Result<(), ReplicateError> {
    let body = bytes::Bytes::from(body);
    retry(t.retry, "PutObject", || async {
        t.s3.put_object()
            .bucket(t.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", e))
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_keeps_the_average_rate() {
        let start = Instant::now();
        let mut l = Limiter::new(Some(1000));
        // A full bucket lets the first 1000 bytes go at once.
        assert_eq!(l.reserve(start, 1000), Duration::ZERO);
        // The bucket is empty: 500 more bytes wait half a second.
        let w = l.reserve(start, 500);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
        // A part four times the bucket goes with a full bucket and leaves a debt of 3000: one
        // second later 2000 are still owed, so the next byte waits 2.001 s.
        let mut l = Limiter::new(Some(1000));
        let start = Instant::now();
        assert_eq!(l.reserve(start, 4000), Duration::ZERO);
        let w = l.reserve(start + Duration::from_secs(1), 1);
        assert!((w.as_secs_f64() - 2.001).abs() < 1e-3, "{w:?}");
        // Without a rate nothing waits.
        let mut l = Limiter::new(None);
        assert_eq!(l.reserve(start, u64::MAX), Duration::ZERO);
    }

    #[test]
    fn retry_gives_up_on_permanent_errors_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let policy = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let err = |retryable| ReplicateError::S3 {
            operation: "UploadPart",
            code: Some(
                if retryable {
                    "SlowDown"
                } else {
                    "AccessDenied"
                }
                .into(),
            ),
            retryable,
            message: String::new(),
        };
        let mut calls = 0;
        let r: Result<(), _> = rt.block_on(retry(&policy, "UploadPart", || {
            calls += 1;
            let e = err(true);
            async move { Err(e) }
        }));
        assert!(r.is_err());
        assert_eq!(calls, 4, "transient errors are retried up to max_attempts");
        let mut calls = 0;
        let r: Result<(), _> = rt.block_on(retry(&policy, "UploadPart", || {
            calls += 1;
            let e = err(false);
            async move { Err(e) }
        }));
        assert!(r.is_err());
        assert_eq!(calls, 1, "AccessDenied is not retried");
        let mut calls = 0;
        let r = rt.block_on(retry(&policy, "UploadPart", || {
            calls += 1;
            let ok = calls == 3;
            let e = err(true);
            async move {
                if ok {
                    Ok(7)
                } else {
                    Err(e)
                }
            }
        }));
        assert_eq!(r.expect("third attempt succeeds"), 7);
    }
}
