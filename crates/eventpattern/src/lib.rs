//! Amazon EventBridge event-pattern matching.
//!
//! ```
//! use serde_json::json;
//! use tern_eventpattern::Pattern;
//!
//! let pattern = Pattern::parse(r#"{"source": ["tern.sms"], "detail": {"state": ["Failed"]}}"#)?;
//! assert!(pattern.matches(&json!({"source": "tern.sms", "detail": {"state": "Failed"}})));
//! assert!(!pattern.matches(&json!({"source": "tern.sms", "detail": {"state": "Completed"}})));
//! # Ok::<(), tern_eventpattern::PatternError>(())
//! ```
//!
//! Semantics follow the EventBridge user guide ("Event patterns", "Comparison operators"):
//! fields of one object are ANDed, the values listed for a field are ORed, and an event field
//! holding an array matches when any of its elements does. A nested pattern object matched
//! against an array of objects needs one element to satisfy the whole nested object, so that
//! two conditions cannot be met by two different elements.

use std::net::IpAddr;
use std::str::FromStr;

use serde_json::{Map, Value};

mod wildcard;

use wildcard::Wildcard;

/// Why a pattern was refused.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("event pattern is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `path` is a JSONPath-like location (`$.detail.state[0]`) of the part at fault.
    #[error("invalid event pattern at {path}: {problem}")]
    Invalid { path: String, problem: Problem },
}

impl PatternError {
    /// Where in the pattern the problem is, if the pattern was JSON at all.
    pub fn path(&self) -> Option<&str> {
        match self {
            PatternError::Json(_) => None,
            PatternError::Invalid { path, .. } => Some(path),
        }
    }

    pub fn problem(&self) -> Option<&Problem> {
        match self {
            PatternError::Json(_) => None,
            PatternError::Invalid { problem, .. } => Some(problem),
        }
    }
}

/// What is wrong with a pattern, independent of where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("a pattern must be a JSON object")]
    NotAnObject,
    #[error("empty objects are not allowed")]
    EmptyObject,
    #[error("a field must map to an array of match values or to a nested object, found {found}")]
    NotArrayOrObject { found: &'static str },
    #[error("empty arrays are not allowed")]
    EmptyArray,
    #[error("nested arrays are not allowed in a match list")]
    NestedArray,
    #[error("an operator object must have exactly one key, found {found}")]
    OperatorKeyCount { found: usize },
    #[error("unknown operator '{operator}'")]
    UnknownOperator { operator: String },
    #[error("'{operator}' expects {expected}")]
    BadOperand {
        operator: &'static str,
        expected: &'static str,
    },
    #[error("invalid numeric range: {reason}")]
    NumericRange { reason: &'static str },
    #[error("invalid wildcard: {reason}")]
    Wildcard { reason: &'static str },
    #[error("invalid CIDR block '{value}'")]
    Cidr { value: String },
    #[error("$or expects an array of at least two non-empty pattern objects")]
    Or,
}

/// A parsed, validated event pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    root: Node,
}

impl Pattern {
    /// Parses a pattern from its JSON text (`&str`, `&String`) or from JSON already read
    /// (`&serde_json::Value`).
    pub fn parse(source: impl PatternSource) -> Result<Pattern, PatternError> {
        source.to_pattern()
    }

    /// Parses a pattern already read as JSON (for instance an inline table of a config file).
    pub fn from_value(value: &Value) -> Result<Pattern, PatternError> {
        let root = match value {
            Value::Object(map) => Node::parse(map, &Path::root())?,
            _ => return Err(Path::root().error(Problem::NotAnObject)),
        };
        Ok(Pattern { root })
    }

    /// Whether `event` matches. Never fails: a value of an unexpected type simply does not match.
    pub fn matches(&self, event: &Value) -> bool {
        match event {
            Value::Object(map) => self.root.matches(map),
            _ => false,
        }
    }
}

/// What [`Pattern::parse`] accepts.
pub trait PatternSource {
    fn to_pattern(self) -> Result<Pattern, PatternError>;
}

impl PatternSource for &str {
    fn to_pattern(self) -> Result<Pattern, PatternError> {
        let value: Value = serde_json::from_str(self)?;
        Pattern::from_value(&value)
    }
}

impl PatternSource for &String {
    fn to_pattern(self) -> Result<Pattern, PatternError> {
        self.as_str().to_pattern()
    }
}

impl PatternSource for &Value {
    fn to_pattern(self) -> Result<Pattern, PatternError> {
        Pattern::from_value(self)
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

impl TryFrom<&Value> for Pattern {
    type Error = PatternError;

    fn try_from(value: &Value) -> Result<Self, Self::Error> {
        Pattern::from_value(value)
    }
}

/// A location in the pattern, rendered for error messages.
#[derive(Clone)]
struct Path(String);

impl Path {
    fn root() -> Self {
        Path("$".to_owned())
    }

    fn key(&self, key: &str) -> Self {
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '$');
        if plain {
            Path(format!("{}.{}", self.0, key))
        } else {
            Path(format!("{}[{}]", self.0, Value::String(key.to_owned())))
        }
    }

    fn index(&self, i: usize) -> Self {
        Path(format!("{}[{}]", self.0, i))
    }

    fn error(&self, problem: Problem) -> PatternError {
        PatternError::Invalid {
            path: self.0.clone(),
            problem,
        }
    }
}

/// One object level of a pattern: every field must match, and every `$or` must have one
/// matching branch.
#[derive(Debug, Clone, PartialEq)]
struct Node {
    fields: Vec<(String, FieldPattern)>,
    ors: Vec<Vec<Node>>,
}

#[derive(Debug, Clone, PartialEq)]
enum FieldPattern {
    Nested(Node),
    Leaf(Vec<Matcher>),
}

impl Node {
    fn parse(map: &Map<String, Value>, path: &Path) -> Result<Node, PatternError> {
        if map.is_empty() {
            return Err(path.error(Problem::EmptyObject));
        }
        let mut node = Node {
            fields: Vec::new(),
            ors: Vec::new(),
        };
        for (key, value) in map {
            let here = path.key(key);
            if key == "$or" {
                node.ors.push(parse_or(value, &here)?);
                continue;
            }
            let field = match value {
                Value::Object(inner) => FieldPattern::Nested(Node::parse(inner, &here)?),
                Value::Array(items) => FieldPattern::Leaf(parse_match_list(items, &here)?),
                other => {
                    return Err(here.error(Problem::NotArrayOrObject {
                        found: type_name(other),
                    }))
                }
            };
            node.fields.push((key.clone(), field));
        }
        Ok(node)
    }

    fn matches(&self, event: &Map<String, Value>) -> bool {
        self.fields
            .iter()
            .all(|(key, field)| field.matches(event.get(key)))
            && self
                .ors
                .iter()
                .all(|branches| branches.iter().any(|b| b.matches(event)))
    }
}

fn parse_or(value: &Value, path: &Path) -> Result<Vec<Node>, PatternError> {
    let Value::Array(items) = value else {
        return Err(path.error(Problem::Or));
    };
    if items.len() < 2 {
        return Err(path.error(Problem::Or));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(map) => Node::parse(map, &path.index(i)),
            _ => Err(path.index(i).error(Problem::Or)),
        })
        .collect()
}

impl FieldPattern {
    fn matches(&self, value: Option<&Value>) -> bool {
        match self {
            FieldPattern::Nested(node) => value.is_some_and(|v| nested_matches(node, v)),
            FieldPattern::Leaf(matchers) => {
                let mut leaves = Vec::new();
                if let Some(v) = value {
                    collect_leaves(v, &mut leaves);
                }
                matchers.iter().any(|m| m.matches(&leaves))
            }
        }
    }
}

fn nested_matches(node: &Node, value: &Value) -> bool {
    match value {
        Value::Object(map) => node.matches(map),
        Value::Array(items) => items.iter().any(|item| nested_matches(node, item)),
        _ => false,
    }
}

/// The scalar values at a field: the value itself, or every scalar inside arrays (at any
/// depth). Objects are intermediate nodes, not leaves, as in EventBridge.
fn collect_leaves<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| collect_leaves(item, out)),
        Value::Object(_) => {}
        scalar => out.push(scalar),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One entry of a field's match list.
#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Exact(Value),
    Prefix(String),
    PrefixIgnoreCase(String),
    Suffix(String),
    SuffixIgnoreCase(String),
    EqualsIgnoreCase(String),
    Wildcard(Wildcard),
    Numeric(Range),
    Exists(bool),
    Cidr(Cidr),
    AnythingBut(Negated),
}

/// What an `anything-but` excludes.
#[derive(Debug, Clone, PartialEq)]
enum Negated {
    Values(Vec<Value>),
    Prefixes(Vec<String>),
    Suffixes(Vec<String>),
    IgnoringCase(Vec<String>),
    Wildcards(Vec<Wildcard>),
}

fn parse_match_list(items: &[Value], path: &Path) -> Result<Vec<Matcher>, PatternError> {
    if items.is_empty() {
        return Err(path.error(Problem::EmptyArray));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_matcher(item, &path.index(i)))
        .collect()
}

fn parse_matcher(item: &Value, path: &Path) -> Result<Matcher, PatternError> {
    let map = match item {
        Value::Array(_) => return Err(path.error(Problem::NestedArray)),
        Value::Object(map) => map,
        scalar => return Ok(Matcher::Exact(scalar.clone())),
    };
    let mut entries = map.iter();
    let (Some((operator, operand)), None) = (entries.next(), entries.next()) else {
        return Err(path.error(Problem::OperatorKeyCount { found: map.len() }));
    };
    let at = path.key(operator);
    Ok(match operator.as_str() {
        "prefix" => match text_or_ignore_case(operand, "prefix", &at)? {
            (s, false) => Matcher::Prefix(s),
            (s, true) => Matcher::PrefixIgnoreCase(s.to_lowercase()),
        },
        "suffix" => match text_or_ignore_case(operand, "suffix", &at)? {
            (s, false) => Matcher::Suffix(s),
            (s, true) => Matcher::SuffixIgnoreCase(s.to_lowercase()),
        },
        "equals-ignore-case" => Matcher::EqualsIgnoreCase(
            string_operand(operand, "equals-ignore-case", &at)?.to_lowercase(),
        ),
        "wildcard" => Matcher::Wildcard(Wildcard::parse(
            &string_operand(operand, "wildcard", &at)?,
            &at,
        )?),
        "numeric" => Matcher::Numeric(Range::parse(operand, &at)?),
        "exists" => match operand {
            Value::Bool(b) => Matcher::Exists(*b),
            _ => {
                return Err(at.error(Problem::BadOperand {
                    operator: "exists",
                    expected: "true or false",
                }))
            }
        },
        "cidr" => Matcher::Cidr(Cidr::parse(&string_operand(operand, "cidr", &at)?, &at)?),
        "anything-but" => Matcher::AnythingBut(parse_anything_but(operand, &at)?),
        other => {
            return Err(path.error(Problem::UnknownOperator {
                operator: other.to_owned(),
            }))
        }
    })
}

fn string_operand(
    value: &Value,
    operator: &'static str,
    path: &Path,
) -> Result<String, PatternError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        _ => Err(path.error(Problem::BadOperand {
            operator,
            expected: "a string",
        })),
    }
}

/// `"p"` or `{"equals-ignore-case": "p"}`, the two forms `prefix` and `suffix` take.
fn text_or_ignore_case(
    value: &Value,
    operator: &'static str,
    path: &Path,
) -> Result<(String, bool), PatternError> {
    let bad = || {
        path.error(Problem::BadOperand {
            operator,
            expected: "a string or {\"equals-ignore-case\": string}",
        })
    };
    match value {
        Value::String(s) => Ok((s.clone(), false)),
        Value::Object(map) if map.len() == 1 => match map.get("equals-ignore-case") {
            Some(Value::String(s)) => Ok((s.clone(), true)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// One string or a non-empty list of strings, the operand shape of the `anything-but` forms.
fn strings(
    value: &Value,
    operator: &'static str,
    path: &Path,
) -> Result<Vec<String>, PatternError> {
    let bad = || {
        path.error(Problem::BadOperand {
            operator,
            expected: "a string or a non-empty array of strings",
        })
    };
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

fn parse_anything_but(operand: &Value, path: &Path) -> Result<Negated, PatternError> {
    const EXPECTED: &str = "a string, a number, a non-empty array of only strings or only \
                            numbers, or one of {prefix}, {suffix}, {equals-ignore-case}, {wildcard}";
    let bad = || {
        path.error(Problem::BadOperand {
            operator: "anything-but",
            expected: EXPECTED,
        })
    };
    match operand {
        Value::String(_) | Value::Number(_) => Ok(Negated::Values(vec![operand.clone()])),
        Value::Array(items) => {
            let all_strings = items.iter().all(Value::is_string);
            let all_numbers = items.iter().all(Value::is_number);
            if items.is_empty() || !(all_strings || all_numbers) {
                return Err(bad());
            }
            Ok(Negated::Values(items.clone()))
        }
        Value::Object(map) if map.len() == 1 => {
            let (key, inner) = map.iter().next().ok_or_else(bad)?;
            let at = path.key(key);
            match key.as_str() {
                "prefix" => Ok(Negated::Prefixes(strings(inner, "prefix", &at)?)),
                "suffix" => Ok(Negated::Suffixes(strings(inner, "suffix", &at)?)),
                "equals-ignore-case" => Ok(Negated::IgnoringCase(
                    strings(inner, "equals-ignore-case", &at)?
                        .into_iter()
                        .map(|s| s.to_lowercase())
                        .collect(),
                )),
                "wildcard" => Ok(Negated::Wildcards(
                    strings(inner, "wildcard", &at)?
                        .iter()
                        .map(|s| Wildcard::parse(s, &at))
                        .collect::<Result<_, _>>()?,
                )),
                other => Err(at.error(Problem::UnknownOperator {
                    operator: format!("anything-but/{other}"),
                })),
            }
        }
        _ => Err(bad()),
    }
}

impl Matcher {
    /// `leaves` are the scalar values found at the field (none when it is absent).
    fn matches(&self, leaves: &[&Value]) -> bool {
        match self {
            Matcher::Exists(expected) => leaves.is_empty() != *expected,
            _ => leaves.iter().any(|v| self.matches_value(v)),
        }
    }

    fn matches_value(&self, value: &Value) -> bool {
        let text = value.as_str();
        match self {
            Matcher::Exact(expected) => values_equal(expected, value),
            Matcher::Prefix(p) => text.is_some_and(|s| s.starts_with(p.as_str())),
            Matcher::PrefixIgnoreCase(p) => {
                text.is_some_and(|s| s.to_lowercase().starts_with(p.as_str()))
            }
            Matcher::Suffix(p) => text.is_some_and(|s| s.ends_with(p.as_str())),
            Matcher::SuffixIgnoreCase(p) => {
                text.is_some_and(|s| s.to_lowercase().ends_with(p.as_str()))
            }
            Matcher::EqualsIgnoreCase(e) => text.is_some_and(|s| s.to_lowercase() == *e),
            Matcher::Wildcard(w) => text.is_some_and(|s| w.matches(s)),
            Matcher::Numeric(range) => value.as_f64().is_some_and(|n| range.contains(n)),
            Matcher::Cidr(cidr) => text.is_some_and(|s| cidr.contains(s)),
            Matcher::Exists(_) => true,
            Matcher::AnythingBut(negated) => !negated.excludes(value),
        }
    }
}

impl Negated {
    /// Whether `value` is one of the excluded ones. Non-string values are never excluded by
    /// the string forms, so they pass `anything-but {prefix}` and friends.
    fn excludes(&self, value: &Value) -> bool {
        let text = value.as_str();
        match self {
            Negated::Values(values) => values.iter().any(|v| values_equal(v, value)),
            Negated::Prefixes(ps) => {
                text.is_some_and(|s| ps.iter().any(|p| s.starts_with(p.as_str())))
            }
            Negated::Suffixes(ps) => {
                text.is_some_and(|s| ps.iter().any(|p| s.ends_with(p.as_str())))
            }
            Negated::IgnoringCase(es) => text.is_some_and(|s| es.contains(&s.to_lowercase())),
            Negated::Wildcards(ws) => text.is_some_and(|s| ws.iter().any(|w| w.matches(s))),
        }
    }
}

/// Exact equality, except that numbers compare by value (`5` matches `5.0`), as in EventBridge.
fn values_equal(pattern: &Value, value: &Value) -> bool {
    match (pattern, value) {
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        _ => pattern == value,
    }
}

/// A numeric condition: an optional lower and upper bound, or an exact value.
#[derive(Debug, Clone, PartialEq)]
struct Range {
    lower: Option<(f64, bool)>,
    upper: Option<(f64, bool)>,
}

impl Range {
    fn parse(operand: &Value, path: &Path) -> Result<Range, PatternError> {
        let fail = |reason| path.error(Problem::NumericRange { reason });
        let Value::Array(items) = operand else {
            return Err(fail("expected an array such as [\">\", 0, \"<=\", 5]"));
        };
        if items.is_empty() || items.len() % 2 != 0 || items.len() > 4 {
            return Err(fail("expected one or two operator/number pairs"));
        }
        let mut range = Range {
            lower: None,
            upper: None,
        };
        let mut exact = false;
        for pair in items.chunks(2) {
            let op = pair[0]
                .as_str()
                .ok_or_else(|| fail("operators must be strings"))?;
            let n = pair[1]
                .as_f64()
                .ok_or_else(|| fail("every operator must be followed by a number"))?;
            let slot = match op {
                ">" | ">=" => &mut range.lower,
                "<" | "<=" => &mut range.upper,
                "=" => {
                    if items.len() != 2 {
                        return Err(fail("'=' cannot be combined with other operators"));
                    }
                    exact = true;
                    range.lower = Some((n, true));
                    range.upper = Some((n, true));
                    continue;
                }
                _ => return Err(fail("unknown operator; use <, <=, =, >, >=")),
            };
            if slot.is_some() {
                return Err(fail("at most one lower and one upper bound"));
            }
            *slot = Some((n, op.ends_with('=')));
        }
        if let (false, Some((lo, _)), Some((hi, _))) = (exact, range.lower, range.upper) {
            if lo >= hi {
                return Err(fail("the lower bound must be less than the upper bound"));
            }
        }
        Ok(range)
    }

    fn contains(&self, n: f64) -> bool {
        let above = match self.lower {
            None => true,
            Some((lo, inclusive)) => n > lo || (inclusive && n == lo),
        };
        let below = match self.upper {
            None => true,
            Some((hi, inclusive)) => n < hi || (inclusive && n == hi),
        };
        above && below
    }
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, PartialEq)]
struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    fn parse(text: &str, path: &Path) -> Result<Cidr, PatternError> {
        let fail = || {
            path.error(Problem::Cidr {
                value: text.to_owned(),
            })
        };
        let (addr, len) = text.split_once('/').ok_or_else(fail)?;
        let network: IpAddr = addr.parse().map_err(|_| fail())?;
        let prefix_len: u8 = len.parse().map_err(|_| fail())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(fail());
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }

    fn contains(&self, text: &str) -> bool {
        let Ok(addr) = text.parse::<IpAddr>() else {
            return false;
        };
        let (net, ip, bits) = match (self.network, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => (u32::from(n) as u128, u32::from(a) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
            _ => return false,
        };
        let host_bits = bits - u32::from(self.prefix_len);
        if host_bits >= 128 {
            return true;
        }
        (net >> host_bits) == (ip >> host_bits)
    }
}

#[cfg(test)]
mod tests;
