//! Sending one event to one target: one attempt, and whether another could succeed.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::rules::{RetryPolicy, Target, TargetKind};
use super::NdjsonFile;

/// Attempts in flight per target. Deliveries are independent tasks; without a bound, a burst
/// of events would open as many connections or processes at once.
pub const MAX_CONCURRENT_ATTEMPTS: usize = 8;

/// A target ready to send to.
pub(super) struct TargetRuntime {
    /// `webhook http://…`, `file /path`, `command prog`: for logs and dead letters.
    pub(super) label: String,
    /// 1-based position in its rule.
    pub(super) index: usize,
    kind: Kind,
    pub(super) retry: RetryPolicy,
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
    /// A delivery recorded before a restart whose rule or target the rules file no longer has.
    #[error("rule '{rule}' has no target {index} any more")]
    Unconfigured { rule: String, index: usize },
}

impl DeliveryError {
    /// A 4xx other than 408/429 means the receiver refuses this event; asking again will not
    /// change its mind, so the event goes straight to the dead letter.
    pub(super) fn is_retryable(&self) -> bool {
        match self {
            DeliveryError::Status { status } => {
                !status.is_client_error()
                    || *status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            DeliveryError::Unconfigured { .. } => false,
            _ => true,
        }
    }
}

/// One attempt to hand `body` (the serialized event) to `target`. Retries, backoff and the
/// dead letter are the worker's: it keeps their state in the durable queue.
pub(super) async fn attempt(
    target: &TargetRuntime,
    http: &reqwest::Client,
    body: &str,
) -> Result<(), DeliveryError> {
    // Held for the attempt only, not across the backoff pause. The semaphore is never
    // closed, so acquiring cannot fail; were it to, attempting anyway is the safe side.
    let _permit = target.permits.acquire().await.ok();
    match &target.kind {
        Kind::Webhook {
            url,
            headers,
            timeout,
        } => {
            let response = http
                .post(url.clone())
                .headers(headers.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(*timeout)
                .body(body.to_owned())
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
