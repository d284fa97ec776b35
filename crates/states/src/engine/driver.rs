//! The execution loop: each pump applies task completions, fires due timers and steps ready
//! threads, then group-commits and only then hands task invocations to their handlers.

use std::cmp::Reverse;
use std::time::Duration;

use super::{Completion, Engine, ExecutionDescription, BUDGET, SLICE};
use crate::error::{names, EngineError, StateError};
use crate::store::ExecutionStatus;

/// First wait before a failed commit is tried again, and the longest.
const COMMIT_RETRY_FIRST: Duration = Duration::from_millis(50);
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(2);

impl Engine {
    /// Steps every execution until nothing can move without the clock advancing or an outside
    /// call (task token, stop). Task handlers that are running are awaited. For tests and hosts
    /// that step deterministically with a [`crate::ManualClock`].
    /// A commit that keeps failing (the store is full or gone) returns too, with the work still
    /// pending; the next call retries it.
    pub async fn run_until_idle(&self) {
        loop {
            let notified = self.shared.wake.notified();
            match self.pump() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(_) => return,
            }
            if self.lock().in_flight == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Drives executions until the returned task is aborted, waiting for timers on the engine's
    /// clock (with a [`crate::ManualClock`], until the clock is moved). Hosts that do not step the
    /// engine themselves spawn this once.
    ///
    /// A failed commit (a full disk, a store that went away) is retried with a bounded
    /// exponential backoff on real time, whatever the engine's clock: the work of the failed
    /// round is kept in memory and task handlers are not invoked until it is durable, so
    /// nothing that happened is lost and nothing runs ahead of the store.
    pub fn spawn_driver(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut backoff = COMMIT_RETRY_FIRST;
            loop {
                let notified = engine.shared.wake.notified();
                let stalled = loop {
                    match engine.pump() {
                        Ok(true) => tokio::task::yield_now().await,
                        Ok(false) => break false,
                        Err(_) => break true,
                    }
                };
                if stalled {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(COMMIT_RETRY_MAX);
                    continue;
                }
                backoff = COMMIT_RETRY_FIRST;
                let next = engine.lock().timers.peek().map(|Reverse((t, ..))| *t);
                match next {
                    Some(t) => {
                        let clock = engine.shared.clock.clone();
                        tokio::select! {
                            _ = notified => {}
                            _ = clock.wait_until(t) => {}
                        }
                    }
                    None => notified.await,
                }
            }
        })
    }

    /// Waits until the execution is no longer running (needs a driver or another task stepping).
    pub async fn wait_for(&self, arn: &str) -> Result<ExecutionDescription, EngineError> {
        let mut rx = self.shared.finished.subscribe();
        loop {
            let d = self.describe_execution(arn)?;
            if d.status != ExecutionStatus::Running {
                return Ok(d);
            }
            if rx.changed().await.is_err() {
                return Ok(d);
            }
        }
    }

    /// The earliest pending timer (Wait, retry backoff, timeouts), for hosts that step a
    /// [`crate::ManualClock`] forward to it.
    pub fn next_deadline(&self) -> Option<i64> {
        let core = self.lock();
        core.timers.iter().map(|Reverse((t, ..))| *t).min()
    }

    /// Number of state transitions made since the engine was opened.
    pub fn transitions(&self) -> u64 {
        self.lock().transitions
    }

    /// Does one round of work; true if anything moved. An error is a failed commit: the
    /// round's changes stay in memory (and in the retained batch) and the next pump retries.
    pub(super) fn pump(&self) -> Result<bool, EngineError> {
        let now = self.now();
        let mut core = self.lock();
        let mut progressed = false;
        while let Some(c) = core.completions.pop_front() {
            progressed = true;
            core.apply_completion(c, now);
        }
        while let Some(Reverse((t, ..))) = core.timers.peek() {
            if *t > now {
                break;
            }
            let Reverse((t, arn, tid, kind)) = core.timers.pop().expect("peeked");
            progressed |= core.fire_timer(t, &arn, tid, kind, now);
        }
        let mut budget = BUDGET;
        while budget > 0 {
            let Some((arn, tid)) = core.ready.pop_front() else {
                break;
            };
            progressed = true;
            let used = core.run_thread(&self.shared.tasks, &arn, tid, now, SLICE);
            budget = budget.saturating_sub(used.max(1));
        }
        if !progressed && core.invocations.is_empty() && core.batch.is_empty() {
            return Ok(false);
        }
        if let Err(e) = self.commit(&mut core) {
            // Without a durable record nothing may go on; the next pump retries the same batch.
            tracing::error!(error = %e, "states: commit failed; retrying");
            return Err(e);
        }
        let finished = std::mem::take(&mut core.finished_any);
        drop(core);
        if finished {
            self.shared.finished.send_modify(|n| *n += 1);
        }
        self.dispatch_invocations();
        Ok(true)
    }

    pub(super) fn dispatch_invocations(&self) {
        let invocations = std::mem::take(&mut self.lock().invocations);
        for (arn, inv) in invocations {
            self.lock().in_flight += 1;
            let shared = self.shared.clone();
            let token = inv.request.task_token.clone();
            let pattern = inv.request.pattern;
            tokio::spawn(async move {
                let result = match inv.handler {
                    Some(h) => h.invoke(inv.request).await,
                    None => Err(StateError::new(
                        names::TASK_FAILED,
                        format!(
                            "no task handler is registered for resource '{}'",
                            inv.request.resource
                        ),
                    )),
                };
                let mut core = shared.core.lock().unwrap_or_else(|e| e.into_inner());
                core.in_flight -= 1;
                core.completions.push_back(Completion {
                    arn,
                    thread: inv.thread,
                    token,
                    pattern,
                    result,
                });
                drop(core);
                shared.wake.notify_one();
            });
        }
    }
}
