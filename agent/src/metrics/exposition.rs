//! The Prometheus text exposition format, version 0.0.4: a `# HELP` and a `# TYPE` line per
//! metric family, then its samples, `name{label="value",...} value`, one a line.

use std::fmt::Write as _;

use super::histogram::Histogram;

/// The `Content-Type` of a scrape's answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type, as its `# TYPE` line says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// Label names and values of one sample, in the order they are written.
pub type Labels<'a> = [(&'a str, &'a str)];

/// The text being written.
#[derive(Default)]
pub struct Text {
    out: String,
}

impl Text {
    /// Starts a family: its help (trimmed; backslashes and line breaks escaped) and type.
    pub fn family(&mut self, name: &str, kind: Type, help: &str) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape_help(help.trim()),
            kind.as_str()
        );
    }

    /// One sample of an integer value.
    pub fn sample(&mut self, name: &str, labels: &Labels<'_>, value: u64) {
        self.series(name, labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// One sample of a real value.
    pub fn sample_f64(&mut self, name: &str, labels: &Labels<'_>, value: f64) {
        self.series(name, labels, None);
        let _ = writeln!(self.out, " {}", float(value));
    }

    /// A histogram's samples: `<name>_bucket` per bound (cumulated) and `+Inf`, `<name>_sum`,
    /// `<name>_count`.
    pub fn histogram(&mut self, name: &str, labels: &Labels<'_>, histogram: &Histogram) {
        let bucket = format!("{name}_bucket");
        let mut count = 0;
        for (bound, cumulated) in histogram.cumulative() {
            self.series(&bucket, labels, Some(&float(bound)));
            let _ = writeln!(self.out, " {cumulated}");
            count = cumulated;
        }
        self.sample_f64(&format!("{name}_sum"), labels, histogram.sum());
        self.sample(&format!("{name}_count"), labels, count);
    }

    fn series(&mut self, name: &str, labels: &Labels<'_>, le: Option<&str>) {
        self.out.push_str(name);
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let le = le.map(|bound| ("le", bound));
        for (i, (label, value)) in labels.iter().copied().chain(le).enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{label}=\"{}\"", escape_label(value));
        }
        self.out.push('}');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A number as the format writes it: `+Inf`, `-Inf`, `NaN`, else Rust's shortest round trip.
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escapes_are_written_as_the_format_says() {
        let mut text = Text::default();
        text.family(
            "loupe_events_read_total",
            Type::Counter,
            " Records read.\nAll of them. ",
        );
        text.sample("loupe_events_read_total", &[], 42);
        text.family("odd", Type::Gauge, r"a \ b");
        text.sample_f64("odd", &[("path", "a\"b\\c\nd"), ("x", "")], 0.5);
        assert_eq!(
            text.finish(),
            "# HELP loupe_events_read_total Records read.\\nAll of them.\n\
             # TYPE loupe_events_read_total counter\n\
             loupe_events_read_total 42\n\
             # HELP odd a \\\\ b\n\
             # TYPE odd gauge\n\
             odd{path=\"a\\\"b\\\\c\\nd\",x=\"\"} 0.5\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulated_buckets_a_sum_and_a_count() {
        let mut histogram = Histogram::new(&[0.005, 1.0]);
        histogram.observe(0.001);
        histogram.observe(2.0);
        let mut text = Text::default();
        text.histogram("d_seconds", &[("route", "/a")], &histogram);
        assert_eq!(
            text.finish(),
            "d_seconds_bucket{route=\"/a\",le=\"0.005\"} 1\n\
             d_seconds_bucket{route=\"/a\",le=\"1\"} 1\n\
             d_seconds_bucket{route=\"/a\",le=\"+Inf\"} 2\n\
             d_seconds_sum{route=\"/a\"} 2.001\n\
             d_seconds_count{route=\"/a\"} 2\n"
        );
    }

    #[test]
    fn special_values_have_their_spelling() {
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(7.5), "7.5");
        assert_eq!(float(10.0), "10");
        assert_eq!(float(1e-7), "0.0000001");
    }
}
