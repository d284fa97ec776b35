//! What each kind of state does with its input (Pass, Task, Choice, Wait, Succeed, Fail,
//! Parallel, Map), apart from anything outside the engine: the caller acts on the [`Outcome`].

use serde_json::{json, Value};

use super::{Exec, FanKind, Thread, ACCOUNT};
use crate::clock::format_ms;
use crate::definition::{Count, Kind, Percentage, State, WaitFor};
use crate::error::{names, StateError};
use crate::paths::{apply_filter, apply_result_path, ContextSource};
use crate::task::TaskRegistry;

/// The context object (`$$`) as seen from one state, built only when a path asks for it.
pub(super) struct Ctx<'a> {
    pub(super) exec: &'a Exec,
    pub(super) state: &'a str,
    pub(super) entered_ms: i64,
    pub(super) retry_count: u32,
    pub(super) token: Option<&'a str>,
    pub(super) item: Option<(u64, &'a Value)>,
}

impl ContextSource for Ctx<'_> {
    fn context(&self) -> Value {
        let mut c = json!({
            "Execution": {
                "Id": self.exec.rec.arn,
                "Input": self.exec.input,
                "Name": self.exec.rec.name,
                "RoleArn": format!("arn:aws:iam::{ACCOUNT}:role/tern-states"),
                "StartTime": format_ms(self.exec.rec.start_ms),
                "RedriveCount": 0,
            },
            "State": {
                "EnteredTime": format_ms(self.entered_ms),
                "Name": self.state,
                "RetryCount": self.retry_count,
            },
            "StateMachine": {
                "Id": self.exec.rec.state_machine_arn,
                "Name": self.exec.machine_name,
            },
        });
        if let Some(t) = self.token {
            c["Task"] = json!({ "Token": t });
        }
        if let Some((i, v)) = self.item {
            c["Map"] = json!({"Item": {"Index": i, "Value": v}});
        }
        c
    }
}

pub(super) enum Outcome {
    Continue(Value),
    End(Value),
    Goto(String, Value),
    Sleep(i64, Value),
    Invoke {
        resource: String,
        task_input: Value,
        timeout: Option<u64>,
        heartbeat: Option<u64>,
    },
    Fanout {
        kind: FanKind,
        effective: Value,
        items: Option<Vec<Value>>,
        total: u64,
        max_concurrency: u64,
        tolerated_count: Option<u64>,
        tolerated_pct: Option<f64>,
    },
}

pub(super) fn count(
    c: &Option<Count>,
    input: &Value,
    ctx: &dyn ContextSource,
    field: &str,
) -> Result<Option<u64>, StateError> {
    match c {
        None => Ok(None),
        Some(Count::Fixed(n)) => Ok(Some(*n)),
        Some(Count::Path(p)) => {
            let v = p.require(input, ctx, field)?;
            v.as_u64().map(Some).ok_or_else(|| {
                StateError::runtime(format!(
                    "{field}: '{}' must select a non-negative integer, got {v}",
                    p.raw()
                ))
            })
        }
    }
}

/// Runs one state's logic that does not depend on the outside (tasks and children are started
/// by the caller from the returned outcome).
pub(super) fn execute(
    exec: &Exec,
    t: &Thread,
    state: &State,
    tasks: &TaskRegistry,
    now: i64,
) -> Result<Outcome, StateError> {
    let ctx = Ctx {
        exec,
        state: &state.name,
        entered_ms: t.entered_ms,
        retry_count: t.retries.iter().sum(),
        token: None,
        item: None,
    };
    let raw = &t.input;
    let effective = apply_filter(&state.input_path, raw, &ctx, "InputPath")?;
    let with_parameters = |effective: Value| -> Result<Value, StateError> {
        match &state.parameters {
            Some(tpl) => tpl.eval(&effective, &ctx),
            None => Ok(effective),
        }
    };
    let finish = |result: Value| -> Result<Value, StateError> {
        let merged = apply_result_path(&state.result_path, raw, result)?;
        apply_filter(&state.output_path, &merged, &ctx, "OutputPath")
    };
    match &state.kind {
        Kind::Pass { result } => {
            let r = match result {
                Some(r) => r.clone(),
                None => with_parameters(effective)?,
            };
            Ok(Outcome::Continue(finish(r)?))
        }
        Kind::Task {
            resource,
            timeout,
            heartbeat,
        } => {
            let resource = tasks.substitute(resource);
            let timeout_v = count(timeout, &effective, &ctx, "TimeoutSecondsPath")?;
            let heartbeat_v = count(heartbeat, &effective, &ctx, "HeartbeatSecondsPath")?;
            // `$$.Task.Token` is only meaningful once a token exists; it is filled in by the caller.
            let token_ctx = Ctx {
                token: Some("\u{0}token"),
                ..ctx
            };
            let task_input = match &state.parameters {
                Some(tpl) => tpl.eval(&effective, &token_ctx)?,
                None => effective,
            };
            Ok(Outcome::Invoke {
                resource,
                task_input,
                timeout: timeout_v,
                heartbeat: heartbeat_v,
            })
        }
        Kind::Choice { choices, default } => {
            for c in choices {
                if c.rule.eval(&effective, &ctx)? {
                    let out = apply_filter(&state.output_path, &effective, &ctx, "OutputPath")?;
                    return Ok(Outcome::Goto(c.next.clone(), out));
                }
            }
            match default {
                Some(d) => {
                    let out = apply_filter(&state.output_path, &effective, &ctx, "OutputPath")?;
                    Ok(Outcome::Goto(d.clone(), out))
                }
                None => Err(StateError::new(
                    names::NO_CHOICE_MATCHED,
                    format!(
                        "No Choice Rule matched and no Default is set in state '{}'",
                        state.name
                    ),
                )),
            }
        }
        Kind::Wait(w) => {
            let until = match w {
                WaitFor::Seconds(s) => now + *s as i64 * 1000,
                WaitFor::Timestamp(ts) => *ts,
                WaitFor::SecondsPath(p) => {
                    let v = p.require(&effective, &ctx, "SecondsPath")?;
                    match v.as_u64() {
                        Some(s) => now + s as i64 * 1000,
                        None => {
                            return Err(StateError::runtime(format!(
                                "SecondsPath '{}' must select a non-negative integer, got {v}",
                                p.raw()
                            )))
                        }
                    }
                }
                WaitFor::TimestampPath(p) => {
                    let v = p.require(&effective, &ctx, "TimestampPath")?;
                    match v.as_str().and_then(crate::definition::parse_timestamp) {
                        Some(ts) => ts,
                        None => {
                            return Err(StateError::runtime(format!(
                                "TimestampPath '{}' must select an RFC 3339 timestamp, got {v}",
                                p.raw()
                            )))
                        }
                    }
                }
            };
            let out = apply_filter(&state.output_path, &effective, &ctx, "OutputPath")?;
            Ok(Outcome::Sleep(until, out))
        }
        Kind::Succeed => Ok(Outcome::End(apply_filter(
            &state.output_path,
            &effective,
            &ctx,
            "OutputPath",
        )?)),
        Kind::Fail { error, cause } => {
            let text = |t: &Option<crate::definition::Text>| -> Result<String, StateError> {
                Ok(match t {
                    None => String::new(),
                    Some(crate::definition::Text::Literal(s)) => s.clone(),
                    Some(crate::definition::Text::Path(p)) => match p.require(raw, &ctx, "Fail")? {
                        Value::String(s) => s,
                        other => {
                            return Err(StateError::runtime(format!(
                                "'{}' must select a string, got {other}",
                                p.raw()
                            )))
                        }
                    },
                    Some(crate::definition::Text::Intrinsic(f)) => match f.eval(raw, &ctx)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    },
                })
            };
            Err(StateError::new(text(error)?, text(cause)?))
        }
        Kind::Parallel { branches } => Ok(Outcome::Fanout {
            kind: FanKind::Parallel,
            effective: with_parameters(effective)?,
            items: None,
            total: branches.len() as u64,
            max_concurrency: 0,
            tolerated_count: None,
            tolerated_pct: None,
        }),
        Kind::Map(spec) => {
            let items = match &spec.items_path {
                Some(p) => p.require(&effective, &ctx, "ItemsPath")?,
                None => effective.clone(),
            };
            let Value::Array(items) = items else {
                return Err(StateError::runtime(format!(
                    "ItemsPath must select an array in Map state '{}'",
                    state.name
                )));
            };
            let max_concurrency = count(
                &spec.max_concurrency,
                &effective,
                &ctx,
                "MaxConcurrencyPath",
            )?
            .unwrap_or(0);
            let tolerated_count = count(
                &spec.tolerated_count,
                &effective,
                &ctx,
                "ToleratedFailureCountPath",
            )?;
            let tolerated_pct = match &spec.tolerated_percentage {
                None => None,
                Some(Percentage::Fixed(x)) => Some(*x),
                Some(Percentage::Path(p)) => {
                    let v = p.require(&effective, &ctx, "ToleratedFailurePercentagePath")?;
                    match v.as_f64() {
                        Some(x) if (0.0..=100.0).contains(&x) => Some(x),
                        _ => return Err(StateError::runtime(format!("ToleratedFailurePercentagePath must select a number from 0 to 100, got {v}"))),
                    }
                }
            };
            Ok(Outcome::Fanout {
                kind: FanKind::Map,
                total: items.len() as u64,
                effective,
                items: Some(items),
                max_concurrency,
                tolerated_count,
                tolerated_pct,
            })
        }
    }
}

/// Replaces the placeholder token that `execute` put where `$$.Task.Token` was read.
pub(super) fn fill_token(v: &mut Value, token: &str) {
    match v {
        Value::String(s) if s == "\u{0}token" => *s = token.to_string(),
        Value::Array(a) => a.iter_mut().for_each(|x| fill_token(x, token)),
        Value::Object(o) => o.values_mut().for_each(|x| fill_token(x, token)),
        _ => {}
    }
}
