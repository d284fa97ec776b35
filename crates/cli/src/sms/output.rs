//! What `tern sms` does with an operation's answer, as the AWS CLI does it: pagination of the
//! listing operations (`--starting-token`, `--max-items`, `--page-size`, `--no-paginate`),
//! `--query` (JMESPath, with the `jmespath` crate of the JMESPath project) and `--output`
//! (`json`, `text`, `table`).
//!
//! Every subcommand gets these through [`super::Global`] and [`super::Paging`], so a new
//! subcommand that flattens them needs nothing else; a listing operation hands its page call
//! to [`paginate`].

use std::future::Future;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use serde_json::{Map, Value};

use super::{Failure, Paging};

/// `--output`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Json,
    Text,
    Table,
}

/// One page of a listing: the response's members (the list under its key, and whatever else
/// the response carries) and the service's token for the next page.
pub(crate) struct Page {
    pub members: Map<String, Value>,
    pub next_token: Option<String>,
}

/// The AWS CLI's own pagination token (what `NextToken` carries and `--starting-token`
/// takes): the service's token of the page to continue in, and how many of that page's items
/// were already returned. Base64 of `{"nextToken": …, "boto_truncate_amount": n}`, as botocore
/// writes it.
fn encode_token(service_token: Option<&str>, skip: usize) -> String {
    let mut m = Map::new();
    if let Some(t) = service_token {
        m.insert("nextToken".into(), Value::from(t));
    }
    if skip > 0 {
        m.insert("boto_truncate_amount".into(), Value::from(skip));
    }
    base64::engine::general_purpose::STANDARD.encode(Value::Object(m).to_string())
}

fn decode_token(token: &str) -> anyhow::Result<(Option<String>, usize)> {
    let bad = || {
        anyhow!("--starting-token {token:?} is not a token that a previous --max-items output gave")
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let m = v.as_object().ok_or_else(bad)?;
    let service = match m.get("nextToken") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad()),
    };
    let skip = match m.get("boto_truncate_amount") {
        None => 0,
        Some(n) => n.as_u64().ok_or_else(bad)? as usize,
    };
    Ok((service, skip))
}

/// Runs a listing operation the way the AWS CLI does: every page, joined under `list_key`
/// (the other members from the first page), unless told otherwise:
///
/// * `--no-paginate`, or the API's own `--next-token` / `--max-results`: one call, and its
///   `nextToken` is printed as the service gave it;
/// * `--page-size N`: every page, asked for N items at a time;
/// * `--max-items N`: at most N items, and a `NextToken` to pass to `--starting-token` when
///   there are more.
///
/// `fetch(token, max_results)` makes one call.
pub(crate) async fn paginate<F, Fut>(
    paging: &Paging,
    list_key: &str,
    mut fetch: F,
) -> Result<Value, Failure>
where
    F: FnMut(Option<String>, Option<i32>) -> Fut,
    Fut: Future<Output = Result<Page, Failure>>,
{
    if paging.single_page() {
        let page = fetch(
            paging.next_token.clone(),
            paging.max_results.or(paging.page_size),
        )
        .await?;
        let mut out = page.members;
        if let Some(t) = page.next_token {
            out.insert("nextToken".into(), Value::String(t));
        }
        return Ok(Value::Object(out));
    }
    let (mut token, mut skip) = match &paging.starting_token {
        Some(t) => decode_token(t)?,
        None => (None, 0),
    };
    let max = paging.max_items;
    let mut out: Option<Map<String, Value>> = None;
    let mut items = Vec::new();
    let mut resume = None;
    loop {
        let page = fetch(token.clone(), paging.page_size).await?;
        let mut members = page.members;
        let list = match members.remove(list_key) {
            Some(Value::Array(list)) => list,
            _ => Vec::new(),
        };
        out.get_or_insert(members);
        let len = list.len();
        let mut taken = 0;
        for item in list.into_iter().skip(skip) {
            if max.is_some_and(|m| items.len() >= m) {
                break;
            }
            items.push(item);
            taken += 1;
        }
        if max.is_some_and(|m| items.len() >= m) {
            if skip + taken < len {
                resume = Some(encode_token(token.as_deref(), skip + taken));
            } else if let Some(next) = &page.next_token {
                resume = Some(encode_token(Some(next), 0));
            }
            break;
        }
        skip = 0;
        match page.next_token {
            Some(next) if token.as_deref() == Some(next.as_str()) => {
                return Err(Failure::Other(anyhow!(
                    "the service answered the same nextToken {next:?} twice; stopping"
                )))
            }
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let mut out = out.unwrap_or_default();
    out.insert(list_key.into(), Value::Array(items));
    if let Some(t) = resume {
        out.insert("NextToken".into(), Value::String(t));
    }
    Ok(Value::Object(out))
}

/// Checks a `--query` before anything is called (the AWS CLI refuses a bad one as a usage
/// error).
pub(crate) fn check_query(expression: &str) -> anyhow::Result<()> {
    jmespath::compile(expression)
        .map(drop)
        .map_err(|e| anyhow!("Bad value for --query {expression}: {e}"))
}

/// Applies `--query` to an answer.
pub(crate) fn query(expression: &str, value: &Value) -> anyhow::Result<Value> {
    let expr = jmespath::compile(expression)
        .map_err(|e| anyhow!("Bad value for --query {expression}: {e}"))?;
    let result = expr
        .search(value.clone())
        .map_err(|e| anyhow!("--query {expression}: {e}"))?;
    serde_json::to_value(&*result).context("--query result")
}

/// The answer as `--output` prints it (with a final newline; empty when there is nothing to
/// print). `operation` titles a table.
pub(crate) fn render(format: Format, operation: &str, value: &Value) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => {
            let mut buf = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(
                &mut buf,
                serde_json::ser::PrettyFormatter::with_indent(b"    "),
            );
            serde::Serialize::serialize(value, &mut ser)?;
            let mut s = String::from_utf8(buf)?;
            s.push('\n');
            s
        }
        Format::Text => {
            let mut s = String::new();
            text(value, None, None, &mut s);
            s
        }
        Format::Table => table(operation, value),
    })
}

// ----- text: botocore's awscli/text.py, rule for rule -----

/// A scalar as Python's `str()` prints it (the AWS CLI is Python).
fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

fn text(v: &Value, identifier: Option<&str>, scalar_keys: Option<&[String]>, out: &mut String) {
    match v {
        Value::Object(m) => text_dict(m, identifier, scalar_keys, out),
        Value::Array(items) => text_list(items, identifier, out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn text_list(items: &[Value], identifier: Option<&str>, out: &mut String) {
    if items.is_empty() {
        return;
    }
    if items.iter().any(Value::is_object) {
        let mut keys: Vec<String> = items
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|m| {
                m.iter()
                    .filter(|(_, v)| is_scalar(v))
                    .map(|(k, _)| k.clone())
            })
            .collect();
        keys.sort();
        keys.dedup();
        for item in items {
            text(item, identifier, Some(&keys), out);
        }
    } else if items.iter().any(Value::is_array) {
        let (scalars, others): (Vec<&Value>, Vec<&Value>) =
            items.iter().partition(|v| is_scalar(v));
        if !scalars.is_empty() {
            scalar_list(&scalars, identifier, out);
        }
        for other in others {
            text(other, identifier, None, out);
        }
    } else {
        scalar_list(&items.iter().collect::<Vec<_>>(), identifier, out);
    }
}

fn scalar_list(items: &[&Value], identifier: Option<&str>, out: &mut String) {
    match identifier {
        Some(id) => {
            for item in items {
                out.push_str(&format!("{}\t{}\n", id.to_uppercase(), scalar(item)));
            }
        }
        None => {
            let line: Vec<String> = items.iter().map(|v| scalar(v)).collect();
            out.push_str(&line.join("\t"));
            out.push('\n');
        }
    }
}

fn text_dict(
    m: &Map<String, Value>,
    identifier: Option<&str>,
    scalar_keys: Option<&[String]>,
    out: &mut String,
) {
    let mut scalars = Vec::new();
    let mut others: Vec<(&String, &Value)> = Vec::new();
    match scalar_keys {
        None => {
            let mut sorted: Vec<_> = m.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in sorted {
                if is_scalar(v) {
                    scalars.push(scalar(v));
                } else {
                    others.push((k, v));
                }
            }
        }
        Some(keys) => {
            for k in keys {
                scalars.push(m.get(k).map(scalar).unwrap_or_default());
            }
            let mut rest: Vec<_> = m.iter().filter(|(k, _)| !keys.contains(k)).collect();
            rest.sort_by(|a, b| a.0.cmp(b.0));
            others = rest;
        }
    }
    if !scalars.is_empty() {
        if let Some(id) = identifier {
            scalars.insert(0, id.to_uppercase());
        }
        out.push_str(&scalars.join("\t"));
        out.push('\n');
    }
    for (k, v) in others {
        text(v, Some(k), None, out);
    }
}

// ----- table: the AWS CLI's boxed sections -----

/// One box of a table: a title, optional column headers, and rows.
struct Section {
    depth: usize,
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn sections(title: &str, v: &Value, depth: usize, out: &mut Vec<Section>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().filter(|k| is_scalar(&m[*k])).collect();
            keys.sort();
            out.push(Section {
                depth,
                title: title.to_string(),
                rows: if keys.is_empty() {
                    Vec::new()
                } else {
                    vec![keys.iter().map(|k| scalar(&m[*k])).collect()]
                },
                headers: keys.into_iter().cloned().collect(),
            });
            let mut nested: Vec<_> = m.iter().filter(|(_, v)| !is_scalar(v)).collect();
            nested.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in nested {
                sections(k, v, depth + 1, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            let mut keys: Vec<String> = items
                .iter()
                .filter_map(Value::as_object)
                .flat_map(|m| {
                    m.iter()
                        .filter(|(_, v)| is_scalar(v))
                        .map(|(k, _)| k.clone())
                })
                .collect();
            keys.sort();
            keys.dedup();
            let rows = items
                .iter()
                .filter_map(Value::as_object)
                .map(|m| {
                    keys.iter()
                        .map(|k| m.get(k).map(scalar).unwrap_or_default())
                        .collect()
                })
                .collect();
            out.push(Section {
                depth,
                title: title.to_string(),
                headers: keys,
                rows,
            });
            for item in items.iter().filter_map(Value::as_object) {
                let mut nested: Vec<_> = item.iter().filter(|(_, v)| !is_scalar(v)).collect();
                nested.sort_by(|a, b| a.0.cmp(b.0));
                for (k, v) in nested {
                    sections(k, v, depth + 1, out);
                }
            }
        }
        Value::Array(items) => out.push(Section {
            depth,
            title: title.to_string(),
            headers: Vec::new(),
            rows: items.iter().map(|v| vec![scalar(v)]).collect(),
        }),
        other => out.push(Section {
            depth,
            title: title.to_string(),
            headers: Vec::new(),
            rows: vec![vec![scalar(other)]],
        }),
    }
}

fn table(operation: &str, v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    let mut all = Vec::new();
    sections(operation, v, 0, &mut all);
    // Every box is as wide as the widest, as in the AWS CLI.
    let inner = |s: &Section| -> usize {
        let columns = s
            .headers
            .len()
            .max(s.rows.iter().map(Vec::len).max().unwrap_or(0));
        let cells: usize =
            (0..columns).map(|c| column_width(s, c)).sum::<usize>() + columns.saturating_sub(1);
        cells.max(s.title.chars().count() + 2) + 2 * s.depth
    };
    let width = all.iter().map(inner).max().unwrap_or(0);
    let mut out = String::new();
    for s in &all {
        let w = width - 2 * s.depth;
        let (l, r) = ("|".repeat(s.depth), "|".repeat(s.depth));
        let line = |out: &mut String, body: String| {
            out.push_str(&format!("{l}{body}{r}\n"));
        };
        let title = s.title.as_str();
        let pad = w - title.chars().count();
        line(&mut out, format!("+{}+", "-".repeat(w)));
        line(
            &mut out,
            format!(
                "|{}{title}{}|",
                " ".repeat(pad / 2),
                " ".repeat(pad - pad / 2)
            ),
        );
        let columns = s
            .headers
            .len()
            .max(s.rows.iter().map(Vec::len).max().unwrap_or(0));
        if columns == 0 {
            line(&mut out, format!("+{}+", "-".repeat(w)));
            continue;
        }
        // Spread the spare width over the columns, the last one taking the rest.
        let mut widths: Vec<usize> = (0..columns).map(|c| column_width(s, c)).collect();
        let used: usize = widths.iter().sum::<usize>() + columns - 1;
        *widths.last_mut().expect("a column") += w - used;
        let rule = format!(
            "+{}+",
            widths
                .iter()
                .map(|n| "-".repeat(*n))
                .collect::<Vec<_>>()
                .join("+")
        );
        let row = |cells: &[String]| -> String {
            let body: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let cell = cells.get(i).map(String::as_str).unwrap_or("");
                    format!(" {cell}{}", " ".repeat(n - 1 - cell.chars().count()))
                })
                .collect();
            format!("|{}|", body.join("|"))
        };
        line(&mut out, rule.clone());
        if !s.headers.is_empty() {
            line(&mut out, row(&s.headers));
            line(&mut out, rule.clone());
        }
        for r in &s.rows {
            line(&mut out, row(r));
        }
        line(&mut out, rule);
    }
    out
}

/// Width of column `c`: its longest cell plus a space either side.
fn column_width(s: &Section, c: usize) -> usize {
    let longest = s
        .headers
        .get(c)
        .into_iter()
        .chain(s.rows.iter().filter_map(|r| r.get(c)))
        .map(|cell| cell.chars().count())
        .max()
        .unwrap_or(0);
    longest + 2
}

/// Checks the combination of pagination flags the AWS CLI refuses.
pub(crate) fn check_paging(paging: &Paging) -> anyhow::Result<()> {
    if paging.no_paginate && (paging.starting_token.is_some() || paging.max_items.is_some()) {
        bail!("--no-paginate cannot be combined with --starting-token or --max-items");
    }
    for (name, value) in [
        ("--max-items", paging.max_items.map(|n| n as i64)),
        ("--page-size", paging.page_size.map(i64::from)),
    ] {
        if value.is_some_and(|n| n < 1) {
            bail!("{name} must be at least 1");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let t = encode_token(Some("abc"), 2);
        assert_eq!(decode_token(&t).unwrap(), (Some("abc".to_string()), 2));
        assert_eq!(decode_token(&encode_token(None, 3)).unwrap(), (None, 3));
        assert!(decode_token("not a token").is_err());
        assert!(decode_token(&base64::engine::general_purpose::STANDARD.encode("[1]")).is_err());
    }

    /// The AWS CLI's text rules: a dict's scalars on one tab-separated line (keys sorted), a
    /// list of dicts as rows over the union of their scalar keys, nested values under their
    /// key in capitals, Python's spelling of booleans and null.
    #[test]
    fn text_output_follows_the_aws_cli() {
        let v = json!({
            "replicationJobList": [
                {"replicationJobId": "j-1", "frequency": 12, "runOnce": false,
                 "replicationRunList": [{"replicationRunId": "r-1", "state": "COMPLETED"}]},
                {"replicationJobId": "j-2", "encrypted": true}
            ],
            "nextToken": "t"
        });
        let mut out = String::new();
        text(&v, None, None, &mut out);
        assert_eq!(
            out,
            "t\nREPLICATIONJOBLIST\t\t12\tj-1\tFalse\nREPLICATIONRUNLIST\tr-1\tCOMPLETED\nREPLICATIONJOBLIST\tTrue\t\tj-2\t\n"
        );
        let mut ids = String::new();
        text(&json!(["a", "b"]), None, None, &mut ids);
        assert_eq!(ids, "a\tb\n");
        let mut null = String::new();
        text(&Value::Null, None, None, &mut null);
        assert_eq!(null, "None\n");
    }

    #[test]
    fn tables_box_each_section_at_one_width() {
        let v = json!({"replicationJobList": [{"replicationJobId": "sms-job-1", "frequency": 12}]});
        let t = table("GetReplicationJobs", &v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count()),
            "{t}"
        );
        assert!(lines[1].contains("GetReplicationJobs"), "{t}");
        assert!(t.contains("|| frequency "), "{t}");
        assert!(t.contains("|| 12 "), "{t}");
        assert!(t.contains("sms-job-1"), "{t}");
    }

    #[test]
    fn queries_are_jmespath() {
        let v = json!({"serverList": [{"serverId": "s-1"}, {"serverId": "s-2"}]});
        assert_eq!(
            query("serverList[].serverId", &v).unwrap(),
            json!(["s-1", "s-2"])
        );
        assert_eq!(query("length(serverList)", &v).unwrap(), json!(2));
        assert!(query("serverList[", &v).is_err());
    }
}
