//! Execution history: events are appended to one page per execution and commit in a compact line
//! form, and expanded to GetExecutionHistory's JSON when read.

use serde_json::Value;

use super::{Core, Page};
use crate::definition::State;
use crate::error::StoreError;

/// Writes `s` as a JSON string literal, copying the runs that need no escaping in one go.
pub(super) fn push_json_string(buf: &mut String, s: &str) {
    use std::fmt::Write as _;
    buf.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Escaped bytes are ASCII, so these slice boundaries are character boundaries.
        buf.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(buf, "\\u{:04x}", b);
        } else {
            buf.push_str(escape);
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

/// Appends a non-negative integer without going through `fmt`.
pub(super) fn push_u64(buf: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

/// Turns a history page written by `Core::emit_with` into the API's events. Line n is event
/// `first + n`: `<ms since the line before (the first: since the epoch)>,<id − previous id>,`
/// then one of
/// * `E|X<state type>,<name as a JSON string><input/output JSON>`: StateEntered / StateExited;
/// * `D<type>,<details JSON>`: the details under `<type in lower camel case>EventDetails`;
/// * `N<type>`: no details; `G<type>,<details key>,<details JSON>`: any other key.
pub(super) fn expand_page(first: u64, page: &str, out: &mut Vec<Value>) -> Result<(), StoreError> {
    let corrupt = |line: &str| StoreError::Corrupt(format!("bad history line: {line}"));
    let mut json = String::with_capacity(256);
    let mut ms: i64 = 0;
    // Split on '\n' only: `lines()` would also eat a '\r' (none is written, but be exact).
    for (n, line) in page.split('\n').enumerate() {
        let mut parts = line.splitn(3, ',');
        let (Some(ms_delta), Some(back), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(corrupt(line));
        };
        let (Some(id), Ok(dt), Ok(back)) = (
            first.checked_add(n as u64),
            ms_delta.parse::<i64>(),
            back.parse::<u64>(),
        ) else {
            return Err(corrupt(line));
        };
        ms = ms.checked_add(dt).ok_or_else(|| corrupt(line))?;
        let prev = id.checked_sub(back).ok_or_else(|| corrupt(line))?;
        json.clear();
        // Epoch seconds with milliseconds, as the API's timestamps.
        json.push_str(r#"{"timestamp":"#);
        push_u64(&mut json, ms.div_euclid(1000).max(0) as u64);
        let frac = ms.rem_euclid(1000) as u64;
        json.push('.');
        if frac < 100 {
            json.push('0');
        }
        if frac < 10 {
            json.push('0');
        }
        push_u64(&mut json, frac);
        json.push_str(r#","type":""#);
        let mut details_key = String::new();
        let mut details = String::new();
        match body.as_bytes().first() {
            Some(b'N') => json.push_str(&body[1..]),
            Some(b'D') => {
                let (ty, d) = body[1..].split_once(',').ok_or_else(|| corrupt(line))?;
                json.push_str(ty);
                let mut chars = ty.chars();
                details_key.extend(chars.next().map(|c| c.to_ascii_lowercase()));
                details_key.push_str(chars.as_str());
                details_key.push_str("EventDetails");
                details.push_str(d);
            }
            Some(b'G') => {
                let mut parts = body[1..].splitn(3, ',');
                let (Some(ty), Some(key), Some(d)) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(corrupt(line));
                };
                json.push_str(ty);
                details_key.push_str(key);
                details.push_str(d);
            }
            Some(&c @ (b'E' | b'X')) => {
                let (ty, rest) = body[1..].split_once(',').ok_or_else(|| corrupt(line))?;
                let name_len = json_string_len(rest).ok_or_else(|| corrupt(line))?;
                let (name, data) = rest.split_at(name_len);
                let (suffix, field) = if c == b'E' {
                    details_key.push_str("stateEnteredEventDetails");
                    ("StateEntered", "input")
                } else {
                    details_key.push_str("stateExitedEventDetails");
                    ("StateExited", "output")
                };
                json.push_str(ty);
                json.push_str(suffix);
                details.push_str(r#"{"name":"#);
                details.push_str(name);
                details.push_str(",\"");
                details.push_str(field);
                details.push_str("\":");
                push_json_string(&mut details, data);
                details.push_str(",\"");
                details.push_str(field);
                details.push_str(r#"Details":{"truncated":false}}"#);
            }
            _ => return Err(corrupt(line)),
        }
        json.push_str(r#"","id":"#);
        push_u64(&mut json, id);
        json.push_str(r#","previousEventId":"#);
        push_u64(&mut json, prev);
        if !details_key.is_empty() {
            json.push_str(",\"");
            json.push_str(&details_key);
            json.push_str("\":");
            json.push_str(&details);
        }
        json.push('}');
        out.push(serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    }
    Ok(())
}

/// Length in bytes of the JSON string literal that `s` starts with (quotes included).
pub(super) fn json_string_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// `{"name": …, "index": …}` of the MapIteration* events.
pub(super) fn iteration_details(name: &str, index: u64) -> String {
    format!(
        r#"{{"name":{},"index":{index}}}"#,
        serde_json::to_string(name).unwrap_or_default()
    )
}

impl Core {
    /// Appends a history event; `thread` chains `previousEventId` per thread.
    pub(super) fn emit(
        &mut self,
        arn: &str,
        thread: Option<u64>,
        now: i64,
        ty: &str,
        key: &str,
        details: Value,
    ) {
        let details = if key.is_empty() {
            String::new()
        } else {
            details.to_string()
        };
        self.emit_raw(arn, thread, now, &[ty], key, &details);
    }

    pub(super) fn emit_json(
        &mut self,
        arn: &str,
        thread: Option<u64>,
        now: i64,
        ty: &str,
        key: &str,
        details: &str,
    ) {
        self.emit_raw(arn, thread, now, &[ty], key, details);
    }

    /// StateEntered / StateExited, the hot events, written straight into the page in the compact
    /// form (see [`expand_page`]).
    pub(super) fn emit_state(
        &mut self,
        arn: &str,
        tid: u64,
        now: i64,
        state: &State,
        entered: bool,
        data: &str,
    ) {
        self.emit_with(arn, Some(tid), now, |buf| {
            buf.push(if entered { 'E' } else { 'X' });
            buf.push_str(state.kind.type_name());
            buf.push(',');
            push_json_string(buf, &state.name);
            buf.push_str(data);
        });
    }

    pub(super) fn emit_raw(
        &mut self,
        arn: &str,
        thread: Option<u64>,
        now: i64,
        ty: &[&str],
        key: &str,
        details: &str,
    ) {
        // Every details key is the type's name in lower camel case + "EventDetails": say so
        // with one letter instead of spelling the key out.
        let derived = {
            let mut name = ty.iter().flat_map(|p| p.chars());
            let first = name.next();
            let mut key_chars = key.chars();
            key_chars.next() == first.map(|c| c.to_ascii_lowercase())
                && key_chars
                    .as_str()
                    .strip_suffix("EventDetails")
                    .is_some_and(|rest| rest.chars().eq(name))
        };
        self.emit_with(arn, thread, now, |buf| {
            buf.push(if key.is_empty() {
                'N'
            } else if derived {
                'D'
            } else {
                'G'
            });
            for part in ty {
                buf.push_str(part);
            }
            if !key.is_empty() {
                buf.push(',');
                if !derived {
                    buf.push_str(key);
                    buf.push(',');
                }
                buf.push_str(details);
            }
        });
    }

    /// Appends a history event to the execution's page of this commit; `thread` chains
    /// `previousEventId` per thread. Pages hold one line per event in a compact form that
    /// [`expand_page`] turns into the API's JSON on read (a fifth of the bytes of the JSON form,
    /// which is what makes durable histories cheap).
    pub(super) fn emit_with(
        &mut self,
        arn: &str,
        thread: Option<u64>,
        now: i64,
        body: impl FnOnce(&mut String),
    ) {
        let Some(exec) = self.execs.get_mut(arn) else {
            return;
        };
        let id = exec.rec.next_event;
        exec.rec.next_event += 1;
        let prev = match thread.and_then(|t| exec.threads.get_mut(&t)) {
            Some(t) => std::mem::replace(&mut t.prev_event, id),
            None => id - 1,
        };
        let page = match self.pages.get_mut(arn) {
            Some(p) => p,
            None => {
                self.dirty_execs.insert(arn.to_string());
                let body = self
                    .spare_pages
                    .pop()
                    .unwrap_or_else(|| String::with_capacity(64 * 1024));
                self.pages.entry(arn.to_string()).or_insert(Page {
                    first: id,
                    last_ms: 0,
                    body,
                })
            }
        };
        let buf = &mut page.body;
        if !buf.is_empty() {
            buf.push('\n');
        }
        let dt = now - std::mem::replace(&mut page.last_ms, now);
        if dt < 0 {
            buf.push('-');
        }
        push_u64(buf, dt.unsigned_abs());
        buf.push(',');
        // A thread's previous event always comes before it.
        push_u64(buf, id.saturating_sub(prev));
        buf.push(',');
        body(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::{expand_page, push_json_string, push_u64};
    use serde_json::json;

    #[test]
    fn history_pages_expand_every_line_form() {
        let page = "1700000000123,1,NParallelStateStarted\n\
                    0,1,GCustom,oddKey,{\"a\":[1,\",\"]}\n\
                    -3,2,DTaskStarted,{\"resource\":\"r\"}\n\
                    1000,1,XPass,\"a\\\"b,\"{\"v\":\"x,y\"}";
        let mut out = Vec::new();
        expand_page(5, page, &mut out).unwrap();
        assert_eq!(
            out,
            [
                json!({"timestamp": 1_700_000_000.123, "type": "ParallelStateStarted", "id": 5, "previousEventId": 4}),
                json!({"timestamp": 1_700_000_000.123, "type": "Custom", "id": 6, "previousEventId": 5,
                       "oddKey": {"a": [1, ","]}}),
                json!({"timestamp": 1_700_000_000.12, "type": "TaskStarted", "id": 7, "previousEventId": 5,
                       "taskStartedEventDetails": {"resource": "r"}}),
                json!({"timestamp": 1_700_000_001.12, "type": "PassStateExited", "id": 8, "previousEventId": 7,
                       "stateExitedEventDetails": {"name": "a\"b,", "output": "{\"v\":\"x,y\"}",
                                                   "outputDetails": {"truncated": false}}}),
            ]
        );
    }

    #[test]
    fn corrupt_history_lines_are_errors() {
        for page in [
            "garbage",
            "1,1",
            "x,1,NPass",
            "1,9,NPass",
            "1,1,Qwhat",
            "1,1,EPass,\"unterminated",
            "1,1,EPass,noquote{}",
            "1,1,DTaskStarted",
            "9223372036854775807,1,NA\n1,1,NB",
        ] {
            let mut out = Vec::new();
            assert!(expand_page(5, page, &mut out).is_err(), "{page}");
        }
    }

    #[test]
    fn integers_are_written_in_decimal() {
        for n in [0u64, 7, 10, 1_704_067_200, u64::MAX] {
            let mut buf = String::new();
            push_u64(&mut buf, n);
            assert_eq!(buf, n.to_string());
        }
    }

    #[test]
    fn json_strings_round_trip() {
        for s in ["plain", "q\"uote\\back", "line\nbreak\ttab\u{1}", "ünï €"] {
            let mut buf = String::new();
            push_json_string(&mut buf, s);
            assert_eq!(serde_json::from_str::<String>(&buf).unwrap(), s);
        }
    }
}
