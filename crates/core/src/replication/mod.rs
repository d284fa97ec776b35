//! Replication runs: the contract of `statemachines/replication-run.asl.json` and its task
//! functions, what happens when a run's manifest arrives in staging, what connector progress
//! reports change, the scheduler's tick, and the outbox of state-change events.
//!
//! ```text
//!  tick ──► run PENDING ──► Prepare ──► WaitForUpload ══ token ══╗   connector: poll work,
//!                          (ACTIVE,      (parks)                 ║   upload, manifest last
//!                           work queued)                         ║
//!  upload_complete(manifest) ════════════════════════════════════╝ ──► Import | ApplyDelta
//!     ──► WaitForSnapshots ──► RegisterImage ──► Retain ──► Complete (COMPLETED, AMI)
//!  any failure ──► RecordFailure (FAILED; job FAILING, PAUSED_ON_FAILURE or FAILED)
//! ```
//!
//! Every handler is idempotent: a task re-invoked after a crash, or a notification delivered
//! twice, finds its effect already recorded and changes nothing twice. Task failures carry the
//! fixed names of [`contract::task_errors`], which the state machine's Retry/Catch lists match.
//!
//! ## Modules, lowest first
//!
//! A module uses (and calls methods defined in) only the modules below it; `service` is the
//! crate's use-case layer, which writes [`outbox::StateChange`]s with its transitions.
//!
//! ```text
//!  dispatch    handle_task(function, JSON): decode the contract input, run, encode the output
//!     │
//!  scheduler   tick, drive_run, schedule_run
//!     │
//!  tasks       one typed method per task state (prepare … record_failure)
//!     │
//!  teardown    a deleted job's unfinished run undone: execution, work, staging, snapshots
//!     │
//!  upload      upload_complete (ObjectCreated), signal_upload, report_progress, work_failed
//!     │
//!  handle      Replication, ReplicationSettings, shared run reads and conditional writes
//!     │
//!  crate::service (Service, jobs and runs) ──► outbox   StateChange, Announcer, Outbox
//!     │
//!  contract    function names, task_errors, TaskError, typed task inputs and outputs
//!     │
//!  manifest    the typed run manifest and its checks      work   connector work payloads
//!     │                                                      │
//!  staging     the staging-object layout (StagingLocation: run prefix, disk and manifest keys)
//! ```

pub mod contract;
mod dispatch;
mod handle;
pub mod manifest;
pub mod outbox;
mod scheduler;
pub mod staging;
mod tasks;
mod teardown;
pub mod upload;
pub mod work;

pub use contract::{functions, task_errors, TaskError};
pub use handle::{Replication, ReplicationSettings};
pub use manifest::{InvalidManifest, Manifest, ManifestDisk};
pub use outbox::{Announcer, BusAnnouncer, Outbox, Published, Publishing, StateChange};
pub use scheduler::TickReport;
pub use staging::{ObjectKind, StagedRun, StagingLocation};
pub use upload::{ObjectCreated, Progress, UploadOutcome};
pub use work::{CommitRunWork, ForgetJobWork, ReplicationWork, WorkDisk};

#[cfg(test)]
mod tests {
    /// (module, its source): the order of the module docs, lowest first.
    const LAYERS: &[(&str, &str)] = &[
        ("staging", include_str!("staging.rs")),
        ("manifest", include_str!("manifest.rs")),
        ("work", include_str!("work.rs")),
        ("contract", include_str!("contract.rs")),
        ("outbox", include_str!("outbox.rs")),
        ("handle", include_str!("handle.rs")),
        ("upload", include_str!("upload.rs")),
        ("teardown", include_str!("teardown.rs")),
        ("tasks", include_str!("tasks.rs")),
        ("scheduler", include_str!("scheduler.rs")),
        ("dispatch", include_str!("dispatch.rs")),
    ];

    /// No module names one above it in its `use` lists, so the drawn order is the real one
    /// (and `outbox`, which `service` uses, uses nothing of `service`).
    #[test]
    fn modules_use_only_the_modules_below_them() {
        for (i, (name, source)) in LAYERS.iter().enumerate() {
            let uses: Vec<&str> = source
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("use ") || l.starts_with("pub use "))
                .collect();
            for (higher, _) in &LAYERS[i + 1..] {
                for u in &uses {
                    assert!(
                        !u.contains(&format!("super::{higher}")),
                        "{name} uses {higher}, which is above it: {u}"
                    );
                }
            }
            if *name == "outbox" || i < 5 {
                for u in &uses {
                    assert!(
                        !u.contains("crate::service"),
                        "{name} is below the use cases but uses them: {u}"
                    );
                }
            }
        }
    }
}
