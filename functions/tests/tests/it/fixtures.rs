//! `events/tasks/` holds one realistic input per task function of the state machine (for
//! `cargo lambda invoke --data-file`): each decodes into its function's contract type, and
//! every function has one.

use tern_core::replication::contract::*;
use tern_core::replication::functions;

use crate::fixture;

fn decodes(function: &str, input: &serde_json::Value) -> Result<(), TaskError> {
    match function {
        functions::PREPARE => PrepareInput::from_value(input).map(drop),
        functions::WAIT_FOR_UPLOAD => WaitForUploadInput::from_value(input).map(drop),
        functions::IMPORT | functions::APPLY_DELTA => ImportInput::from_value(input).map(drop),
        functions::WRITE_BLOCKS => WriteBlocksInput::from_value(input).map(drop),
        functions::CHECK_SNAPSHOTS => CheckSnapshotsInput::from_value(input).map(drop),
        functions::REGISTER_IMAGE => RegisterImageInput::from_value(input).map(drop),
        functions::RETAIN => RetainInput::from_value(input).map(drop),
        functions::COMPLETE => CompleteInput::from_value(input).map(drop),
        functions::RECORD_FAILURE => RecordFailureInput::from_value(input).map(drop),
        other => panic!("task function {other} has no case here: add one"),
    }
}

#[test]
fn every_task_function_has_a_fixture_of_its_contract() {
    for (_, function) in functions::SUBSTITUTIONS {
        let input = fixture(&format!("tasks/{function}.json"));
        decodes(function, &input).unwrap_or_else(|e| panic!("events/tasks/{function}.json: {e}"));
        // And the fixture is not accepted by everything: without its run it is refused.
        let mut broken = input.clone();
        broken["runId"] = serde_json::json!("");
        assert!(
            decodes(function, &broken).is_err(),
            "{function} took an empty runId"
        );
    }
}
