//! Limits and tunables. Limits are data: raising one is a configuration change, not a code change.

use std::time::Duration;

/// The limits Tern enforces (ARCHITECTURE.md, "Limits Tern enforces by default").
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Replication jobs that may be active (not terminal) at once.
    pub max_active_jobs: u32,
    /// On-demand runs per job per `on_demand_window`.
    pub on_demand_runs_per_window: u32,
    pub on_demand_window: Duration,
    /// Allowed `frequency`, in hours.
    pub min_frequency_hours: u32,
    pub max_frequency_hours: u32,
    /// Allowed `numberOfRecentAmisToKeep` (0 always means "keep all").
    pub max_amis_to_keep: u32,
    /// How far in the future `seedReplicationTime` may lie.
    pub max_seed_delay: Duration,
    /// How long a server may be replicated before its job ends.
    pub max_replication_lifetime: Duration,
    /// Largest `maxResults` honoured; larger values are capped.
    pub max_page_size: u32,
    /// Page size when a listing request gives no `maxResults` (SMS documents 50).
    pub default_page_size: u32,
    /// Consecutive failed runs after which a job stops retrying: it becomes PAUSED_ON_FAILURE
    /// (or FAILED for a runOnce job, which cannot be paused).
    pub max_consecutive_run_failures: u32,
    /// Most recent runs embedded in each job (`ReplicationJob.replicationRunList`);
    /// GetReplicationRuns pages through all of them.
    pub runs_embedded_in_job: u32,
}

impl Default for Limits {
    fn default() -> Self {
        const DAY: u64 = 24 * 60 * 60;
        Self {
            max_active_jobs: 50,
            on_demand_runs_per_window: 2,
            on_demand_window: Duration::from_secs(DAY),
            min_frequency_hours: 1,
            max_frequency_hours: 24,
            max_amis_to_keep: 270,
            max_seed_delay: Duration::from_secs(30 * DAY),
            max_replication_lifetime: Duration::from_secs(90 * DAY),
            max_page_size: 1000,
            default_page_size: 50,
            max_consecutive_run_failures: 3,
            runs_embedded_in_job: 10,
        }
    }
}

/// Everything the domain needs to know that is not data in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub limits: Limits,
    /// A connector whose last heartbeat is older than this reads as UNHEALTHY.
    pub connector_unhealthy_after: Duration,
    /// An inventory request not answered within this time no longer keeps the catalog in
    /// IMPORTING (the connector may still answer it later).
    pub inventory_request_timeout: Duration,
    /// A work item handed out by PollWork and not finished is handed out again after this time.
    pub work_lease: Duration,
    /// Attempts of one optimistic read-modify-write before the request fails with
    /// TemporarilyUnavailableException (which clients retry).
    pub max_write_attempts: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            connector_unhealthy_after: Duration::from_secs(5 * 60),
            inventory_request_timeout: Duration::from_secs(15 * 60),
            work_lease: Duration::from_secs(10 * 60),
            max_write_attempts: 64,
        }
    }
}
