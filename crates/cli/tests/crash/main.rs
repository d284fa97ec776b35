//! Crash safety of the real processes: `tern serve` and `tern connector run` run as child
//! processes and are killed with SIGKILL at every stage of a seed and of an incremental run,
//! then started again on the same directories. Each run must still complete, once, with an
//! image whose disk is byte-identical to the source, no snapshot, image, staged object or
//! multipart upload left over, and the connector sending at most 10 % more than the run's
//! objects. `enospc` fills the data directory's filesystem under a running server.
//!
//! Stages that last microseconds are reached with `tern serve`'s pause points
//! (`TERN_TEST_PAUSE_AT`, see `tern_local::pause`): the server stops right after a task's
//! effect, before the workflow records it, and is killed there. Uploads are slowed by the
//! connector's bandwidth cap so that a kill lands in the middle of one. `CRASH_LOG` sets
//! `RUST_LOG` of the children; their logs are kept in the test's directory, printed on failure.

mod disks;
mod enospc;
mod harness;
mod procs;

use harness::{Lab, Trigger, Victim};

/// One scenario per stage and victim; each is a job of its own (one VM each), seeded and then
/// run incrementally, with a kill in the same stage of both runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_stage() {
    use Trigger::*;
    let scenarios: Vec<(&str, Victim, Trigger, Trigger, bool)> = vec![
        // (name, victim, trigger in the seed, in the incremental run, big delta)
        ("server-upload", Victim::Server, Uploading, Uploading, true),
        (
            "connector-upload",
            Victim::Connector,
            Uploading,
            Uploading,
            true,
        ),
        (
            "connector-manifest",
            Victim::Connector,
            ManifestLanded,
            ManifestLanded,
            false,
        ),
        (
            "server-manifest",
            Victim::Server,
            Pause("upload-complete"),
            Pause("upload-complete"),
            false,
        ),
        (
            "server-import",
            Victim::Server,
            Pause("import"),
            Pause("apply-delta"),
            false,
        ),
        (
            "connector-import",
            Victim::Connector,
            Hold("import"),
            Hold("apply-delta"),
            false,
        ),
        (
            "server-wait",
            Victim::Server,
            Pause("check-snapshots"),
            Pause("check-snapshots"),
            false,
        ),
        (
            "connector-converting",
            Victim::Connector,
            Hold("check-snapshots"),
            Hold("check-snapshots"),
            false,
        ),
        (
            "server-register",
            Victim::Server,
            Pause("register-image"),
            Pause("register-image"),
            false,
        ),
        (
            "connector-register",
            Victim::Connector,
            Hold("register-image"),
            Hold("register-image"),
            false,
        ),
        (
            "server-retain",
            Victim::Server,
            Pause("retain"),
            Pause("retain"),
            false,
        ),
        (
            "connector-retain",
            Victim::Connector,
            Hold("retain"),
            Hold("retain"),
            false,
        ),
        (
            "server-complete",
            Victim::Server,
            Pause("complete"),
            Pause("complete"),
            false,
        ),
    ];
    // `CRASH_ONLY=a,b` runs only the scenarios of those names (for debugging one stage).
    let only = std::env::var("CRASH_ONLY").ok();
    let scenarios: Vec<_> = scenarios
        .into_iter()
        .filter(|s| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| n == s.0))
        })
        .collect();
    let mut lab = Lab::start(
        scenarios
            .iter()
            .map(|(name, _, _, _, big)| (name.to_string(), *big))
            .collect(),
    )
    .await;
    for (i, (name, victim, seed, incremental, _)) in scenarios.iter().enumerate() {
        lab.scenario(i, name, *victim, *seed, *incremental).await;
    }
    lab.final_checks().await;
    lab.report();
}
