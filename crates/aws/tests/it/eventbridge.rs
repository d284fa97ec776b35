//! `EventBridge` (the `EventBus` port): batches of ten on moto, and per-entry failures (which moto
//! never reports) with mocks.

use aws_sdk_eventbridge::operation::put_events::PutEventsOutput;
use aws_sdk_eventbridge::types::PutEventsResultEntry;
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use tern_aws::EventBridge;
use tern_core::events::{Event, EventBus, EventOrigin, JobEventState, JobStateChange};
use tern_test_support::moto::{Flavor, Moto};
use time::OffsetDateTime;

fn events(n: usize) -> Vec<Event> {
    let origin = EventOrigin::new("us-east-1", "123456789012");
    (0..n)
        .map(|i| {
            JobStateChange::new(JobEventState::Completed, format!("sms-job-{i:017}")).into_event(
                &origin,
                OffsetDateTime::now_utc(),
                &i.to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn twelve_events_go_out_in_two_calls_on_moto() {
    let Some(moto) = Moto::start(Flavor::Threaded, "the EventBridge adapter") else {
        return;
    };
    let client = aws_sdk_eventbridge::Client::new(&crate::moto_config(&moto.endpoint));
    let bus = EventBridge::new(client, "default");
    let outcome = bus.publish(&events(12)).await.expect("publish");
    assert!(outcome.is_complete(), "{outcome:?}");
}

/// The second call refuses one entry: only that event, by its place in the whole slice, is
/// reported, so the outbox keeps it alone.
#[tokio::test]
async fn refused_entries_are_reported_by_their_place_in_the_slice() {
    let accepted = mock!(aws_sdk_eventbridge::Client::put_events)
        .match_requests(|r| r.entries().len() == 10)
        .then_output(|| {
            PutEventsOutput::builder()
                .failed_entry_count(0)
                .set_entries(Some(vec![
                    PutEventsResultEntry::builder()
                        .event_id("e")
                        .build();
                    10
                ]))
                .build()
        });
    let one_refused = mock!(aws_sdk_eventbridge::Client::put_events)
        .match_requests(|r| r.entries().len() == 2)
        .then_output(|| {
            PutEventsOutput::builder()
                .failed_entry_count(1)
                .entries(PutEventsResultEntry::builder().event_id("e").build())
                .entries(
                    PutEventsResultEntry::builder()
                        .error_code("ThrottlingException")
                        .error_message("Rate exceeded")
                        .build(),
                )
                .build()
        });
    let client = mock_client!(
        aws_sdk_eventbridge,
        RuleMode::MatchAny,
        [&accepted, &one_refused]
    );
    let bus = EventBridge::new(client, "tern");
    let outcome = bus.publish(&events(12)).await.expect("publish");
    assert_eq!(outcome.failed.len(), 1, "{outcome:?}");
    assert_eq!(outcome.failed[0].index, 11);
    assert!(outcome.failed[0].is_transient());
    assert_eq!(accepted.num_calls(), 1);
    assert_eq!(one_refused.num_calls(), 1);
}
