//! The rules file: which events go where. Format in crates/local/README.md ("Event rules").

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use tern_eventpattern::{Pattern, PatternError};

type Source = Box<dyn std::error::Error + Send + Sync>;

/// A rules file that cannot be used. Every problem inside a rule names the rule.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rules file {}: {source}", path.display())]
    Syntax {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("rules file {}: rule '{rule}': {problem}", path.display())]
    Rule {
        path: PathBuf,
        /// The rule's name, or `#n` (1-based) when it has none.
        rule: String,
        problem: RuleProblem,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RuleProblem {
    #[error("has no name")]
    MissingName,
    #[error("another rule has the same name")]
    DuplicateName,
    #[error("{0}")]
    Shape(#[source] Box<toml::de::Error>),
    #[error("event_pattern must be a JSON string or an inline table")]
    PatternType,
    #[error("{0}")]
    Pattern(#[source] PatternError),
    #[error("target {index}: {problem}")]
    Target {
        index: usize,
        problem: TargetProblem,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TargetProblem {
    #[error("invalid url '{url}': {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: Source,
    },
    #[error("url '{url}' must use http or https")]
    UnsupportedScheme { url: String },
    #[error("invalid header '{name}': {source}")]
    InvalidHeader {
        name: String,
        #[source]
        source: Source,
    },
    #[error("argv must name a program")]
    EmptyArgv,
    #[error("path must not be empty")]
    EmptyPath,
    #[error("max_attempts must be at least 1")]
    ZeroAttempts,
}

/// Everything the bus needs, read once at start.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub rules: Vec<Rule>,
    /// Every accepted event is appended here when set.
    pub archive: Option<PathBuf>,
    /// Deliveries that exhausted their attempts, with the last error.
    pub dead_letter: PathBuf,
    /// How many events a slow in-process subscriber may lag before it misses some.
    pub subscriber_capacity: usize,
    /// The SQLite file holding deliveries not yet finished; `<data_dir>/bus.db`.
    pub queue: PathBuf,
}

/// One rule: events matching `pattern` go to every target.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub enabled: bool,
    pub pattern: Pattern,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub kind: TargetKind,
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone)]
pub enum TargetKind {
    /// `POST` of the event JSON; any 2xx is a delivery.
    Webhook {
        url: reqwest::Url,
        headers: Vec<(HeaderName, HeaderValue)>,
        timeout: Duration,
    },
    /// One event per line appended to `path`.
    File { path: PathBuf },
    /// `argv` run with the event JSON on stdin; exit status 0 is a delivery.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
}

/// Attempts and the pause before each retry: `base`, `2·base`, `4·base`… capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff_base
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_DEAD_LETTER: &str = "events-dead-letter.ndjson";
pub const DEFAULT_QUEUE: &str = "bus.db";

impl BusConfig {
    /// No rules; dead letters in `<data_dir>/events-dead-letter.ndjson`; the delivery queue in
    /// `<data_dir>/bus.db`; no archive.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            rules: Vec::new(),
            archive: None,
            dead_letter: data_dir.join(DEFAULT_DEAD_LETTER),
            subscriber_capacity: 1024,
            queue: data_dir.join(DEFAULT_QUEUE),
        }
    }

    /// Reads a rules file. Relative paths in it are taken from `data_dir`.
    pub fn load(rules_file: &Path, data_dir: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(rules_file).map_err(|source| RulesError::Read {
            path: rules_file.to_owned(),
            source,
        })?;
        Self::parse(&text, rules_file, data_dir)
    }

    /// Parses rules-file text; `origin` only names the file in errors.
    pub fn parse(text: &str, origin: &Path, data_dir: &Path) -> Result<Self, RulesError> {
        let syntax = |source| RulesError::Syntax {
            path: origin.to_owned(),
            source: Box::new(source),
        };
        let file: FileSpec = toml::from_str(text).map_err(syntax)?;
        let mut config = Self::new(data_dir);
        config.archive = file.archive.map(|p| data_dir.join(p));
        if let Some(p) = file.dead_letter {
            config.dead_letter = data_dir.join(p);
        }
        if let Some(n) = file.subscriber_capacity {
            config.subscriber_capacity = n.max(1);
        }
        let mut names = HashSet::new();
        for (i, table) in file.rule.into_iter().enumerate() {
            let label = match table.get("name") {
                Some(toml::Value::String(name)) => name.clone(),
                _ => format!("#{}", i + 1),
            };
            let fail = |problem| RulesError::Rule {
                path: origin.to_owned(),
                rule: label.clone(),
                problem,
            };
            let rule = parse_rule(table, data_dir).map_err(fail)?;
            if !names.insert(rule.name.clone()) {
                return Err(fail(RuleProblem::DuplicateName));
            }
            config.rules.push(rule);
        }
        Ok(config)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    archive: Option<PathBuf>,
    dead_letter: Option<PathBuf>,
    subscriber_capacity: Option<usize>,
    #[serde(default)]
    rule: Vec<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    event_pattern: toml::Value,
    #[serde(default)]
    target: Vec<TargetSpec>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum TargetSpec {
    Webhook {
        url: String,
        #[serde(default)]
        headers: toml::Table,
        timeout_ms: Option<u64>,
        max_attempts: Option<u32>,
        backoff_base_ms: Option<u64>,
        backoff_max_ms: Option<u64>,
    },
    File {
        path: PathBuf,
        max_attempts: Option<u32>,
        backoff_base_ms: Option<u64>,
        backoff_max_ms: Option<u64>,
    },
    Command {
        argv: Vec<String>,
        timeout_ms: Option<u64>,
        max_attempts: Option<u32>,
        backoff_base_ms: Option<u64>,
        backoff_max_ms: Option<u64>,
    },
}

fn parse_rule(table: toml::Table, data_dir: &Path) -> Result<Rule, RuleProblem> {
    let spec = RuleSpec::deserialize(toml::Value::Table(table))
        .map_err(|e| RuleProblem::Shape(Box::new(e)))?;
    let name = spec
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or(RuleProblem::MissingName)?;
    let pattern = match &spec.event_pattern {
        toml::Value::String(text) => Pattern::parse(text),
        toml::Value::Table(_) => {
            let json =
                serde_json::to_value(&spec.event_pattern).map_err(|_| RuleProblem::PatternType)?;
            Pattern::from_value(&json)
        }
        _ => return Err(RuleProblem::PatternType),
    }
    .map_err(RuleProblem::Pattern)?;
    let targets = spec
        .target
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            parse_target(t, data_dir).map_err(|problem| RuleProblem::Target {
                index: i + 1,
                problem,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Rule {
        name,
        enabled: spec.enabled,
        pattern,
        targets,
    })
}

fn retry(
    max_attempts: Option<u32>,
    base_ms: Option<u64>,
    max_ms: Option<u64>,
) -> Result<RetryPolicy, TargetProblem> {
    let default = RetryPolicy::default();
    let policy = RetryPolicy {
        max_attempts: max_attempts.unwrap_or(default.max_attempts),
        backoff_base: base_ms.map_or(default.backoff_base, Duration::from_millis),
        backoff_max: max_ms.map_or(default.backoff_max, Duration::from_millis),
    };
    if policy.max_attempts == 0 {
        return Err(TargetProblem::ZeroAttempts);
    }
    Ok(policy)
}

fn parse_target(spec: TargetSpec, data_dir: &Path) -> Result<Target, TargetProblem> {
    let timeout = |ms: Option<u64>| ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    Ok(match spec {
        TargetSpec::Webhook {
            url,
            headers,
            timeout_ms,
            max_attempts,
            backoff_base_ms,
            backoff_max_ms,
        } => {
            let parsed = reqwest::Url::parse(&url).map_err(|e| TargetProblem::InvalidUrl {
                url: url.clone(),
                source: Box::new(e),
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(TargetProblem::UnsupportedScheme { url });
            }
            let headers = headers
                .into_iter()
                .map(|(name, value)| parse_header(&name, &value))
                .collect::<Result<_, _>>()?;
            Target {
                kind: TargetKind::Webhook {
                    url: parsed,
                    headers,
                    timeout: timeout(timeout_ms),
                },
                retry: retry(max_attempts, backoff_base_ms, backoff_max_ms)?,
            }
        }
        TargetSpec::File {
            path,
            max_attempts,
            backoff_base_ms,
            backoff_max_ms,
        } => {
            if path.as_os_str().is_empty() {
                return Err(TargetProblem::EmptyPath);
            }
            Target {
                kind: TargetKind::File {
                    path: data_dir.join(path),
                },
                retry: retry(max_attempts, backoff_base_ms, backoff_max_ms)?,
            }
        }
        TargetSpec::Command {
            argv,
            timeout_ms,
            max_attempts,
            backoff_base_ms,
            backoff_max_ms,
        } => {
            if argv.first().is_none_or(|p| p.is_empty()) {
                return Err(TargetProblem::EmptyArgv);
            }
            Target {
                kind: TargetKind::Command {
                    argv,
                    timeout: timeout(timeout_ms),
                },
                retry: retry(max_attempts, backoff_base_ms, backoff_max_ms)?,
            }
        }
    })
}

fn parse_header(
    name: &str,
    value: &toml::Value,
) -> Result<(HeaderName, HeaderValue), TargetProblem> {
    let bad = |source: Source| TargetProblem::InvalidHeader {
        name: name.to_owned(),
        source,
    };
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(Box::new(e)))?;
    let toml::Value::String(text) = value else {
        return Err(bad("the value must be a string".into()));
    };
    let value = HeaderValue::from_str(text).map_err(|e| bad(Box::new(e)))?;
    Ok((header, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 50,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        };
        let delays: Vec<u64> = [1, 2, 3, 4, 5, 33, 40]
            .into_iter()
            .map(|n| policy.delay_after(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000]);
    }
}
