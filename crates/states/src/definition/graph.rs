//! Parsing and validating graphs (`StartAt` + `States`, reachability, transitions) and each
//! state by its type.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::fields::{
    allowed_fields, get_count, get_filter, get_path, get_result_path, get_str, get_template,
    get_text, Ctx, COMMON,
};
use super::rules::{parse_catch, parse_retry};
use super::{parse_timestamp, Count, Graph, Kind, MapSpec, Percentage, State, Transition, WaitFor};
use crate::choice::{ChoiceRule, Rule};

/// Parses `{StartAt, States}` at `at`; returns the graph index. Graphs are pushed after their
/// nested graphs are reserved, so the index is reserved first to keep document order.
pub(super) fn parse_graph(cx: &mut Ctx, obj: &Map<String, Value>, at: &str) -> usize {
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

pub(super) fn parse_state(cx: &mut Ctx, name: &str, body: &Value, at: &str) -> Option<State> {
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
