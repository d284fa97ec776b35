//! Time source. Every time the engine reads (history timestamps, `$$` times, Wait, Retry
//! backoff, TimeoutSeconds, HeartbeatSeconds) and every timed wait of its driver goes through a
//! [`Clock`], so a host's tests step a [`ManualClock`] instead of sleeping.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

/// Milliseconds since the Unix epoch, and a way to wait for a moment of that time.
#[async_trait]
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;

    /// Returns once `now_ms()` has reached `deadline_ms` (at once if it already has). The driver
    /// also wakes for engine calls, so an implementation may return late, never early.
    async fn wait_until(&self, deadline_ms: i64);
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }

    async fn wait_until(&self, deadline_ms: i64) {
        // Look again after each sleep: the wall clock may have been set back meanwhile.
        loop {
            let left = deadline_ms - self.now_ms();
            if left <= 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(left as u64)).await;
        }
    }
}

/// A clock that only moves when told to. Waiting on it never sleeps: a waiter resumes when the
/// clock is moved to or past its deadline.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<watch::Sender<i64>>);

impl ManualClock {
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock(Arc::new(watch::Sender::new(start_ms)))
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.send_modify(|now| *now += ms);
    }

    pub fn set_ms(&self, ms: i64) {
        self.0.send_replace(ms);
    }

    pub fn advance_secs(&self, secs: i64) {
        self.advance_ms(secs * 1000);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.0.borrow()
    }

    async fn wait_until(&self, deadline_ms: i64) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so this only ends when the deadline is reached.
        let _ = rx.wait_for(|now| *now >= deadline_ms).await;
    }
}

pub fn format_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::{Clock, ManualClock, SystemClock};

    #[tokio::test]
    async fn a_manual_wait_ends_only_when_the_clock_reaches_the_deadline() {
        let clock = ManualClock::new(1_000);
        let waiter = tokio::spawn({
            let clock = clock.clone();
            async move { clock.wait_until(5_000).await }
        });
        clock.advance_ms(3_999);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !waiter.is_finished(),
            "woke at {} before 5000",
            clock.now_ms()
        );
        clock.advance_ms(1);
        waiter.await.unwrap();
        assert_eq!(clock.now_ms(), 5_000);
        // A deadline already reached returns at once, as does one reached by `set_ms`.
        clock.wait_until(4_000).await;
        clock.set_ms(9_000);
        clock.wait_until(9_000).await;
    }

    #[tokio::test]
    async fn a_system_wait_for_a_past_deadline_returns_at_once() {
        let clock = SystemClock;
        let now = clock.now_ms();
        assert!(now > 1_700_000_000_000, "{now}");
        clock.wait_until(now - 1).await;
    }
}
