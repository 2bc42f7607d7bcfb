//! Baselines: what a run's routes took, saved (`--save-baseline FILE`) and loaded
//! (`--baseline FILE`) to compare a later run against, "before and after" a fix. A loaded
//! baseline's p95 is also what a route's regression is judged against.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file's `schema`.
pub const SCHEMA: &str = "loupe.baseline/1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineFile {
    pub schema: String,
    /// When it was saved (RFC 3339).
    pub saved_at: String,
    pub routes: Vec<BaselineRoute>,
}

/// A route's percentiles over a run, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineRoute {
    pub service: String,
    pub route: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("cannot read the baseline {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a baseline loupe saved (write one with `loupe report --save-baseline FILE`){at}"
    )]
    Format { path: String, at: String },
    #[error("cannot write the baseline {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl BaselineFile {
    pub fn load(path: &Path) -> Result<Self, BaselineError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| BaselineError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|at| BaselineError::Format { path: shown, at })
    }

    /// Parses a saved baseline; the error says where it went wrong (` (line N)`), not how the
    /// parser put it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: Self = serde_json::from_str(text).map_err(|err| match err.line() {
            0 => String::new(),
            line => format!(" (line {line})"),
        })?;
        if file.schema != SCHEMA {
            return Err(format!(" (its schema is `{}`, not {SCHEMA})", file.schema));
        }
        let valid = |ms: f64| ms.is_finite() && ms > 0.0;
        if let Some(bad) = file
            .routes
            .iter()
            .find(|r| !(valid(r.p50_ms) && valid(r.p95_ms) && valid(r.p99_ms)))
        {
            return Err(format!(
                " ({} has a percentile that is not a duration above zero)",
                bad.route
            ));
        }
        Ok(file)
    }

    pub fn save(&self, path: &Path) -> Result<(), BaselineError> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|source| BaselineError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// The saved route of `service`'s `route`; when the file has that route for one other
    /// service only (the service was renamed), that one.
    pub fn route(&self, service: &str, route: &str) -> Option<&BaselineRoute> {
        if let Some(exact) = self
            .routes
            .iter()
            .find(|r| r.service == service && r.route == route)
        {
            return Some(exact);
        }
        let mut same_route = self.routes.iter().filter(|r| r.route == route);
        match (same_route.next(), same_route.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }
}

/// One route before (the baseline) and after (this run).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    pub service: String,
    pub route: String,
    pub before: Option<BaselineRoute>,
    pub after: Option<BaselineRoute>,
    /// How much faster p95 got, in percent (negative: slower); None without both.
    pub p95_improvement_percent: Option<f64>,
}

/// Every route of either side, baseline order first, then the new ones.
pub fn compare(before: &BaselineFile, after: &[BaselineRoute]) -> Vec<Comparison> {
    let improvement = |b: &BaselineRoute, a: &BaselineRoute| {
        (b.p95_ms > 0.0).then(|| ((b.p95_ms - a.p95_ms) / b.p95_ms * 1000.0).round() / 10.0)
    };
    let mut rows: Vec<Comparison> = before
        .routes
        .iter()
        .map(|b| {
            let a = after
                .iter()
                .find(|a| a.service == b.service && a.route == b.route)
                .or_else(|| {
                    let mut same = after.iter().filter(|a| a.route == b.route);
                    match (same.next(), same.next()) {
                        (Some(only), None) => Some(only),
                        _ => None,
                    }
                });
            Comparison {
                service: b.service.clone(),
                route: b.route.clone(),
                before: Some(b.clone()),
                after: a.cloned(),
                p95_improvement_percent: a.and_then(|a| improvement(b, a)),
            }
        })
        .collect();
    for a in after {
        if !rows
            .iter()
            .any(|row| row.after.as_ref().is_some_and(|seen| seen == a))
        {
            rows.push(Comparison {
                service: a.service.clone(),
                route: a.route.clone(),
                before: None,
                after: Some(a.clone()),
                p95_improvement_percent: None,
            });
        }
    }
    rows
}

/// The comparison as a table: route, p50/p95/p99 before → after, and the change of p95.
pub fn render(rows: &[Comparison]) -> String {
    let side = |route: &Option<BaselineRoute>| match route {
        Some(r) => format!("{:.1}/{:.1}/{:.1}", r.p50_ms, r.p95_ms, r.p99_ms),
        None => "-".to_owned(),
    };
    let width = rows.iter().map(|r| r.route.len()).max().unwrap_or(5).max(5);
    let mut text = format!(
        "{:<width$}  {:>22}  {:>22}  {}\n",
        "route", "before p50/p95/p99 ms", "after p50/p95/p99 ms", "p95"
    );
    for row in rows {
        let change = match row.p95_improvement_percent {
            Some(pct) if pct >= 0.0 => format!("{pct:.1}% faster"),
            Some(pct) => format!("{:.1}% slower", -pct),
            None if row.before.is_none() => "new".to_owned(),
            None => "not seen".to_owned(),
        };
        text.push_str(&format!(
            "{:<width$}  {:>22}  {:>22}  {change}\n",
            row.route,
            side(&row.before),
            side(&row.after),
        ));
    }
    text
}

/// Saved baselines for the tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// `service`'s `name` saved with 100 requests, a p95 of `p95` ms, p50 half, p99 1.5 times.
    pub fn route(service: &str, name: &str, p95: f64) -> BaselineRoute {
        BaselineRoute {
            service: service.into(),
            route: name.into(),
            count: 100,
            p50_ms: p95 / 2.0,
            p95_ms: p95,
            p99_ms: p95 * 1.5,
        }
    }

    pub fn file(routes: Vec<BaselineRoute>) -> BaselineFile {
        BaselineFile {
            schema: SCHEMA.into(),
            saved_at: "2026-12-04T00:00:00Z".into(),
            routes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    #[test]
    fn a_saved_baseline_reads_back_and_bad_files_say_so_in_one_line() {
        let saved = file(vec![route("shop", "GET /a", 10.0)]);
        let text = serde_json::to_string_pretty(&saved).unwrap();
        assert_eq!(BaselineFile::parse(&text).unwrap(), saved);
        assert_eq!(
            BaselineFile::parse("{\n\"schema\": 3\n}").unwrap_err(),
            " (line 2)"
        );
        let zero = text.replace("\"p95Ms\": 10.0", "\"p95Ms\": 0.0");
        assert_eq!(
            BaselineFile::parse(&zero).unwrap_err(),
            " (GET /a has a percentile that is not a duration above zero)"
        );
        let other = text.replace(SCHEMA, "loupe.baseline/9");
        assert!(
            BaselineFile::parse(&other)
                .unwrap_err()
                .contains("loupe.baseline/9")
        );
        let dir = std::env::temp_dir().join(format!("loupe-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.json");
        saved.save(&path).unwrap();
        assert_eq!(BaselineFile::load(&path).unwrap(), saved);
        std::fs::write(&path, "not json").unwrap();
        let err = BaselineFile::load(&path).unwrap_err().to_string();
        assert!(err.ends_with("is not a baseline loupe saved (write one with `loupe report --save-baseline FILE`) (line 1)"), "{err}");
        assert!(!err.contains("expected"), "no parser wording: {err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn routes_are_found_by_service_or_by_a_route_only_one_service_has() {
        let saved = file(vec![
            route("shop", "GET /a", 10.0),
            route("cart", "GET /a", 20.0),
            route("cart", "GET /b", 30.0),
        ]);
        assert_eq!(saved.route("cart", "GET /a").unwrap().p95_ms, 20.0);
        assert!(
            saved.route("other", "GET /a").is_none(),
            "two services have it"
        );
        assert_eq!(saved.route("other", "GET /b").unwrap().p95_ms, 30.0);
    }

    #[test]
    fn the_comparison_says_how_much_faster_each_route_got() {
        let before = file(vec![
            route("shop", "GET /a", 100.0),
            route("shop", "GET /gone", 5.0),
        ]);
        let after = vec![
            route("shop", "GET /a", 25.0),
            route("shop", "GET /new", 7.0),
        ];
        let rows = compare(&before, &after);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].p95_improvement_percent, Some(75.0));
        assert_eq!(rows[1].after, None);
        assert_eq!(rows[2].before, None);
        let text = render(&rows);
        assert!(text.contains("50.0/100.0/150.0"), "{text}");
        assert!(text.contains("75.0% faster"), "{text}");
        assert!(text.contains("not seen") && text.contains("new"), "{text}");
        let slower = compare(
            &file(vec![route("shop", "GET /a", 10.0)]),
            &[route("shop", "GET /a", 15.0)],
        );
        assert!(render(&slower).contains("50.0% slower"));
    }
}
