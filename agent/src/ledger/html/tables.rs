//! The report page's tables past the routes: before and after (with `--baseline`), the SLOs,
//! the tail attribution, the dependencies and the alerts.

use std::fmt::{self, Write};

use super::{Esc, Ms, charts, slo_badge};
use crate::ledger::{DependencyDoc, RouteDoc, StatsDoc, baseline::Comparison, slo::SloStatus};

pub(super) fn comparison(out: &mut String, rows: &[Comparison]) -> fmt::Result {
    out.push_str("<section id=\"comparison-section\">\n<h2>Before and after</h2>\n");
    if rows.is_empty() {
        out.push_str("<p class=\"empty\">no routes in the baseline or this run</p>\n");
    }
    out.push_str(
        "<div class=\"scroll\"><table id=\"comparison\">\n<thead><tr><th>Route</th>\
         <th class=\"num\">Before p50</th><th class=\"num\">p95</th><th class=\"num\">p99</th>\
         <th class=\"num\">After p50</th><th class=\"num\">p95</th><th class=\"num\">p99</th>\
         <th class=\"num\">p95 change</th></tr></thead>\n<tbody>\n",
    );
    for row in rows {
        write!(
            out,
            "<tr class=\"compared\" data-route=\"{}\" data-service=\"{}\">\
             <td class=\"route-name\">{}<span class=\"service\">{}</span></td>",
            Esc(&row.route),
            Esc(&row.service),
            Esc(&row.route),
            Esc(&row.service),
        )?;
        for (side, route) in [("before", &row.before), ("after", &row.after)] {
            match route {
                Some(r) => write!(
                    out,
                    "<td class=\"num {side}-p50\">{}</td><td class=\"num {side}-p95\">{}</td>\
                     <td class=\"num {side}-p99\">{}</td>",
                    Ms(r.p50_ms),
                    Ms(r.p95_ms),
                    Ms(r.p99_ms)
                )?,
                None => write!(
                    out,
                    "<td class=\"num dim {side}-p50\">—</td><td class=\"num dim {side}-p95\">—</td>\
                     <td class=\"num dim {side}-p99\">—</td>"
                )?,
            }
        }
        match row.p95_improvement_percent {
            Some(p) if p > 0.0 => write!(
                out,
                "<td class=\"num improvement better\" data-percent=\"{p}\">{p:.1}% faster</td>"
            )?,
            Some(p) if p < 0.0 => write!(
                out,
                "<td class=\"num improvement worse\" data-percent=\"{p}\">{:.1}% slower</td>",
                -p
            )?,
            Some(p) => write!(
                out,
                "<td class=\"num improvement\" data-percent=\"{p}\">unchanged</td>"
            )?,
            None => out.push_str("<td class=\"num improvement dim\">—</td>"),
        }
        out.push_str("</tr>\n");
    }
    out.push_str(
        "</tbody>\n</table></div>\n<p class=\"note\">Milliseconds; before is the baseline \
         file, after is this run.</p>\n</section>\n",
    );
    Ok(())
}

fn percent(share: Option<f64>) -> String {
    share.map_or("—".to_owned(), |s| format!("{:.1}%", s * 100.0))
}

pub(super) fn slos(out: &mut String, slos: &[SloStatus]) -> fmt::Result {
    out.push_str("<section id=\"slos\">\n<h2>SLOs</h2>\n");
    if slos.is_empty() {
        out.push_str(
            "<p class=\"empty\">no SLOs configured (<code>--slo 'GET /api/x=500ms@p95'</code>)</p>\n\
             </section>\n",
        );
        return Ok(());
    }
    out.push_str(
        "<div class=\"scroll\"><table>\n<thead><tr><th>Route</th><th>Objective</th>\
         <th class=\"num\">Requests</th><th class=\"num\">Compliance</th>\
         <th class=\"num\">Last 5 min</th><th class=\"num\">Budget left</th>\
         <th class=\"num\">Burn rate</th><th>Status</th></tr></thead>\n<tbody>\n",
    );
    for slo in slos {
        write!(
            out,
            "<tr class=\"slo\" data-route=\"{}\"><td class=\"route-name\">{}</td>\
             <td>{} within {} ms</td><td class=\"num\">{}</td><td class=\"num compliance\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>",
            Esc(&slo.route),
            Esc(&slo.route),
            Esc(&slo.objective),
            slo.threshold_ms,
            slo.requests,
            percent(slo.compliance),
            percent(slo.compliance_last5m),
            percent(slo.error_budget_remaining),
            slo.burn_rate.map_or("—".to_owned(), |b| format!("{b:.2}")),
        )?;
        slo_badge(out, slo)?;
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody>\n</table></div>\n</section>\n");
    Ok(())
}

pub(super) fn tail(out: &mut String, routes: &[RouteDoc]) -> fmt::Result {
    out.push_str("<section id=\"tail\">\n<h2>What the slowest requests wait on</h2>\n");
    let mut any = false;
    for route in routes {
        let Some(tail) = &route.tail else {
            continue;
        };
        any = true;
        write!(
            out,
            "<div class=\"tail-route\" data-route=\"{}\" data-service=\"{}\">\
             <div class=\"tail-summary\">{}</div>\n<div class=\"tail-parts\">",
            Esc(&route.route),
            Esc(&route.service),
            Esc(&tail.summary),
        )?;
        for part in tail.parts.iter().take(8) {
            write!(
                out,
                "<div class=\"part\" title=\"{0}\">{0}</div><div>{1}{2:.0}%</div>",
                Esc(&part.component),
                charts::share_bar(part.share),
                part.share * 100.0
            )?;
        }
        out.push_str("</div></div>\n");
    }
    if !any {
        out.push_str(
            "<p class=\"empty\">no requests above their route's p95 yet (a route needs enough \
             requests for a p95 first)</p>\n",
        );
    } else {
        out.push_str(
            "<p class=\"note\">Of the requests above their route's five-minute p95, the share \
             of their time each part took (parallel calls can each take much of it).</p>\n",
        );
    }
    out.push_str("</section>\n");
    Ok(())
}

pub(super) fn dependencies(out: &mut String, dependencies: &[DependencyDoc]) -> fmt::Result {
    out.push_str("<section id=\"dependencies-section\">\n<h2>Dependencies</h2>\n");
    if dependencies.is_empty() {
        out.push_str("<p class=\"empty\">no outbound calls or queries seen</p>\n");
    }
    out.push_str(
        "<div class=\"scroll\"><table id=\"dependencies\">\n<thead><tr><th>Service</th>\
         <th>Type</th><th>Dependency</th><th class=\"num\">Calls</th><th class=\"num\">Avg ms</th>\
         <th class=\"num\">p95 ms</th><th class=\"num\">Requests</th>\
         <th>Share of their time</th></tr></thead>\n<tbody>\n",
    );
    for dep in dependencies {
        write!(
            out,
            "<tr class=\"dependency\" data-type=\"{}\" data-service=\"{}\"><td>{}</td>\
             <td>{}</td><td class=\"label\" title=\"{}\"><code>{}</code></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num p95\">{}</td>\
             <td class=\"num\">{}</td><td>",
            Esc(dep.kind),
            Esc(&dep.service),
            Esc(&dep.service),
            Esc(dep.kind),
            Esc(&dep.dependency),
            Esc(&dep.dependency),
            dep.calls,
            Ms(dep.avg_duration),
            Ms(dep.p95_duration),
            dep.requests,
        )?;
        match dep.share_of_request_time {
            Some(share) => write!(out, "{}{:.1}%", charts::share_bar(share), share * 100.0)?,
            None => out.push_str("<span class=\"dim\">—</span>"),
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody>\n</table></div>\n</section>\n");
    Ok(())
}

pub(super) fn alerts(out: &mut String, stats: &StatsDoc) -> fmt::Result {
    let alerts = &stats.alerts;
    writeln!(
        out,
        "<section id=\"alerts\">\n<h2>Alerts</h2>\n<p class=\"meta\">{} sent, {} held back by \
         their cooldown</p>",
        alerts.sent, alerts.suppressed
    )?;
    if alerts.recent.is_empty() {
        out.push_str("<p class=\"empty\">no alerts fired</p>\n</section>\n");
        return Ok(());
    }
    out.push_str(
        "<div class=\"scroll\"><table>\n<thead><tr><th>At</th><th>Kind</th><th>Alert</th>\
         </tr></thead>\n<tbody>\n",
    );
    for alert in alerts.recent.iter().rev() {
        writeln!(
            out,
            "<tr class=\"alert\" data-kind=\"{0}\"><td class=\"dim\">{1}</td>\
             <td><span class=\"badge warn\">{0}</span></td><td>{2}</td></tr>",
            Esc(alert.firing.kind.as_str()),
            Esc(&alert.at),
            Esc(&alert.firing.message),
        )?;
    }
    out.push_str("</tbody>\n</table></div>\n</section>\n");
    Ok(())
}
