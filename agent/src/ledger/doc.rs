//! What `/stats` serves, `loupe report` prints and the HTML report draws: the ledger's
//! statistics as of one moment (docs/stats.md has the schema).

use serde::Serialize;

use super::{
    alerts::Alert,
    slo::SloStatus,
    window::{self, Summary},
};

/// `/stats`: everything the ledger knows (docs/stats.md has the schema).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsDoc {
    pub schema: &'static str,
    pub generated_at: String,
    pub started_at: String,
    pub uptime_seconds: f64,
    /// `http` (inbound requests), `external` (outbound HTTP), `db`, `cache`.
    pub by_type: std::collections::BTreeMap<String, TypeDoc>,
    /// Slowest p95 first.
    pub routes: Vec<RouteDoc>,
    /// The largest share of their callers' time first.
    pub dependencies: Vec<DependencyDoc>,
    pub slos: Vec<SloStatus>,
    pub alerts: AlertsDoc,
    /// Spans not counted per route or dependency: their table was full (they count in
    /// `byType`).
    pub untracked: u64,
}

/// Since start (flattened: `count`, `p95Duration`, ...), and the rolling windows.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Windows {
    #[serde(flatten)]
    pub since_start: Summary,
    pub last1m: Summary,
    pub last5m: Summary,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeDoc {
    #[serde(flatten)]
    pub windows: Windows,
    pub threshold_ms: f64,
    /// Operations by duration over the threshold: `<0.25`, `0.25-0.5`, `0.5-1`, `1-2`, `2-5`,
    /// `>=5` (since start).
    pub slowness_ratio: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDoc {
    pub service: String,
    pub route: String,
    #[serde(flatten)]
    pub windows: Windows,
    /// Since start, by [`window::BUCKET_BOUNDS_MS`].
    pub histogram: Vec<window::Bucket>,
    pub baseline_p95_duration: Option<f64>,
    /// `saved` (--baseline FILE) or `rolling` (the thirty minutes before).
    pub baseline_source: Option<&'static str>,
    pub regression: bool,
    pub slo: Option<SloStatus>,
    /// The five-minute p95 a request must be above to count in `tail` (refreshed every 5 s;
    /// null before the window has enough requests).
    pub tail_p95_duration: Option<f64>,
    pub tail: Option<TailDoc>,
}

/// What the requests above their route's p95 spent their time on.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TailDoc {
    pub requests: u64,
    /// `p95+ requests of GET /x (12): 78% waiting on 127.0.0.1:8083, 20% own work`.
    pub summary: String,
    pub parts: Vec<TailPart>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TailPart {
    pub component: String,
    /// 0..1 of those requests' time (parallel calls can each have much of it).
    pub share: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyDoc {
    pub service: String,
    /// `external`, `db` or `cache`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `host:port` for HTTP, the statement for a query.
    pub dependency: String,
    pub calls: u64,
    pub avg_duration: f64,
    pub p95_duration: f64,
    /// Requests that called it, and the share of their time they waited on it.
    pub requests: u64,
    pub share_of_request_time: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AlertsDoc {
    pub sent: u64,
    pub suppressed: u64,
    pub recent: Vec<Alert>,
}
