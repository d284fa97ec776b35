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
        }
    }
}

/// Everything the domain needs to know that is not data in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub limits: Limits,
    /// A connector whose last heartbeat is older than this reads as UNHEALTHY.
    pub connector_unhealthy_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            connector_unhealthy_after: Duration::from_secs(5 * 60),
        }
    }
}
