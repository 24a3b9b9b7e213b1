//! Readable tables for people; `-o json` prints the API's JSON for scripts instead.

use serde_json::Value;

use super::Output;
use crate::time::{format_duration, Timestamp};

pub fn print(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `list` for scripts when `out` asks for it (JSON, or one `key` per line); returns
/// false when the caller should print its table.
pub fn machine(out: Output, list: &[Value], key: &str) -> bool {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(list).expect("JSON prints")),
        Output::Id => list.iter().for_each(|v| println!("{}", field(v, key))),
        Output::Table => return false,
    }
    true
}

pub fn json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON prints"));
}

/// A field as text; `-` when absent.
pub fn field(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// "in 1h59m" or "3m ago" for an RFC 3339 time field.
pub fn relative(v: &Value, key: &str) -> String {
    let Some(t) = v[key].as_str().and_then(|s| Timestamp::parse_rfc3339(s).ok()) else {
        return "-".into();
    };
    let now = Timestamp::now();
    if t >= now {
        format!("in {}", format_duration(now.until(t)))
    } else {
        format!("{} ago", format_duration(t.until(now)))
    }
}
