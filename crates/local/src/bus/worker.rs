//! The delivery worker: takes due deliveries from the durable queue, attempts them, and
//! writes each outcome back (delivered: removed; failed: attempts and next-attempt time
//! stored; exhausted: dead letter written, then removed).
//!
//! Time comes from the bus's [`Clock`], so a test moves a manual clock and calls
//! [`super::LocalBus::deliver_due`] instead of sleeping through the backoff. Only this task
//! changes a row once it is recorded, so no row is attempted twice at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tern_core::Clock;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::deliver::{self, DeliveryError, TargetRuntime};
use super::queue::{Due, Key, Queue, QueueError};
use super::NdjsonFile;

/// At most this many attempts in flight across all targets; each target is further bounded by
/// `MAX_CONCURRENT_ATTEMPTS`.
const MAX_IN_FLIGHT: usize = 256;
/// How long to wait before looking at the queue again after it failed to answer.
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// What `flush` and `deliver_due` wait on.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Status {
    /// Deliveries in the queue (due, in flight, or waiting out a backoff).
    pub pending: usize,
    /// The latest wake-up after which the worker found nothing due and nothing in flight.
    pub idle_after: u64,
}

/// What the worker shares with the bus handles.
pub(super) struct Core {
    pub targets: HashMap<(String, usize), Arc<TargetRuntime>>,
    pub queue: Queue,
    pub dead_letter: Arc<NdjsonFile>,
    pub http: reqwest::Client,
    pub clock: Arc<dyn Clock>,
    pub status: watch::Sender<Status>,
    wake: Notify,
    wakes: AtomicU64,
}

impl Core {
    pub(super) fn new(
        targets: HashMap<(String, usize), Arc<TargetRuntime>>,
        queue: Queue,
        dead_letter: Arc<NdjsonFile>,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
        pending: usize,
    ) -> Self {
        Self {
            targets,
            queue,
            dead_letter,
            http,
            clock,
            status: watch::Sender::new(Status {
                pending,
                idle_after: 0,
            }),
            wake: Notify::new(),
            wakes: AtomicU64::new(0),
        }
    }

    /// Asks the worker to look at the queue again; returns the wake-up's number.
    pub(super) fn wake(&self) -> u64 {
        let n = self.wakes.fetch_add(1, Ordering::SeqCst) + 1;
        // notify_one keeps a permit when the worker is busy, so the wake-up is never lost.
        self.wake.notify_one();
        n
    }

    pub(super) fn set_pending(&self, pending: usize) {
        self.status.send_modify(|s| s.pending = pending);
    }

    pub(super) fn now_ms(&self) -> i64 {
        millis(self.clock.now())
    }
}

pub(super) fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// What one attempt came to, for the worker to write back.
enum Outcome {
    Delivered,
    Retry {
        attempts: u32,
        at_ms: i64,
        error: String,
    },
    /// The dead letter is written; the row can go.
    DeadLettered,
}

#[tracing::instrument(name = "bus.worker", skip_all)]
pub(super) async fn run(core: Arc<Core>) {
    let mut in_flight: HashSet<Key> = HashSet::new();
    let mut by_task: HashMap<tokio::task::Id, Key> = HashMap::new();
    let mut tasks: JoinSet<(Key, Outcome)> = JoinSet::new();
    loop {
        let seen = core.wakes.load(Ordering::SeqCst);
        let now = core.now_ms();
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
        let mut claimed = 0;
        let mut next: Option<i64> = None;
        let scan = (|| -> Result<(), QueueError> {
            if room > 0 {
                let skip = |k: &Key| in_flight.contains(k);
                let mut due = core.queue.due(now, &skip)?;
                due.truncate(room);
                for d in due {
                    in_flight.insert(d.key.clone());
                    let handle = tasks.spawn(attempt(core.clone(), d.clone()));
                    by_task.insert(handle.id(), d.key);
                    claimed += 1;
                }
            }
            if in_flight.len() < MAX_IN_FLIGHT {
                next = core.queue.next_due(&|k: &Key| in_flight.contains(k))?;
            }
            Ok(())
        })();
        if let Err(err) = scan {
            tracing::error!(error = %err, "cannot read the delivery queue; trying again shortly");
            next = Some(now + QUEUE_ERROR_PAUSE.as_millis() as i64);
        }
        if claimed == 0 && in_flight.is_empty() {
            core.status
                .send_modify(|s| s.idle_after = s.idle_after.max(seen));
        }
        // The clock may be a manual one that real time does not move; sleeping until its
        // next due time and looking again is still right, and a `wake` cuts the sleep short.
        let pause =
            next.map(|at| Duration::from_millis(at.saturating_sub(core.now_ms()).max(0) as u64));
        tokio::select! {
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let (key, outcome) = match joined {
                    Ok((id, (key, outcome))) => {
                        by_task.remove(&id);
                        (key, Some(outcome))
                    }
                    Err(err) => match by_task.remove(&err.id()) {
                        Some(key) => {
                            tracing::error!(error = %err, event_id = %key.event_id, "delivery task failed; the delivery stays queued");
                            (key, None)
                        }
                        None => continue,
                    },
                };
                in_flight.remove(&key);
                if let Some(outcome) = outcome {
                    record(&core, &key, outcome);
                }
            }
            _ = core.wake.notified() => {}
            _ = sleep(pause), if pause.is_some() => {}
        }
    }
}

async fn sleep(pause: Option<Duration>) {
    if let Some(pause) = pause {
        tokio::time::sleep(pause).await;
    }
}

fn record(core: &Core, key: &Key, outcome: Outcome) {
    let written = match outcome {
        Outcome::Delivered | Outcome::DeadLettered => core.queue.remove(key),
        Outcome::Retry {
            attempts,
            at_ms,
            error,
        } => core.queue.retry_at(key, attempts, at_ms, &error),
    };
    match written {
        Ok(pending) => core.set_pending(pending),
        // The row keeps its last state, so the delivery is attempted again: at least once.
        Err(err) => tracing::error!(error = %err, event_id = %key.event_id,
            "cannot record the delivery's outcome; it will be attempted again"),
    }
}

#[tracing::instrument(name = "bus.deliver", skip_all,
    fields(rule = %due.key.rule, target = due.key.target, event_id = %due.key.event_id))]
async fn attempt(core: Arc<Core>, due: Due) -> (Key, Outcome) {
    let target = core
        .targets
        .get(&(due.key.rule.clone(), due.key.target))
        .cloned();
    let attempts = due.attempts + 1;
    let result = match &target {
        Some(target) => deliver::attempt(target, &core.http, &due.event).await,
        None => Err(DeliveryError::Unconfigured {
            rule: due.key.rule.clone(),
            index: due.key.target,
        }),
    };
    let error = match result {
        Ok(()) => {
            tracing::debug!(attempts, "delivered");
            return (due.key, Outcome::Delivered);
        }
        Err(err) => err,
    };
    let policy = target.as_ref().map(|t| t.retry).unwrap_or_default();
    if attempts < policy.max_attempts && error.is_retryable() {
        let pause = policy.delay_after(attempts);
        tracing::warn!(attempts, error = %error, retry_in = ?pause, "delivery failed");
        let at_ms = core.now_ms() + pause.as_millis() as i64;
        return (
            due.key,
            Outcome::Retry {
                attempts,
                at_ms,
                error: error.to_string(),
            },
        );
    }
    tracing::error!(attempts, error = %error, "delivery abandoned; writing a dead letter");
    let event: Value =
        serde_json::from_str(&due.event).unwrap_or_else(|_| Value::String(due.event.clone()));
    let record = json!({
        "rule": due.key.rule,
        "target": target.as_ref().map_or("(not configured)", |t| t.label.as_str()),
        "target_index": due.key.target,
        "attempts": attempts,
        "error": error.to_string(),
        "failed_at": core.clock.now().format(&Rfc3339).unwrap_or_default(),
        "event": event,
    });
    match core.dead_letter.append(&[&record.to_string()]).await {
        Ok(()) => (due.key, Outcome::DeadLettered),
        Err(err) => {
            // Keeping the row is the only way not to lose the event; it is attempted once
            // more after the longest pause and dead-lettered again if that fails too.
            tracing::error!(path = %core.dead_letter.path.display(), error = %err,
                "cannot write the dead letter; the delivery stays queued");
            let at_ms = core.now_ms() + policy.backoff_max.as_millis() as i64;
            (
                due.key,
                Outcome::Retry {
                    attempts: due.attempts,
                    at_ms,
                    error: format!("{error}; dead letter not written: {err}"),
                },
            )
        }
    }
}
