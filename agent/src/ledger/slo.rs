//! Latency SLOs: `--slo 'POST /api/loans=500ms@p95'`: 95% of that route's requests finish within
//! 500 ms. Compliance is the share that did; the error budget is the 5% allowed to be slower,
//! and the burn rate how fast the last five minutes spend it (1: exactly as fast as allowed).

use std::time::Duration;

use serde::Serialize;

use super::window::round3;

/// One SLO.
#[derive(Clone, Debug, PartialEq)]
pub struct Slo {
    /// The route as spans are named: `POST /api/loans`.
    pub route: String,
    pub threshold: Duration,
    /// 0..1: the share of requests that must be within the threshold (0.95 for p95).
    pub target: f64,
    /// As given: `p95`.
    pub objective: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not an SLO like 'POST /api/loans=500ms@p95': {why}")]
pub struct SloError {
    given: String,
    why: String,
}

impl Slo {
    pub fn parse(text: &str) -> Result<Self, SloError> {
        let bad = |why: &str| SloError {
            given: text.to_owned(),
            why: why.to_owned(),
        };
        let (route, rest) = text
            .rsplit_once('=')
            .ok_or_else(|| bad("give the route, `=`, a duration, `@` and a percentile"))?;
        let route = route.trim();
        if route.is_empty() {
            return Err(bad("the route is empty"));
        }
        let (threshold, objective) = rest
            .split_once('@')
            .ok_or_else(|| bad("say which percentile after `@`, e.g. @p95 or @p99.9"))?;
        let threshold = humantime::parse_duration(threshold.trim())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| bad("the threshold is not a duration like 500ms or 2s"))?;
        let objective = objective.trim();
        let percent = objective
            .strip_prefix('p')
            .or_else(|| objective.strip_suffix('%'))
            .and_then(|n| n.parse::<f64>().ok())
            .filter(|n| *n > 0.0 && *n < 100.0)
            .ok_or_else(|| bad("the percentile is not one like p95, p99.9 or 99.5%"))?;
        Ok(Self {
            route: route.to_owned(),
            threshold,
            target: percent / 100.0,
            objective: objective.to_owned(),
        })
    }

    /// Reads one SLO per line of `text` (blank lines and `#` comments skipped).
    pub fn parse_file(text: &str) -> Result<Vec<Self>, SloError> {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(Self::parse)
            .collect()
    }

    /// Its state on `service` from `good` of `total` requests since start and in the last five
    /// minutes. A breach needs `min_samples` requests, and at least as many as it takes for one
    /// slow request to be within the objective (1,000 for p99.9): one slow request of twenty is
    /// no breach of a p99.9.
    pub fn status(
        &self,
        service: &str,
        since_start: (u64, u64),
        recent: (u64, u64),
        min_samples: u64,
    ) -> SloStatus {
        let allowed = 1.0 - self.target;
        let compliance = |(good, total): (u64, u64)| {
            (total > 0).then(|| round3(good as f64 / total as f64 * 100.0) / 100.0)
        };
        let (good, total) = since_start;
        let bad = total - good.min(total);
        let budget = (total > 0).then(|| {
            let allowed_bad = allowed * total as f64;
            round3(1.0 - bad as f64 / allowed_bad)
        });
        let (recent_good, recent_total) = recent;
        let burn_rate = (recent_total > 0).then(|| {
            let bad_share =
                (recent_total - recent_good.min(recent_total)) as f64 / recent_total as f64;
            round3(bad_share / allowed)
        });
        let needed = min_samples
            .max(1)
            .max((1.0 / allowed - 1e-6).ceil().min(1e9) as u64);
        let breached =
            recent_total >= needed && (recent_good as f64) < self.target * recent_total as f64;
        SloStatus {
            service: (!service.is_empty()).then(|| service.to_owned()),
            route: self.route.clone(),
            objective: self.objective.clone(),
            threshold_ms: self.threshold.as_secs_f64() * 1000.0,
            target: self.target,
            requests: total,
            compliance: compliance(since_start),
            compliance_last5m: compliance(recent),
            error_budget_remaining: budget,
            burn_rate,
            breached,
        }
    }
}

impl SloStatus {
    /// Its route as the RED metrics label one: `GET /api/loans` is method `GET` and route
    /// `/api/loans` (a route without a method is the route alone).
    pub fn method_and_route(&self) -> (Option<&str>, &str) {
        match self.route.split_once(' ') {
            Some((method, route)) if route.starts_with('/') => (Some(method), route),
            _ => (None, &self.route),
        }
    }
}

/// An SLO as `/stats` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SloStatus {
    /// The service whose route it is; null while the route has not been seen.
    pub service: Option<String>,
    pub route: String,
    pub objective: String,
    pub threshold_ms: f64,
    pub target: f64,
    pub requests: u64,
    /// 0..1 since start; null before the first request.
    pub compliance: Option<f64>,
    #[serde(rename = "complianceLast5m")]
    pub compliance_last5m: Option<f64>,
    /// 1: untouched, 0: spent, below 0: overspent (since start).
    pub error_budget_remaining: Option<f64>,
    /// Over the last five minutes: 1 spends the budget exactly as fast as allowed.
    pub burn_rate: Option<f64>,
    /// The last five minutes (with enough requests) missed the objective.
    pub breached: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_slo_names_its_route_threshold_and_percentile() {
        let slo = Slo::parse("POST /api/loans=500ms@p95").unwrap();
        assert_eq!(slo.route, "POST /api/loans");
        assert_eq!(slo.threshold, Duration::from_millis(500));
        assert!((slo.target - 0.95).abs() < 1e-9);
        assert!((Slo::parse("GET /a=2s@p99.9").unwrap().target - 0.999).abs() < 1e-9);
        assert!((Slo::parse("GET /a = 2s @ 99.5%").unwrap().target - 0.995).abs() < 1e-9);
        let bad = |text: &str| Slo::parse(text).unwrap_err().to_string();
        assert_eq!(
            bad("GET /a"),
            "`GET /a` is not an SLO like 'POST /api/loans=500ms@p95': give the route, `=`, a duration, `@` and a percentile"
        );
        assert!(bad("GET /a=500ms").contains("which percentile"));
        assert!(bad("GET /a=soon@p95").contains("not a duration"));
        assert!(bad("GET /a=0s@p95").contains("not a duration"));
        assert!(bad("GET /a=1s@p100").contains("percentile"));
        assert!(bad("GET /a=1s@fast").contains("percentile"));
        assert!(bad("=1s@p95").contains("route is empty"));
        let file = Slo::parse_file("# shop\nGET /a=1s@p95\n\n  POST /b=200ms@p99\n").unwrap();
        assert_eq!(file.len(), 2);
        assert!(Slo::parse_file("GET /a=1s@p95\nnonsense\n").is_err());
    }

    #[test]
    fn compliance_budget_and_burn_rate_follow_the_slow_share() {
        let slo = Slo::parse("GET /a=100ms@p95").unwrap();
        // 1000 requests, 20 over: 98% compliant, 40% of the budget (50) spent.
        let status = slo.status("shop", (980, 1000), (98, 100), 20);
        assert_eq!(status.service.as_deref(), Some("shop"));
        assert_eq!(status.compliance, Some(0.98));
        assert_eq!(status.error_budget_remaining, Some(0.6));
        assert_eq!(status.burn_rate, Some(0.4));
        assert!(!status.breached);
        // The last five minutes: 10% over, twice what is allowed.
        let status = slo.status("shop", (900, 1000), (90, 100), 20);
        assert_eq!(status.error_budget_remaining, Some(-1.0));
        assert_eq!(status.burn_rate, Some(2.0));
        assert!(status.breached);
        assert!(
            !slo.status("shop", (0, 5), (0, 5), 20).breached,
            "too few to say"
        );
        let empty = slo.status("", (0, 0), (0, 0), 20);
        assert_eq!((empty.compliance, empty.burn_rate), (None, None));
        assert_eq!(empty.service, None);
        // A p99.9 is not breached by one slow request of twenty, but is by two of a thousand.
        let strict = Slo::parse("GET /a=100ms@p99.9").unwrap();
        assert!(!strict.status("shop", (19, 20), (19, 20), 20).breached);
        assert!(strict.status("shop", (998, 1000), (998, 1000), 20).breached);
    }
}
