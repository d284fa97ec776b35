//! The durable delivery queue: deliveries survive a crash of the bus, keep their attempt
//! count across restarts, end in the dead letter exactly once, and a re-published event is
//! queued once per target. Time is a manual clock; the tests step the bus with
//! `deliver_due()` and move the clock past each backoff instead of sleeping.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tern_core::events::{Event, EventBus, JobEventState};
use tern_core::ManualClock;
use tern_local::bus::{BusConfig, LocalBus};
use time::OffsetDateTime;

use super::{event, lines, Hook};

fn open(dir: &Path, rules: &str, clock: &Arc<ManualClock>) -> LocalBus {
    let file = dir.join("rules.toml");
    std::fs::write(&file, rules).unwrap();
    let config = BusConfig::load(&file, dir).expect("rules load");
    LocalBus::with_clock(config, clock.clone()).expect("bus starts")
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
    ))
}

fn webhook_rule(url: &str, max_attempts: u32) -> String {
    format!(
        r#"
[[rule]]
name = "hook"
event_pattern = '{{"source": ["tern.sms"]}}'
[[rule.target]]
type = "webhook"
url = "{url}"
max_attempts = {max_attempts}
backoff_base_ms = 1000
backoff_max_ms = 60000
"#
    )
}

async fn publish(bus: &LocalBus, events: &[Event]) {
    bus.publish(events)
        .await
        .unwrap()
        .into_result()
        .expect("every entry accepted");
}

#[tokio::test]
async fn deliveries_accepted_before_a_crash_reach_the_webhook_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let published: Vec<Event> = (1..=5)
        .map(|n| event(&format!("sms-job-crash-{n}"), JobEventState::Failed))
        .collect();
    // Down for the first process: every attempt it makes fails.
    let (url, hook) = Hook::start(published.len(), StatusCode::SERVICE_UNAVAILABLE).await;
    let rules = webhook_rule(&url, 5);

    let bus = open(dir.path(), &rules, &clock);
    assert_eq!(bus.queue_path(), dir.path().join("bus.db"));
    publish(&bus, &published).await;
    // Once publish has returned, the deliveries are on disk: the outbox may forget them.
    assert_eq!(bus.pending(), published.len());
    bus.deliver_due().await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), published.len());
    // The crash: no flush, the worker is stopped with its last bus handle.
    drop(bus);

    clock.advance(Duration::from_secs(1));
    let bus = open(dir.path(), &rules, &clock);
    assert_eq!(bus.pending(), published.len(), "the queue survived");
    bus.flush().await;
    assert_eq!(bus.pending(), 0);

    let delivered = hook.ids()[published.len()..].to_vec();
    for e in &published {
        assert!(
            delivered.contains(&e.id),
            "{} not delivered after the restart: {delivered:?}",
            e.id
        );
    }
    assert!(lines(bus.dead_letter_path()).is_empty());
}

#[tokio::test]
async fn a_publish_dropped_at_once_is_still_delivered_by_the_next_bus() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let (url, hook) = Hook::start(0, StatusCode::OK).await;
    let rules = webhook_rule(&url, 5);
    let e = event("sms-job-crash-early", JobEventState::Completed);
    {
        let bus = open(dir.path(), &rules, &clock);
        publish(&bus, std::slice::from_ref(&e)).await;
        // Dropped before the worker is given a chance to deliver.
    }
    let bus = open(dir.path(), &rules, &clock);
    bus.flush().await;
    let ids = hook.ids();
    assert!(
        !ids.is_empty() && ids.iter().all(|id| *id == e.id),
        "{ids:?}"
    );
}

#[tokio::test]
async fn a_webhook_failing_every_attempt_is_dead_lettered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let (url, hook) = Hook::start(usize::MAX, StatusCode::INTERNAL_SERVER_ERROR).await;
    let bus = open(dir.path(), &webhook_rule(&url, 3), &clock);
    let e = event("sms-job-dead", JobEventState::Failed);
    publish(&bus, std::slice::from_ref(&e)).await;

    bus.deliver_due().await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    assert_eq!(bus.queued_attempts(&e.id, "hook", 1).unwrap(), Some(1));
    // The backoff is on the clock: nothing is due until it moves.
    bus.deliver_due().await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_millis(999));
    bus.deliver_due().await;
    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        1,
        "1 s pause after attempt 1"
    );

    clock.advance(Duration::from_millis(1));
    bus.deliver_due().await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 2);
    assert_eq!(bus.queued_attempts(&e.id, "hook", 1).unwrap(), Some(2));
    clock.advance(Duration::from_secs(2));
    bus.deliver_due().await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 3);

    assert_eq!(bus.pending(), 0, "the delivery left the queue");
    assert_eq!(bus.queued_attempts(&e.id, "hook", 1).unwrap(), None);
    let dead = lines(bus.dead_letter_path());
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["event"]["id"], e.id.as_str());
    assert!(
        dead[0]["error"].as_str().unwrap().contains("500"),
        "{}",
        dead[0]
    );

    // Neither more time nor a restart brings it back.
    clock.advance(Duration::from_secs(3600));
    bus.deliver_due().await;
    drop(bus);
    let bus = open(dir.path(), &webhook_rule(&url, 3), &clock);
    assert_eq!(bus.pending(), 0);
    bus.flush().await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 3);
    assert_eq!(lines(bus.dead_letter_path()).len(), 1);
}

#[tokio::test]
async fn a_restart_in_the_middle_of_the_retries_keeps_the_attempt_count() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let (url, hook) = Hook::start(usize::MAX, StatusCode::BAD_GATEWAY).await;
    let rules = webhook_rule(&url, 3);
    let e = event("sms-job-restart", JobEventState::Failed);

    let bus = open(dir.path(), &rules, &clock);
    publish(&bus, std::slice::from_ref(&e)).await;
    bus.deliver_due().await;
    clock.advance(Duration::from_secs(1));
    bus.deliver_due().await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 2);
    drop(bus);

    let bus = open(dir.path(), &rules, &clock);
    assert_eq!(bus.queued_attempts(&e.id, "hook", 1).unwrap(), Some(2));
    // The next-attempt time came back too: 2 s after the second failure, not now.
    bus.deliver_due().await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 2);
    clock.advance(Duration::from_secs(2));
    bus.deliver_due().await;
    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        3,
        "max_attempts counts both processes"
    );
    let dead = lines(bus.dead_letter_path());
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(bus.pending(), 0);
}

#[tokio::test]
async fn the_same_event_published_again_is_queued_once_per_target() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let (url, hook) = Hook::start(usize::MAX, StatusCode::SERVICE_UNAVAILABLE).await;
    let bus = open(
        dir.path(),
        &format!(
            r#"
[[rule]]
name = "twice"
event_pattern = '{{"source": ["tern.sms"]}}'
[[rule.target]]
type = "webhook"
url = "{url}"
max_attempts = 2
[[rule.target]]
type = "webhook"
url = "{url}"
max_attempts = 2

[[rule]]
name = "once"
event_pattern = '{{"detail": {{"state": ["Failed"]}}}}'
[[rule.target]]
type = "webhook"
url = "{url}"
max_attempts = 2
"#
        ),
        &clock,
    );
    let e = event("sms-job-dup", JobEventState::Failed);
    publish(&bus, &[e.clone(), e.clone()]).await;
    assert_eq!(bus.pending(), 3, "one delivery per target");
    bus.deliver_due().await;
    // The outbox retrying a publish it could not confirm: the attempt count is not reset.
    publish(&bus, std::slice::from_ref(&e)).await;
    assert_eq!(bus.pending(), 3);
    for (rule, target) in [("twice", 1), ("twice", 2), ("once", 1)] {
        assert_eq!(
            bus.queued_attempts(&e.id, rule, target).unwrap(),
            Some(1),
            "{rule} {target}"
        );
    }
    clock.advance(Duration::from_secs(1));
    bus.deliver_due().await;

    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        6,
        "2 attempts × 3 targets"
    );
    let mut dead: Vec<(String, u64)> = lines(bus.dead_letter_path())
        .iter()
        .map(|d| {
            assert_eq!(d["event"]["id"], e.id.as_str());
            (
                d["rule"].as_str().unwrap().to_owned(),
                d["target_index"].as_u64().unwrap(),
            )
        })
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            ("once".to_owned(), 1),
            ("twice".to_owned(), 1),
            ("twice".to_owned(), 2)
        ]
    );
}

/// A shutdown attempts what is due and then stops: a webhook that is down does not hold it for
/// its retry schedule, and the delivery it still owes stays queued for the next start.
#[tokio::test]
async fn stopping_leaves_undelivered_events_queued_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let (url, hook) = Hook::start(usize::MAX, StatusCode::SERVICE_UNAVAILABLE).await;
    let rules = webhook_rule(&url, 10);
    let e = event("sms-job-stopped", JobEventState::Completed);
    {
        let bus = open(dir.path(), &rules, &clock);
        publish(&bus, std::slice::from_ref(&e)).await;
        // The clock never moves, so the backoff after the first attempt never ends: a stop that
        // waited for the delivery to finish would not return.
        tokio::time::timeout(Duration::from_secs(20), bus.stop(Duration::from_secs(5)))
            .await
            .expect("stop returns without waiting out the backoff");
        assert_eq!(
            hook.calls.load(Ordering::SeqCst),
            1,
            "the due attempt was made"
        );
        assert_eq!(bus.queued_attempts(&e.id, "hook", 1).unwrap(), Some(1));
    }
    let bus = open(dir.path(), &rules, &clock);
    assert_eq!(
        bus.queued_attempts(&e.id, "hook", 1).unwrap(),
        Some(1),
        "still queued after the restart, with its attempt count"
    );
    clock.advance(Duration::from_secs(1));
    bus.deliver_due().await;
    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        2,
        "resumed after the restart"
    );
}
