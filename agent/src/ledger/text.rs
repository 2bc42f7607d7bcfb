//! The statistics as `loupe report` prints them (docs/contracts.md): each block is None when it
//! has nothing to say.

use super::{StatsDoc, ms};

fn ms_f(value: f64) -> String {
    ms((value * 1000.0).round() as u64)
}

/// The slowest routes by p95: `route count err% slow% p50 p95 p99 max`.
pub fn routes(stats: &StatsDoc, limit: usize) -> Option<String> {
    if stats.routes.is_empty() {
        return None;
    }
    let width = stats
        .routes
        .iter()
        .take(limit)
        .map(|r| r.route.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 48);
    let mut text = format!(
        "{:<width$} {:>7} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10}\n",
        "route", "count", "err%", "slow%", "p50", "p95", "p99", "max"
    );
    for route in stats.routes.iter().take(limit) {
        let all = &route.windows.since_start;
        let name: String = route.route.chars().take(width).collect();
        text.push_str(&format!(
            "{name:<width$} {:>7} {:>5.1}% {:>5.1}% {:>10} {:>10} {:>10} {:>10}\n",
            all.count,
            all.error_percentage,
            all.slow_percentage,
            ms_f(all.p50_duration),
            ms_f(all.p95_duration),
            ms_f(all.p99_duration),
            ms_f(all.max_duration),
        ));
    }
    if stats.routes.len() > limit {
        text.push_str(&format!("... and {} more\n", stats.routes.len() - limit));
    }
    Some(text)
}

/// `POST /api/loans p95 within 500.0 ms: 97.2% compliant, 44% of the error budget left, burn
/// rate 0.6 (met)`.
pub fn slos(stats: &StatsDoc) -> Option<String> {
    if stats.slos.is_empty() {
        return None;
    }
    let mut text = String::new();
    for slo in &stats.slos {
        let pct = |share: Option<f64>| match share {
            Some(share) => format!("{:.1}%", share * 100.0),
            None => "-".to_owned(),
        };
        text.push_str(&format!(
            "{} {} within {}: {} compliant of {} requests, {} of the error budget left, burn rate {} ({})\n",
            slo.route,
            slo.objective,
            ms_f(slo.threshold_ms),
            pct(slo.compliance),
            slo.requests,
            pct(slo.error_budget_remaining),
            slo.burn_rate.map_or_else(|| "-".to_owned(), |rate| format!("{rate:.1}")),
            if slo.breached { "breached" } else { "met" },
        ));
    }
    Some(text)
}

/// `GET /api/x regressed: p95 62.0 ms over the last minute against 12.1 ms (saved baseline)`.
pub fn regressions(stats: &StatsDoc) -> Option<String> {
    let lines: Vec<String> = stats
        .routes
        .iter()
        .filter(|route| route.regression)
        .map(|route| {
            format!(
                "{} regressed: p95 {} over the last minute against {} ({} baseline)\n",
                route.route,
                ms_f(route.windows.last1m.p95_duration),
                ms_f(route.baseline_p95_duration.unwrap_or(0.0)),
                route.baseline_source.unwrap_or("no"),
            )
        })
        .collect();
    (!lines.is_empty()).then(|| lines.concat())
}

/// Each route's tail summary: `p95+ requests of GET /x (12): 78% waiting on ...`.
pub fn tails(stats: &StatsDoc, limit: usize) -> Option<String> {
    let lines: Vec<String> = stats
        .routes
        .iter()
        .filter_map(|route| route.tail.as_ref())
        .take(limit)
        .map(|tail| format!("{}\n", tail.summary))
        .collect();
    (!lines.is_empty()).then(|| lines.concat())
}

/// `db SELECT ... : 120 calls, p95 4.1 ms, 35% of the time of the 40 requests that make it`.
pub fn dependencies(stats: &StatsDoc, limit: usize) -> Option<String> {
    let lines: Vec<String> = stats
        .dependencies
        .iter()
        .take(limit)
        .map(|dep| {
            let share = match dep.share_of_request_time {
                Some(share) => format!(
                    ", {:.0}% of the time of the {} requests that make it",
                    share * 100.0,
                    dep.requests
                ),
                None => String::new(),
            };
            format!(
                "{} {}: {} calls, p95 {}{share}\n",
                dep.kind,
                dep.dependency,
                dep.calls,
                ms_f(dep.p95_duration)
            )
        })
        .collect();
    (!lines.is_empty()).then(|| lines.concat())
}

/// `3 alerts sent (2 held back by their cooldown)` and the last ones.
pub fn alerts(stats: &StatsDoc, limit: usize) -> Option<String> {
    let alerts = &stats.alerts;
    if alerts.sent == 0 && alerts.suppressed == 0 {
        return None;
    }
    let mut text = format!(
        "{} sent ({} held back by their cooldown)\n",
        alerts.sent, alerts.suppressed
    );
    let skip = alerts.recent.len().saturating_sub(limit);
    for alert in alerts.recent.iter().skip(skip) {
        text.push_str(&format!(
            "{} {}: {}\n",
            alert.at,
            alert.firing.kind.as_str(),
            alert.firing.message
        ));
    }
    Some(text)
}
