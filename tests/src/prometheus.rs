//! loupe's `/metrics` as a Prometheus server reads it: fetched over HTTP, then parsed by the
//! Prometheus client library's own parser (`prometheus_client.parser`, in the venv `cargo xtask
//! setup` makes), never by hand.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use serde::Deserialize;

/// One sample, as the parser gives it.
#[derive(Clone, Debug, Deserialize)]
pub struct Sample {
    /// Its metric family (a counter's without `_total`, as the parser names it).
    pub family: String,
    /// The family's `# TYPE`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "float")]
    pub value: f64,
}

fn float<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

impl Sample {
    /// Whether it carries every one of `labels`.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(key, value)| self.labels.get(*key).map(String::as_str) == Some(*value))
    }
}

/// Every family and sample of one scrape.
#[derive(Debug, Deserialize)]
pub struct Scrape {
    /// Each family's `# TYPE`, by its name as the parser gives it (a family with no samples
    /// too).
    pub families: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The samples named `name` that carry `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.has(labels))
            .collect()
    }

    /// The value of the one sample named `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels)
            .into_iter()
            .find(|s| s.labels.len() == labels.len())
            .map(|s| s.value)
    }

    /// The sum over the samples named `name` that carry `labels`.
    pub fn total(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().map(|s| s.value).sum()
    }

    /// A family's `# TYPE`, if it is there.
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.families.get(family).map(String::as_str)
    }

    /// Every histogram's series: (family, labels without `le`) -> its buckets (le as given,
    /// cumulated count) in the order written, its `_count` and its `_sum`.
    pub fn histograms(&self) -> BTreeMap<(String, BTreeMap<String, String>), HistogramSeries> {
        let mut out: BTreeMap<(String, BTreeMap<String, String>), HistogramSeries> =
            BTreeMap::new();
        for sample in self.samples.iter().filter(|s| s.kind == "histogram") {
            let mut labels = sample.labels.clone();
            let le = labels.remove("le");
            let series = out.entry((sample.family.clone(), labels)).or_default();
            match sample.name.strip_prefix(sample.family.as_str()) {
                Some("_bucket") => series
                    .buckets
                    .push((le.expect("a bucket has its le"), sample.value)),
                Some("_count") => series.count = Some(sample.value),
                Some("_sum") => series.sum = Some(sample.value),
                _ => panic!("a histogram sample named {}", sample.name),
            }
        }
        out
    }
}

/// One histogram series of a scrape.
#[derive(Debug, Default)]
pub struct HistogramSeries {
    pub buckets: Vec<(String, f64)>,
    pub count: Option<f64>,
    pub sum: Option<f64>,
}

/// One HTTP/1.1 request on a fresh connection: the status and the body.
pub fn request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: loupe-tests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    let reply = String::from_utf8(reply).map_err(std::io::Error::other)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no head end in `{reply}`")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in `{head}`")))?;
    let chunked = head.lines().any(|line| {
        line.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// A chunked body's data (a collector's Prometheus exporter answers that way).
fn dechunk(mut body: &str) -> std::io::Result<String> {
    let bad = || std::io::Error::other("a bad chunk");
    let mut data = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or_else(bad)?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        if size == 0 {
            return Ok(data);
        }
        data.push_str(rest.get(..size).ok_or_else(bad)?);
        body = rest
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .ok_or_else(bad)?;
    }
}

/// `GET /metrics` from `addr`, which must answer 200: the exposition text.
pub fn scrape_text(addr: &str) -> String {
    let (status, body) =
        request(addr, "GET", "/metrics").unwrap_or_else(|err| panic!("scrape {addr}: {err}"));
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families, samples = {}, []
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = family.type
    for s in family.samples:
        samples.append({"family": family.name, "type": family.type, "name": s.name,
                        "labels": s.labels, "value": repr(float(s.value))})
json.dump({"families": families, "samples": samples}, sys.stdout)
"#;

/// `text` read by prometheus_client's parser; the test fails with the parser's error if it
/// does not parse.
pub fn parse(text: &str) -> Scrape {
    let python = crate::cache_dir().join("venv/bin/python");
    assert!(
        python.is_file(),
        "no venv at {}: run `cargo xtask setup`",
        python.display()
    );
    let mut child = Command::new(python)
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the venv's python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition to the parser");
    let output = child.wait_with_output().expect("run the parser");
    assert!(
        output.status.success(),
        "prometheus_client did not parse the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the parser's JSON")
}

/// `GET /metrics` from `addr`, parsed.
pub fn scrape(addr: &str) -> Scrape {
    parse(&scrape_text(addr))
}
