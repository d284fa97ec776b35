//! Reading a state's fields: which fields each state type allows, and typed readers that record
//! a problem (with its JSON path) instead of stopping at the first bad field.

use serde_json::{Map, Value};

use super::{Count, Graph, Text};
use crate::error::Problem;
use crate::intrinsics::Intrinsic;
use crate::paths::{Optional, Path, ReferencePath, Template};

pub(super) struct Ctx {
    pub(super) problems: Vec<Problem>,
    pub(super) graphs: Vec<Graph>,
}

impl Ctx {
    pub(super) fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub(super) const COMMON: &[&str] = &["Type", "Comment"];

pub(super) fn allowed_fields(kind: &str) -> &'static [&'static str] {
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

pub(super) fn get_str(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Option<String> {
    match obj.get(key) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            cx.problem(format!("{at}.{key}"), "must be a string");
            None
        }
    }
}

pub(super) fn get_path(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Option<Path> {
    let s = get_str(cx, obj, key, at)?;
    match Path::parse(&s) {
        Ok(p) => Some(p),
        Err(e) => {
            cx.problem(format!("{at}.{key}"), e);
            None
        }
    }
}

pub(super) fn get_filter(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Optional<Path> {
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

pub(super) fn get_result_path(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    at: &str,
) -> Optional<ReferencePath> {
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

pub(super) fn get_template(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Option<Template> {
    let v = obj.get(key)?;
    let mut problems = Vec::new();
    let t = Template::parse(v, &format!("{at}.{key}"), &mut problems);
    for (p, m) in problems {
        cx.problem(p, m);
    }
    Some(t)
}

/// A literal non-negative integer or its `…Path` twin; both at once is a problem.
pub(super) fn get_count(
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

pub(super) fn get_text(
    cx: &mut Ctx,
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Option<Text> {
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
