//! The conformance corpus in `tests/corpus/*.json`, run in the engine (debug build, manual clock).

use crate::common::{check, load_corpus, scripted_registry, Harness, Parked};

pub fn machine_name(case: &str) -> String {
    case.replace(['/', '.'], "-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_cases_produce_the_expected_results() {
    let cases = load_corpus();
    assert!(cases.len() >= 60, "the corpus lost cases: {}", cases.len());
    let mut failures = Vec::new();
    for (name, case) in &cases {
        let parked = Parked::default();
        let h = Harness::new(
            std::sync::Arc::new(tern_states::MemoryStore::new()),
            scripted_registry(&case.tasks, parked.clone()),
            tern_states::ManualClock::new(crate::common::EPOCH_MS),
            parked,
        );
        let sm = match h
            .engine
            .create_state_machine(&machine_name(name), &case.definition.to_string())
        {
            Ok(sm) => sm,
            Err(e) => {
                failures.push(format!("{name}: definition rejected: {e}"));
                continue;
            }
        };
        let started = h
            .engine
            .start_execution(&sm, Some("run"), &case.input.to_string())
            .unwrap();
        let d = h.finish(&started.execution_arn).await;
        if let Err(msg) = check(
            &case.expected,
            d.status.as_str(),
            d.output.as_deref(),
            d.error.as_deref(),
            d.cause.as_deref(),
        ) {
            failures.push(format!("{name}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
