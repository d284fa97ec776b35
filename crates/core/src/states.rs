//! The replication job and run state machines, as pure transition functions.
//!
//! Every state change of a job or run goes through [`job_transition`] or [`run_transition`];
//! use cases never assign a state directly. An event that is not legal in the current state is
//! an [`IllegalTransition`], which the use cases turn into `OperationNotPermittedException`.
//!
//! ## Replication job (`ReplicationJobState`)
//!
//! ```text
//!             RunStarted                RunSucceeded{run_once}
//!  PENDING ───────────────► ACTIVE ◄──────────────────────────┐
//!     │                     │  ▲ │ RunSucceeded{run_once:true} │
//!     │ RunFailed           │  │ └─────────────► COMPLETED     │
//!     ▼                     │  │ Resume                        │
//!  FAILING ◄─── RunFailed ──┘  └──── PAUSED_ON_FAILURE         │
//!     │  (retries left)                    ▲                   │
//!     │ RunFailed{retries_left: 0} ────────┘ (pause allowed)   │
//!     │ RunFailed{retries_left: 0} ──► FAILED (runOnce jobs)   │
//!     └──────────────── RunSucceeded ──────────────────────────┘
//!
//!  any state but DELETING/DELETED ── Delete ──► DELETING ── Purged ──► DELETED
//! ```
//!
//! * `RunStarted`: PENDING → ACTIVE; ACTIVE and FAILING keep their state.
//! * `RunSucceeded { run_once }`: ACTIVE/FAILING → ACTIVE, or COMPLETED for a runOnce job.
//! * `RunFailed { retries_left, can_pause }`: PENDING/ACTIVE/FAILING → FAILING while retries
//!   are left, else PAUSED_ON_FAILURE when the job can be paused, else FAILED.
//! * `Resume`: PAUSED_ON_FAILURE → ACTIVE.
//! * `Delete`: every state except DELETING/DELETED → DELETING; `Purged`: DELETING → DELETED.
//!
//! A job *occupies a slot* of `limits.max_active_jobs` while PENDING, ACTIVE, FAILING or
//! PAUSED_ON_FAILURE; [`JobTransition::releases_slot`] tells the use case to give the slot back in
//! the same transaction that writes the new state.
//!
//! ## Replication run (`ReplicationRunState`)
//!
//! ```text
//!  PENDING ── Start ──► ACTIVE ── Complete ──► COMPLETED
//!     │  └─ Miss ──► MISSED   │
//!     └──── Fail ─────────────┴──► FAILED
//!  PENDING/ACTIVE ── Delete ──► DELETING ── Purged ──► DELETED
//! ```
//!
//! A run is *in progress* (blocks another on-demand run) while PENDING, ACTIVE or DELETING.

use crate::enums::{ReplicationJobState as J, ReplicationRunState as R};

/// Something that happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobEvent {
    RunStarted,
    RunSucceeded { run_once: bool },
    RunFailed { retries_left: u32, can_pause: bool },
    Resume,
    Delete,
    Purged,
}

/// Something that happens to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunEvent {
    Start,
    Miss,
    Complete,
    Fail,
    Delete,
    Purged,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} cannot go from {from} on {event}")]
pub struct IllegalTransition {
    pub what: &'static str,
    pub from: &'static str,
    pub event: String,
}

/// The result of a legal job transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobTransition {
    pub from: J,
    pub to: J,
}

impl JobTransition {
    /// The job leaves the set of jobs counted against `max_active_jobs`.
    pub fn releases_slot(&self) -> bool {
        occupies_slot(self.from) && !occupies_slot(self.to)
    }
}

/// Whether a job in this state counts against `limits.max_active_jobs`.
pub fn occupies_slot(state: J) -> bool {
    matches!(
        state,
        J::Pending | J::Active | J::Failing | J::PausedOnFailure
    )
}

/// Whether a run in this state keeps another on-demand run from starting.
pub fn run_in_progress(state: R) -> bool {
    matches!(state, R::Pending | R::Active | R::Deleting)
}

/// Whether a job in this state may get new runs.
pub fn accepts_runs(state: J) -> bool {
    matches!(state, J::Pending | J::Active | J::Failing)
}

pub fn job_transition(from: J, event: JobEvent) -> Result<JobTransition, IllegalTransition> {
    use JobEvent::*;
    let to = match (from, event) {
        (J::Pending, RunStarted) => Some(J::Active),
        (J::Active, RunStarted) => Some(J::Active),
        (J::Failing, RunStarted) => Some(J::Failing),

        (J::Active | J::Failing, RunSucceeded { run_once: false }) => Some(J::Active),
        (J::Active | J::Failing, RunSucceeded { run_once: true }) => Some(J::Completed),

        (
            J::Pending | J::Active | J::Failing,
            RunFailed {
                retries_left,
                can_pause,
            },
        ) => Some(if retries_left > 0 {
            J::Failing
        } else if can_pause {
            J::PausedOnFailure
        } else {
            J::Failed
        }),

        (J::PausedOnFailure, Resume) => Some(J::Active),

        (J::Deleting | J::Deleted, Delete) => None,
        (_, Delete) => Some(J::Deleting),
        (J::Deleting, Purged) => Some(J::Deleted),
        _ => None,
    };
    to.map(|to| JobTransition { from, to })
        .ok_or_else(|| IllegalTransition {
            what: "a replication job",
            from: from.as_str(),
            event: format!("{event:?}"),
        })
}

pub fn run_transition(from: R, event: RunEvent) -> Result<R, IllegalTransition> {
    use RunEvent::*;
    let to = match (from, event) {
        (R::Pending, Start) => Some(R::Active),
        (R::Pending, Miss) => Some(R::Missed),
        (R::Active, Complete) => Some(R::Completed),
        (R::Pending | R::Active, Fail) => Some(R::Failed),
        (R::Pending | R::Active, Delete) => Some(R::Deleting),
        (R::Deleting, Purged) => Some(R::Deleted),
        _ => None,
    };
    to.ok_or_else(|| IllegalTransition {
        what: "a replication run",
        from: from.as_str(),
        event: format!("{event:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn all_job_events() -> Vec<JobEvent> {
        let mut v = vec![
            JobEvent::RunStarted,
            JobEvent::Resume,
            JobEvent::Delete,
            JobEvent::Purged,
        ];
        for run_once in [false, true] {
            v.push(JobEvent::RunSucceeded { run_once });
        }
        for retries_left in [0, 2] {
            for can_pause in [false, true] {
                v.push(JobEvent::RunFailed {
                    retries_left,
                    can_pause,
                });
            }
        }
        v
    }

    /// The complete table of legal job transitions; everything else must be refused.
    fn legal_job_transitions() -> HashMap<(J, JobEvent), J> {
        use JobEvent::*;
        let mut t = HashMap::new();
        t.insert((J::Pending, RunStarted), J::Active);
        t.insert((J::Active, RunStarted), J::Active);
        t.insert((J::Failing, RunStarted), J::Failing);
        for from in [J::Active, J::Failing] {
            t.insert((from, RunSucceeded { run_once: false }), J::Active);
            t.insert((from, RunSucceeded { run_once: true }), J::Completed);
        }
        for from in [J::Pending, J::Active, J::Failing] {
            t.insert(
                (
                    from,
                    RunFailed {
                        retries_left: 2,
                        can_pause: false,
                    },
                ),
                J::Failing,
            );
            t.insert(
                (
                    from,
                    RunFailed {
                        retries_left: 2,
                        can_pause: true,
                    },
                ),
                J::Failing,
            );
            t.insert(
                (
                    from,
                    RunFailed {
                        retries_left: 0,
                        can_pause: true,
                    },
                ),
                J::PausedOnFailure,
            );
            t.insert(
                (
                    from,
                    RunFailed {
                        retries_left: 0,
                        can_pause: false,
                    },
                ),
                J::Failed,
            );
        }
        t.insert((J::PausedOnFailure, Resume), J::Active);
        for from in [
            J::Pending,
            J::Active,
            J::Failing,
            J::PausedOnFailure,
            J::Failed,
            J::Completed,
        ] {
            t.insert((from, Delete), J::Deleting);
        }
        t.insert((J::Deleting, Purged), J::Deleted);
        t
    }

    #[test]
    fn every_job_transition_is_as_specified() {
        let legal = legal_job_transitions();
        let mut checked_legal = 0;
        for &from in J::ALL {
            for event in all_job_events() {
                let got = job_transition(from, event);
                match legal.get(&(from, event)) {
                    Some(&to) => {
                        assert_eq!(got, Ok(JobTransition { from, to }), "{from} on {event:?}");
                        checked_legal += 1;
                    }
                    None => {
                        let err = got.expect_err(&format!("{from} on {event:?} must be illegal"));
                        assert!(err.to_string().contains(from.as_str()));
                    }
                }
            }
        }
        assert_eq!(checked_legal, legal.len());
    }

    #[test]
    fn slots_are_released_exactly_when_a_job_ends() {
        let t = |from, ev| job_transition(from, ev).unwrap();
        assert!(!t(J::Pending, JobEvent::RunStarted).releases_slot());
        assert!(t(J::Active, JobEvent::RunSucceeded { run_once: true }).releases_slot());
        assert!(!t(J::Active, JobEvent::RunSucceeded { run_once: false }).releases_slot());
        let fail = JobEvent::RunFailed {
            retries_left: 0,
            can_pause: false,
        };
        assert!(t(J::Active, fail).releases_slot());
        let pause = JobEvent::RunFailed {
            retries_left: 0,
            can_pause: true,
        };
        assert!(!t(J::Active, pause).releases_slot());
        assert!(t(J::PausedOnFailure, JobEvent::Delete).releases_slot());
        // A job that already ended gives nothing back a second time.
        assert!(!t(J::Completed, JobEvent::Delete).releases_slot());
        assert!(!t(J::Deleting, JobEvent::Purged).releases_slot());
    }

    #[test]
    fn every_run_transition_is_as_specified() {
        use RunEvent::*;
        let events = [Start, Miss, Complete, Fail, Delete, Purged];
        let legal: HashMap<(R, RunEvent), R> = [
            ((R::Pending, Start), R::Active),
            ((R::Pending, Miss), R::Missed),
            ((R::Active, Complete), R::Completed),
            ((R::Pending, Fail), R::Failed),
            ((R::Active, Fail), R::Failed),
            ((R::Pending, Delete), R::Deleting),
            ((R::Active, Delete), R::Deleting),
            ((R::Deleting, Purged), R::Deleted),
        ]
        .into_iter()
        .collect();
        let mut checked_legal = 0;
        for &from in R::ALL {
            for event in events {
                match legal.get(&(from, event)) {
                    Some(&to) => {
                        assert_eq!(run_transition(from, event), Ok(to), "{from} on {event:?}");
                        checked_legal += 1;
                    }
                    None => assert!(
                        run_transition(from, event).is_err(),
                        "{from} on {event:?} must be illegal"
                    ),
                }
            }
        }
        assert_eq!(checked_legal, legal.len());
    }

    #[test]
    fn progress_predicates() {
        assert!(run_in_progress(R::Pending) && run_in_progress(R::Active));
        assert!(!run_in_progress(R::Completed) && !run_in_progress(R::Missed));
        assert!(accepts_runs(J::Failing) && !accepts_runs(J::PausedOnFailure));
        assert!(!occupies_slot(J::Deleted) && occupies_slot(J::PausedOnFailure));
    }
}
