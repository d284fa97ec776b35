//! `--cli-input-json` and `--generate-cli-skeleton`, as the AWS CLI has them. Both are read
//! before the command line is parsed (an operation's required options may come from the JSON,
//! and a skeleton needs none): [`prepare`] turns the JSON's members into the options they
//! name, by the options' own names (`replicationJobId` ↔ `--replication-job-id`), so every
//! subcommand, including ones added later, takes them without code of its own. Options given
//! on the command line win over the JSON's, as in the AWS CLI.

use std::ffi::OsString;
use std::process::ExitCode;

use serde_json::Value;

/// Options that are the CLI's own, not members of an operation's input.
pub(crate) const NOT_INPUT: &[&str] = &[
    "endpoint-url",
    "region",
    "profile",
    "output",
    "query",
    "cli-input-json",
    "generate-cli-skeleton",
    "starting-token",
    "max-items",
    "page-size",
    "no-paginate",
    "help",
];

/// Exit status of a command line the CLI refuses before calling anything (the AWS CLI's).
pub const USAGE_EXIT: u8 = 252;

/// `replication-job-id` → `replicationJobId`.
pub(crate) fn camel(long: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in long.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether the option takes an integer.
pub(crate) fn is_integer(arg: &clap::Arg) -> bool {
    use std::any::TypeId;
    let id = arg.get_value_parser().type_id();
    [
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
    ]
    .into_iter()
    .any(|t| id == t)
}

fn is_flag(arg: &clap::Arg) -> bool {
    matches!(
        arg.get_action(),
        clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
    )
}

fn takes_many(arg: &clap::Arg) -> bool {
    arg.get_num_args().is_some_and(|n| n.max_values() > 1)
}

/// The input members of a subcommand: (wire name, option).
fn members(sub: &clap::Command) -> Vec<(String, &clap::Arg)> {
    sub.get_arguments()
        .filter_map(|a| a.get_long().map(|l| (l, a)))
        .filter(|(l, _)| !NOT_INPUT.contains(l) && !l.starts_with("no-"))
        .map(|(l, a)| (camel(l), a))
        .collect()
}

/// What `--generate-cli-skeleton` prints for a subcommand: each input member with an empty
/// value of its kind, as the AWS CLI prints an operation's input shape.
pub(crate) fn skeleton(sub: &clap::Command) -> Value {
    let mut out = serde_json::Map::new();
    for (name, arg) in members(sub) {
        let value = if is_flag(arg) {
            Value::Bool(true)
        } else {
            let one = if is_integer(arg) {
                Value::from(0)
            } else {
                Value::from("")
            };
            if takes_many(arg) {
                Value::Array(vec![one])
            } else {
                one
            }
        };
        out.insert(name, value);
    }
    Value::Object(out)
}

/// What the command line becomes.
pub enum Prepared {
    /// Parse these (the JSON's members turned into options).
    Args(Vec<OsString>),
    /// Done already (a skeleton printed, or the JSON refused): exit with this status.
    Exit(ExitCode),
}

/// Takes `--cli-input-json` and `--generate-cli-skeleton` out of a `tern sms` command line.
/// `root` is the `tern` command (its `sms` subcommand is looked up in it).
pub fn prepare(args: Vec<OsString>, root: &clap::Command) -> Prepared {
    let text: Vec<Option<&str>> = args.iter().map(|a| a.to_str()).collect();
    if text.get(1).copied().flatten() != Some("sms") {
        return Prepared::Args(args);
    }
    let Some(sub) = text
        .get(2)
        .copied()
        .flatten()
        .and_then(|name| root.find_subcommand("sms")?.find_subcommand(name))
    else {
        return Prepared::Args(args);
    };
    // `--opt value` or `--opt=value`; `None` when absent, `Some(None)` without a value.
    let take = |name: &str| -> Option<(usize, usize, Option<String>)> {
        let flag = format!("--{name}");
        text.iter().enumerate().skip(3).find_map(|(i, a)| {
            let a = (*a)?;
            if a == flag {
                let value = text.get(i + 1).copied().flatten();
                match value {
                    Some(v) if !v.starts_with("--") => Some((i, 2, Some(v.to_string()))),
                    _ => Some((i, 1, None)),
                }
            } else {
                a.strip_prefix(&format!("{flag}="))
                    .map(|v| (i, 1, Some(v.to_string())))
            }
        })
    };
    if let Some((_, _, which)) = take("generate-cli-skeleton") {
        return match which.as_deref().unwrap_or("input") {
            "input" => {
                let out = super::output::render(super::output::Format::Json, "", &skeleton(sub))
                    .expect("JSON prints");
                print!("{out}");
                Prepared::Exit(ExitCode::SUCCESS)
            }
            other => usage(&format!(
                "--generate-cli-skeleton {other}: only `input` is supported (the operation's input as JSON)"
            )),
        };
    }
    let Some((at, count, value)) = take("cli-input-json") else {
        return Prepared::Args(args);
    };
    let Some(value) = value else {
        return usage("--cli-input-json needs JSON, inline or as file://PATH");
    };
    let json = match read_json(&value) {
        Ok(json) => json,
        Err(message) => return usage(&message),
    };
    let given: Vec<&str> = text.iter().skip(3).filter_map(|a| *a).collect();
    let extra = match options_of(&json, sub, &given) {
        Ok(extra) => extra,
        Err(message) => return usage(&message),
    };
    let mut out: Vec<OsString> = Vec::with_capacity(args.len() + extra.len());
    for (i, a) in args.into_iter().enumerate() {
        if i < at || i >= at + count {
            out.push(a);
        }
    }
    out.extend(extra.into_iter().map(OsString::from));
    Prepared::Args(out)
}

fn usage(message: &str) -> Prepared {
    eprintln!("\n{message}\n");
    Prepared::Exit(ExitCode::from(USAGE_EXIT))
}

fn read_json(value: &str) -> Result<Value, String> {
    let text = match value.strip_prefix("file://") {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            format!("Error parsing parameter 'cli-input-json': cannot read {path}: {e}")
        })?,
        None => value.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| {
        format!("Error parsing parameter 'cli-input-json': Invalid JSON received: {e}")
    })
}

/// The options a `--cli-input-json` object stands for, leaving out those the command line
/// already has.
fn options_of(json: &Value, sub: &clap::Command, given: &[&str]) -> Result<Vec<String>, String> {
    let Value::Object(input) = json else {
        return Err("Error parsing parameter 'cli-input-json': the JSON must be an object".into());
    };
    let members = members(sub);
    let on_command_line = |long: &str| {
        given.iter().any(|a| {
            let a = a.split('=').next().unwrap_or(a);
            a == format!("--{long}") || a == format!("--no-{long}")
        })
    };
    let mut out = Vec::new();
    for (key, value) in input {
        let Some((_, arg)) = members.iter().find(|(name, _)| name == key) else {
            let known: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "Parameter validation failed:\nUnknown parameter in input: \"{key}\", must be one of: {}",
                known.join(", ")
            ));
        };
        let long = arg.get_long().expect("members have long names");
        if on_command_line(long) || value.is_null() {
            continue;
        }
        let flag = format!("--{long}");
        match value {
            Value::Bool(b) if is_flag(arg) => {
                if *b {
                    out.push(flag);
                } else if sub
                    .get_arguments()
                    .any(|a| a.get_long() == Some(&format!("no-{long}")))
                {
                    out.push(format!("--no-{long}"));
                }
            }
            Value::Array(items)
                if takes_many(arg) && items.iter().all(|v| !v.is_object() && !v.is_array()) =>
            {
                out.push(flag);
                out.extend(items.iter().map(plain));
            }
            Value::Array(_) | Value::Object(_) => out.push(format!("{flag}={value}")),
            scalar => out.push(format!("{flag}={}", plain(scalar))),
        }
    }
    Ok(out)
}

/// A scalar as an option value (strings without their quotes).
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_wire_names() {
        assert_eq!(camel("replication-job-id"), "replicationJobId");
        assert_eq!(camel("frequency"), "frequency");
        assert_eq!(camel("vm-server-address-list"), "vmServerAddressList");
    }
}
