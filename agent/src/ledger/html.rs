//! `--html FILE`: one self-contained page (no network at view time) of what a run found: the
//! route table with latency histograms, SLO and regression status, the top problems with their
//! advice and the waterfall of each one's worst request, the tail attribution, and the
//! flamegraphs of the slowest profiled spans. [`render`] is pure.
//!
//! The page is HTML and CSS only, no script of its own; its Content-Security-Policy forbids
//! every fetch but `data:` images, so a view never reaches the network. Every text and
//! attribute value goes through [`Esc`]. The charts (histograms, waterfalls, flamegraphs) are
//! in `charts`, the tables past the routes in `tables`; the ids, classes and `data-`
//! attributes a test reads are listed in docs/report.md.

mod charts;
mod tables;

use std::fmt::{self, Write};

use super::{RouteDoc, StatsDoc, TypeDoc, baseline::Comparison, slo::SloStatus};

/// Everything the page shows.
#[derive(Clone, Debug)]
pub struct ReportPage {
    /// `loupe report: shop` — the services observed.
    pub title: String,
    /// Routes (with their windows, histogram, SLO, regression, tail), dependencies, SLOs,
    /// alerts.
    pub stats: StatsDoc,
    /// Costliest first.
    pub problems: Vec<ProblemEntry>,
    /// The slowest profiled spans, slowest first.
    pub flamegraphs: Vec<FlameEntry>,
    /// With `--baseline FILE`: each route before and after.
    pub comparison: Option<Vec<Comparison>>,
}

/// One route's one pattern on the problem board.
#[derive(Clone, Debug)]
pub struct ProblemEntry {
    pub route: String,
    /// `n_plus_one`, `sequential_calls`, ... and its words (`N+1 queries`).
    pub pattern: String,
    pub pattern_words: String,
    pub requests: u64,
    pub cost_ms: f64,
    pub advice: String,
    /// The request where it cost the most.
    pub worst: Option<Waterfall>,
}

pub use crate::detect::board::{FlameEntry, Waterfall, WaterfallRow};

/// Nothing but the page itself and `data:` images: a page opened from a mail or a CI artifact
/// never fetches anything, and a script slipped in (it cannot be: everything is escaped) would
/// not run.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";
const STYLE: &str = include_str!("html/report.css");

/// The operation types, in the page's order: `byType`'s key and what the page calls it.
const TYPES: [(&str, &str); 4] = [
    ("http", "inbound HTTP"),
    ("external", "outbound HTTP"),
    ("db", "database"),
    ("cache", "cache"),
];

/// `text` escaped for HTML text and attribute values (quoted with `"`).
pub(crate) struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// Milliseconds as the page writes them: `12.3`, and a sub-millisecond value to the
/// microsecond (`0.042`), so a fast route's percentiles are not all `0.0`.
pub(crate) struct Ms(pub f64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 > 0.0 && self.0 < 1.0 {
            write!(f, "{:.3}", self.0)
        } else {
            write!(f, "{:.1}", self.0)
        }
    }
}

/// The page.
pub fn render(page: &ReportPage) -> String {
    let mut out = String::with_capacity(64 * 1024);
    write_page(&mut out, page).expect("writing into a String cannot fail");
    out
}

fn write_page(out: &mut String, page: &ReportPage) -> fmt::Result {
    let title = Esc(&page.title);
    writeln!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"generator\" content=\"loupe\">\n<title>{title}</title>\n\
         <style>\n{STYLE}</style>\n</head>\n<body>"
    )?;
    header(out, page)?;
    out.push_str("<main class=\"wrap\">\n");
    routes(out, &page.stats)?;
    if let Some(comparison) = &page.comparison {
        tables::comparison(out, comparison)?;
    }
    problems(out, &page.problems)?;
    flamegraphs(out, &page.flamegraphs)?;
    tables::slos(out, &page.stats.slos)?;
    tables::tail(out, &page.stats.routes)?;
    tables::dependencies(out, &page.stats.dependencies)?;
    tables::alerts(out, &page.stats)?;
    out.push_str("</main>\n");
    writeln!(
        out,
        "<footer>loupe · {}{}</footer>\n</body>\n</html>",
        Esc(page.stats.schema),
        match page.stats.untracked {
            0 => String::new(),
            n => format!(" · {n} spans of routes or dependencies past the table limit not shown"),
        }
    )
}

fn header(out: &mut String, page: &ReportPage) -> fmt::Result {
    let stats = &page.stats;
    writeln!(
        out,
        "<header class=\"top\"><div class=\"wrap\">\n<h1>{}</h1>\n\
         <div class=\"meta\">generated <time id=\"generated\">{}</time> · started \
         <time id=\"started\">{}</time> · uptime <span id=\"uptime\" data-seconds=\"{}\">{}</span></div>",
        Esc(&page.title),
        Esc(&stats.generated_at),
        Esc(&stats.started_at),
        stats.uptime_seconds,
        uptime(stats.uptime_seconds),
    )?;
    out.push_str("<nav><a href=\"#routes\">Routes</a>");
    if page.comparison.is_some() {
        out.push_str("<a href=\"#comparison\">Before and after</a>");
    }
    out.push_str(
        "<a href=\"#problems\">Problems</a><a href=\"#flamegraphs\">Flamegraphs</a>\
         <a href=\"#slos\">SLOs</a><a href=\"#tail\">Tail</a><a href=\"#dependencies\">Dependencies</a>\
         <a href=\"#alerts\">Alerts</a></nav>\n<div class=\"types\" id=\"types\">\n",
    );
    for (key, words) in TYPES {
        match stats.by_type.get(key) {
            Some(doc) => type_card(out, key, words, doc)?,
            None => writeln!(
                out,
                "<div class=\"type\" data-type=\"{key}\"><div class=\"name\">{words}</div>\
                 <div class=\"big dim\">0</div></div>"
            )?,
        }
    }
    out.push_str("</div>\n</div></header>\n");
    Ok(())
}

fn type_card(out: &mut String, key: &str, words: &str, doc: &TypeDoc) -> fmt::Result {
    let total = &doc.windows.since_start;
    writeln!(
        out,
        "<div class=\"type\" data-type=\"{key}\"><div class=\"name\">{words}</div>\
         <div class=\"big{}\"><span class=\"count\">{}</span></div>\
         <div class=\"small\">p95 <span class=\"p95\">{}</span> ms · \
         <span class=\"slow\">{:.1}</span>% slow (over {} ms)</div></div>",
        if total.count == 0 { " dim" } else { "" },
        total.count,
        Ms(total.p95_duration),
        total.slow_percentage,
        doc.threshold_ms,
    )
}

/// `42 s`, `5 min 03 s`, `2 h 05 min`.
fn uptime(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}

fn routes(out: &mut String, stats: &StatsDoc) -> fmt::Result {
    let threshold = stats
        .by_type
        .get("http")
        .map_or(f64::INFINITY, |t| t.threshold_ms);
    out.push_str("<section id=\"routes-section\">\n<h2>Routes</h2>\n");
    if stats.routes.is_empty() {
        out.push_str("<p class=\"empty\">no requests seen</p>\n");
    }
    out.push_str(
        "<div class=\"scroll\"><table id=\"routes\">\n<thead><tr><th>Route</th>\
         <th class=\"num\">Requests</th><th class=\"num\">Errors</th><th class=\"num\">Slow</th>\
         <th class=\"num\">p50 ms</th><th class=\"num\">p95 ms</th><th class=\"num\">p99 ms</th>\
         <th class=\"num\">Max ms</th><th>Latency</th><th>SLO</th><th>Regression</th></tr></thead>\n<tbody>\n",
    );
    for route in &stats.routes {
        route_row(out, route, threshold)?;
    }
    out.push_str(
        "</tbody>\n</table></div>\n<p class=\"note\">Since start, slowest p95 first. Latency: \
         requests per bucket (up to 1, 2, 5, 10, 25, 50, 100, 250, 500 ms, 1, 2.5, 5, 10 s, and \
         past it); red buckets are past the slow threshold.</p>\n</section>\n",
    );
    Ok(())
}

fn route_row(out: &mut String, route: &RouteDoc, threshold_ms: f64) -> fmt::Result {
    let total = &route.windows.since_start;
    write!(
        out,
        "<tr class=\"route{}\" data-route=\"{}\" data-service=\"{}\">\
         <td class=\"route-name\">{}<span class=\"service\">{}</span></td>\
         <td class=\"num count\">{}</td><td class=\"num errors\">{:.1}%</td>\
         <td class=\"num slow\">{:.1}%</td><td class=\"num p50\">{}</td>\
         <td class=\"num p95\">{}</td><td class=\"num p99\">{}</td>\
         <td class=\"num max\">{}</td><td class=\"histogram\">",
        if route.regression { " regressed" } else { "" },
        Esc(&route.route),
        Esc(&route.service),
        Esc(&route.route),
        Esc(&route.service),
        total.count,
        total.error_percentage,
        total.slow_percentage,
        Ms(total.p50_duration),
        Ms(total.p95_duration),
        Ms(total.p99_duration),
        Ms(total.max_duration),
    )?;
    charts::histogram(out, &route.histogram, threshold_ms)?;
    out.push_str("</td><td class=\"slo\">");
    match &route.slo {
        Some(slo) => slo_badge(out, slo)?,
        None => out.push_str("<span class=\"dim\">none</span>"),
    }
    out.push_str("</td><td class=\"regression\">");
    match (route.regression, route.baseline_p95_duration) {
        (true, base) => write!(
            out,
            "<span class=\"badge bad\">regressed</span> <span class=\"dim\">baseline p95 {}</span>",
            base.map_or("?".to_owned(), |b| format!("{} ms", Ms(b)))
        )?,
        (false, Some(base)) => write!(
            out,
            "<span class=\"badge ok\">ok</span> <span class=\"dim\">baseline p95 {} ms ({})</span>",
            Ms(base),
            Esc(route.baseline_source.unwrap_or("rolling"))
        )?,
        (false, None) => out.push_str("<span class=\"dim\">no baseline yet</span>"),
    }
    out.push_str("</td></tr>\n");
    Ok(())
}

fn slo_badge(out: &mut String, slo: &SloStatus) -> fmt::Result {
    let (class, words) = match (slo.breached, slo.compliance) {
        (true, _) => ("bad", "breached"),
        (false, Some(_)) => ("ok", "met"),
        (false, None) => ("warn", "no data"),
    };
    write!(
        out,
        "<span class=\"badge {class}\" title=\"{} within {} ms\">{words}</span>",
        Esc(&slo.objective),
        slo.threshold_ms
    )?;
    if let Some(compliance) = slo.compliance {
        write!(
            out,
            " <span class=\"dim\">{:.1}%</span>",
            compliance * 100.0
        )?;
    }
    Ok(())
}

fn problems(out: &mut String, problems: &[ProblemEntry]) -> fmt::Result {
    out.push_str("<section id=\"problems\">\n<h2>Top problems</h2>\n");
    if problems.is_empty() {
        out.push_str("<p class=\"empty\">no problems found</p>\n</section>\n");
        return Ok(());
    }
    charts::legend(out);
    for problem in problems {
        writeln!(
            out,
            "<article class=\"problem\" data-pattern=\"{}\" data-route=\"{}\">\n<header>\
             <span class=\"badge pattern\">{}</span><h3 class=\"route\">{}</h3>\
             <span class=\"figures\"><span class=\"requests\">{}</span> {} · \
             <span class=\"cost\">{:.1}</span> ms lost</span></header>\n\
             <p class=\"advice\">{}</p>",
            Esc(&problem.pattern),
            Esc(&problem.route),
            Esc(&problem.pattern_words),
            Esc(&problem.route),
            problem.requests,
            if problem.requests == 1 {
                "request"
            } else {
                "requests"
            },
            problem.cost_ms,
            Esc(&problem.advice),
        )?;
        match &problem.worst {
            Some(worst) => charts::waterfall(out, worst)?,
            None => out.push_str("<p class=\"empty\">no waterfall kept for this problem</p>\n"),
        }
        out.push_str("</article>\n");
    }
    out.push_str("</section>\n");
    Ok(())
}

fn flamegraphs(out: &mut String, flames: &[FlameEntry]) -> fmt::Result {
    out.push_str("<section id=\"flamegraphs\">\n<h2>CPU flamegraphs of the slowest spans</h2>\n");
    if flames.is_empty() {
        out.push_str(
            "<p class=\"empty\">no slow span was profiled (a request past its threshold gets \
             its thread's CPU stacks sampled)</p>\n",
        );
    }
    for flame in flames {
        charts::flamegraph(out, flame)?;
    }
    out.push_str("</section>\n");
    Ok(())
}

#[cfg(test)]
mod tests;
