//! Calls read back from Jaeger against the requests that made them. The service tests give every
//! request a path of its own, `/<route>/<id>`, and every HTTP call it makes carries that id in
//! its own path (`/sleep/<id>`): a call nested under a request is checked against it, by its id
//! for an HTTP call and by what the request's route runs for a query.

use std::collections::{BTreeMap, HashMap};

use crate::{
    jaeger::{Jaeger, Span},
    procs::Finished,
    queries::is_db,
};

/// `/item/t3r7` -> (`item`, `t3r7`).
pub fn route_and_id(path: &str) -> Option<(&str, &str)> {
    let (route, id) = path.strip_prefix('/')?.split_once('/')?;
    Some((route, id))
}

/// A CLIENT span that is not a query: an outbound HTTP call.
pub fn is_http_call(span: &Span) -> bool {
    span.kind() == "client" && !is_db(span)
}

/// An HTTP call's path: `url.path`, else the path part of `url.full`.
pub fn call_path(span: &Span) -> Option<String> {
    if let Some(path) = span.str_tag("url.path") {
        return Some(path.to_owned());
    }
    let full = span.str_tag("url.full")?;
    let rest = full.split_once("://").map_or(full, |(_, rest)| rest);
    let path = &rest[rest.find('/')?..];
    Some(path.split('?').next().unwrap_or(path).to_owned())
}

/// The request id an HTTP call carries: what follows `/sleep/` in its path.
pub fn call_id(span: &Span) -> Option<String> {
    call_path(span)?.strip_prefix("/sleep/").map(str::to_owned)
}

/// Whether a call carrying `call_id` is the request `request_id`'s: its own id, or one of the
/// two calls a fanning-out route makes, `<id>-a` and `<id>-b`.
pub fn same_or_fanned(call_id: &str, request_id: &str) -> bool {
    call_id == request_id
        || call_id
            .strip_prefix(request_id)
            .is_some_and(|rest| rest == "-a" || rest == "-b")
}

/// One line about a span for a failure message.
pub fn describe(span: &Span) -> String {
    let keys = [
        "url.path",
        "url.full",
        "db.query.text",
        "loupe.db.statement_name",
        "loupe.parent",
        "network.peer.port",
        "server.port",
    ];
    let tags: Vec<String> = keys
        .iter()
        .filter_map(|k| span.tag(k).map(|v| format!("{k}={v}")))
        .collect();
    format!(
        "{} [{}] start={}us dur={}us",
        span.operation,
        tags.join(" "),
        span.start_us,
        span.duration_us
    )
}

/// The first 25 of `lines`, one an indented line, for a failure message.
pub fn show(lines: &[String]) -> String {
    lines
        .iter()
        .take(25)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Asserts that at least 95% of the `all` calls of a kind (`what`: "queries") are `nested`. A
/// rule that decides late (a call made while several requests were in flight waits for them to
/// answer) may still leave a call ambiguous, when a candidate never answers inside the wait.
pub fn assert_mostly_nested(who: &str, what: &str, nested: usize, all: usize) {
    assert!(all > 0, "{who}: no {what} at all");
    assert!(
        nested * 100 >= all * 95,
        "{who}: {nested} of {all} {what} nested, fewer than 95%"
    );
}

/// What a shop's routes do, as far as checking its calls' parents needs.
pub trait Routes {
    /// How many queries a request of `route` runs.
    fn queries_of(&self, route: &str) -> usize;

    /// How many HTTP calls a request of `route` makes: by default none.
    fn calls_of(&self, _route: &str) -> usize {
        0
    }

    /// Whether an HTTP call carrying `call_id` belongs to the request with `request_id`.
    fn same_request(&self, call_id: &str, request_id: &str) -> bool {
        call_id == request_id
    }

    /// Whether `query` can be one of `route`'s queries (its statement): by default any can.
    fn query_fits(&self, _route: &str, _query: &Span) -> bool {
        true
    }
}

/// The requests a test sent, `(route, id)` each, and what they should leave in Jaeger.
pub struct Sent {
    /// Each request's route and id.
    pub requests: Vec<(String, String)>,
    /// Each request's path, `/<route>/<id>`.
    pub paths: Vec<String>,
    /// The queries they ran.
    pub queries: usize,
    /// The HTTP calls they made.
    pub calls: usize,
}

impl Sent {
    pub fn of(requests: &[(&str, String)], routes: &impl Routes) -> Self {
        Self {
            requests: requests
                .iter()
                .map(|(route, id)| ((*route).to_owned(), id.clone()))
                .collect(),
            paths: requests
                .iter()
                .map(|(route, id)| format!("/{route}/{id}"))
                .collect(),
            queries: requests.iter().map(|(r, _)| routes.queries_of(r)).sum(),
            calls: requests.iter().map(|(r, _)| routes.calls_of(r)).sum(),
        }
    }

    /// Every span of `service`, once Jaeger holds a SERVER span per request and a span per call
    /// (or after the waits time out: what there is).
    pub fn spans(&self, jaeger: &Jaeger, service: &str) -> Vec<Span> {
        let servers = self.paths.len();
        jaeger.wait_for_requests(service, servers, servers + self.queries + self.calls)
    }
}

/// Every CLIENT span of a service, each nested one checked against its parent request.
pub struct Audit<'a> {
    pub servers: Vec<&'a Span>,
    pub clients: Vec<&'a Span>,
    /// Calls under a request that did not make them (or under no request at all), one line each.
    pub wrong: Vec<String>,
    /// The calls without a parent.
    pub parentless: Vec<&'a Span>,
    /// Parentless calls that do not say why (`loupe.parent`), one line each.
    pub untagged: Vec<String>,
    /// Parentless calls tagged `loupe.parent=ambiguous`.
    pub ambiguous: usize,
    /// Per SERVER span id, how many queries are nested under it.
    queries_under: HashMap<&'a str, usize>,
}

impl<'a> Audit<'a> {
    pub fn of(spans: &'a [Span], routes: &impl Routes) -> Self {
        let by_span_id: HashMap<&str, &Span> =
            spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
        let mut audit = Self {
            servers: spans.iter().filter(|s| s.kind() == "server").collect(),
            clients: spans.iter().filter(|s| s.kind() == "client").collect(),
            wrong: Vec::new(),
            parentless: Vec::new(),
            untagged: Vec::new(),
            ambiguous: 0,
            queries_under: HashMap::new(),
        };
        for call in audit.clients.clone() {
            let Some(parent_id) = call.parent.as_deref() else {
                match call.str_tag("loupe.parent") {
                    Some("ambiguous") => audit.ambiguous += 1,
                    Some("none") => {}
                    _ => audit.untagged.push(describe(call)),
                }
                audit.parentless.push(call);
                continue;
            };
            if let Some(problem) = audit.check(call, by_span_id.get(parent_id).copied(), routes) {
                audit.wrong.push(format!("{}: {problem}", describe(call)));
            }
        }
        audit
    }

    /// What is wrong with `call` under `parent` (None: the parent's id is not in Jaeger).
    fn check(
        &mut self,
        call: &Span,
        parent: Option<&'a Span>,
        routes: &impl Routes,
    ) -> Option<String> {
        let Some(parent) = parent else {
            return Some(format!("parent {:?} is not in Jaeger", call.parent));
        };
        if parent.kind() != "server" {
            return Some(format!(
                "parent is a {} span ({})",
                parent.kind(),
                describe(parent)
            ));
        }
        let parent_path = parent.str_tag("url.path").unwrap_or("");
        let Some((route, request_id)) = route_and_id(parent_path) else {
            return Some(format!("parent path {parent_path}"));
        };
        if is_db(call) {
            let count = self
                .queries_under
                .entry(parent.span_id.as_str())
                .or_default();
            *count += 1;
            let runs = routes.queries_of(route);
            if runs == 0 {
                return Some(format!(
                    "a query under {parent_path}, a route without queries"
                ));
            }
            if *count > runs {
                return Some(format!(
                    "query #{count} under {parent_path}, which runs {runs}"
                ));
            }
            if !routes.query_fits(route, call) {
                return Some(format!("under {parent_path}: another route's query"));
            }
            return None;
        }
        let id = call_id(call);
        if id
            .as_deref()
            .is_some_and(|id| routes.same_request(id, request_id))
        {
            return None;
        }
        Some(format!(
            "under {parent_path} (call id {id:?}, request id {request_id})"
        ))
    }

    /// How many calls are nested under a request.
    pub fn nested(&self) -> usize {
        self.clients.len() - self.parentless.len()
    }

    /// Of the calls `which` picks: how many are nested, and how many there are.
    pub fn nested_of(&self, which: impl Fn(&Span) -> bool) -> (usize, usize) {
        let all = self.clients.iter().filter(|c| which(c)).count();
        let parentless = self.parentless.iter().filter(|c| which(c)).count();
        (all - parentless, all)
    }

    /// How many queries are nested under `server`.
    pub fn queries_under(&self, server: &Span) -> usize {
        self.queries_under
            .get(server.span_id.as_str())
            .copied()
            .unwrap_or(0)
    }

    /// The CLIENT spans nested under `server`.
    pub fn children(&self, server: &Span) -> Vec<&'a Span> {
        self.clients
            .iter()
            .copied()
            .filter(|c| c.parent.as_deref() == Some(server.span_id.as_str()))
            .collect()
    }

    /// One line about `server` for a failure message: its path, duration, patterns, the calls
    /// nested under it (when each started) and its diagnosis.
    pub fn verdict(&self, server: &Span) -> String {
        let calls: Vec<String> = self
            .children(server)
            .iter()
            .map(|c| {
                format!(
                    "{} {}us at +{}us {:?}:{:?}",
                    c.operation,
                    c.duration_us,
                    c.start_us.saturating_sub(server.start_us),
                    c.str_tag("server.address"),
                    c.int_tag("server.port")
                )
            })
            .collect();
        format!(
            "{} ({}us): {:?}; calls {calls:?}; {:?}",
            server.str_tag("url.path").unwrap_or(""),
            server.duration_us,
            server.patterns(),
            server.str_tag("performance.diagnosis")
        )
    }

    /// The HTTP calls per call id (a call without one under its description).
    fn http_calls_by_id(&self) -> BTreeMap<String, usize> {
        let mut by_id = BTreeMap::new();
        for call in self.clients.iter().filter(|s| is_http_call(s)) {
            *by_id
                .entry(call_id(call).unwrap_or_else(|| describe(call)))
                .or_default() += 1;
        }
        by_id
    }

    /// What is off with the HTTP calls of the requests `sent`: a request of a route that makes
    /// one call must have exactly one call span carrying its id.
    pub fn call_problems(&self, sent: &Sent, routes: &impl Routes) -> Vec<String> {
        let by_id = self.http_calls_by_id();
        sent.requests
            .iter()
            .filter_map(|(route, id)| {
                let seen = by_id.get(id.as_str()).copied().unwrap_or(0);
                (routes.calls_of(route) == 1 && seen != 1)
                    .then(|| format!("/{route}/{id}: {seen} downstream call spans /sleep/{id}"))
            })
            .collect()
    }

    /// The audit in a few lines, for the test's output: what was `sent`, how many calls of each
    /// kind nested, the parentless and the wrong ones, and loupe's summary line.
    pub fn report(&self, sent: &Sent, finished: &Finished) -> String {
        let (nested_queries, queries) = self.nested_of(is_db);
        let (nested_http, http_calls) = self.nested_of(is_http_call);
        let by_name = self
            .clients
            .iter()
            .filter(|s| is_db(s) && s.tag("db.query.text").is_none())
            .count();
        format!(
            "{} requests, {} queries and {} HTTP calls sent; {} server spans; queries: \
             {nested_queries} of {queries} nested ({by_name} known by \
             their statement's name alone); HTTP calls: {nested_http} of {http_calls} nested; {} \
             parentless ({} tagged ambiguous, {} untagged); {} wrong parents\n{}",
            sent.paths.len(),
            sent.queries,
            sent.calls,
            self.servers.len(),
            self.parentless.len(),
            self.ambiguous,
            self.untagged.len(),
            self.wrong.len(),
            finished.summary_line()
        )
    }

    /// What is off with the SERVER spans: each of `paths` (the requests sent) must be exactly
    /// one, and no other path may have one.
    pub fn server_problems(&self, paths: &[String]) -> Vec<String> {
        let mut by_path: BTreeMap<&str, usize> = BTreeMap::new();
        for server in &self.servers {
            *by_path
                .entry(server.str_tag("url.path").unwrap_or(""))
                .or_default() += 1;
        }
        let mut problems = Vec::new();
        for path in paths {
            let seen = by_path.get(path.as_str()).copied().unwrap_or(0);
            if seen != 1 {
                problems.push(format!("{path}: {seen} server spans"));
            }
        }
        for (path, seen) in &by_path {
            if !paths.iter().any(|p| p == path) {
                problems.push(format!("unexpected server span(s) {path}: {seen}"));
            }
        }
        problems
    }

    /// What every service test checks of the requests `sent`, after printing [`Self::report`]:
    /// no call under a wrong request, every request exactly one SERVER span, every parentless
    /// call tagged and counted, every request that makes one HTTP call exactly one span of it.
    pub fn assert_sound(&self, sent: &Sent, routes: &impl Routes, finished: &Finished, who: &str) {
        eprintln!("{who}: {}", self.report(sent, finished));
        self.assert_right_parents(&sent.paths, who);
        self.assert_parentless_counted(finished, who);
        let calls = self.call_problems(sent, routes);
        assert!(
            calls.is_empty(),
            "{who}: every downstream call is one span, with its request's id:\n  {}",
            show(&calls)
        );
    }

    /// No call under a wrong request, and every request exactly one SERVER span.
    pub fn assert_right_parents(&self, paths: &[String], who: &str) {
        assert!(
            self.wrong.is_empty(),
            "{who}: {} calls nested under a wrong request (of {} nested); the first:\n  {}",
            self.wrong.len(),
            self.nested(),
            show(&self.wrong)
        );
        let servers = self.server_problems(paths);
        assert!(
            servers.is_empty(),
            "{who}: every request is one server span:\n  {}",
            show(&servers)
        );
    }

    /// Every parentless call says why (`loupe.parent`), the summary's `unnested_calls` counts
    /// them all and its `ambiguous_calls` at least those tagged ambiguous.
    pub fn assert_parentless_counted(&self, finished: &Finished, who: &str) {
        assert!(
            self.untagged.is_empty(),
            "{who}: {} parentless calls without `loupe.parent`; the first:\n  {}",
            self.untagged.len(),
            show(&self.untagged)
        );
        let summary = finished.summary();
        assert_eq!(
            summary.get("unnested_calls").copied(),
            Some(self.parentless.len() as u64),
            "{who}: the summary's unnested_calls counts every parentless call Jaeger holds\n{}",
            finished.stderr
        );
        let ambiguous_calls = summary.get("ambiguous_calls").copied().unwrap_or_else(|| {
            panic!(
                "{who}: no ambiguous_calls in the summary line:\n{}",
                finished.stderr
            )
        });
        assert!(
            ambiguous_calls >= self.ambiguous as u64,
            "{who}: ambiguous_calls={ambiguous_calls}, but {} spans are tagged ambiguous",
            self.ambiguous
        );
    }
}
