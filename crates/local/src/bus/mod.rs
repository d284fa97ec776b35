//! The in-process event bus: EventBridge rules and targets on one machine.
//!
//! [`LocalBus::publish`] checks each event the way `PutEvents` does, appends the accepted ones
//! to the archive (when configured), records one delivery per matching rule target in the
//! durable queue (`bus.db` beside the data, one transaction per batch), hands the events to
//! in-process subscribers, and only then reports them accepted. A worker task takes due
//! deliveries from the queue, retries failures with exponential backoff (the attempt count and
//! the next-attempt time live in the queue row), and ends each one delivered or in the
//! dead-letter file: at least once, across crashes and restarts, never silently dropped.
//! Deliveries left by an earlier process resume when the bus opens.
//!
//! Tests step the bus instead of sleeping: [`LocalBus::flush`] waits until the queue is
//! empty, and with a manual clock ([`LocalBus::with_clock`]) [`LocalBus::deliver_due`] runs
//! what is due, after which the test moves the clock past the backoff.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use tern_local::bus::{BusConfig, LocalBus};
//! let data_dir = Path::new("./tern-data");
//! let bus = LocalBus::new(BusConfig::load(&data_dir.join("rules.toml"), data_dir)?)?;
//! let mut events = bus.subscribe();
//! // hand `std::sync::Arc::new(bus)` to the service as its `Arc<dyn EventBus>`
//! # Ok(()) }
//! ```

mod deliver;
mod queue;
mod rules;
mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tern_core::events::{BusError, Event, EventBus, FailedEntry, PublishOutcome};
use tern_core::{Clock, SystemClock};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, Mutex};

pub use deliver::MAX_CONCURRENT_ATTEMPTS;
pub use queue::QueueError;
pub use rules::{
    BusConfig, RetryPolicy, Rule, RuleProblem, RulesError, Target, TargetKind, TargetProblem,
    DEFAULT_DEAD_LETTER, DEFAULT_QUEUE,
};

/// EventBridge refuses entries over 256 KiB; so does the local bus, so that what works here
/// works there.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// The bus could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BusSetupError {
    #[error("cannot build the HTTP client for webhook targets: {0}")]
    Http(#[source] reqwest::Error),
    #[error("cannot open the delivery queue: {0}")]
    Queue(#[from] QueueError),
}

/// The in-process [`EventBus`]. Cheap to clone: clones share rules, the queue and files. When
/// the last clone is dropped the delivery worker stops; what it had not finished stays queued
/// for the next bus opened on the same queue file.
#[derive(Clone)]
pub struct LocalBus {
    shared: Arc<Shared>,
}

struct Shared {
    rules: Vec<RuleRuntime>,
    archive: Option<Arc<NdjsonFile>>,
    subscribers: broadcast::Sender<Event>,
    core: Arc<worker::Core>,
    worker: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(worker) = self
            .worker
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            worker.abort();
        }
    }
}

struct RuleRuntime {
    rule: Rule,
    targets: Vec<Arc<deliver::TargetRuntime>>,
}

impl LocalBus {
    /// Builds the bus on the wall clock and opens its delivery queue. Inside a tokio runtime
    /// the worker starts at once, resuming deliveries an earlier process left; otherwise it
    /// starts with the first publish or flush.
    pub fn new(config: BusConfig) -> Result<Self, BusSetupError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// As [`LocalBus::new`], with retry times taken from `clock`.
    pub fn with_clock(config: BusConfig, clock: Arc<dyn Clock>) -> Result<Self, BusSetupError> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(BusSetupError::Http)?;
        // One writer per path, so that targets and files sharing a path never interleave lines.
        let mut files: HashMap<PathBuf, Arc<NdjsonFile>> = HashMap::new();
        let mut file = |path: &Path| {
            files
                .entry(path.to_owned())
                .or_insert_with(|| Arc::new(NdjsonFile::new(path.to_owned())))
                .clone()
        };
        let archive = config.archive.as_deref().map(&mut file);
        let dead_letter = file(&config.dead_letter);
        let rules: Vec<RuleRuntime> = config
            .rules
            .into_iter()
            .map(|rule| {
                let targets = rule
                    .targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Arc::new(deliver::TargetRuntime::new(i + 1, t, &mut file)))
                    .collect();
                RuleRuntime { rule, targets }
            })
            .collect();
        let targets = rules
            .iter()
            .flat_map(|r| {
                r.targets
                    .iter()
                    .map(|t| ((r.rule.name.clone(), t.index), t.clone()))
            })
            .collect();
        let queue = queue::Queue::open(&config.queue)?;
        let pending = queue.len()?;
        let (subscribers, _) = broadcast::channel(config.subscriber_capacity.max(1));
        let bus = Self {
            shared: Arc::new(Shared {
                rules,
                archive,
                subscribers,
                core: Arc::new(worker::Core::new(
                    targets,
                    queue,
                    dead_letter,
                    http,
                    clock,
                    pending,
                )),
                worker: std::sync::Mutex::new(None),
            }),
        };
        bus.ensure_worker();
        Ok(bus)
    }

    /// Starts the worker unless it runs already or there is no runtime to run it on.
    fn ensure_worker(&self) {
        let mut worker = self.shared.worker.lock().unwrap_or_else(|p| p.into_inner());
        if worker.is_none() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let core = self.shared.core.clone();
                *worker = Some(runtime.spawn(worker::run(core)).abort_handle());
            }
        }
    }

    /// Every accepted event, in publish order. A receiver that falls more than
    /// `subscriber_capacity` events behind gets `RecvError::Lagged` and skips ahead.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.subscribers.subscribe()
    }

    /// Waits until the queue is empty: every delivery recorded so far delivered or
    /// dead-lettered, retries included. Backoff pauses pass on the bus clock, so with a clock
    /// that only moves when told, use [`LocalBus::deliver_due`] and move the clock instead.
    pub async fn flush(&self) {
        self.ensure_worker();
        self.shared.core.wake();
        let mut status = self.shared.core.status.subscribe();
        // The sender lives in `shared`, which `self` keeps alive, so this cannot fail.
        let _ = status.wait_for(|s| s.pending == 0).await;
    }

    /// Attempts every delivery due by the bus clock, and waits until those attempts are
    /// finished and nothing more is due; deliveries waiting out a backoff stay queued.
    pub async fn deliver_due(&self) {
        self.ensure_worker();
        let wake = self.shared.core.wake();
        let mut status = self.shared.core.status.subscribe();
        let _ = status.wait_for(|s| s.idle_after >= wake).await;
    }

    /// Stops delivering, for a shutdown: attempts what is due now (for at most `grace`), then
    /// stops the worker. Deliveries waiting out a backoff, or still running when `grace` ends,
    /// stay in the queue file and resume with the next bus opened on it, so a target that is
    /// down holds a shutdown for `grace` at most, not for its whole retry schedule. A delivery
    /// cut off midway is made again then: consumers de-duplicate by event id.
    pub async fn stop(&self, grace: Duration) {
        if tokio::time::timeout(grace, self.deliver_due())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                pending = self.pending(),
                "deliveries still running at shutdown; they stay queued"
            );
        }
        let worker = self
            .shared
            .worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(worker) = worker {
            worker.abort();
        }
    }

    /// Deliveries queued and not yet finished.
    pub fn pending(&self) -> usize {
        self.shared.core.status.borrow().pending
    }

    /// Attempts made so far for the delivery of `event_id` to target `target` (1-based) of
    /// `rule`; `None` when it is not queued (never matched, delivered or dead-lettered).
    pub fn queued_attempts(
        &self,
        event_id: &str,
        rule: &str,
        target: usize,
    ) -> Result<Option<u32>, QueueError> {
        self.shared.core.queue.attempts(&queue::Key {
            event_id: event_id.to_owned(),
            rule: rule.to_owned(),
            target,
        })
    }

    pub fn dead_letter_path(&self) -> &Path {
        &self.shared.core.dead_letter.path
    }

    pub fn archive_path(&self) -> Option<&Path> {
        self.shared.archive.as_deref().map(|f| f.path.as_path())
    }

    /// The SQLite file of the delivery queue.
    pub fn queue_path(&self) -> &Path {
        self.shared.core.queue.path()
    }
}

/// An event that passed the entry checks, with the forms deliveries need.
struct Accepted {
    event: Event,
    json: Value,
    /// The serialized event: the webhook body, the stdin of commands, one NDJSON line.
    text: String,
}

/// Checks one entry as `PutEvents` does; `Err` is (error code, message).
fn accept(event: &Event) -> Result<Accepted, (&'static str, String)> {
    if event.source.trim().is_empty() {
        return Err(("InvalidArgument", "source is required".to_owned()));
    }
    if event.detail_type.trim().is_empty() {
        return Err(("InvalidArgument", "detail-type is required".to_owned()));
    }
    if !event.detail.is_object() {
        return Err(("MalformedDetail", "detail must be a JSON object".to_owned()));
    }
    let text = serde_json::to_string(event).map_err(|e| {
        (
            "InvalidArgument",
            format!("event cannot be serialized: {e}"),
        )
    })?;
    if text.len() > MAX_ENTRY_BYTES {
        return Err((
            "InvalidArgument",
            format!(
                "event is {} bytes, more than the {MAX_ENTRY_BYTES} allowed",
                text.len()
            ),
        ));
    }
    let json = serde_json::to_value(event).map_err(|e| {
        (
            "InvalidArgument",
            format!("event cannot be serialized: {e}"),
        )
    })?;
    Ok(Accepted {
        event: event.clone(),
        json,
        text,
    })
}

#[async_trait]
impl EventBus for LocalBus {
    #[tracing::instrument(name = "bus.publish", skip_all, fields(count = events.len()))]
    async fn publish(&self, events: &[Event]) -> Result<PublishOutcome, BusError> {
        let mut outcome = PublishOutcome::all_accepted();
        let mut accepted = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            match accept(event) {
                Ok(a) => accepted.push(Arc::new(a)),
                Err((code, message)) => outcome.failed.push(FailedEntry {
                    index,
                    error_code: code.to_owned(),
                    error_message: message,
                }),
            }
        }
        // The archive is the record of what was accepted: nothing is delivered that it misses.
        if let Some(archive) = &self.shared.archive {
            let lines: Vec<&str> = accepted.iter().map(|a| a.text.as_str()).collect();
            archive
                .append(&lines)
                .await
                .map_err(|e| BusError::Transient {
                    message: format!("cannot append to the archive {}", archive.path.display()),
                    source: Some(Box::new(e)),
                })?;
        }
        let mut deliveries = Vec::new();
        for event in &accepted {
            for rule in self.shared.rules.iter().filter(|r| r.rule.enabled) {
                if rule.rule.pattern.matches(&event.json) {
                    for target in &rule.targets {
                        deliveries.push((event.clone(), rule.rule.name.clone(), target.index));
                    }
                }
            }
        }
        if !deliveries.is_empty() {
            self.record(deliveries).await?;
        }
        for event in &accepted {
            // No subscriber is not an error: subscribing is optional.
            let _ = self.shared.subscribers.send(event.event.clone());
        }
        Ok(outcome)
    }
}

impl LocalBus {
    /// Makes the deliveries durable; the entries count as accepted only once this returns.
    async fn record(
        &self,
        deliveries: Vec<(Arc<Accepted>, String, usize)>,
    ) -> Result<(), BusError> {
        self.ensure_worker();
        let core = self.shared.core.clone();
        let recorded = tokio::task::spawn_blocking(move || {
            let rows: Vec<queue::NewDelivery<'_>> = deliveries
                .iter()
                .map(|(event, rule, target)| queue::NewDelivery {
                    key: queue::Key {
                        event_id: event.event.id.clone(),
                        rule: rule.clone(),
                        target: *target,
                    },
                    event: &event.text,
                })
                .collect();
            core.queue.record(&rows, core.now_ms())
        })
        .await;
        let pending = match recorded {
            Ok(Ok(pending)) => pending,
            Ok(Err(err)) => {
                return Err(BusError::Transient {
                    message: format!(
                        "cannot record deliveries in {}",
                        self.queue_path().display()
                    ),
                    source: Some(Box::new(err)),
                })
            }
            Err(join) => {
                return Err(BusError::Transient {
                    message: "recording deliveries was interrupted".to_owned(),
                    source: Some(Box::new(join)),
                })
            }
        };
        self.shared.core.set_pending(pending);
        self.shared.core.wake();
        Ok(())
    }
}

/// An append-only NDJSON file; appends through one value never interleave.
struct NdjsonFile {
    path: PathBuf,
    lock: Mutex<()>,
}

impl NdjsonFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    async fn append(&self, lines: &[&str]) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut buf = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            buf.push_str(line);
            buf.push('\n');
        }
        let _guard = self.lock.lock().await;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        file.write_all(buf.as_bytes()).await?;
        file.flush().await
    }
}
