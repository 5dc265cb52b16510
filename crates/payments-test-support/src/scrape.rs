//! Reading a running consumer's HTTP endpoints the way Prometheus and a kubelet do: a blocking
//! GET with deadlines ([`get`]), and the Prometheus text format parsed into samples
//! ([`Samples`]), so that tests compare numbers rather than grep text.
//!
//! Blocking on purpose: a test calls it from a thread of its own (or `spawn_blocking`), never
//! from the runtime that serves the endpoint.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting, sending and reading may each take.
const DEADLINE: Duration = Duration::from_secs(10);

/// The most a response may hold: endpoints of this project answer in kilobytes.
const MAX_RESPONSE: u64 = 4 << 20;

/// An HTTP response: its status code and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code (200, 503, …).
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body, as text.
    pub body: String,
}

/// GETs `path` from `address` over HTTP/1.0 (so that the server closes when done), with `accept`
/// as the `Accept` header if given.
///
/// # Errors
///
/// When the server cannot be reached, does not answer in time, or answers something that is
/// not HTTP.
pub fn get(address: SocketAddr, path: &str, accept: Option<&str>) -> Result<Response, String> {
    let mut stream = TcpStream::connect_timeout(&address, DEADLINE)
        .map_err(|err| format!("connecting to {address}: {err}"))?;
    stream.set_read_timeout(Some(DEADLINE)).map_err(|err| err.to_string())?;
    stream.set_write_timeout(Some(DEADLINE)).map_err(|err| err.to_string())?;
    let accept = accept.map(|accept| format!("Accept: {accept}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n{accept}\r\n")
        .map_err(|err| format!("sending to {address}: {err}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|err| format!("reading from {address}: {err}"))?;
    let raw = String::from_utf8(raw).map_err(|_| format!("{address}{path} answered with non-UTF-8"))?;
    let (head, body) =
        raw.split_once("\r\n\r\n").ok_or_else(|| format!("{address}{path}: no end of headers in {raw:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{address}{path}: no status line in {head:?}"))?;
    let content_type = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type").then(|| value.trim().to_owned())
    });
    Ok(Response { status, content_type, body: body.to_owned() })
}

/// One sample of the Prometheus text format: a name, its labels, a value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series name, with its suffix (`_total`, `_bucket`, …).
    pub name: String,
    /// The labels, by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Parses the Prometheus text format (or OpenMetrics text: `# EOF` is a comment here).
    ///
    /// # Errors
    ///
    /// On a line that is neither a comment nor a sample, naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut samples = Vec::new();
        for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
            samples.push(parse_sample(line).ok_or_else(|| format!("not a sample: {line:?}"))?);
        }
        Ok(Self(samples))
    }

    /// The samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |sample| {
            sample.name == name
                && labels.iter().all(|(key, value)| sample.labels.get(*key).is_some_and(|have| have == value))
        })
    }

    /// The value of the one sample named `name` with `labels`, if there is exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self.matching(name, labels);
        let first = matching.next()?;
        matching.next().is_none().then_some(first.value)
    }

    /// The sum of the samples named `name` with `labels` (0 if there are none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|sample| sample.value).sum()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, rest) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..close + 1], &line[close + 1..])
        }
        None => line.split_once(' ')?,
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}')?)?),
        None => (series, BTreeMap::new()),
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `a="x",b="y"`, with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(mut text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (at, '"') => break at,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, other) => value.push(other),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        text = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_parsed_with_their_labels_and_escapes() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{kind=\"x\",why=\"say \\\"hi\\\"\"} 3\n\
                    b 1.5\nc_bucket{le=\"+Inf\"} 7\n# EOF\n";
        let samples = Samples::parse(text).expect("parses");
        assert_eq!(samples.value("a_total", &[("kind", "x")]), Some(3.0));
        assert_eq!(samples.0[0].labels["why"], "say \"hi\"");
        assert_eq!(samples.value("b", &[]), Some(1.5));
        assert_eq!(samples.value("c_bucket", &[("le", "+Inf")]), Some(7.0));
        assert_eq!(samples.sum("a_total", &[("kind", "y")]), 0.0);
        assert!(Samples::parse("what is this").is_err());
    }
}
