//! Options in the query of an engine address (`?timeout=5s&retries=3`).
//!
//! Values are percent-decoded, but a `+` stays a `+` (unlike HTML form
//! decoding): engine addresses nest (`cache:?far=objectstore+s3://…`) and
//! secrets and schemes contain plus signs, so only `%2B`-style escapes are
//! ever needed, for `&` (`%26`) and `%` (`%25`) inside a nested address.
// Typed options are the object-storage engine's.
#![cfg_attr(not(feature = "object-store"), allow(dead_code))]
use std::time::Duration;

use crate::{Error, Result};

/// The options of one address; each is taken once, and [`Query::finish`]
/// refuses any left over, so a misspelt option is an error, not a default.
pub(crate) struct Query {
    addr: String,
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(crate) fn new(url: &url::Url) -> Result<Self> {
        // Messages name the address, never a secret in it (nor in an
        // address nested in the query).
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        shown.set_query(None);
        let addr = shown.to_string();
        let mut pairs: Vec<(String, String)> = Vec::new();
        for pair in url.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| Error::InvalidRequest(format!("{addr}: option {name:?} is not UTF-8")))
            };
            let (name, value) = (decode(name)?, decode(value)?);
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(Error::InvalidRequest(format!("{addr}: option {name:?} given twice")));
            }
            pairs.push((name, value));
        }
        Ok(Self { addr, pairs })
    }

    /// The option `name`, removed from those left.
    pub(crate) fn take(&mut self, name: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(n, _)| n == name)?;
        Some(self.pairs.remove(i).1)
    }

    pub(crate) fn invalid(&self, name: &str, value: &str, expected: &str) -> Error {
        Error::InvalidRequest(format!("{}: option {name}={value:?}: expected {expected}", self.addr))
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`).
    pub(crate) fn bool(&mut self, name: &str) -> Result<Option<bool>> {
        let Some(v) = self.take(name) else { return Ok(None) };
        match v.as_str() {
            "true" | "1" | "yes" => Ok(Some(true)),
            "false" | "0" | "no" => Ok(Some(false)),
            _ => Err(self.invalid(name, &v, "true or false")),
        }
    }

    pub(crate) fn number(&mut self, name: &str) -> Result<Option<usize>> {
        let Some(v) = self.take(name) else { return Ok(None) };
        v.parse().map(Some).map_err(|_| self.invalid(name, &v, "a whole number"))
    }

    /// A duration: `500ms`, `5s`, `2m`, or a bare number of seconds.
    pub(crate) fn duration(&mut self, name: &str) -> Result<Option<Duration>> {
        let Some(v) = self.take(name) else { return Ok(None) };
        parse_duration(&v).map(Some).ok_or_else(|| self.invalid(name, &v, "a duration such as 500ms, 5s or 2m"))
    }

    /// Fails if an option was given that nobody took.
    pub(crate) fn finish(self) -> Result<()> {
        match self.pairs.first() {
            None => Ok(()),
            Some((name, _)) => Err(Error::InvalidRequest(format!("{}: unknown option {name:?}", self.addr))),
        }
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_decode_and_refuse_leftovers() {
        let url = url::Url::parse("x:?a=1%262&b=objectstore+s3://b/p?endpoint=http://h:1&t=1.5s&n=3&f=no").unwrap();
        let mut q = Query::new(&url).unwrap();
        assert_eq!(q.take("a").as_deref(), Some("1&2"));
        assert_eq!(q.take("b").as_deref(), Some("objectstore+s3://b/p?endpoint=http://h:1"), "+ stays +");
        assert_eq!(q.duration("t").unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(q.number("n").unwrap(), Some(3));
        assert_eq!(q.bool("f").unwrap(), Some(false));
        assert_eq!(q.take("missing"), None);
        q.finish().unwrap();

        let mut q = Query::new(&url::Url::parse("x:?t=soon&typo=1").unwrap()).unwrap();
        assert!(q.duration("t").unwrap_err().to_string().contains("t=\"soon\""));
        assert!(q.finish().unwrap_err().to_string().contains("unknown option \"typo\""));
        assert!(Query::new(&url::Url::parse("x:?a=1&a=2").unwrap()).is_err(), "twice");
        for (s, d) in [("250ms", 250), ("2", 2000), ("2m", 120_000), ("0s", 0)] {
            assert_eq!(parse_duration(s), Some(Duration::from_millis(d)), "{s}");
        }
        assert_eq!(parse_duration("5h"), None);
    }
}
