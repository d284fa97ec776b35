//! Choice rules: comparisons (literal and `…Path`), type tests, `StringMatches`, And/Or/Not.

use std::cmp::Ordering;

use serde_json::Value;

use crate::definition::parse_timestamp;
use crate::error::StateError;
use crate::paths::{ContextSource, Path};

#[derive(Debug)]
pub struct ChoiceRule {
    pub rule: Rule,
    pub next: String,
}

#[derive(Debug)]
pub enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Compare {
        variable: Path,
        op: Op,
        operand: Operand,
    },
}

#[derive(Debug)]
pub enum Operand {
    Literal(Value),
    Path(Path),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    String(Ordering, bool),
    StringMatches,
    Numeric(Ordering, bool),
    Timestamp(Ordering, bool),
    BooleanEquals,
    IsNull,
    IsPresent,
    IsNumeric,
    IsString,
    IsBoolean,
    IsTimestamp,
}

/// Comparison operators: (name, operator). `(Ordering, true)` means "that ordering or equal".
fn operator(name: &str) -> Option<Op> {
    use Ordering::*;
    let cmp = |base: &str| -> Option<(Ordering, bool)> {
        Some(match base {
            "Equals" => (Equal, false),
            "LessThan" => (Less, false),
            "GreaterThan" => (Greater, false),
            "LessThanEquals" => (Less, true),
            "GreaterThanEquals" => (Greater, true),
            _ => return None,
        })
    };
    if let Some(rest) = name.strip_prefix("String") {
        if rest == "Matches" {
            return Some(Op::StringMatches);
        }
        return cmp(rest).map(|(o, e)| Op::String(o, e));
    }
    if let Some(rest) = name.strip_prefix("Numeric") {
        return cmp(rest).map(|(o, e)| Op::Numeric(o, e));
    }
    if let Some(rest) = name.strip_prefix("Timestamp") {
        return cmp(rest).map(|(o, e)| Op::Timestamp(o, e));
    }
    Some(match name {
        "BooleanEquals" => Op::BooleanEquals,
        "IsNull" => Op::IsNull,
        "IsPresent" => Op::IsPresent,
        "IsNumeric" => Op::IsNumeric,
        "IsString" => Op::IsString,
        "IsBoolean" => Op::IsBoolean,
        "IsTimestamp" => Op::IsTimestamp,
        _ => return None,
    })
}

impl Rule {
    /// Parses one rule; `top` rules may carry `Next` (checked by the caller).
    pub fn parse(
        v: &Value,
        at: &str,
        top: bool,
        problems: &mut Vec<(String, String)>,
    ) -> Option<Rule> {
        let Some(obj) = v.as_object() else {
            problems.push((at.into(), "a choice rule must be an object".into()));
            return None;
        };
        let mut keys: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| !matches!(*k, "Next" | "Comment" | "Variable"))
            .collect();
        if !top && obj.contains_key("Next") {
            problems.push((
                format!("{at}.Next"),
                "only top-level choice rules may have Next".into(),
            ));
        }
        if keys.len() != 1 {
            keys.sort();
            problems.push((
                at.into(),
                format!("a choice rule needs exactly one comparison or And/Or/Not, found {keys:?}"),
            ));
            return None;
        }
        let key = keys[0];
        let here = format!("{at}.{key}");
        let sub = |list: &Value, problems: &mut Vec<(String, String)>| -> Option<Vec<Rule>> {
            let Some(items) = list.as_array().filter(|a| !a.is_empty()) else {
                problems.push((here.clone(), "must be a non-empty array of rules".into()));
                return None;
            };
            let rules: Vec<Option<Rule>> = items
                .iter()
                .enumerate()
                .map(|(i, r)| Rule::parse(r, &format!("{here}[{i}]"), false, problems))
                .collect();
            rules.into_iter().collect()
        };
        match key {
            "And" | "Or" => {
                if obj.contains_key("Variable") {
                    problems.push((
                        format!("{at}.Variable"),
                        format!("{key} rules do not take a Variable"),
                    ));
                }
                let rules = sub(&obj[key], problems)?;
                Some(if key == "And" {
                    Rule::And(rules)
                } else {
                    Rule::Or(rules)
                })
            }
            "Not" => Rule::parse(&obj[key], &here, false, problems).map(|r| Rule::Not(Box::new(r))),
            _ => {
                let (base, by_path) = match key.strip_suffix("Path") {
                    Some(b) if !b.starts_with("Is") => (b, true),
                    _ => (key, false),
                };
                let Some(op) = operator(base) else {
                    problems.push((here, "unknown comparison operator".into()));
                    return None;
                };
                let variable = match obj.get("Variable").and_then(Value::as_str) {
                    Some(s) => match Path::parse(s) {
                        Ok(p) => p,
                        Err(e) => {
                            problems.push((format!("{at}.Variable"), e));
                            return None;
                        }
                    },
                    None => {
                        problems.push((
                            format!("{at}.Variable"),
                            "a comparison needs a Variable path".into(),
                        ));
                        return None;
                    }
                };
                let value = &obj[key];
                let operand = if by_path {
                    match value.as_str().map(Path::parse) {
                        Some(Ok(p)) => Operand::Path(p),
                        Some(Err(e)) => {
                            problems.push((here, e));
                            return None;
                        }
                        None => {
                            problems.push((here, "must be a path string".into()));
                            return None;
                        }
                    }
                } else {
                    let ok = match op {
                        Op::String(..) | Op::StringMatches => value.is_string(),
                        Op::Numeric(..) => value.is_number(),
                        Op::Timestamp(..) => value.as_str().and_then(parse_timestamp).is_some(),
                        _ => value.is_boolean(),
                    };
                    if !ok {
                        problems.push((
                            here,
                            format!("the value {value} does not fit the {base} comparison"),
                        ));
                        return None;
                    }
                    Operand::Literal(value.clone())
                };
                Some(Rule::Compare {
                    variable,
                    op,
                    operand,
                })
            }
        }
    }

    pub fn eval(&self, input: &Value, ctx: &dyn ContextSource) -> Result<bool, StateError> {
        match self {
            Rule::And(rules) => {
                for r in rules {
                    if !r.eval(input, ctx)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Rule::Or(rules) => {
                for r in rules {
                    if r.eval(input, ctx)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Rule::Not(r) => Ok(!r.eval(input, ctx)?),
            Rule::Compare {
                variable,
                op,
                operand,
            } => {
                let value = variable.select(input, ctx);
                if *op == Op::IsPresent {
                    return Ok(value.is_some() == (operand_literal(operand) == &Value::Bool(true)));
                }
                let Some(value) = value else {
                    return Err(StateError::runtime(format!(
                        "Invalid path '{}': The choice state's condition path references an invalid value.",
                        variable.raw()
                    )));
                };
                let expected = match operand {
                    Operand::Literal(v) => v.clone(),
                    Operand::Path(p) => p.require(input, ctx, "Choice")?,
                };
                Ok(compare(*op, &value, &expected))
            }
        }
    }
}

fn operand_literal(o: &Operand) -> &Value {
    match o {
        Operand::Literal(v) => v,
        Operand::Path(_) => &Value::Null,
    }
}

fn ordered(got: Option<Ordering>, want: Ordering, or_equal: bool) -> bool {
    match got {
        Some(o) => o == want || (or_equal && o == Ordering::Equal),
        None => false,
    }
}

/// A type mismatch makes the comparison false rather than an error, as in Step Functions.
fn compare(op: Op, value: &Value, expected: &Value) -> bool {
    let flag = expected == &Value::Bool(true);
    match op {
        Op::String(o, e) => match (value.as_str(), expected.as_str()) {
            (Some(a), Some(b)) => ordered(Some(a.cmp(b)), o, e),
            _ => false,
        },
        Op::StringMatches => match (value.as_str(), expected.as_str()) {
            (Some(a), Some(p)) => glob(a, p),
            _ => false,
        },
        Op::Numeric(o, e) => match (value.as_f64(), expected.as_f64()) {
            (Some(a), Some(b)) if value.is_number() => ordered(a.partial_cmp(&b), o, e),
            _ => false,
        },
        Op::Timestamp(o, e) => match (
            value.as_str().and_then(parse_timestamp),
            expected.as_str().and_then(parse_timestamp),
        ) {
            (Some(a), Some(b)) => ordered(Some(a.cmp(&b)), o, e),
            _ => false,
        },
        Op::BooleanEquals => value.is_boolean() && value == expected,
        Op::IsNull => value.is_null() == flag,
        Op::IsNumeric => value.is_number() == flag,
        Op::IsString => value.is_string() == flag,
        Op::IsBoolean => value.is_boolean() == flag,
        Op::IsTimestamp => value.as_str().and_then(parse_timestamp).is_some() == flag,
        Op::IsPresent => flag,
    }
}

/// `StringMatches`: `*` matches any run of characters; `\*` and `\\` are literal.
fn glob(text: &str, pattern: &str) -> bool {
    #[derive(PartialEq)]
    enum Tok {
        Star,
        Char(char),
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => toks.push(Tok::Char(chars.next().unwrap_or('\\'))),
            '*' => toks.push(Tok::Star),
            c => toks.push(Tok::Char(c)),
        }
    }
    let t: Vec<char> = text.chars().collect();
    // Classic greedy wildcard match with backtracking to the last star.
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < toks.len() && toks[pi] == Tok::Char(t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < toks.len() && toks[pi] == Tok::Star {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < toks.len() && toks[pi] == Tok::Star {
        pi += 1;
    }
    pi == toks.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        assert!(glob("log-2024.txt", "log-*.txt"));
        assert!(glob("a*b", "a\\*b"));
        assert!(!glob("axb", "a\\*b"));
        assert!(glob("", "*"));
        assert!(!glob("abc", "*d"));
        assert!(glob("abcbd", "*b*d"));
    }
}
