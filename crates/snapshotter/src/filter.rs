//! containerd's filter expressions, as List requests carry them:
//! `fieldpath[op value]` selectors joined by `,` (all must match), a
//! request's filters alternatives (any may match). Field paths are dotted,
//! parts optionally quoted (`labels."containerd.io/gc.root"`); operators
//! are `==`, `!=`, `~=` (regular expression), `@=` (substring), or none
//! (the field is present). Snapshots have the fields `name`, `parent`,
//! `kind` (`view`, `active`, `committed`) and `labels.<key>`.
use regex::Regex;

use crate::snapshots::Info;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Present,
    Equal,
    NotEqual,
    Matches,
    Contains,
}

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
    value: String,
    regex: Option<Regex>,
}

/// Parsed filters; matching none of zero filters means everything matches.
#[derive(Debug, Default)]
pub struct Filters(Vec<Vec<Selector>>);

impl Filters {
    /// Parses each filter; empty strings are ignored (as containerd does).
    pub fn parse(filters: &[String]) -> Result<Filters, String> {
        let mut all = Vec::new();
        for f in filters.iter().filter(|f| !f.trim().is_empty()) {
            all.push(Parser { chars: f.chars().collect(), pos: 0 }.filter().map_err(|e| format!("filter {f:?}: {e}"))?);
        }
        Ok(Filters(all))
    }

    pub fn matches(&self, info: &Info) -> bool {
        self.0.is_empty() || self.0.iter().any(|selectors| selectors.iter().all(|s| s.matches(info)))
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let (value, present) = field(info, &self.path);
        match self.op {
            Op::Present => present,
            Op::Equal => present && value == self.value,
            Op::NotEqual => value != self.value,
            Op::Contains => value.contains(&self.value),
            Op::Matches => self.regex.as_ref().is_some_and(|r| r.is_match(&value)),
        }
    }
}

/// A field's value and whether it is present (a non-empty name or parent,
/// an existing label).
fn field(info: &Info, path: &[String]) -> (String, bool) {
    let text = |s: &str| (s.to_owned(), !s.is_empty());
    match path {
        [f] if f == "name" => text(&info.name),
        [f] if f == "parent" => text(info.parent.as_deref().unwrap_or("")),
        [f] if f == "kind" => text(info.kind.as_str()),
        [f, key @ ..] if f == "labels" && !key.is_empty() => match info.labels.get(&key.join(".")) {
            Some(v) => (v.clone(), true),
            None => (String::new(), false),
        },
        _ => (String::new(), false),
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        let want: Vec<char> = s.chars().collect();
        if self.chars[self.pos..].starts_with(&want) {
            self.pos += want.len();
            true
        } else {
            false
        }
    }

    fn filter(&mut self) -> Result<Vec<Selector>, String> {
        let mut selectors = Vec::new();
        loop {
            self.skip_space();
            let path = self.fieldpath()?;
            self.skip_space();
            let op = [("==", Op::Equal), ("!=", Op::NotEqual), ("~=", Op::Matches), ("@=", Op::Contains)]
                .into_iter()
                .find(|(s, _)| self.eat(s))
                .map(|(_, op)| op)
                .unwrap_or(Op::Present);
            let (value, regex) = if op == Op::Present {
                (String::new(), None)
            } else {
                self.skip_space();
                let value = self.value()?;
                let regex = match op {
                    Op::Matches => Some(Regex::new(&value).map_err(|e| format!("regular expression {value:?}: {e}"))?),
                    _ => None,
                };
                (value, regex)
            };
            selectors.push(Selector { path, op, value, regex });
            self.skip_space();
            match self.peek() {
                None => return Ok(selectors),
                Some(',') => self.pos += 1,
                Some(c) => return Err(format!("unexpected {c:?} at {}", self.pos)),
            }
        }
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, String> {
        let mut path = vec![self.field()?];
        while self.peek() == Some('.') {
            self.pos += 1;
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, String> {
        if self.peek() == Some('"') {
            return self.quoted('"');
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '/')) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(format!("a field name is expected at {}", self.pos));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn value(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(q @ ('"' | '/' | '|')) => self.quoted(q),
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c != ',') {
                    self.pos += 1;
                }
                let value: String = self.chars[start..self.pos].iter().collect();
                let value = value.trim_end();
                if value.is_empty() {
                    return Err(format!("a value is expected at {start}"));
                }
                Ok(value.to_owned())
            }
        }
    }

    /// A string between `quote`s. In `"…"` a backslash escapes the next
    /// character (`\n`, `\t`, `\r` as in Go); in `/…/` and `|…|` (regular
    /// expressions) it is kept, except before the closing quote.
    fn quoted(&mut self, quote: char) -> Result<String, String> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(format!("unterminated quote starting at {start}")),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.pos += 1;
                    let Some(next) = self.peek() else { return Err(format!("unterminated quote starting at {start}")) };
                    self.pos += 1;
                    match (quote, next) {
                        ('"', 'n') => out.push('\n'),
                        ('"', 't') => out.push('\t'),
                        ('"', 'r') => out.push('\r'),
                        ('"', c) => out.push(c),
                        (_, c) if c == quote => out.push(c),
                        (_, c) => {
                            out.push('\\');
                            out.push(c);
                        }
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::meta::Kind;

    fn info(name: &str, parent: Option<&str>, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.map(Into::into),
            kind,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    fn matches(filters: &[&str], info: &Info) -> bool {
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filters::parse(&filters).unwrap_or_else(|e| panic!("{e}")).matches(info)
    }

    #[test]
    fn selectors_operators_and_quoting() {
        let a = info("ns/1/a", Some("ns/1/base"), Kind::Active, &[("containerd.io/gc.root", "x"), ("k", "v 1")]);
        let c = info("ns/1/base", None, Kind::Committed, &[]);
        assert!(matches(&[], &a));
        assert!(matches(&[""], &a));
        assert!(matches(&["kind==active"], &a) && !matches(&["kind==active"], &c));
        assert!(matches(&["kind!=active"], &c) && !matches(&["kind!=active"], &a));
        assert!(matches(&["parent"], &a) && !matches(&["parent"], &c));
        assert!(matches(&["parent==ns/1/base"], &a));
        assert!(matches(&[r#"labels."containerd.io/gc.root""#], &a));
        assert!(matches(&["labels.containerd.io/gc.root"], &a), "dotted keys join");
        assert!(!matches(&[r#"labels."containerd.io/gc.root""#], &c));
        assert!(matches(&[r#"labels.k=="v 1""#], &a));
        assert!(matches(&["labels.k==v 1"], &a));
        assert!(matches(&["name~=/^ns\\/1\\//"], &a));
        assert!(matches(&["name~=^ns/1/a$"], &a) && !matches(&["name~=^ns/1/a$"], &c));
        assert!(matches(&["name@=base"], &c) && !matches(&["name@=base"], &a));
        // `,` is and; separate filters are or.
        assert!(!matches(&["kind==active,parent==other"], &a));
        assert!(matches(&["kind==committed", "parent==ns/1/base"], &a));
        assert!(matches(&["kind==committed", "parent==ns/1/base"], &c));
        assert!(!matches(&["labels.missing==x"], &a));
        assert!(matches(&["labels.missing!=x"], &a));
    }

    #[test]
    fn malformed_filters_are_refused() {
        for bad in ["==x", "name==", "labels.\"open", "name~=(", "name==a b,", "name=="] {
            assert!(Filters::parse(&[bad.to_string()]).is_err(), "{bad:?} was accepted");
        }
    }
}
