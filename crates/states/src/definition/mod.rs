//! The state machine model and its validation.
//!
//! A definition is parsed from JSON by hand (not with serde derive) so that validation can keep
//! going after the first problem and report every one with the JSON path where it is.
//! This module holds the model; `graph` parses graphs and states, `fields` the field readers and
//! the fields each state type allows, `rules` Retry and Catch.

use std::collections::HashMap;

use serde_json::Value;

use crate::choice::ChoiceRule;
use crate::error::{names, Problem, ValidationErrors};
use crate::intrinsics::Intrinsic;
use crate::paths::{Optional, Path, ReferencePath, Template};

mod fields;
mod graph;
mod rules;

use fields::Ctx;
use graph::parse_graph;

/// A parsed state machine. Branches of Parallel states and Map iterators are sub-graphs, numbered
/// in document order so that a persisted execution can point into them by index.
#[derive(Debug)]
pub struct StateMachine {
    pub graphs: Vec<Graph>,
    pub timeout_seconds: Option<u64>,
    pub comment: Option<String>,
}

#[derive(Debug)]
pub struct Graph {
    pub start_at: String,
    pub states: HashMap<String, State>,
}

#[derive(Debug)]
pub struct State {
    pub name: String,
    pub kind: Kind,
    pub input_path: Optional<Path>,
    pub output_path: Optional<Path>,
    pub parameters: Option<Template>,
    pub result_selector: Option<Template>,
    pub result_path: Optional<ReferencePath>,
    pub transition: Transition,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
}

#[derive(Debug, Clone)]
pub enum Transition {
    Next(String),
    End,
    /// Choice, Succeed and Fail decide for themselves.
    None,
}

#[derive(Debug)]
pub enum Kind {
    Pass {
        result: Option<Value>,
    },
    Task {
        resource: String,
        timeout: Option<Seconds>,
        heartbeat: Option<Seconds>,
    },
    Choice {
        choices: Vec<ChoiceRule>,
        default: Option<String>,
    },
    Wait(WaitFor),
    Succeed,
    Fail {
        error: Option<Text>,
        cause: Option<Text>,
    },
    Parallel {
        branches: Vec<usize>,
    },
    Map(Box<MapSpec>),
}

impl Kind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Pass { .. } => "Pass",
            Kind::Task { .. } => "Task",
            Kind::Choice { .. } => "Choice",
            Kind::Wait(_) => "Wait",
            Kind::Succeed => "Succeed",
            Kind::Fail { .. } => "Fail",
            Kind::Parallel { .. } => "Parallel",
            Kind::Map(_) => "Map",
        }
    }
}

#[derive(Debug)]
pub struct MapSpec {
    pub iterator: usize,
    pub items_path: Option<Path>,
    pub item_selector: Option<Template>,
    pub max_concurrency: Option<Count>,
    pub tolerated_count: Option<Count>,
    pub tolerated_percentage: Option<Percentage>,
}

/// A number given literally or by a path into the effective input.
#[derive(Debug)]
pub enum Count {
    Fixed(u64),
    Path(Path),
}

#[derive(Debug)]
pub enum Percentage {
    Fixed(f64),
    Path(Path),
}

pub type Seconds = Count;

#[derive(Debug)]
pub enum WaitFor {
    Seconds(u64),
    SecondsPath(Path),
    Timestamp(i64),
    TimestampPath(Path),
}

/// Fail's Error/Cause: a literal, or a path / intrinsic function.
#[derive(Debug)]
pub enum Text {
    Literal(String),
    Path(Path),
    Intrinsic(Intrinsic),
}

#[derive(Debug)]
pub struct Retrier {
    pub error_equals: Vec<String>,
    pub interval_seconds: f64,
    pub max_attempts: u32,
    pub backoff_rate: f64,
    pub max_delay_seconds: Option<f64>,
    pub jitter_full: bool,
}

#[derive(Debug)]
pub struct Catcher {
    pub error_equals: Vec<String>,
    pub next: String,
    pub result_path: Optional<ReferencePath>,
}

/// Does an ErrorEquals list cover `error`? `States.ALL` and `States.TaskFailed` are wildcards, but
/// neither matches `States.Runtime` / `States.DataLimitExceeded` (terminal), and `States.TaskFailed`
/// does not match `States.Timeout`.
pub fn error_matches(list: &[String], error: &str) -> bool {
    list.iter().any(|e| {
        e == error
            || (e == names::ALL && !is_terminal(error))
            || (e == names::TASK_FAILED && !is_terminal(error) && error != names::TIMEOUT)
    })
}

pub fn is_terminal(error: &str) -> bool {
    error == names::RUNTIME || error == names::DATA_LIMIT_EXCEEDED
}

pub fn parse_timestamp(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    // Step Functions wants an upper-case 'T' separator and a zone designator.
    if !s.contains('T') {
        return None;
    }
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

impl StateMachine {
    /// Parses and validates a definition given as JSON text.
    pub fn parse(text: &str) -> Result<StateMachine, ValidationErrors> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            ValidationErrors(vec![Problem {
                path: "$".into(),
                message: format!("not valid JSON: {e}"),
            }])
        })?;
        StateMachine::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<StateMachine, ValidationErrors> {
        let mut cx = Ctx {
            problems: Vec::new(),
            graphs: Vec::new(),
        };
        let mut timeout_seconds = None;
        let mut comment = None;
        match value.as_object() {
            None => cx.problem("$", "a definition must be a JSON object"),
            Some(obj) => {
                if let Some(q) = obj.get("QueryLanguage") {
                    if q != "JSONPath" {
                        cx.problem(
                            "$.QueryLanguage",
                            "only the JSONPath query language is supported (JSONata is not)",
                        );
                    }
                }
                for (k, v) in obj {
                    match k.as_str() {
                        "StartAt" | "States" | "QueryLanguage" | "Version" => {}
                        "Comment" => comment = v.as_str().map(str::to_string),
                        "TimeoutSeconds" => match v.as_u64() {
                            Some(n) if n > 0 => timeout_seconds = Some(n),
                            _ => cx.problem("$.TimeoutSeconds", "must be a positive integer"),
                        },
                        other => cx.problem(format!("$.{other}"), "unknown field"),
                    }
                }
                if let Some(v) = obj.get("Version") {
                    if v != "1.0" {
                        cx.problem("$.Version", "only version \"1.0\" is defined");
                    }
                }
                parse_graph(&mut cx, obj, "$");
            }
        }
        if cx.problems.is_empty() {
            Ok(StateMachine {
                graphs: cx.graphs,
                timeout_seconds,
                comment,
            })
        } else {
            Err(ValidationErrors(cx.problems))
        }
    }

    pub fn root(&self) -> &Graph {
        &self.graphs[0]
    }

    /// Whether any state (at any depth) is a Task: the conformance suite runs the others in moto.
    pub fn has_task(&self) -> bool {
        self.graphs.iter().any(|g| {
            g.states
                .values()
                .any(|s| matches!(s.kind, Kind::Task { .. }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let def = r#"{
            "StartAt": "Missing",
            "States": {
                "A": {"Type": "Pass", "Next": "Nowhere", "Bogus": 1},
                "B": {"Type": "Wait", "End": true},
                "C": {"Type": "Task", "End": true, "Retry": [{"ErrorEquals": ["States.ALL", "X"]}]},
                "D": {"Type": "Choice", "Choices": [{"Variable": "$.x", "Next": "A"}]}
            }
        }"#;
        let errs = StateMachine::parse(def).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "$.StartAt",
            "$.States['A'].Next",
            "$.States['A'].Bogus",
            "$.States['B']",
            "$.States['C'].Resource",
            "$.States['C'].Retry[0].ErrorEquals",
            "$.States['D'].Choices[0]",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn unsupported_features_are_named() {
        let def = r#"{"StartAt": "A", "QueryLanguage": "JSONata", "States": {"A": {"Type": "Pass", "Assign": {"x": 1}, "End": true}}}"#;
        let errs = StateMachine::parse(def).unwrap_err().to_string();
        assert!(errs.contains("JSONata"), "{errs}");
        assert!(errs.contains("Assign"), "{errs}");
    }

    #[test]
    fn unreachable_states_and_branch_scope() {
        let def = r#"{"StartAt": "P", "States": {
            "P": {"Type": "Parallel", "End": true, "Branches": [{"StartAt": "X", "States": {"X": {"Type": "Pass", "Next": "P"}}}]},
            "Lost": {"Type": "Succeed"}}}"#;
        let errs = StateMachine::parse(def).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|p| p.path.as_str()).collect();
        assert!(
            paths.contains(&"$.States['P'].Branches[0].States['X'].Next"),
            "{paths:?}"
        );
        assert!(paths.contains(&"$.States['Lost']"), "{paths:?}");
    }
}
