//! The report page's pictures: a route's latency histogram (inline SVG), a request's waterfall
//! (positioned divs, so its labels are text a reader can select and a test can read), and a
//! span's CPU flamegraph (inferno's SVG as a `data:` image: its scripts never run in the page).

use std::fmt::{self, Write};

use super::{Esc, FlameEntry, Waterfall};
use crate::ledger::Bucket;

/// One histogram bar's width and the gap after it, and the chart's height, in px.
const BAR: f64 = 9.0;
const GAP: f64 = 1.0;
const HEIGHT: f64 = 28.0;

/// `buckets` as bars, those wholly past `threshold_ms` in red; each bar's tooltip says its
/// range and count.
pub(super) fn histogram(out: &mut String, buckets: &[Bucket], threshold_ms: f64) -> fmt::Result {
    let width = buckets.len() as f64 * (BAR + GAP);
    let most = buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
    write!(
        out,
        "<svg class=\"hist\" width=\"{width}\" height=\"{HEIGHT}\" viewBox=\"0 0 {width} {HEIGHT}\" \
         role=\"img\" aria-label=\"latency histogram\">"
    )?;
    let mut lower = 0.0;
    for (index, bucket) in buckets.iter().enumerate() {
        let range = match bucket.le_ms {
            Some(le) => format!("{} to {}", bound(lower), bound(le)),
            None => format!("over {}", bound(lower)),
        };
        let height = if bucket.count == 0 {
            0.0
        } else {
            (bucket.count as f64 / most * (HEIGHT - 2.0)).max(1.5)
        };
        write!(
            out,
            "<rect class=\"bar{}\" x=\"{}\" y=\"{:.1}\" width=\"{BAR}\" height=\"{height:.1}\" \
             data-count=\"{}\"><title>{range}: {}</title></rect>",
            if lower >= threshold_ms { " over" } else { "" },
            index as f64 * (BAR + GAP),
            HEIGHT - 1.0 - height,
            bucket.count,
            bucket.count,
        )?;
        lower = bucket.le_ms.unwrap_or(lower);
    }
    write!(
        out,
        "<line x1=\"0\" y1=\"{y}\" x2=\"{width}\" y2=\"{y}\" stroke=\"#d0d7de\" stroke-width=\"1\"/></svg>",
        y = HEIGHT - 0.5
    )
}

/// `250 ms`, `2.5 s`.
fn bound(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", ms / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// The colours of a waterfall's bars.
pub(super) fn legend(out: &mut String) {
    out.push_str(
        "<div class=\"legend\"><span><i style=\"background:#afb8c1\"></i>request</span>\
         <span><i style=\"background:#8250df\"></i>outbound HTTP</span>\
         <span><i style=\"background:#0969da\"></i>database</span>\
         <span><i style=\"background:#bf8700\"></i>cache</span>\
         <span><i style=\"background:#cf222e\"></i>failed</span></div>\n",
    );
}

/// `share` (0..1) as a small bar.
pub(super) fn share_bar(share: f64) -> String {
    format!(
        "<span class=\"share\"><span style=\"width:{:.1}%\"></span></span>",
        (share * 100.0).clamp(0.0, 100.0)
    )
}

/// The request on top, then one bar per call at its place on the request's time axis.
pub(super) fn waterfall(out: &mut String, worst: &Waterfall) -> fmt::Result {
    let total = worst.duration_ms.max(f64::MIN_POSITIVE);
    write!(
        out,
        "<div class=\"waterfall\" data-trace-id=\"{}\" data-duration-ms=\"{:.1}\">\n\
         <div class=\"caption\">Worst request: <strong>{}</strong>, {:.1} ms, {} {}, trace \
         <code class=\"trace\">{}</code></div>\n<div class=\"wf-axis\"><span></span><div class=\"ticks\">",
        Esc(&worst.trace_id),
        worst.duration_ms,
        Esc(&worst.request),
        worst.duration_ms,
        worst.rows.len(),
        if worst.rows.len() == 1 {
            "call"
        } else {
            "calls"
        },
        Esc(&worst.trace_id),
    )?;
    for quarter in 0..=4 {
        write!(
            out,
            "<span>{:.1}</span>",
            worst.duration_ms * quarter as f64 / 4.0
        )?;
    }
    out.push_str("</div><span>ms</span></div>\n");
    writeln!(
        out,
        "<div class=\"wf-row request\" data-kind=\"http\"><div class=\"wf-label\" title=\"{0}\">{0}</div>\
         <div class=\"wf-track\"><div class=\"wf-bar\" style=\"left:0%;width:100%\"></div></div>\
         <div class=\"wf-ms\">{1:.1} ms</div></div>",
        Esc(&worst.request),
        worst.duration_ms,
    )?;
    for row in &worst.rows {
        let left = (row.start_ms / total * 100.0).clamp(0.0, 100.0);
        let width = (row.duration_ms / total * 100.0).clamp(0.0, 100.0 - left);
        writeln!(
            out,
            "<div class=\"wf-row call{error}\" data-kind=\"{kind}\" data-start-ms=\"{start:.3}\" \
             data-duration-ms=\"{duration:.3}\"><div class=\"wf-label\" title=\"{label}\">{label}</div>\
             <div class=\"wf-track\"><div class=\"wf-bar\" style=\"left:{left:.3}%;width:{width:.3}%\"></div>\
             </div><div class=\"wf-ms\">{duration:.1} ms</div></div>",
            error = if row.error { " error" } else { "" },
            kind = Esc(row.kind),
            start = row.start_ms,
            duration = row.duration_ms,
            label = Esc(&row.label),
        )?;
    }
    if worst.rows.is_empty() {
        out.push_str("<p class=\"empty\">this request made no calls</p>\n");
    }
    out.push_str("</div>\n");
    Ok(())
}

/// The flamegraph of `flame`, or a line saying why there is none.
pub(super) fn flamegraph(out: &mut String, flame: &FlameEntry) -> fmt::Result {
    let samples: u64 = flame.folded.iter().map(|(_, n)| n).sum();
    writeln!(
        out,
        "<figure class=\"flame\" data-span=\"{}\" data-trace-id=\"{}\">\n<figcaption><strong>{}</strong> \
         · <span class=\"duration\">{:.1}</span> ms · {} CPU samples · trace <code class=\"trace\">{}</code>\
         </figcaption>",
        Esc(&flame.span),
        Esc(&flame.trace_id),
        Esc(&flame.span),
        flame.duration_ms,
        samples,
        Esc(&flame.trace_id),
    )?;
    match flame_svg(flame) {
        Ok(svg) => writeln!(
            out,
            "<img alt=\"CPU flamegraph of {}\" src=\"data:image/svg+xml;base64,{}\">",
            Esc(&flame.span),
            base64(&svg)
        )?,
        Err(err) => writeln!(
            out,
            "<p class=\"empty\">cannot draw this profile: {}</p>",
            Esc(&err.to_string())
        )?,
    }
    out.push_str("</figure>\n");
    Ok(())
}

fn flame_svg(flame: &FlameEntry) -> std::io::Result<Vec<u8>> {
    let lines: Vec<String> = flame
        .folded
        .iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect();
    let mut options = inferno::flamegraph::Options::default();
    options.title = format!("{} ({:.1} ms)", flame.span, flame.duration_ms);
    options.count_name = "samples".to_owned();
    // An <img> never runs the SVG's script: leave it out. Colours by name, so one function has
    // one colour in every graph of the page.
    options.no_javascript = true;
    options.hash = true;
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)?;
    Ok(svg)
}

/// Standard base64 (RFC 4648) with padding.
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = u32::from(chunk[0]) << 16
            | u32::from(chunk.get(1).copied().unwrap_or(0)) << 8
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if index <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
