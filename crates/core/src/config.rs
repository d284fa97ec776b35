//! Limits and tunables. Limits are data: raising one is a configuration change, not a code change.
//!
//! A [`Config`] deserializes from a TOML-shaped document (`tern serve --config tern.toml`): every
//! key is optional and defaults to the value below, unknown keys are refused, and
//! [`Config::validate`] checks that the values make sense together. Durations are written as a
//! whole number followed by one unit: `s`, `m`, `h` or `d` (`"90d"`, `"10m"`, `"30s"`); one
//! format, so a file never has to be read with "is this seconds or minutes?" in mind.
//! [`Config::apply_env`] layers `TERN_<KEY>` variables on top (the Lambdas' configuration).

use std::time::Duration;

use serde::Deserialize;

/// A configuration value that cannot be used, named by its key (`limits.max_active_jobs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key {key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Parses `"90d"`, `"10m"`, `"24h"`, `"30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("{text:?} has no unit; write e.g. \"30s\", \"10m\", \"24h\" or \"90d\"")
    })?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return Err(format!("{text:?} has unit {unit:?}; use s, m, h or d")),
    };
    number
        .checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Writes a duration as [`parse_duration`] reads it, in the largest unit that divides it.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, scale) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s > 0 && s.is_multiple_of(scale) {
            return format!("{}{unit}", s / scale);
        }
    }
    format!("{s}s")
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// The limits Tern enforces (ARCHITECTURE.md, "Limits Tern enforces by default").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Replication jobs that may be active (not terminal) at once.
    pub max_active_jobs: u32,
    /// On-demand runs per job per `on_demand_window`.
    pub on_demand_runs_per_window: u32,
    #[serde(with = "duration_text")]
    pub on_demand_window: Duration,
    /// Allowed `frequency`, in hours.
    pub min_frequency_hours: u32,
    pub max_frequency_hours: u32,
    /// Allowed `numberOfRecentAmisToKeep` (0 always means "keep all").
    pub max_amis_to_keep: u32,
    /// How far in the future `seedReplicationTime` may lie.
    #[serde(with = "duration_text")]
    pub max_seed_delay: Duration,
    /// How long a server may be replicated before its job ends.
    #[serde(with = "duration_text")]
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
    /// Server groups one application may hold (SMS User Guide: 10).
    pub max_groups_per_app: u32,
    /// Servers one application may hold, over all its groups (SMS User Guide: 50).
    pub max_servers_per_app: u32,
    /// Applications whose replication may be started at once (SMS User Guide: 50).
    pub max_replicating_apps: u32,
    /// Volumes (disks) a VM may have to be replicated; SMS refused VMs with more than 22.
    pub max_volumes_per_vm: u32,
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
            max_groups_per_app: 10,
            max_servers_per_app: 50,
            max_replicating_apps: 50,
            max_volumes_per_vm: 22,
        }
    }
}

/// Everything the domain needs to know that is not data in the store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub limits: Limits,
    /// A connector whose last heartbeat is older than this reads as UNHEALTHY.
    #[serde(with = "duration_text")]
    pub connector_unhealthy_after: Duration,
    /// An inventory request not answered within this time no longer keeps the catalog in
    /// IMPORTING (the connector may still answer it later).
    #[serde(with = "duration_text")]
    pub inventory_request_timeout: Duration,
    /// A work item handed out by PollWork and not finished is handed out again after this time.
    #[serde(with = "duration_text")]
    pub work_lease: Duration,
    /// How long a deleted replication job stays listed by GetReplicationJobs (state DELETED)
    /// and readable by id; after that the scheduler purges its record. `0s`: not kept.
    #[serde(with = "duration_text")]
    pub deleted_job_retention: Duration,
    /// Attempts of one optimistic read-modify-write before the request fails with
    /// TemporarilyUnavailableException (which clients retry).
    pub max_write_attempts: u32,
    /// The `source` of the events Tern emits. Unset: the deployment's default — `aws.sms` on
    /// `tern serve` (so rules written for SMS match unmodified), `tern.sms` in the AWS
    /// deployment (EventBridge refuses PutEvents with an `aws.` source from anyone but AWS).
    pub event_source: Option<String>,
    /// Preflight rules (comma-separated names, see `service::preflight::rule`) whose refusals
    /// the operator accepts: they are shown as warnings and do not refuse a job (e.g.
    /// `boot-disk-unpartitioned` for a data-only VM). Unset: every rule refuses.
    pub preflight_waive: Option<String>,
    /// A USERDATA validation script not ended this long after its application's launch is
    /// FAILED (app-level scripts end by their own `executionTimeoutSeconds`).
    #[serde(with = "duration_text")]
    pub validation_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            connector_unhealthy_after: Duration::from_secs(5 * 60),
            inventory_request_timeout: Duration::from_secs(15 * 60),
            work_lease: Duration::from_secs(10 * 60),
            deleted_job_retention: Duration::from_secs(7 * 24 * 60 * 60),
            max_write_attempts: 64,
            event_source: None,
            preflight_waive: None,
            validation_timeout: Duration::from_secs(60 * 60),
        }
    }
}

/// How one key reads from text (an environment variable).
enum Slot<'a> {
    Count(&'a mut u32),
    Time(&'a mut Duration),
    Text(&'a mut Option<String>),
}

impl Config {
    /// Every key with its place, in the file's dotted spelling.
    fn slots(&mut self) -> Vec<(&'static str, Slot<'_>)> {
        let l = &mut self.limits;
        vec![
            (
                "limits.max_active_jobs",
                Slot::Count(&mut l.max_active_jobs),
            ),
            (
                "limits.on_demand_runs_per_window",
                Slot::Count(&mut l.on_demand_runs_per_window),
            ),
            (
                "limits.on_demand_window",
                Slot::Time(&mut l.on_demand_window),
            ),
            (
                "limits.min_frequency_hours",
                Slot::Count(&mut l.min_frequency_hours),
            ),
            (
                "limits.max_frequency_hours",
                Slot::Count(&mut l.max_frequency_hours),
            ),
            (
                "limits.max_amis_to_keep",
                Slot::Count(&mut l.max_amis_to_keep),
            ),
            ("limits.max_seed_delay", Slot::Time(&mut l.max_seed_delay)),
            (
                "limits.max_replication_lifetime",
                Slot::Time(&mut l.max_replication_lifetime),
            ),
            ("limits.max_page_size", Slot::Count(&mut l.max_page_size)),
            (
                "limits.default_page_size",
                Slot::Count(&mut l.default_page_size),
            ),
            (
                "limits.max_consecutive_run_failures",
                Slot::Count(&mut l.max_consecutive_run_failures),
            ),
            (
                "limits.runs_embedded_in_job",
                Slot::Count(&mut l.runs_embedded_in_job),
            ),
            (
                "limits.max_groups_per_app",
                Slot::Count(&mut l.max_groups_per_app),
            ),
            (
                "limits.max_servers_per_app",
                Slot::Count(&mut l.max_servers_per_app),
            ),
            (
                "limits.max_replicating_apps",
                Slot::Count(&mut l.max_replicating_apps),
            ),
            (
                "limits.max_volumes_per_vm",
                Slot::Count(&mut l.max_volumes_per_vm),
            ),
            (
                "connector_unhealthy_after",
                Slot::Time(&mut self.connector_unhealthy_after),
            ),
            (
                "inventory_request_timeout",
                Slot::Time(&mut self.inventory_request_timeout),
            ),
            ("work_lease", Slot::Time(&mut self.work_lease)),
            (
                "validation_timeout",
                Slot::Time(&mut self.validation_timeout),
            ),
            (
                "deleted_job_retention",
                Slot::Time(&mut self.deleted_job_retention),
            ),
            (
                "max_write_attempts",
                Slot::Count(&mut self.max_write_attempts),
            ),
            ("event_source", Slot::Text(&mut self.event_source)),
            ("preflight_waive", Slot::Text(&mut self.preflight_waive)),
        ]
    }

    /// The rule names of `preflight_waive`.
    pub fn waived_rules(&self) -> Vec<&str> {
        self.preflight_waive
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// The environment variable for a key: `limits.max_active_jobs` → `TERN_MAX_ACTIVE_JOBS`.
    pub fn env_name(key: &str) -> String {
        let leaf = key.rsplit('.').next().unwrap_or(key);
        format!("TERN_{}", leaf.to_ascii_uppercase())
    }

    /// Every environment variable [`Config::apply_env`] reads.
    pub fn env_names() -> Vec<String> {
        Config::default()
            .slots()
            .into_iter()
            .map(|(key, _)| Self::env_name(key))
            .collect()
    }

    /// Overrides keys from `TERN_<KEY>` variables (`lookup` returns one; core never reads the
    /// process environment itself), then validates. An empty variable counts as unset.
    pub fn apply_env(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        for (key, slot) in self.slots() {
            let name = Self::env_name(key);
            let Some(value) = lookup(&name).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            let named = |problem: String| ConfigError::new(format!("{key} ({name})"), problem);
            match slot {
                Slot::Count(place) => {
                    *place = value
                        .trim()
                        .parse()
                        .map_err(|_| named(format!("{value:?} is not a whole number")))?;
                }
                Slot::Time(place) => *place = parse_duration(&value).map_err(named)?,
                Slot::Text(place) => *place = Some(value.trim().to_string()),
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// The defaults with `TERN_<KEY>` overrides (the Lambdas' configuration).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::default().apply_env(lookup)
    }

    /// Checks that every value is usable and that related values agree.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for name in self.waived_rules() {
            if !crate::service::preflight::rule::ALL.contains(&name) {
                return Err(ConfigError::new(
                    "preflight_waive",
                    format!(
                        "{name:?} is not a preflight rule (one of {})",
                        crate::service::preflight::rule::ALL.join(", ")
                    ),
                ));
            }
        }
        let l = &self.limits;
        let positive = [
            ("limits.max_active_jobs", l.max_active_jobs),
            ("limits.min_frequency_hours", l.min_frequency_hours),
            ("limits.max_page_size", l.max_page_size),
            ("limits.default_page_size", l.default_page_size),
            (
                "limits.max_consecutive_run_failures",
                l.max_consecutive_run_failures,
            ),
            ("limits.max_groups_per_app", l.max_groups_per_app),
            ("limits.max_servers_per_app", l.max_servers_per_app),
            ("limits.max_replicating_apps", l.max_replicating_apps),
            ("max_write_attempts", self.max_write_attempts),
            ("limits.max_volumes_per_vm", l.max_volumes_per_vm),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        let durations = [
            ("limits.on_demand_window", l.on_demand_window),
            (
                "limits.max_replication_lifetime",
                l.max_replication_lifetime,
            ),
            ("connector_unhealthy_after", self.connector_unhealthy_after),
            ("inventory_request_timeout", self.inventory_request_timeout),
            ("work_lease", self.work_lease),
        ];
        for (key, value) in durations {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be longer than 0s"));
            }
        }
        if let Some(source) = &self.event_source {
            // EventBridge's limits for an event's Source.
            if source.is_empty() || source.len() > 256 || source.contains(char::is_whitespace) {
                return Err(ConfigError::new(
                    "event_source",
                    format!("{source:?} is not an event source (1 to 256 characters, no spaces)"),
                ));
            }
        }
        if l.min_frequency_hours > l.max_frequency_hours {
            return Err(ConfigError::new(
                "limits.min_frequency_hours",
                format!(
                    "{} is more than limits.max_frequency_hours ({})",
                    l.min_frequency_hours, l.max_frequency_hours
                ),
            ));
        }
        if l.default_page_size > l.max_page_size {
            return Err(ConfigError::new(
                "limits.default_page_size",
                format!(
                    "{} is more than limits.max_page_size ({})",
                    l.default_page_size, l.max_page_size
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn durations_read_with_one_unit() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("5w").unwrap_err().contains("\"w\""));
        assert!(parse_duration("m").is_err());
        for d in [90 * 86_400, 3_600, 600, 90, 0] {
            let d = Duration::from_secs(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
    }

    #[test]
    fn environment_overrides_name_the_bad_key() {
        let config = Config::from_env(env(&[
            ("TERN_MAX_ACTIVE_JOBS", "1000"),
            ("TERN_WORK_LEASE", "2m"),
            ("TERN_ON_DEMAND_WINDOW", ""),
        ]))
        .unwrap();
        assert_eq!(config.limits.max_active_jobs, 1000);
        assert_eq!(config.work_lease, Duration::from_secs(120));
        assert_eq!(
            config.limits.on_demand_window,
            Limits::default().on_demand_window
        );

        let err = Config::from_env(env(&[("TERN_MAX_ACTIVE_JOBS", "lots")])).unwrap_err();
        assert_eq!(err.key, "limits.max_active_jobs (TERN_MAX_ACTIVE_JOBS)");
        let err = Config::from_env(env(&[("TERN_WORK_LEASE", "10")])).unwrap_err();
        assert!(err.key.contains("TERN_WORK_LEASE"), "{err}");
        let err = Config::from_env(env(&[("TERN_MIN_FREQUENCY_HOURS", "30")])).unwrap_err();
        assert_eq!(err.key, "limits.min_frequency_hours");
        assert!(err.problem.contains("max_frequency_hours"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        config.limits.default_page_size = 2000;
        assert_eq!(
            config.validate().unwrap_err().key,
            "limits.default_page_size"
        );
        let config = Config {
            work_lease: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().key, "work_lease");
        let mut config = Config::default();
        config.limits.max_active_jobs = 0;
        assert_eq!(config.validate().unwrap_err().key, "limits.max_active_jobs");
    }

    #[test]
    fn the_event_source_is_read_and_checked() {
        assert_eq!(Config::default().event_source, None);
        let config = Config::from_env(env(&[("TERN_EVENT_SOURCE", "aws.sms")])).unwrap();
        assert_eq!(config.event_source.as_deref(), Some("aws.sms"));
        let err = Config::from_env(env(&[("TERN_EVENT_SOURCE", "my source")])).unwrap_err();
        assert_eq!(err.key, "event_source");
        let file: Config = serde_json::from_str(r#"{"event_source": "acme.migrations"}"#).unwrap();
        assert_eq!(file.event_source.as_deref(), Some("acme.migrations"));
    }

    #[test]
    fn every_key_has_its_own_variable() {
        let names = Config::env_names();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert!(names.contains(&"TERN_MAX_ACTIVE_JOBS".to_string()));
    }
}
