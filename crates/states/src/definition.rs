//! The state machine model and its validation.
//!
//! A definition is parsed from JSON by hand (not with serde derive) so that validation can keep
//! going after the first problem and report every one with the JSON path where it is.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::choice::{ChoiceRule, Rule};
use crate::error::{names, Problem, ValidationErrors};
use crate::intrinsics::Intrinsic;
use crate::paths::{Optional, Path, ReferencePath, Template};

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

struct Ctx {
    problems: Vec<Problem>,
    graphs: Vec<Graph>,
}

impl Ctx {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

const COMMON: &[&str] = &["Type", "Comment"];

fn allowed_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pass" => &[
            "Next",
            "End",
            "InputPath",
            "OutputPath",
            "Parameters",
            "ResultPath",
            "Result",
        ],
        "Task" => &[
            "Next",
            "End",
            "InputPath",
            "OutputPath",
            "Parameters",
            "ResultSelector",
            "ResultPath",
            "Resource",
            "TimeoutSeconds",
            "TimeoutSecondsPath",
            "HeartbeatSeconds",
            "HeartbeatSecondsPath",
            "Retry",
            "Catch",
            "Credentials",
        ],
        "Choice" => &["InputPath", "OutputPath", "Choices", "Default"],
        "Wait" => &[
            "Next",
            "End",
            "InputPath",
            "OutputPath",
            "Seconds",
            "SecondsPath",
            "Timestamp",
            "TimestampPath",
        ],
        "Succeed" => &["InputPath", "OutputPath"],
        "Fail" => &["Error", "ErrorPath", "Cause", "CausePath"],
        "Parallel" => &[
            "Next",
            "End",
            "InputPath",
            "OutputPath",
            "Parameters",
            "ResultSelector",
            "ResultPath",
            "Branches",
            "Retry",
            "Catch",
        ],
        "Map" => &[
            "Next",
            "End",
            "InputPath",
            "OutputPath",
            "Parameters",
            "ResultSelector",
            "ResultPath",
            "Retry",
            "Catch",
            "ItemsPath",
            "ItemSelector",
            "ItemProcessor",
            "Iterator",
            "MaxConcurrency",
            "MaxConcurrencyPath",
            "ToleratedFailureCount",
            "ToleratedFailureCountPath",
            "ToleratedFailurePercentage",
            "ToleratedFailurePercentagePath",
            "Label",
        ],
        _ => &[],
    }
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

/// Parses `{StartAt, States}` at `at`; returns the graph index. Graphs are pushed after their
/// nested graphs are reserved, so the index is reserved first to keep document order.
fn parse_graph(cx: &mut Ctx, obj: &Map<String, Value>, at: &str) -> usize {
    let index = cx.graphs.len();
    cx.graphs.push(Graph {
        start_at: String::new(),
        states: HashMap::new(),
    });
    let start_at = match obj.get("StartAt") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            cx.problem(format!("{at}.StartAt"), "must be a string");
            String::new()
        }
        None => {
            cx.problem(format!("{at}.StartAt"), "is required");
            String::new()
        }
    };
    let mut states = HashMap::new();
    match obj.get("States") {
        Some(Value::Object(map)) if !map.is_empty() => {
            for (name, body) in map {
                let here = format!("{at}.States['{name}']");
                if name.is_empty() || name.chars().count() > 80 {
                    cx.problem(&here, "state names must be 1 to 80 characters long");
                }
                if let Some(s) = parse_state(cx, name, body, &here) {
                    states.insert(name.clone(), s);
                }
            }
        }
        Some(_) => cx.problem(format!("{at}.States"), "must be a non-empty object"),
        None => cx.problem(format!("{at}.States"), "is required"),
    }
    let names: HashSet<&str> = obj
        .get("States")
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if !start_at.is_empty() && !names.contains(start_at.as_str()) {
        cx.problem(
            format!("{at}.StartAt"),
            format!("state '{start_at}' does not exist"),
        );
    }
    // Every transition target must be a state of this graph (not of an enclosing or nested one).
    let mut targets: Vec<(String, String)> = Vec::new();
    for (name, s) in &states {
        let here = format!("{at}.States['{name}']");
        if let Transition::Next(n) = &s.transition {
            targets.push((format!("{here}.Next"), n.clone()));
        }
        for (i, c) in s.catch.iter().enumerate() {
            targets.push((format!("{here}.Catch[{i}].Next"), c.next.clone()));
        }
        if let Kind::Choice { choices, default } = &s.kind {
            for (i, c) in choices.iter().enumerate() {
                targets.push((format!("{here}.Choices[{i}].Next"), c.next.clone()));
            }
            if let Some(d) = default {
                targets.push((format!("{here}.Default"), d.clone()));
            }
        }
    }
    for (path, target) in &targets {
        if !names.contains(target.as_str()) {
            cx.problem(path, format!("state '{target}' does not exist"));
        }
    }
    // Unreachable states are rejected, as Step Functions does.
    if names.contains(start_at.as_str()) && states.len() == names.len() {
        let mut seen: HashSet<String> = HashSet::new();
        let mut stack = vec![start_at.clone()];
        while let Some(n) = stack.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(s) = states.get(&n) {
                let mut next: Vec<String> = s.catch.iter().map(|c| c.next.clone()).collect();
                if let Transition::Next(t) = &s.transition {
                    next.push(t.clone());
                }
                if let Kind::Choice { choices, default } = &s.kind {
                    next.extend(choices.iter().map(|c| c.next.clone()));
                    next.extend(default.iter().cloned());
                }
                stack.extend(next.into_iter().filter(|t| names.contains(t.as_str())));
            }
        }
        let mut unreachable: Vec<&String> = states.keys().filter(|n| !seen.contains(*n)).collect();
        unreachable.sort();
        for n in unreachable {
            cx.problem(
                format!("{at}.States['{n}']"),
                "state is not reachable from StartAt",
            );
        }
    }
    cx.graphs[index] = Graph { start_at, states };
    index
}

fn get_str(cx: &mut Ctx, obj: &Map<String, Value>, key: &str, at: &str) -> Option<String> {
    match obj.get(key) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            cx.problem(format!("{at}.{key}"), "must be a string");
            None
        }
    }
}

fn get_path(cx: &mut Ctx, obj: &Map<String, Value>, key: &str, at: &str) -> Option<Path> {
    let s = get_str(cx, obj, key, at)?;
    match Path::parse(&s) {
        Ok(p) => Some(p),
        Err(e) => {
            cx.problem(format!("{at}.{key}"), e);
            None
        }
    }
}

fn get_filter(cx: &mut Ctx, obj: &Map<String, Value>, key: &str, at: &str) -> Optional<Path> {
    match obj.get(key) {
        None => Optional::Absent,
        Some(Value::Null) => Optional::Null,
        Some(_) => match get_path(cx, obj, key, at) {
            Some(p) if p.is_context() && key != "ItemsPath" => {
                cx.problem(
                    format!("{at}.{key}"),
                    "must be a path into the state input, not the context object",
                );
                Optional::Absent
            }
            Some(p) => Optional::Set(p),
            None => Optional::Absent,
        },
    }
}

fn get_result_path(cx: &mut Ctx, obj: &Map<String, Value>, at: &str) -> Optional<ReferencePath> {
    match obj.get("ResultPath") {
        None => Optional::Absent,
        Some(Value::Null) => Optional::Null,
        Some(Value::String(s)) => match ReferencePath::parse(s) {
            Ok(r) => Optional::Set(r),
            Err(e) => {
                cx.problem(format!("{at}.ResultPath"), e);
                Optional::Absent
            }
        },
        Some(_) => {
            cx.problem(
                format!("{at}.ResultPath"),
                "must be a reference path string or null",
            );
            Optional::Absent
        }
    }
}

fn get_template(cx: &mut Ctx, obj: &Map<String, Value>, key: &str, at: &str) -> Option<Template> {
    let v = obj.get(key)?;
    let mut problems = Vec::new();
    let t = Template::parse(v, &format!("{at}.{key}"), &mut problems);
    for (p, m) in problems {
        cx.problem(p, m);
    }
    Some(t)
}

/// A literal non-negative integer or its `…Path` twin; both at once is a problem.
fn get_count(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
    min: u64,
) -> Option<Count> {
    let path_key = format!("{key}Path");
    match (obj.get(key), obj.contains_key(&path_key)) {
        (Some(_), true) => {
            cx.problem(
                format!("{at}.{key}"),
                format!("{key} and {path_key} cannot both be set"),
            );
            None
        }
        (Some(v), false) => match v.as_u64() {
            Some(n) if n >= min => Some(Count::Fixed(n)),
            _ => {
                cx.problem(
                    format!("{at}.{key}"),
                    format!("must be an integer >= {min}"),
                );
                None
            }
        },
        (None, true) => get_path(cx, obj, &path_key, at).map(Count::Path),
        (None, false) => None,
    }
}

fn get_text(cx: &mut Ctx, obj: &Map<String, Value>, key: &str, at: &str) -> Option<Text> {
    let path_key = format!("{key}Path");
    if obj.contains_key(key) && obj.contains_key(&path_key) {
        cx.problem(
            format!("{at}.{key}"),
            format!("{key} and {path_key} cannot both be set"),
        );
        return None;
    }
    if let Some(s) = get_str(cx, obj, key, at) {
        return Some(Text::Literal(s));
    }
    let s = get_str(cx, obj, &path_key, at)?;
    let parsed = if s.starts_with("States.") {
        Intrinsic::parse(&s).map(Text::Intrinsic)
    } else {
        Path::parse(&s).map(Text::Path)
    };
    parsed
        .map_err(|e| cx.problem(format!("{at}.{path_key}"), e))
        .ok()
}

fn parse_state(cx: &mut Ctx, name: &str, body: &Value, at: &str) -> Option<State> {
    let Some(obj) = body.as_object() else {
        cx.problem(at, "a state must be a JSON object");
        return None;
    };
    let Some(ty) = get_str(cx, obj, "Type", at) else {
        cx.problem(format!("{at}.Type"), "is required");
        return None;
    };
    let allowed = allowed_fields(&ty);
    if allowed.is_empty() {
        cx.problem(format!("{at}.Type"), format!("unknown state type '{ty}'"));
        return None;
    }
    for k in obj.keys() {
        if COMMON.contains(&k.as_str()) || allowed.contains(&k.as_str()) {
            continue;
        }
        let why = match k.as_str() {
            "Assign" => "variables (Assign) are not supported".to_string(),
            "QueryLanguage" | "Arguments" | "Output" => {
                "the JSONata query language is not supported".to_string()
            }
            "ItemReader" | "ResultWriter" | "ItemBatcher" => {
                "distributed Map is not supported".to_string()
            }
            _ => format!("field is not valid in a {ty} state"),
        };
        cx.problem(format!("{at}.{k}"), why);
    }
    let transition = match (obj.get("Next"), obj.get("End")) {
        _ if matches!(ty.as_str(), "Choice" | "Succeed" | "Fail") => Transition::None,
        (Some(Value::String(n)), None) => Transition::Next(n.clone()),
        (None, Some(Value::Bool(true))) => Transition::End,
        (Some(_), Some(_)) => {
            cx.problem(format!("{at}.Next"), "Next and End cannot both be set");
            Transition::End
        }
        (Some(_), None) => {
            cx.problem(format!("{at}.Next"), "must be a state name");
            Transition::End
        }
        _ => {
            cx.problem(at, "a non-terminal state needs Next or \"End\": true");
            Transition::End
        }
    };
    let retry = if allowed.contains(&"Retry") {
        parse_retry(cx, obj, at)
    } else {
        Vec::new()
    };
    let catch = if allowed.contains(&"Catch") {
        parse_catch(cx, obj, at)
    } else {
        Vec::new()
    };
    let kind = match ty.as_str() {
        "Pass" => Kind::Pass {
            result: obj.get("Result").cloned(),
        },
        "Task" => {
            let resource = match get_str(cx, obj, "Resource", at) {
                Some(r) if !r.is_empty() => r,
                _ => {
                    cx.problem(format!("{at}.Resource"), "is required (a non-empty string)");
                    String::new()
                }
            };
            let timeout = get_count(cx, obj, "TimeoutSeconds", at, 1);
            let heartbeat = get_count(cx, obj, "HeartbeatSeconds", at, 1);
            if let (Some(Count::Fixed(t)), Some(Count::Fixed(h))) = (&timeout, &heartbeat) {
                if h >= t {
                    cx.problem(
                        format!("{at}.HeartbeatSeconds"),
                        "must be smaller than TimeoutSeconds",
                    );
                }
            }
            Kind::Task {
                resource,
                timeout,
                heartbeat,
            }
        }
        "Choice" => {
            let mut choices = Vec::new();
            match obj.get("Choices") {
                Some(Value::Array(list)) if !list.is_empty() => {
                    for (i, c) in list.iter().enumerate() {
                        let here = format!("{at}.Choices[{i}]");
                        let mut problems = Vec::new();
                        let rule = Rule::parse(c, &here, true, &mut problems);
                        let next = c.get("Next").and_then(Value::as_str);
                        if next.is_none() {
                            problems.push((
                                format!("{here}.Next"),
                                "a top-level choice rule needs Next".into(),
                            ));
                        }
                        for (p, m) in problems {
                            cx.problem(p, m);
                        }
                        if let (Some(rule), Some(next)) = (rule, next) {
                            choices.push(ChoiceRule {
                                rule,
                                next: next.to_string(),
                            });
                        }
                    }
                }
                _ => cx.problem(format!("{at}.Choices"), "must be a non-empty array"),
            }
            Kind::Choice {
                choices,
                default: get_str(cx, obj, "Default", at),
            }
        }
        "Wait" => {
            let given: Vec<&str> = ["Seconds", "SecondsPath", "Timestamp", "TimestampPath"]
                .into_iter()
                .filter(|k| obj.contains_key(*k))
                .collect();
            if given.len() != 1 {
                cx.problem(at, "a Wait state needs exactly one of Seconds, SecondsPath, Timestamp, TimestampPath");
                return None;
            }
            let w = match given[0] {
                "Seconds" => match obj["Seconds"].as_u64() {
                    Some(n) => WaitFor::Seconds(n),
                    None => {
                        cx.problem(format!("{at}.Seconds"), "must be a non-negative integer");
                        return None;
                    }
                },
                "Timestamp" => match obj["Timestamp"].as_str().and_then(parse_timestamp) {
                    Some(t) => WaitFor::Timestamp(t),
                    None => {
                        cx.problem(
                            format!("{at}.Timestamp"),
                            "must be an RFC 3339 timestamp such as 2016-03-14T01:59:00Z",
                        );
                        return None;
                    }
                },
                "SecondsPath" => WaitFor::SecondsPath(get_path(cx, obj, "SecondsPath", at)?),
                _ => WaitFor::TimestampPath(get_path(cx, obj, "TimestampPath", at)?),
            };
            Kind::Wait(w)
        }
        "Succeed" => Kind::Succeed,
        "Fail" => Kind::Fail {
            error: get_text(cx, obj, "Error", at),
            cause: get_text(cx, obj, "Cause", at),
        },
        "Parallel" => {
            let mut branches = Vec::new();
            match obj.get("Branches") {
                Some(Value::Array(list)) if !list.is_empty() => {
                    for (i, b) in list.iter().enumerate() {
                        let here = format!("{at}.Branches[{i}]");
                        match b.as_object() {
                            Some(o) => {
                                for k in o.keys() {
                                    if !matches!(k.as_str(), "StartAt" | "States" | "Comment") {
                                        cx.problem(format!("{here}.{k}"), "unknown field");
                                    }
                                }
                                branches.push(parse_graph(cx, o, &here));
                            }
                            None => cx.problem(
                                here,
                                "a branch must be an object with StartAt and States",
                            ),
                        }
                    }
                }
                _ => cx.problem(format!("{at}.Branches"), "must be a non-empty array"),
            }
            Kind::Parallel { branches }
        }
        "Map" => {
            let proc_key = match (
                obj.contains_key("ItemProcessor"),
                obj.contains_key("Iterator"),
            ) {
                (true, true) => {
                    cx.problem(
                        format!("{at}.Iterator"),
                        "ItemProcessor and Iterator cannot both be set",
                    );
                    "ItemProcessor"
                }
                (false, true) => "Iterator",
                (true, false) => "ItemProcessor",
                (false, false) => {
                    cx.problem(format!("{at}.ItemProcessor"), "is required");
                    return None;
                }
            };
            let here = format!("{at}.{proc_key}");
            let Some(p) = obj[proc_key].as_object() else {
                cx.problem(here, "must be an object with StartAt and States");
                return None;
            };
            for (k, v) in p {
                match k.as_str() {
                    "StartAt" | "States" | "Comment" => {}
                    "ProcessorConfig" => {
                        let mode = v.get("Mode").and_then(Value::as_str).unwrap_or("INLINE");
                        if mode != "INLINE" {
                            cx.problem(
                                format!("{here}.ProcessorConfig.Mode"),
                                "only INLINE Map is supported (distributed Map is not)",
                            );
                        }
                    }
                    other => cx.problem(format!("{here}.{other}"), "unknown field"),
                }
            }
            let iterator = parse_graph(cx, p, &here);
            if obj.contains_key("ItemSelector") && obj.contains_key("Parameters") {
                cx.problem(
                    format!("{at}.Parameters"),
                    "ItemSelector and Parameters cannot both be set",
                );
            }
            let item_selector = get_template(cx, obj, "ItemSelector", at)
                .or_else(|| get_template(cx, obj, "Parameters", at));
            let tolerated_percentage = if obj.contains_key("ToleratedFailurePercentage")
                && obj.contains_key("ToleratedFailurePercentagePath")
            {
                cx.problem(format!("{at}.ToleratedFailurePercentage"), "ToleratedFailurePercentage and ToleratedFailurePercentagePath cannot both be set");
                None
            } else if let Some(v) = obj.get("ToleratedFailurePercentage") {
                match v.as_f64() {
                    Some(x) if (0.0..=100.0).contains(&x) => Some(Percentage::Fixed(x)),
                    _ => {
                        cx.problem(
                            format!("{at}.ToleratedFailurePercentage"),
                            "must be a number from 0 to 100",
                        );
                        None
                    }
                }
            } else {
                get_path(cx, obj, "ToleratedFailurePercentagePath", at).map(Percentage::Path)
            };
            Kind::Map(Box::new(MapSpec {
                iterator,
                items_path: get_path(cx, obj, "ItemsPath", at),
                item_selector,
                max_concurrency: get_count(cx, obj, "MaxConcurrency", at, 0),
                tolerated_count: get_count(cx, obj, "ToleratedFailureCount", at, 0),
                tolerated_percentage,
            }))
        }
        _ => return None,
    };
    let parameters = if matches!(kind, Kind::Map(_)) {
        None
    } else {
        get_template(cx, obj, "Parameters", at)
    };
    Some(State {
        name: name.to_string(),
        input_path: get_filter(cx, obj, "InputPath", at),
        output_path: get_filter(cx, obj, "OutputPath", at),
        parameters,
        result_selector: get_template(cx, obj, "ResultSelector", at),
        result_path: get_result_path(cx, obj, at),
        transition,
        retry,
        catch,
        kind,
    })
}

fn error_list(cx: &mut Ctx, obj: &Map<String, Value>, at: &str) -> Vec<String> {
    let here = format!("{at}.ErrorEquals");
    let list: Vec<String> = match obj.get("ErrorEquals") {
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => {
            cx.problem(here, "must be a non-empty array of error names");
            return Vec::new();
        }
    };
    if list.iter().any(|e| e == names::ALL) && list.len() > 1 {
        cx.problem(here, "States.ALL must appear alone");
    }
    list
}

fn parse_retry(cx: &mut Ctx, obj: &Map<String, Value>, at: &str) -> Vec<Retrier> {
    let Some(v) = obj.get("Retry") else {
        return Vec::new();
    };
    let Some(list) = v.as_array() else {
        cx.problem(format!("{at}.Retry"), "must be an array");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let here = format!("{at}.Retry[{i}]");
        let Some(o) = r.as_object() else {
            cx.problem(here, "must be an object");
            continue;
        };
        for k in o.keys() {
            if !matches!(
                k.as_str(),
                "ErrorEquals"
                    | "IntervalSeconds"
                    | "MaxAttempts"
                    | "BackoffRate"
                    | "MaxDelaySeconds"
                    | "JitterStrategy"
                    | "Comment"
            ) {
                cx.problem(format!("{here}.{k}"), "unknown field");
            }
        }
        let error_equals = error_list(cx, o, &here);
        if error_equals.iter().any(|e| e == names::ALL) && i + 1 != list.len() {
            cx.problem(
                format!("{here}.ErrorEquals"),
                "a retrier with States.ALL must be the last one",
            );
        }
        let mut num = |key: &str, default: f64, ok: &dyn Fn(f64) -> bool, rule: &str| -> f64 {
            match o.get(key) {
                None => default,
                Some(v) => match v.as_f64() {
                    Some(x) if ok(x) => x,
                    _ => {
                        cx.problem(format!("{here}.{key}"), rule.to_string());
                        default
                    }
                },
            }
        };
        let interval_seconds = num(
            "IntervalSeconds",
            1.0,
            &|x| x >= 1.0 && x.fract() == 0.0,
            "must be a positive integer",
        );
        let max_attempts = num(
            "MaxAttempts",
            3.0,
            &|x| x >= 0.0 && x.fract() == 0.0,
            "must be a non-negative integer",
        ) as u32;
        let backoff_rate = num("BackoffRate", 2.0, &|x| x >= 1.0, "must be a number >= 1.0");
        let max_delay_seconds = o.get("MaxDelaySeconds").map(|_| {
            num(
                "MaxDelaySeconds",
                0.0,
                &|x| x > 0.0 && x.fract() == 0.0,
                "must be a positive integer",
            )
        });
        let jitter_full = match o.get("JitterStrategy") {
            None => false,
            Some(v) if v == "FULL" => true,
            Some(v) if v == "NONE" => false,
            Some(_) => {
                cx.problem(format!("{here}.JitterStrategy"), "must be FULL or NONE");
                false
            }
        };
        out.push(Retrier {
            error_equals,
            interval_seconds,
            max_attempts,
            backoff_rate,
            max_delay_seconds,
            jitter_full,
        });
    }
    out
}

fn parse_catch(cx: &mut Ctx, obj: &Map<String, Value>, at: &str) -> Vec<Catcher> {
    let Some(v) = obj.get("Catch") else {
        return Vec::new();
    };
    let Some(list) = v.as_array() else {
        cx.problem(format!("{at}.Catch"), "must be an array");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let here = format!("{at}.Catch[{i}]");
        let Some(o) = c.as_object() else {
            cx.problem(here, "must be an object");
            continue;
        };
        for k in o.keys() {
            if !matches!(
                k.as_str(),
                "ErrorEquals" | "Next" | "ResultPath" | "Comment"
            ) {
                cx.problem(format!("{here}.{k}"), "unknown field");
            }
        }
        let error_equals = error_list(cx, o, &here);
        if error_equals.iter().any(|e| e == names::ALL) && i + 1 != list.len() {
            cx.problem(
                format!("{here}.ErrorEquals"),
                "a catcher with States.ALL must be the last one",
            );
        }
        let Some(next) = get_str(cx, o, "Next", &here) else {
            cx.problem(format!("{here}.Next"), "is required");
            continue;
        };
        out.push(Catcher {
            error_equals,
            next,
            result_path: get_result_path(cx, o, &here),
        });
    }
    out
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
