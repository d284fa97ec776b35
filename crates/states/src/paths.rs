//! Paths, reference paths and payload templates of the JSONPath query language.
//!
//! Queries (`InputPath`, `OutputPath`, `ItemsPath`, `*Path` fields, `.$` template fields) are RFC 9535
//! JSONPath evaluated by `serde_json_path`. Step Functions adds one rule on top: a query that can
//! only select one node ("definite") yields that node, any other query yields the array of its
//! matches.
//!
//! `ResultPath` is a *reference path*: it names where to write, creating missing objects on the way.
//! RFC 9535 only describes how to select existing nodes, so this small piece is written by hand.

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

use crate::error::StateError;
use crate::intrinsics::Intrinsic;

/// A compiled query over the state input (`$…`) or the context object (`$$…`).
#[derive(Debug, Clone)]
pub struct Path {
    raw: String,
    context: bool,
    query: JsonPath,
    definite: bool,
}

impl Path {
    pub fn parse(raw: &str) -> Result<Path, String> {
        let (context, text) = match raw.strip_prefix("$$") {
            Some(rest) => (true, format!("${rest}")),
            None => (false, raw.to_string()),
        };
        if !text.starts_with('$') {
            return Err(format!("path '{raw}' must start with '$'"));
        }
        let query = JsonPath::parse(&text).map_err(|e| format!("invalid JSONPath '{raw}': {e}"))?;
        Ok(Path {
            raw: raw.to_string(),
            context,
            definite: is_definite(&text),
            query,
        })
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn is_context(&self) -> bool {
        self.context
    }

    /// Selects from `input`, or from the context object for `$$` paths. `None` when a definite path
    /// matches nothing.
    pub fn select(&self, input: &Value, ctx: &dyn ContextSource) -> Option<Value> {
        if self.context {
            let context = ctx.context();
            self.select_in(&context)
        } else {
            self.select_in(input)
        }
    }

    fn select_in(&self, doc: &Value) -> Option<Value> {
        let nodes = self.query.query(doc);
        if self.definite {
            nodes.exactly_one().ok().cloned()
        } else {
            Some(Value::Array(nodes.all().into_iter().cloned().collect()))
        }
    }

    /// Like [`Path::select`] but a missing node is a `States.Runtime` error naming the field.
    pub fn require(
        &self,
        input: &Value,
        ctx: &dyn ContextSource,
        field: &str,
    ) -> Result<Value, StateError> {
        self.select(input, ctx).ok_or_else(|| {
            StateError::runtime(format!(
                "Invalid path '{}' in {field}: the path references no value in the input",
                self.raw
            ))
        })
    }
}

/// A query is definite unless it contains a wildcard, descendant segment, filter, slice or union.
fn is_definite(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut quote: Option<u8> = None;
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                b'\'' | b'"' => quote = Some(c),
                b'[' => depth += 1,
                b']' => depth = depth.saturating_sub(1),
                b'*' | b'?' => return false,
                b'.' if bytes.get(i + 1) == Some(&b'.') => return false,
                b':' | b',' if depth > 0 => return false,
                _ => {}
            }
        }
        i += 1;
    }
    true
}

/// Supplies the context object lazily: most states never read it.
pub trait ContextSource {
    fn context(&self) -> Value;
}

impl ContextSource for Value {
    fn context(&self) -> Value {
        self.clone()
    }
}

/// One step of a reference path.
#[derive(Debug, Clone, PartialEq)]
enum RefStep {
    Key(String),
    Index(usize),
}

/// A writable path for `ResultPath`: `$`, `$.a.b`, `$['a b']`, `$.list[2]`.
#[derive(Debug, Clone)]
pub struct ReferencePath {
    raw: String,
    steps: Vec<RefStep>,
}

impl ReferencePath {
    pub fn parse(raw: &str) -> Result<ReferencePath, String> {
        let bad = |why: &str| format!("invalid reference path '{raw}': {why}");
        let rest = raw
            .strip_prefix('$')
            .ok_or_else(|| bad("must start with '$'"))?;
        if rest.starts_with('$') {
            return Err(bad("the context object cannot be written"));
        }
        let chars: Vec<char> = rest.chars().collect();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    let start = i + 1;
                    let mut j = start;
                    while j < chars.len() && chars[j] != '.' && chars[j] != '[' {
                        j += 1;
                    }
                    let name: String = chars[start..j].iter().collect();
                    if name.is_empty() || name.contains(['*', '?', '@', ' ']) {
                        return Err(bad("expected a member name after '.'"));
                    }
                    steps.push(RefStep::Key(name));
                    i = j;
                }
                '[' => {
                    let close = chars[i..]
                        .iter()
                        .position(|c| *c == ']')
                        .map(|p| p + i)
                        .ok_or_else(|| bad("unclosed '['"))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    let inner = inner.trim();
                    if let Some(q) = inner
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                    {
                        steps.push(RefStep::Key(q.to_string()));
                    } else if let Ok(n) = inner.parse::<usize>() {
                        steps.push(RefStep::Index(n));
                    } else {
                        return Err(bad("only member names and array indexes can be written"));
                    }
                    i = close + 1;
                }
                _ => return Err(bad("unexpected character")),
            }
        }
        Ok(ReferencePath {
            raw: raw.to_string(),
            steps,
        })
    }

    /// Writes `value` into `doc` at this path, creating missing objects.
    pub fn write(&self, doc: Value, value: Value) -> Result<Value, StateError> {
        if self.steps.is_empty() {
            return Ok(value);
        }
        let mut doc = doc;
        let fail = |why: &str| {
            StateError::new(
                crate::error::names::RESULT_PATH_MATCH_FAILURE,
                format!(
                    "Unable to apply ResultPath '{}' to the state input: {why}",
                    self.raw
                ),
            )
        };
        let mut cursor = &mut doc;
        for step in &self.steps {
            cursor = match step {
                RefStep::Key(k) => {
                    if cursor.is_null() {
                        *cursor = Value::Object(Map::new());
                    }
                    match cursor {
                        Value::Object(map) => map.entry(k.clone()).or_insert(Value::Null),
                        _ => return Err(fail(&format!("'{k}' is not inside an object"))),
                    }
                }
                RefStep::Index(n) => match cursor {
                    Value::Array(items) if *n < items.len() => &mut items[*n],
                    _ => return Err(fail(&format!("index {n} does not exist"))),
                },
            };
        }
        *cursor = value;
        Ok(doc)
    }
}

/// `InputPath` / `OutputPath` / `ResultPath`: absent, explicitly `null`, or a path.
#[derive(Debug, Clone, Default)]
pub enum Optional<T> {
    #[default]
    Absent,
    Null,
    Set(T),
}

pub fn apply_filter(
    filter: &Optional<Path>,
    input: &Value,
    ctx: &dyn ContextSource,
    field: &str,
) -> Result<Value, StateError> {
    match filter {
        Optional::Absent => Ok(input.clone()),
        Optional::Null => Ok(Value::Object(Map::new())),
        Optional::Set(p) => p.require(input, ctx, field),
    }
}

pub fn apply_result_path(
    rp: &Optional<ReferencePath>,
    raw_input: &Value,
    result: Value,
) -> Result<Value, StateError> {
    match rp {
        Optional::Absent => Ok(result),
        Optional::Null => Ok(raw_input.clone()),
        Optional::Set(r) => r.write(raw_input.clone(), result),
    }
}

/// A payload template (`Parameters`, `ResultSelector`, `ItemSelector`): fields whose name ends in
/// `.$` take their value from a path or an intrinsic function.
#[derive(Debug, Clone)]
pub enum Template {
    Literal(Value),
    Object(Vec<(String, Field)>),
    Array(Vec<Template>),
}

#[derive(Debug, Clone)]
pub enum Field {
    Static(Template),
    Path(Path),
    Intrinsic(Intrinsic),
}

impl Template {
    /// Compiles a template, appending problems as (json path, message).
    pub fn parse(value: &Value, at: &str, problems: &mut Vec<(String, String)>) -> Template {
        match value {
            Value::Object(map) => {
                let mut fields = Vec::new();
                let mut dynamic = false;
                for (k, v) in map {
                    let here = format!("{at}.{k}");
                    if let Some(name) = k.strip_suffix(".$") {
                        dynamic = true;
                        let Some(text) = v.as_str() else {
                            problems.push((
                                here,
                                "a '.$' field needs a path or intrinsic function string".into(),
                            ));
                            continue;
                        };
                        if text.starts_with("States.") {
                            match Intrinsic::parse(text) {
                                Ok(f) => fields.push((name.to_string(), Field::Intrinsic(f))),
                                Err(e) => problems.push((here, e)),
                            }
                        } else {
                            match Path::parse(text) {
                                Ok(p) => fields.push((name.to_string(), Field::Path(p))),
                                Err(e) => problems.push((here, e)),
                            }
                        }
                    } else {
                        let t = Template::parse(v, &here, problems);
                        if !matches!(t, Template::Literal(_)) {
                            dynamic = true;
                        }
                        fields.push((k.clone(), Field::Static(t)));
                    }
                }
                if dynamic {
                    Template::Object(fields)
                } else {
                    Template::Literal(value.clone())
                }
            }
            Value::Array(items) => {
                let parts: Vec<Template> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Template::parse(v, &format!("{at}[{i}]"), problems))
                    .collect();
                if parts.iter().all(|t| matches!(t, Template::Literal(_))) {
                    Template::Literal(value.clone())
                } else {
                    Template::Array(parts)
                }
            }
            other => Template::Literal(other.clone()),
        }
    }

    pub fn eval(&self, input: &Value, ctx: &dyn ContextSource) -> Result<Value, StateError> {
        match self {
            Template::Literal(v) => Ok(v.clone()),
            Template::Array(parts) => parts
                .iter()
                .map(|p| p.eval(input, ctx))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Template::Object(fields) => {
                let mut out = Map::new();
                for (name, field) in fields {
                    let v = match field {
                        Field::Static(t) => t.eval(input, ctx)?,
                        Field::Path(p) => p.require(input, ctx, name)?,
                        Field::Intrinsic(f) => f.eval(input, ctx)?,
                    };
                    out.insert(name.clone(), v);
                }
                Ok(Value::Object(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definite_and_indefinite_queries() {
        let doc = json!({"a": [{"b": 1}, {"b": 2}], "c": {"d": 3}});
        let ctx = json!({});
        assert_eq!(
            Path::parse("$.c.d").unwrap().select(&doc, &ctx),
            Some(json!(3))
        );
        assert_eq!(
            Path::parse("$.a[*].b").unwrap().select(&doc, &ctx),
            Some(json!([1, 2]))
        );
        assert_eq!(
            Path::parse("$.a[1]").unwrap().select(&doc, &ctx),
            Some(json!({"b": 2}))
        );
        assert_eq!(Path::parse("$.nope").unwrap().select(&doc, &ctx), None);
        assert!(Path::parse("a.b").is_err());
    }

    #[test]
    fn reference_paths_create_objects_and_reject_bad_targets() {
        let r = ReferencePath::parse("$.x['y z'].w").unwrap();
        assert_eq!(
            r.write(json!({"k": 1}), json!(5)).unwrap(),
            json!({"k": 1, "x": {"y z": {"w": 5}}})
        );
        let r = ReferencePath::parse("$.k.w").unwrap();
        assert!(r.write(json!({"k": 1}), json!(5)).is_err());
        let r = ReferencePath::parse("$.l[1]").unwrap();
        assert_eq!(
            r.write(json!({"l": [0, 0]}), json!(5)).unwrap(),
            json!({"l": [0, 5]})
        );
        assert!(ReferencePath::parse("$.a[*]").is_err());
        assert!(ReferencePath::parse("$$.Execution").is_err());
    }
}
