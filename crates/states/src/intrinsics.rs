//! The `States.*` intrinsic functions: a small expression language of calls, literals and paths.

use base64::Engine as _;
use serde_json::{Map, Number, Value};

use crate::error::StateError;
use crate::paths::{ContextSource, Path};

const FUNCTIONS: &[(&str, usize, usize)] = &[
    // name, minimum and maximum argument count
    ("States.Format", 1, usize::MAX),
    ("States.StringToJson", 1, 1),
    ("States.JsonToString", 1, 1),
    ("States.Array", 0, usize::MAX),
    ("States.ArrayPartition", 2, 2),
    ("States.ArrayContains", 2, 2),
    ("States.ArrayRange", 3, 3),
    ("States.ArrayGetItem", 2, 2),
    ("States.ArrayLength", 1, 1),
    ("States.ArrayUnique", 1, 1),
    ("States.Base64Encode", 1, 1),
    ("States.Base64Decode", 1, 1),
    ("States.Hash", 2, 2),
    ("States.JsonMerge", 3, 3),
    ("States.MathRandom", 2, 3),
    ("States.MathAdd", 2, 2),
    ("States.StringSplit", 2, 2),
    ("States.UUID", 0, 0),
];

#[derive(Debug, Clone)]
pub struct Intrinsic {
    name: &'static str,
    args: Vec<Arg>,
}

#[derive(Debug, Clone)]
enum Arg {
    Literal(Value),
    Path(Path),
    Call(Intrinsic),
}

struct Parser<'a> {
    src: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl Intrinsic {
    pub fn parse(src: &str) -> Result<Intrinsic, String> {
        let mut p = Parser {
            src,
            chars: src.chars().collect(),
            pos: 0,
        };
        let call = p.call()?;
        p.skip_ws();
        if p.pos != p.chars.len() {
            return Err(p.err("unexpected text after the closing ')'"));
        }
        Ok(call)
    }

    pub fn eval(&self, input: &Value, ctx: &dyn ContextSource) -> Result<Value, StateError> {
        let mut args = Vec::with_capacity(self.args.len());
        for a in &self.args {
            args.push(match a {
                Arg::Literal(v) => v.clone(),
                Arg::Path(p) => p.require(input, ctx, self.name)?,
                Arg::Call(c) => c.eval(input, ctx)?,
            });
        }
        call(self.name, &self.args, args).map_err(StateError::intrinsic)
    }
}

impl Parser<'_> {
    fn err(&self, why: &str) -> String {
        format!(
            "invalid intrinsic function '{}' at character {}: {why}",
            self.src, self.pos
        )
    }

    fn skip_ws(&mut self) {
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
    }

    fn call(&mut self) -> Result<Intrinsic, String> {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.chars.len()
            && (self.chars[self.pos].is_alphanumeric() || self.chars[self.pos] == '.')
        {
            self.pos += 1;
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        let Some(&(known, min, max)) = FUNCTIONS.iter().find(|f| f.0 == name) else {
            return Err(self.err(&format!("unknown function '{name}'")));
        };
        self.skip_ws();
        if self.chars.get(self.pos) != Some(&'(') {
            return Err(self.err("expected '('"));
        }
        self.pos += 1;
        let mut args = Vec::new();
        self.skip_ws();
        if self.chars.get(self.pos) == Some(&')') {
            self.pos += 1;
        } else {
            loop {
                args.push(self.arg()?);
                self.skip_ws();
                match self.chars.get(self.pos) {
                    Some(',') => self.pos += 1,
                    Some(')') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.err("expected ',' or ')'")),
                }
            }
        }
        if args.len() < min || args.len() > max {
            return Err(self.err(&format!(
                "{known} takes {} arguments, got {}",
                arity(min, max),
                args.len()
            )));
        }
        if known == "States.Format" && !matches!(args[0], Arg::Literal(Value::String(_))) {
            return Err(self.err("the first argument of States.Format must be a string literal"));
        }
        Ok(Intrinsic { name: known, args })
    }

    fn arg(&mut self) -> Result<Arg, String> {
        self.skip_ws();
        match self.chars.get(self.pos) {
            Some('\'') => {
                self.pos += 1;
                let mut s = String::new();
                loop {
                    match self.chars.get(self.pos) {
                        None => return Err(self.err("unterminated string")),
                        Some('\\') => {
                            // Keep `\{` and `\}` escaped so States.Format can tell them from placeholders.
                            match self.chars.get(self.pos + 1) {
                                Some(c @ ('{' | '}')) => {
                                    s.push('\\');
                                    s.push(*c);
                                }
                                Some(c) => s.push(*c),
                                None => return Err(self.err("unterminated string")),
                            }
                            self.pos += 2;
                        }
                        Some('\'') => {
                            self.pos += 1;
                            return Ok(Arg::Literal(Value::String(s)));
                        }
                        Some(c) => {
                            s.push(*c);
                            self.pos += 1;
                        }
                    }
                }
            }
            Some('$') => {
                let start = self.pos;
                let mut depth = 0i32;
                let mut quote: Option<char> = None;
                while let Some(&c) = self.chars.get(self.pos) {
                    if let Some(q) = quote {
                        if c == q {
                            quote = None;
                        }
                    } else {
                        match c {
                            '\'' | '"' => quote = Some(c),
                            '[' | '(' => depth += 1,
                            ']' => depth -= 1,
                            ')' if depth == 0 => break,
                            ')' => depth -= 1,
                            ',' if depth == 0 => break,
                            _ => {}
                        }
                    }
                    self.pos += 1;
                }
                let text: String = self.chars[start..self.pos].iter().collect();
                Path::parse(text.trim()).map(Arg::Path)
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let rest: String = self.chars[self.pos..].iter().collect();
                for (word, v) in [
                    ("true", Value::Bool(true)),
                    ("false", Value::Bool(false)),
                    ("null", Value::Null),
                ] {
                    if rest.starts_with(word)
                        && !rest[word.len()..]
                            .starts_with(|c: char| c.is_alphanumeric() || c == '.')
                    {
                        self.pos += word.len();
                        return Ok(Arg::Literal(v));
                    }
                }
                self.call().map(Arg::Call)
            }
            Some(c) if c.is_ascii_digit() || *c == '-' => {
                let start = self.pos;
                self.pos += 1;
                while self
                    .chars
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
                {
                    self.pos += 1;
                }
                let text: String = self.chars[start..self.pos].iter().collect();
                serde_json::from_str::<Number>(&text)
                    .map(|n| Arg::Literal(Value::Number(n)))
                    .map_err(|_| self.err(&format!("invalid number '{text}'")))
            }
            _ => Err(self.err("expected an argument")),
        }
    }
}

fn arity(min: usize, max: usize) -> String {
    if min == max {
        min.to_string()
    } else if max == usize::MAX {
        format!("at least {min}")
    } else {
        format!("{min} to {max}")
    }
}

fn want_str<'a>(f: &str, v: &'a Value, which: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{f}: the {which} argument must be a string, got {v}"))
}

fn want_array<'a>(f: &str, v: &'a Value, which: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{f}: the {which} argument must be an array, got {v}"))
}

fn want_int(f: &str, v: &Value, which: &str) -> Result<i64, String> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => Ok(x as i64),
        _ => Err(format!(
            "{f}: the {which} argument must be an integer, got {v}"
        )),
    }
}

fn stringify(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn call(name: &str, raw: &[Arg], args: Vec<Value>) -> Result<Value, String> {
    match name {
        "States.Format" => {
            let template = want_str(name, &args[0], "first")?;
            let mut out = String::new();
            let mut rest = args[1..].iter();
            let mut chars = template.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            out.push(n);
                        }
                    }
                    '{' if chars.peek() == Some(&'}') => {
                        chars.next();
                        let v = rest.next().ok_or_else(|| {
                            format!("{name}: more '{{}}' placeholders than arguments")
                        })?;
                        if v.is_object() || v.is_array() {
                            return Err(format!(
                                "{name}: arguments must be strings, numbers, booleans or null"
                            ));
                        }
                        out.push_str(&stringify(v));
                    }
                    c => out.push(c),
                }
            }
            if rest.next().is_some() {
                return Err(format!("{name}: more arguments than '{{}}' placeholders"));
            }
            Ok(Value::String(out))
        }
        "States.StringToJson" => {
            let s = want_str(name, &args[0], "first")?;
            serde_json::from_str(s).map_err(|e| format!("{name}: not valid JSON: {e}"))
        }
        "States.JsonToString" => {
            if !matches!(raw[0], Arg::Path(_)) {
                return Err(format!("{name}: the argument must be a path"));
            }
            Ok(Value::String(args[0].to_string()))
        }
        "States.Array" => Ok(Value::Array(args)),
        "States.ArrayPartition" => {
            let items = want_array(name, &args[0], "first")?;
            let size = want_int(name, &args[1], "second")?;
            if size <= 0 {
                return Err(format!(
                    "{name}: the chunk size must be positive, got {size}"
                ));
            }
            Ok(Value::Array(
                items
                    .chunks(size as usize)
                    .map(|c| Value::Array(c.to_vec()))
                    .collect(),
            ))
        }
        "States.ArrayContains" => Ok(Value::Bool(
            want_array(name, &args[0], "first")?.contains(&args[1]),
        )),
        "States.ArrayRange" => {
            let (start, end, step) = (
                want_int(name, &args[0], "first")?,
                want_int(name, &args[1], "second")?,
                want_int(name, &args[2], "third")?,
            );
            if step == 0 {
                return Err(format!("{name}: the step must not be 0"));
            }
            let mut out = Vec::new();
            let mut i = start;
            while (step > 0 && i <= end) || (step < 0 && i >= end) {
                if out.len() == 1000 {
                    return Err(format!("{name}: the range has more than 1000 items"));
                }
                out.push(Value::from(i));
                i += step;
            }
            Ok(Value::Array(out))
        }
        "States.ArrayGetItem" => {
            let items = want_array(name, &args[0], "first")?;
            let i = want_int(name, &args[1], "second")?;
            usize::try_from(i)
                .ok()
                .and_then(|i| items.get(i))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{name}: index {i} is out of bounds (length {})",
                        items.len()
                    )
                })
        }
        "States.ArrayLength" => Ok(Value::from(want_array(name, &args[0], "first")?.len())),
        "States.ArrayUnique" => {
            let mut out: Vec<Value> = Vec::new();
            for v in want_array(name, &args[0], "first")? {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(Value::Array(out))
        }
        "States.Base64Encode" => {
            let s = want_str(name, &args[0], "first")?;
            Ok(Value::String(
                base64::engine::general_purpose::STANDARD.encode(s),
            ))
        }
        "States.Base64Decode" => {
            let s = want_str(name, &args[0], "first")?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("{name}: not valid base64: {e}"))?;
            String::from_utf8(bytes)
                .map(Value::String)
                .map_err(|_| format!("{name}: the decoded data is not UTF-8"))
        }
        "States.Hash" => {
            let data = stringify(&args[0]);
            let alg = want_str(name, &args[1], "second")?;
            use sha2::Digest;
            let digest: Vec<u8> = match alg {
                "MD5" => md5::Md5::digest(data.as_bytes()).to_vec(),
                "SHA-1" => sha1::Sha1::digest(data.as_bytes()).to_vec(),
                "SHA-256" => sha2::Sha256::digest(data.as_bytes()).to_vec(),
                "SHA-384" => sha2::Sha384::digest(data.as_bytes()).to_vec(),
                "SHA-512" => sha2::Sha512::digest(data.as_bytes()).to_vec(),
                other => {
                    return Err(format!(
                        "{name}: unsupported algorithm '{other}' (MD5, SHA-1, SHA-256, SHA-384, SHA-512)"
                    ))
                }
            };
            Ok(Value::String(
                digest.iter().map(|b| format!("{b:02x}")).collect(),
            ))
        }
        "States.JsonMerge" => {
            let (Some(a), Some(b)) = (args[0].as_object(), args[1].as_object()) else {
                return Err(format!("{name}: the first two arguments must be objects"));
            };
            if args[2] != Value::Bool(false) {
                return Err(format!(
                    "{name}: only shallow merges (third argument false) are supported"
                ));
            }
            let mut out: Map<String, Value> = a.clone();
            for (k, v) in b {
                out.insert(k.clone(), v.clone());
            }
            Ok(Value::Object(out))
        }
        "States.MathRandom" => {
            let start = want_int(name, &args[0], "first")?;
            let end = want_int(name, &args[1], "second")?;
            if end < start {
                return Err(format!("{name}: the end {end} is below the start {start}"));
            }
            use rand::{Rng, SeedableRng};
            let v = match args.get(2) {
                Some(seed) => {
                    let seed = want_int(name, seed, "third")?;
                    rand::rngs::StdRng::seed_from_u64(seed as u64).random_range(start..=end)
                }
                None => rand::rng().random_range(start..=end),
            };
            Ok(Value::from(v))
        }
        "States.MathAdd" => {
            let a = want_int(name, &args[0], "first")?;
            let b = want_int(name, &args[1], "second")?;
            a.checked_add(b)
                .map(Value::from)
                .ok_or_else(|| format!("{name}: the sum overflows"))
        }
        "States.StringSplit" => {
            let s = want_str(name, &args[0], "first")?;
            let delims = want_str(name, &args[1], "second")?;
            Ok(Value::Array(
                s.split(|c| delims.contains(c))
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::String(p.to_string()))
                    .collect(),
            ))
        }
        "States.UUID" => Ok(Value::String(uuid::Uuid::new_v4().to_string())),
        other => Err(format!("unknown function {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(src: &str, input: Value) -> Result<Value, StateError> {
        Intrinsic::parse(src).unwrap().eval(&input, &json!({}))
    }

    #[test]
    fn format_with_escapes_and_nesting() {
        assert_eq!(
            run(
                "States.Format('Hi {} \\{x\\} it\\'s {}', $.name, States.MathAdd($.n, 1))",
                json!({"name": "Ann", "n": 2})
            )
            .unwrap(),
            json!("Hi Ann {x} it's 3")
        );
        assert!(run("States.Format('{} {}', 1)", json!({})).is_err());
    }

    #[test]
    fn parse_errors_are_reported() {
        assert!(Intrinsic::parse("States.Nope(1)").is_err());
        assert!(Intrinsic::parse("States.ArrayLength(1, 2)").is_err());
        assert!(Intrinsic::parse("States.Array(1").is_err());
    }

    #[test]
    fn array_and_hash_functions() {
        assert_eq!(
            run("States.ArrayRange(1, 9, 3)", json!({})).unwrap(),
            json!([1, 4, 7])
        );
        assert_eq!(
            run("States.ArrayPartition($.a, 2)", json!({"a": [1, 2, 3]})).unwrap(),
            json!([[1, 2], [3]])
        );
        assert_eq!(
            run("States.Hash('abc', 'SHA-256')", json!({})).unwrap(),
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            run("States.StringSplit('a.b+c', '.+')", json!({})).unwrap(),
            json!(["a", "b", "c"])
        );
        let r = run("States.MathRandom(1, 3)", json!({}))
            .unwrap()
            .as_i64()
            .unwrap();
        assert!((1..=3).contains(&r));
    }
}
