//! Bounded polls. A test that waits for another process (moto, a child `tern serve`, a
//! connector) asks it again every `every` until it answers or `bound` has passed, and then says
//! what it was waiting for. Tests of Tern's own code step a clock instead.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `probe` every `every` until it returns `Some`, for at most `bound`. `None` when the
/// bound passed first.
pub fn until<T>(
    bound: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// [`until`] for an async probe, on a tokio runtime.
pub async fn until_async<T, F, Fut>(bound: Duration, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_returns_the_first_answer_and_gives_up_at_the_bound() {
        let mut calls = 0;
        let got = until(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));

        let started = Instant::now();
        let never: Option<()> = until(Duration::from_millis(30), Duration::from_millis(5), || None);
        assert!(never.is_none());
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
