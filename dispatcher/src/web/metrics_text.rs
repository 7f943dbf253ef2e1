//! Reads the Prometheus/OpenMetrics text that `/metrics` renders back into
//! samples and histograms, for the dashboard.
//!
//! Only what `prometheus-client` writes needs to parse: `name value` or
//! `name{k="v",...} value` lines, `#` comments, `# EOF`. Lines that do not
//! parse are skipped, never a panic.

use std::collections::BTreeMap;

use serde::Serialize;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The name with its labels, as `/metrics` spells it.
    pub fn key(&self) -> String {
        if self.labels.is_empty() {
            return self.name.clone();
        }
        let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }

    /// A `_bucket`, `_sum` or `_count` line of a histogram, or its `_created`.
    pub fn is_histogram_part(&self) -> bool {
        self.name.ends_with("_bucket") || self.name.ends_with("_sum") || self.name.ends_with("_count") || self.name.ends_with("_created")
    }
}

/// A histogram: cumulative counts per upper bound (`+Inf` last), as
/// Prometheus keeps them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Histogram {
    /// `(le, cumulative count)`; `le` is `None` for `+Inf`.
    pub buckets: Vec<(Option<f64>, f64)>,
    pub sum: f64,
    pub count: f64,
}

/// Every sample in `text`.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value.trim() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        None => (head, Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
        return None;
    }
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        out.push((key.trim_start_matches(',').to_owned(), value));
        s = rest.get(end + 1..)?.trim_start_matches(',');
    }
    Some(out)
}

/// Histograms by name, from their `_bucket`, `_sum` and `_count` samples
/// (histograms with labels besides `le` are keyed with those labels).
pub fn histograms(samples: &[Sample]) -> BTreeMap<String, Histogram> {
    let mut out: BTreeMap<String, Histogram> = BTreeMap::new();
    let key = |s: &Sample, suffix: &str| {
        let base = Sample {
            name: s.name.trim_end_matches(suffix).to_owned(),
            labels: s.labels.iter().filter(|(k, _)| k != "le").cloned().collect(),
            value: 0.0,
        };
        base.key()
    };
    for s in samples {
        if s.name.ends_with("_bucket") {
            let le = match s.label("le") {
                Some("+Inf") => None,
                Some(v) => match v.parse() {
                    Ok(v) => Some(v),
                    Err(_) => continue,
                },
                None => continue,
            };
            out.entry(key(s, "_bucket")).or_default().buckets.push((le, s.value));
        }
    }
    for s in samples {
        for (suffix, is_sum) in [("_sum", true), ("_count", false)] {
            if s.name.ends_with(suffix)
                && let Some(h) = out.get_mut(&key(s, suffix))
            {
                if is_sum {
                    h.sum = s.value;
                } else {
                    h.count = s.value;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP tolk_outcomes Utterance outcomes\n\
        # TYPE tolk_outcomes counter\n\
        tolk_outcomes_total{outcome=\"result\"} 3\n\
        tolk_outcomes_total{outcome=\"NODE_UNAVAILABLE\"} 1\n\
        tolk_queue_depth 0\n\
        tolk_job_seconds_sum 1.5\n\
        tolk_job_seconds_count 3\n\
        tolk_job_seconds_bucket{le=\"0.001\"} 0\n\
        tolk_job_seconds_bucket{le=\"1.0\"} 2\n\
        tolk_job_seconds_bucket{le=\"+Inf\"} 3\n\
        tolk_odd{a=\"x\\\"y,z\",b=\"2\"} 7\n\
        garbage line here\n\
        tolk_bad{unclosed=\"x} 1\n\
        # EOF\n";

    #[test]
    fn samples_and_labels_parse_and_junk_is_skipped() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 9, "{s:?}");
        assert_eq!(s[0].label("outcome"), Some("result"));
        assert_eq!(s[0].value, 3.0);
        let odd = s.iter().find(|s| s.name == "tolk_odd").unwrap();
        assert_eq!(odd.labels, vec![("a".into(), "x\"y,z".into()), ("b".into(), "2".into())]);
        assert_eq!(odd.key(), "tolk_odd{a=\"x\"y,z\",b=\"2\"}");
    }

    #[test]
    fn histograms_gather_buckets_sum_and_count() {
        let h = histograms(&parse(TEXT));
        let job = &h["tolk_job_seconds"];
        assert_eq!(job.buckets, vec![(Some(0.001), 0.0), (Some(1.0), 2.0), (None, 3.0)]);
        assert_eq!((job.sum, job.count), (1.5, 3.0));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn no_input_panics() {
        for text in ["", " ", "{", "a{", "a{b=\"", "a{b=\"\\", "a 1 2", "a{}} 1", "\u{0} 1", "a{b=\"c\"d} 1"] {
            let _ = parse(text);
        }
    }
}
