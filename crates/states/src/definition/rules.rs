//! Retry and Catch rules: `ErrorEquals` lists and the retrier and catcher fields.

use serde_json::{Map, Value};

use super::fields::{get_result_path, get_str, Ctx};
use super::{Catcher, Retrier};
use crate::error::names;

pub(super) fn error_list(cx: &mut Ctx, obj: &Map<String, Value>, at: &str) -> Vec<String> {
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

pub(super) fn parse_retry(cx: &mut Ctx, obj: &Map<String, Value>, at: &str) -> Vec<Retrier> {
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

pub(super) fn parse_catch(cx: &mut Ctx, obj: &Map<String, Value>, at: &str) -> Vec<Catcher> {
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
