//! Sending one event to one target, with retries and the dead letter at the end.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

use super::rules::{RetryPolicy, Target, TargetKind};
use super::{Accepted, NdjsonFile};

/// Attempts in flight per target. Deliveries are independent tasks; without a bound, a burst
/// of events would open as many connections or processes at once.
pub const MAX_CONCURRENT_ATTEMPTS: usize = 8;

/// A target ready to send to.
pub(super) struct TargetRuntime {
    /// `webhook http://…`, `file /path`, `command prog`: for logs and dead letters.
    label: String,
    /// 1-based position in its rule.
    index: usize,
    kind: Kind,
    retry: RetryPolicy,
    permits: tokio::sync::Semaphore,
}

enum Kind {
    Webhook {
        url: reqwest::Url,
        headers: reqwest::header::HeaderMap,
        timeout: Duration,
    },
    File(Arc<NdjsonFile>),
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
}

impl TargetRuntime {
    pub(super) fn new(
        index: usize,
        target: &Target,
        files: &mut impl FnMut(&Path) -> Arc<NdjsonFile>,
    ) -> Self {
        let (label, kind) = match &target.kind {
            TargetKind::Webhook {
                url,
                headers,
                timeout,
            } => {
                let mut map = reqwest::header::HeaderMap::new();
                for (name, value) in headers {
                    map.append(name.clone(), value.clone());
                }
                (
                    // Without the query: it may carry a token.
                    format!(
                        "webhook {}{}",
                        url.origin().ascii_serialization(),
                        url.path()
                    ),
                    Kind::Webhook {
                        url: url.clone(),
                        headers: map,
                        timeout: *timeout,
                    },
                )
            }
            TargetKind::File { path } => {
                (format!("file {}", path.display()), Kind::File(files(path)))
            }
            TargetKind::Command { argv, timeout } => (
                format!("command {}", argv.first().map_or("", String::as_str)),
                Kind::Command {
                    argv: argv.clone(),
                    timeout: *timeout,
                },
            ),
        };
        Self {
            label,
            index,
            kind,
            retry: target.retry,
            permits: tokio::sync::Semaphore::new(MAX_CONCURRENT_ATTEMPTS),
        }
    }
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum DeliveryError {
    #[error("HTTP {status}")]
    Status { status: reqwest::StatusCode },
    #[error("request failed: {0}")]
    Http(#[source] reqwest::Error),
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("command exited with {status}: {stderr}")]
    Exit {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl DeliveryError {
    /// A 4xx other than 408/429 means the receiver refuses this event; asking again will not
    /// change its mind, so the event goes straight to the dead letter.
    fn is_retryable(&self) -> bool {
        match self {
            DeliveryError::Status { status } => {
                !status.is_client_error()
                    || *status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            _ => true,
        }
    }
}

pub(super) struct Delivery {
    pub(super) rule: String,
    pub(super) target: Arc<TargetRuntime>,
    pub(super) event: Arc<Accepted>,
    pub(super) http: reqwest::Client,
    pub(super) dead_letter: Arc<NdjsonFile>,
}

impl Delivery {
    #[tracing::instrument(name = "bus.deliver", skip_all,
        fields(rule = %self.rule, target = %self.target.label, event_id = %self.event.event.id))]
    pub(super) async fn run(self) {
        let policy = self.target.retry;
        let mut attempt = 0;
        let error = loop {
            attempt += 1;
            match self.attempt().await {
                Ok(()) => {
                    tracing::debug!(attempt, "delivered");
                    return;
                }
                Err(err) if attempt < policy.max_attempts && err.is_retryable() => {
                    let pause = policy.delay_after(attempt);
                    tracing::warn!(attempt, error = %err, retry_in = ?pause, "delivery failed");
                    tokio::time::sleep(pause).await;
                }
                Err(err) => break err,
            }
        };
        tracing::error!(attempt, error = %error, "delivery abandoned; writing a dead letter");
        let record = json!({
            "rule": self.rule,
            "target": self.target.label,
            "target_index": self.target.index,
            "attempts": attempt,
            "error": error.to_string(),
            "failed_at": OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
            "event": self.event.json,
        });
        if let Err(err) = self.dead_letter.append(&[&record.to_string()]).await {
            tracing::error!(path = %self.dead_letter.path.display(), error = %err,
                "cannot write the dead letter; the event is lost");
        }
    }

    async fn attempt(&self) -> Result<(), DeliveryError> {
        // Held for the attempt only, not across the backoff pause. The semaphore is never
        // closed, so acquiring cannot fail; were it to, attempting anyway is the safe side.
        let _permit = self.target.permits.acquire().await.ok();
        let body = &self.event.text;
        match &self.target.kind {
            Kind::Webhook {
                url,
                headers,
                timeout,
            } => {
                let response = self
                    .http
                    .post(url.clone())
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .timeout(*timeout)
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(DeliveryError::Http)?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(DeliveryError::Status { status })
                }
            }
            Kind::File(file) => file.append(&[body]).await.map_err(DeliveryError::Io),
            Kind::Command { argv, timeout } => run_command(argv, body, *timeout).await,
        }
    }
}

async fn run_command(argv: &[String], input: &str, timeout: Duration) -> Result<(), DeliveryError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| DeliveryError::Io(std::io::ErrorKind::InvalidInput.into()))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(DeliveryError::Io)?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A command may exit without reading its input; its exit status decides.
            match stdin.write_all(input.as_bytes()).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(DeliveryError::Io(e))
                }
                _ => {}
            }
        }
        child.wait_with_output().await.map_err(DeliveryError::Io)
    };
    let output = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| DeliveryError::Timeout(timeout))??;
    if output.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.len() > 512 {
        let mut cut = 512;
        while !stderr.is_char_boundary(cut) {
            cut -= 1;
        }
        stderr.truncate(cut);
        stderr.push('…');
    }
    Err(DeliveryError::Exit {
        status: output.status,
        stderr,
    })
}
