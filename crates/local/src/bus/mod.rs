//! The in-process event bus: EventBridge rules and targets on one machine.
//!
//! [`LocalBus::publish`] checks each event the way `PutEvents` does, appends the accepted ones
//! to the archive (when configured), hands them to in-process subscribers and queues one
//! delivery per matching rule target, then returns. Deliveries run in the background, are
//! retried with exponential backoff, and end either delivered or in the dead-letter file: at
//! least once, never silently dropped. [`LocalBus::flush`] waits for all of them, which is how
//! tests step the bus without sleeping.
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
mod rules;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tern_core::events::{BusError, Event, EventBus, FailedEntry, PublishOutcome};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, watch, Mutex};

pub use deliver::MAX_CONCURRENT_ATTEMPTS;
pub use rules::{
    BusConfig, RetryPolicy, Rule, RuleProblem, RulesError, Target, TargetKind, TargetProblem,
    DEFAULT_DEAD_LETTER,
};

/// EventBridge refuses entries over 256 KiB; so does the local bus, so that what works here
/// works there.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// The bus could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BusSetupError {
    #[error("cannot build the HTTP client for webhook targets: {0}")]
    Http(#[source] reqwest::Error),
}

/// The in-process [`EventBus`]. Cheap to clone: clones share rules, queues and files.
#[derive(Clone)]
pub struct LocalBus {
    shared: Arc<Shared>,
}

struct Shared {
    rules: Vec<RuleRuntime>,
    archive: Option<Arc<NdjsonFile>>,
    dead_letter: Arc<NdjsonFile>,
    subscribers: broadcast::Sender<Event>,
    /// Deliveries queued and not yet finished (delivered or dead-lettered).
    pending: watch::Sender<usize>,
    http: reqwest::Client,
}

struct RuleRuntime {
    rule: Rule,
    targets: Vec<Arc<deliver::TargetRuntime>>,
}

impl LocalBus {
    /// Builds the bus; nothing runs until the first publish. `publish` must be called inside
    /// a tokio runtime: deliveries are spawned onto it.
    pub fn new(config: BusConfig) -> Result<Self, BusSetupError> {
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
        let rules = config
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
        let (subscribers, _) = broadcast::channel(config.subscriber_capacity.max(1));
        Ok(Self {
            shared: Arc::new(Shared {
                rules,
                archive,
                dead_letter,
                subscribers,
                pending: watch::Sender::new(0),
                http,
            }),
        })
    }

    /// Every accepted event, in publish order. A receiver that falls more than
    /// `subscriber_capacity` events behind gets `RecvError::Lagged` and skips ahead.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.subscribers.subscribe()
    }

    /// Waits until every delivery queued so far is delivered or dead-lettered.
    pub async fn flush(&self) {
        let mut pending = self.shared.pending.subscribe();
        // The sender lives in `shared`, which `self` keeps alive, so this cannot fail.
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// Deliveries queued and not yet finished.
    pub fn pending(&self) -> usize {
        *self.shared.pending.borrow()
    }

    pub fn dead_letter_path(&self) -> &Path {
        &self.shared.dead_letter.path
    }

    pub fn archive_path(&self) -> Option<&Path> {
        self.shared.archive.as_deref().map(|f| f.path.as_path())
    }

    fn enqueue(&self, rule: &str, target: &Arc<deliver::TargetRuntime>, event: &Arc<Accepted>) {
        self.shared.pending.send_modify(|n| *n += 1);
        let done = PendingGuard(self.shared.clone());
        let job = deliver::Delivery {
            rule: rule.to_owned(),
            target: target.clone(),
            event: event.clone(),
            http: self.shared.http.clone(),
            dead_letter: self.shared.dead_letter.clone(),
        };
        tokio::spawn(async move {
            job.run().await;
            drop(done);
        });
    }
}

/// Marks a delivery finished even if its task panics or is cancelled, so `flush` never hangs.
struct PendingGuard(Arc<Shared>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.send_modify(|n| *n = n.saturating_sub(1));
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
        for event in &accepted {
            // No subscriber is not an error: subscribing is optional.
            let _ = self.shared.subscribers.send(event.event.clone());
            for rule in self.shared.rules.iter().filter(|r| r.rule.enabled) {
                if rule.rule.pattern.matches(&event.json) {
                    for target in &rule.targets {
                        self.enqueue(&rule.rule.name, target, event);
                    }
                }
            }
        }
        Ok(outcome)
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
