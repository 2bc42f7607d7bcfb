//! The numbers over time: every finished span's duration per operation type (inbound HTTP,
//! outbound HTTP, database, cache) and per service and route, since start and over rolling one-
//! and five-minute windows ([`window`]); per dependency (a peer or a statement) its calls and
//! its share of the time of the requests that make them; for the requests above their route's
//! p95, what took their time (tail attribution). On top of them: each route's baseline (the
//! thirty minutes before, or a saved one: [`baseline`]) and whether it regressed, the SLOs
//! ([`slo`]) and the alerts ([`alerts`]).
//!
//! The diagnosis stage records every span as it passes (sampled out or not); the alert stage
//! refreshes the routes' verdicts every few seconds and fires the alerts; `/stats`, `loupe
//! report` and the HTML report ([`html`]) read a [`StatsDoc`]. Every table is bounded
//! ([`MAX_KEYS`]): a key past it is counted (`stats_untracked`), not kept.

pub mod alerts;
pub mod baseline;
mod doc;
pub mod html;
pub mod slo;
pub mod text;
pub mod window;

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustc_hash::FxHashMap;

use crate::{
    config::Thresholds,
    detect::{intervals::union_ns, slow::threshold_for, tree},
    process::services::ServiceNames,
    spans::{OpType, SpanKind, SpanRecord},
};
use alerts::{Alert, AlertKind, Firing};
use baseline::{BaselineFile, BaselineRoute};
pub use doc::{AlertsDoc, DependencyDoc, RouteDoc, StatsDoc, TailDoc, TailPart, TypeDoc, Windows};
use slo::{Slo, SloStatus};
pub use window::Bucket;
use window::{ONE_MINUTE, SLOTS, Sample, Windowed, round3};

/// Routes kept at most: each holds up to 22 histograms (a few KiB each, as large as its
/// slowest request needs).
pub const MAX_ROUTES: usize = 256;
/// Dependencies kept at most (one histogram each).
pub const MAX_DEPENDENCIES: usize = 1_000;
/// Components of a route's tail kept at most.
const MAX_PARTS: usize = 32;
/// Alerts `/stats` shows, newest last.
const RECENT_ALERTS: usize = 50;
/// The component a request's time is its own.
const OWN_WORK: &str = "own work";

/// What the ledger judges by.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    pub thresholds: Thresholds,
    pub slos: Vec<Slo>,
    /// A route regressed when its last minute's p95 is over its baseline's times this.
    pub regression_factor: f64,
    /// Fewest requests a window needs before a verdict on it (a p95 of three is noise).
    pub min_samples: u64,
    pub baseline: Option<BaselineFile>,
    /// `--alert-slow-percent`: a type's slow share over the last minute, in percent.
    pub alert_slow_percent: Option<f64>,
    /// `--alert-error-percent`: a route's error share over the last minute, in percent.
    pub alert_error_percent: Option<f64>,
}

/// The operation types, in `byType`'s order and names.
const TYPES: [(OpType, &str); 4] = [
    (OpType::HttpServer, "http"),
    (OpType::HttpClient, "external"),
    (OpType::DbClient, "db"),
    (OpType::CacheClient, "cache"),
];

fn type_index(op: OpType) -> usize {
    match op {
        OpType::HttpServer => 0,
        OpType::HttpClient => 1,
        OpType::DbClient => 2,
        OpType::CacheClient => 3,
    }
}

/// Upper bounds of the slowness-ratio buckets (duration over the type's threshold).
const RATIO_BOUNDS: [(f64, &str); 6] = [
    (0.25, "<0.25"),
    (0.5, "0.25-0.5"),
    (1.0, "0.5-1"),
    (2.0, "1-2"),
    (5.0, "2-5"),
    (f64::INFINITY, ">=5"),
];

struct TypeStats {
    durations: Windowed,
    ratios: [u64; RATIO_BOUNDS.len()],
}

/// A route's regression: its last minute against its baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Regression {
    pub baseline_p95_us: u64,
    pub current_p95_us: u64,
    pub samples: u64,
}

#[derive(Default)]
struct Tail {
    requests: u64,
    total_ns: u64,
    parts: FxHashMap<String, u64>,
}

struct Route {
    durations: Windowed,
    /// Index into the configured SLOs.
    slo: Option<usize>,
    /// The five-minute p95 requests are judged "tail" against (refreshed).
    tail_p95_us: Option<u64>,
    /// The baseline p95 and where it came from (refreshed).
    baseline: Option<(u64, &'static str)>,
    regression: Option<Regression>,
    tail: Tail,
}

#[derive(Default)]
struct Dependency {
    calls: window::Total,
    /// Requests that made at least one call to it, their total duration, and the time they
    /// waited on it (overlapping calls once).
    requests: u64,
    request_ns: u64,
    waited_ns: u64,
}

type RouteKey = (Arc<str>, Box<str>);
type DependencyKey = (Arc<str>, usize, Box<str>);

/// The statistics: written by the diagnosis stage, refreshed by the alert stage, read by
/// `/stats` and the reports.
pub struct Ledger {
    config: LedgerConfig,
    services: ServiceNames,
    started_ns: u64,
    started_at: SystemTime,
    types: [TypeStats; 4],
    routes: FxHashMap<RouteKey, Route>,
    dependencies: FxHashMap<DependencyKey, Dependency>,
    /// Spans of routes and dependencies not kept per route or dependency (their table full).
    pub untracked: u64,
    alerts_sent: u64,
    alerts_suppressed: u64,
    recent: VecDeque<Alert>,
}

/// What one dependency of a request is called: its peer for HTTP, its statement for a query.
fn dependency_label(call: &SpanRecord) -> String {
    match call.op {
        OpType::HttpClient => tree::peer(call).unwrap_or_else(|| tree::label(call)),
        _ => tree::label(call),
    }
}

impl Ledger {
    pub fn new(config: LedgerConfig, services: ServiceNames, now_ns: u64) -> Self {
        Self {
            config,
            services,
            started_ns: now_ns,
            started_at: SystemTime::now(),
            types: std::array::from_fn(|_| TypeStats {
                durations: Windowed::new(false),
                ratios: [0; RATIO_BOUNDS.len()],
            }),
            routes: FxHashMap::default(),
            dependencies: FxHashMap::default(),
            untracked: 0,
            alerts_sent: 0,
            alerts_suppressed: 0,
            recent: VecDeque::new(),
        }
    }

    fn sample(&self, span: &SpanRecord, good: bool) -> Sample {
        Sample {
            micros: span.duration_ns() / 1000,
            error: span.error.is_some(),
            slow: span.is_slow(),
            good,
        }
    }

    fn record_type(&mut self, span: &SpanRecord, now_ns: u64) {
        let sample = self.sample(span, false);
        let threshold = threshold_for(span.op, &self.config.thresholds).as_nanos() as f64;
        let stats = &mut self.types[type_index(span.op)];
        stats.durations.record(now_ns, sample);
        if threshold > 0.0 {
            let ratio = span.duration_ns() as f64 / threshold;
            let bucket = RATIO_BOUNDS
                .iter()
                .position(|(bound, _)| ratio < *bound)
                .unwrap_or(RATIO_BOUNDS.len() - 1);
            stats.ratios[bucket] += 1;
        }
    }

    /// An outbound call (HTTP, query, cache command), as it leaves the diagnosis stage or
    /// is held for its request.
    pub fn record_call(&mut self, call: &SpanRecord, now_ns: u64) {
        self.record_type(call, now_ns);
        let service = self.services.of(call.pid);
        let key: DependencyKey = (
            service,
            type_index(call.op),
            dependency_label(call).into_boxed_str(),
        );
        let sample = self.sample(call, false);
        if let Some(dependency) = self.dependencies.get_mut(&key) {
            dependency.calls.record(sample);
        } else if self.dependencies.len() < MAX_DEPENDENCIES {
            let mut dependency = Dependency::default();
            dependency.calls.record(sample);
            self.dependencies.insert(key, dependency);
        } else {
            self.untracked += 1;
        }
    }

    /// A finished request with the calls it made (already recorded by [`Self::record_call`]):
    /// its route's numbers, its tail components when it is above its route's p95, its
    /// dependencies' share of it; a regressed route's request gets `performance.regression`
    /// and `performance.baseline_p95_ms`.
    pub fn record_request(&mut self, request: &mut SpanRecord, calls: &[SpanRecord], now_ns: u64) {
        if request.kind != SpanKind::Server {
            return;
        }
        self.record_type(request, now_ns);
        let service = self.services.of(request.pid);
        let key: RouteKey = (service.clone(), Box::from(&*request.name));
        if !self.routes.contains_key(&key) {
            if self.routes.len() >= MAX_ROUTES {
                self.untracked += 1;
                return;
            }
            let slo = self
                .config
                .slos
                .iter()
                .position(|slo| slo.route == *request.name);
            self.routes.insert(
                key.clone(),
                Route {
                    durations: Windowed::new(true),
                    slo,
                    tail_p95_us: None,
                    baseline: None,
                    regression: None,
                    tail: Tail::default(),
                },
            );
        }
        let duration_ns = request.duration_ns();
        let window = (request.start_ns, request.end_ns);
        let good = {
            let route = &self.routes[&key];
            route.slo.is_some_and(|index| {
                u128::from(duration_ns) <= self.config.slos[index].threshold.as_nanos()
            })
        };
        let sample = self.sample(request, good);
        let route = self.routes.get_mut(&key).expect("inserted above");
        route.durations.record(now_ns, sample);
        if let Some(regression) = route.regression {
            request.set("performance.regression", true);
            request.set(
                "performance.baseline_p95_ms",
                round3(regression.baseline_p95_us as f64 / 1000.0),
            );
        }

        // The calls grouped by dependency: the time the request waited on each.
        let mut groups: Vec<(DependencyKey, Vec<(u64, u64)>)> = Vec::new();
        for call in calls {
            let label = dependency_label(call);
            let dep_key: DependencyKey = (service.clone(), type_index(call.op), label.into());
            match groups.iter_mut().find(|(k, _)| *k == dep_key) {
                Some((_, spans)) => spans.push((call.start_ns, call.end_ns)),
                None => groups.push((dep_key, vec![(call.start_ns, call.end_ns)])),
            }
        }
        let waited: Vec<(DependencyKey, u64)> = groups
            .into_iter()
            .map(|(k, spans)| (k, union_ns(spans, window)))
            .collect();
        for (dep_key, ns) in &waited {
            if let Some(dependency) = self.dependencies.get_mut(dep_key) {
                dependency.requests += 1;
                dependency.request_ns += duration_ns;
                dependency.waited_ns += ns;
            }
        }
        let route = self.routes.get_mut(&key).expect("inserted above");
        let Some(p95) = route.tail_p95_us else {
            return;
        };
        if duration_ns / 1000 <= p95 {
            return;
        }
        let all = union_ns(calls.iter().map(|c| (c.start_ns, c.end_ns)), window);
        let tail = &mut route.tail;
        tail.requests += 1;
        tail.total_ns += duration_ns;
        let own = duration_ns.saturating_sub(all);
        let parts = waited
            .iter()
            .map(|((_, _, label), ns)| (format!("waiting on {label}"), *ns))
            .chain(std::iter::once((OWN_WORK.to_owned(), own)));
        for (part, ns) in parts {
            if ns == 0 {
                continue;
            }
            if let Some(total) = tail.parts.get_mut(&part) {
                *total += ns;
            } else if tail.parts.len() < MAX_PARTS {
                tail.parts.insert(part, ns);
            }
        }
    }

    /// Refreshes every route's baseline, regression and tail p95 as of `now_ns`, and says
    /// which alert conditions hold now (the alert stage applies the cooldown).
    pub fn refresh(&mut self, now_ns: u64) -> Vec<Firing> {
        let min = self.config.min_samples.max(1);
        let factor = self.config.regression_factor;
        let mut firing = Vec::new();
        for ((service, name), route) in &mut self.routes {
            let minute = route.durations.window(now_ns, ONE_MINUTE);
            let five = route.durations.window(now_ns, SLOTS);
            route.tail_p95_us = (five.count() >= min)
                .then(|| five.quantile_us(0.95))
                .flatten();
            let saved = self
                .config
                .baseline
                .as_ref()
                .and_then(|file| file.route(service, name))
                .filter(|saved| saved.count >= min)
                .map(|saved| ((saved.p95_ms * 1000.0).round() as u64, "saved"));
            let rolling = || {
                route
                    .durations
                    .baseline_p95(now_ns, min)
                    .map(|p95| (p95, "rolling"))
            };
            route.baseline = saved.or_else(rolling);
            route.regression = match (route.baseline, minute.quantile_us(0.95)) {
                (Some((base, _)), Some(current))
                    if minute.count() >= min && current as f64 > factor * base.max(1) as f64 =>
                {
                    Some(Regression {
                        baseline_p95_us: base,
                        current_p95_us: current,
                        samples: minute.count(),
                    })
                }
                _ => None,
            };
            if let Some(regression) = route.regression {
                firing.push(Firing {
                    kind: AlertKind::Regression,
                    service: Some(service.to_string()),
                    subject: name.to_string(),
                    message: format!(
                        "{name} regressed: p95 {} over the last minute against a baseline of {} (x{:.1}, {} requests)",
                        ms(regression.current_p95_us),
                        ms(regression.baseline_p95_us),
                        regression.current_p95_us as f64 / regression.baseline_p95_us.max(1) as f64,
                        regression.samples
                    ),
                    value: regression.current_p95_us as f64 / 1000.0,
                    limit: factor * regression.baseline_p95_us as f64 / 1000.0,
                    samples: regression.samples,
                });
            }
            if let Some(limit) = self.config.alert_error_percent
                && minute.count() >= min
            {
                let share = 100.0 * minute.errors as f64 / minute.count() as f64;
                if share > limit {
                    firing.push(Firing {
                        kind: AlertKind::ErrorRate,
                        service: Some(service.to_string()),
                        subject: name.to_string(),
                        message: format!(
                            "{name}: {share:.1}% of requests failed over the last minute (limit {limit}%, {} requests)",
                            minute.count()
                        ),
                        value: round3(share),
                        limit,
                        samples: minute.count(),
                    });
                }
            }
            if let Some(index) = route.slo {
                let slo = &self.config.slos[index];
                let status = slo.status(
                    service,
                    (route.durations.total.good, route.durations.total.count()),
                    (five.good, five.count()),
                    min,
                );
                if status.breached {
                    firing.push(Firing {
                        kind: AlertKind::SloBreach,
                        service: Some(service.to_string()),
                        subject: name.to_string(),
                        message: format!(
                            "{name} misses its SLO ({} within {}): only {:.1}% were within it over the last five minutes, burn rate {:.1}",
                            slo.objective,
                            ms(slo.threshold.as_micros() as u64),
                            100.0 * status.compliance_last5m.unwrap_or(0.0),
                            status.burn_rate.unwrap_or(0.0)
                        ),
                        value: status.compliance_last5m.unwrap_or(0.0),
                        limit: slo.target,
                        samples: five.count(),
                    });
                }
            }
        }
        if let Some(limit) = self.config.alert_slow_percent {
            for (index, (_, name)) in TYPES.iter().enumerate() {
                let minute = self.types[index].durations.window(now_ns, ONE_MINUTE);
                if minute.count() < min {
                    continue;
                }
                let share = 100.0 * minute.slow as f64 / minute.count() as f64;
                if share > limit {
                    firing.push(Firing {
                        kind: AlertKind::SlowShare,
                        service: None,
                        subject: (*name).to_owned(),
                        message: format!(
                            "{share:.1}% of {} operations were slow over the last minute (limit {limit}%, {} operations)",
                            type_words(index),
                            minute.count()
                        ),
                        value: round3(share),
                        limit,
                        samples: minute.count(),
                    });
                }
            }
        }
        firing.sort_by_key(Firing::key);
        firing
    }

    /// Counts an alert sent (kept among the recent ones) or held back by its cooldown.
    pub fn note_alert(&mut self, alert: Option<Alert>) {
        match alert {
            Some(alert) => {
                self.alerts_sent += 1;
                if self.recent.len() >= RECENT_ALERTS {
                    self.recent.pop_front();
                }
                self.recent.push_back(alert);
            }
            None => self.alerts_suppressed += 1,
        }
    }

    /// Every route's percentiles since start: what `--save-baseline` writes.
    pub fn baseline_routes(&self) -> Vec<BaselineRoute> {
        let mut routes: Vec<BaselineRoute> = self
            .routes
            .iter()
            .map(|((service, name), route)| {
                let summary = route.durations.total.summary();
                BaselineRoute {
                    service: service.to_string(),
                    route: name.to_string(),
                    count: summary.count,
                    p50_ms: summary.p50_duration,
                    p95_ms: summary.p95_duration,
                    p99_ms: summary.p99_duration,
                }
            })
            .collect();
        routes.sort_by(|a, b| (&a.service, &a.route).cmp(&(&b.service, &b.route)));
        routes
    }

    pub fn baseline_file(&self) -> BaselineFile {
        BaselineFile {
            schema: baseline::SCHEMA.to_owned(),
            saved_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            routes: self.baseline_routes(),
        }
    }

    /// Each SLO's status as of `now_ns` (what the metrics show of it), in route order.
    /// An SLO whose route has not been seen is there too, with no service and no requests (a
    /// typo in `--slo` shows).
    pub fn slos(&self, now_ns: u64) -> Vec<SloStatus> {
        let mut slos: Vec<SloStatus> = self
            .routes
            .iter()
            .filter_map(|((service, _), route)| Some((service, route, route.slo?)))
            .map(|(service, route, index)| self.slo_status(service, route, index, now_ns))
            .collect();
        for (index, slo) in self.config.slos.iter().enumerate() {
            if !self.routes.values().any(|route| route.slo == Some(index)) {
                slos.push(slo.status("", (0, 0), (0, 0), self.config.min_samples));
            }
        }
        slos.sort_by(|a, b| (&a.route, &a.service).cmp(&(&b.route, &b.service)));
        slos
    }

    fn slo_status(&self, service: &str, route: &Route, index: usize, now_ns: u64) -> SloStatus {
        self.config.slos[index].status(
            service,
            (route.durations.total.good, route.durations.total.count()),
            route.durations.window_counts(now_ns, SLOTS),
            self.config.min_samples,
        )
    }

    /// Everything, as `/stats` serves it (docs/stats.md).
    pub fn snapshot(&self, now_ns: u64) -> StatsDoc {
        let windows = |durations: &Windowed| Windows {
            since_start: durations.total.summary(),
            last1m: durations.window(now_ns, ONE_MINUTE).summary(),
            last5m: durations.window(now_ns, SLOTS).summary(),
        };
        let by_type = TYPES
            .iter()
            .enumerate()
            .map(|(index, (op, name))| {
                let stats = &self.types[index];
                let ratios = RATIO_BOUNDS
                    .iter()
                    .zip(stats.ratios)
                    .map(|((_, label), n)| ((*label).to_owned(), n))
                    .collect();
                (
                    (*name).to_owned(),
                    TypeDoc {
                        windows: windows(&stats.durations),
                        threshold_ms: threshold_for(*op, &self.config.thresholds).as_secs_f64()
                            * 1000.0,
                        slowness_ratio: ratios,
                    },
                )
            })
            .collect();
        let mut routes: Vec<RouteDoc> = self
            .routes
            .iter()
            .map(|((service, name), route)| {
                let slo = route
                    .slo
                    .map(|index| self.slo_status(service, route, index, now_ns));
                RouteDoc {
                    service: service.to_string(),
                    route: name.to_string(),
                    windows: windows(&route.durations),
                    histogram: route.durations.total.buckets(),
                    baseline_p95_duration: route.baseline.map(|(us, _)| round3(us as f64 / 1000.0)),
                    baseline_source: route.baseline.map(|(_, source)| source),
                    regression: route.regression.is_some(),
                    slo,
                    tail_p95_duration: route.tail_p95_us.map(|us| round3(us as f64 / 1000.0)),
                    tail: tail_doc(name, &route.tail),
                }
            })
            .collect();
        routes.sort_by(|a, b| {
            b.windows
                .since_start
                .p95_duration
                .total_cmp(&a.windows.since_start.p95_duration)
                .then_with(|| (&a.service, &a.route).cmp(&(&b.service, &b.route)))
        });
        let mut dependencies: Vec<DependencyDoc> = self
            .dependencies
            .iter()
            .map(|((service, index, label), dependency)| {
                let summary = dependency.calls.summary();
                DependencyDoc {
                    service: service.to_string(),
                    kind: TYPES[*index].1,
                    dependency: label.to_string(),
                    calls: summary.count,
                    avg_duration: summary.avg_duration,
                    p95_duration: summary.p95_duration,
                    requests: dependency.requests,
                    share_of_request_time: (dependency.request_ns > 0).then(|| {
                        round3(dependency.waited_ns as f64 / dependency.request_ns as f64)
                    }),
                }
            })
            .collect();
        dependencies.sort_by(|a, b| {
            let waited = |d: &DependencyDoc| d.share_of_request_time.unwrap_or(0.0);
            waited(b)
                .total_cmp(&waited(a))
                .then_with(|| b.calls.cmp(&a.calls))
                .then_with(|| a.dependency.cmp(&b.dependency))
        });
        let slos = routes
            .iter()
            .filter_map(|route| route.slo.clone())
            .collect();
        StatsDoc {
            schema: "loupe.stats/1",
            generated_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
            uptime_seconds: round3(
                Duration::from_nanos(now_ns.saturating_sub(self.started_ns)).as_secs_f64(),
            ),
            by_type,
            routes,
            dependencies,
            slos,
            alerts: AlertsDoc {
                sent: self.alerts_sent,
                suppressed: self.alerts_suppressed,
                recent: self.recent.iter().cloned().collect(),
            },
            untracked: self.untracked,
        }
    }
}

fn type_words(index: usize) -> &'static str {
    ["inbound HTTP", "outbound HTTP", "database", "cache"][index]
}

/// `12.3 ms`, `1.20 s`.
pub fn ms(micros: u64) -> String {
    let ms = micros as f64 / 1000.0;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

fn tail_doc(route: &str, tail: &Tail) -> Option<TailDoc> {
    if tail.requests == 0 || tail.total_ns == 0 {
        return None;
    }
    let mut parts: Vec<TailPart> = tail
        .parts
        .iter()
        .map(|(component, ns)| TailPart {
            component: component.clone(),
            share: round3(*ns as f64 / tail.total_ns as f64),
        })
        .collect();
    parts.sort_by(|a, b| {
        b.share
            .total_cmp(&a.share)
            .then_with(|| a.component.cmp(&b.component))
    });
    // Parts that round to 0% are left out of the words (not of `parts`).
    let words: Vec<String> = parts
        .iter()
        .filter(|part| part.share >= 0.005)
        .take(3)
        .map(|part| format!("{:.0}% {}", part.share * 100.0, part.component))
        .collect();
    Some(TailDoc {
        requests: tail.requests,
        summary: format!(
            "p95+ requests of {route} ({}): {}",
            tail.requests,
            words.join(", ")
        ),
        parts,
    })
}

#[cfg(test)]
mod tests;
