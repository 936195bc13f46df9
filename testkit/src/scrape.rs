//! Scraping a job's Prometheus endpoint: plain HTTP/1.0 and the text
//! format, enough for tests to compare counters with committed outputs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

/// One sample: metric name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

/// `GET path` over plain HTTP/1.0: (status, body); None if nobody listens.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Parses the Prometheus text format (names, labels without escapes).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let labels = inner
                        .split("\",")
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once("=\"").expect("label");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (n.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            (name, labels, value.parse().expect("sample value"))
        })
        .collect()
}

/// `GET /metrics`, which must answer 200: its samples.
pub fn scrape(port: u16) -> Vec<Sample> {
    let (status, body) = get(port, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    parse(&body)
}

/// Sum of a metric over the samples whose labels include `with`.
pub fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_and_values_and_sums_by_label() {
        let text = "# HELP x y\n# TYPE tidemark_rejects_total counter\n\
            tidemark_rejects_total{reason=\"LATE\",source=\"transactions\"} 3\n\
            tidemark_rejects_total{reason=\"MALFORMED\",source=\"transactions\"} 4\n\
            tidemark_frontier_timestamp_seconds 1.5\n";
        let s = parse(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].0, "tidemark_rejects_total");
        assert_eq!(s[0].1["reason"], "LATE");
        assert_eq!(s[0].1["source"], "transactions");
        assert_eq!(sum(&s, "tidemark_rejects_total", &[]), 7.0);
        assert_eq!(
            sum(&s, "tidemark_rejects_total", &[("reason", "MALFORMED")]),
            4.0
        );
        assert_eq!(sum(&s, "tidemark_frontier_timestamp_seconds", &[]), 1.5);
    }
}
