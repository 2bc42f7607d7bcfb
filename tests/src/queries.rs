//! Reading database spans back from Jaeger: which spans are PostgreSQL queries, how many are
//! nested under each request, and a one-line-per-span dump for failure messages.

use std::collections::HashMap;

use crate::jaeger::Span;

/// A PostgreSQL query span (`db.system.name` = `postgresql`).
pub fn is_db(span: &Span) -> bool {
    span.str_tag("db.system.name") == Some("postgresql")
}

/// The server spans by `url.path` (the tests give each request a path of its own).
pub fn servers_by_path(spans: &[Span]) -> HashMap<&str, &Span> {
    spans
        .iter()
        .filter(|s| s.kind() == "server")
        .filter_map(|s| Some((s.str_tag("url.path")?, s)))
        .collect()
}

/// Checks that every one of `paths` has its SERVER span in `servers` (from
/// [`servers_by_path`]); `context` goes into the failure message.
pub fn assert_served<'a>(
    servers: &HashMap<&str, &Span>,
    paths: impl IntoIterator<Item = &'a str>,
    context: &str,
) {
    for path in paths {
        assert!(
            servers.contains_key(path),
            "one server span for GET {path}\n{context}"
        );
    }
}

/// The query spans nested (CHILD_OF) under `server`.
pub fn queries_under<'a>(spans: &'a [Span], server: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| is_db(s) && s.parent.as_deref() == Some(server.span_id.as_str()))
        .collect()
}

/// `path=N` for each of `paths`: how many queries are nested under its server span.
pub fn nested_counts<'a>(spans: &[Span], paths: impl IntoIterator<Item = &'a str>) -> String {
    let servers = servers_by_path(spans);
    paths
        .into_iter()
        .map(|path| match servers.get(path) {
            Some(server) => format!("{path}={}", queries_under(spans, server).len()),
            None => format!("{path}=no-server-span"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks what every query span carries, however old its connection: the server's address and
/// port, a fingerprint of 16 hex digits, no truncation mark. Returns the fingerprint; `context`
/// goes into every failure message.
pub fn assert_query_basics<'a>(span: &'a Span, pg_port: u16, context: &str) -> &'a str {
    let id = &span.span_id;
    assert_eq!(span.kind(), "client", "{id}\n{context}");
    assert_eq!(
        span.str_tag("server.address"),
        Some("127.0.0.1"),
        "{id}: the server's address\n{context}"
    );
    assert_eq!(
        span.int_tag("server.port"),
        Some(i64::from(pg_port)),
        "{id}\n{context}"
    );
    assert!(
        span.tag("loupe.db.query_truncated").is_none(),
        "{id}: nothing is truncated\n{context}"
    );
    let fingerprint = span
        .str_tag("loupe.db.fingerprint")
        .unwrap_or_else(|| panic!("{id} has no loupe.db.fingerprint\n{context}"));
    assert!(
        fingerprint.len() == 16 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}: a fingerprint, `{fingerprint}`\n{context}"
    );
    fingerprint
}

/// One line per span: id, parent, kind, name, path or statement, patterns.
pub fn dump(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} parent={} {} `{}` path={:?} text={:?} stmt={:?} patterns={:?}",
                s.span_id,
                s.parent.as_deref().unwrap_or("-"),
                s.kind(),
                s.operation,
                s.str_tag("url.path"),
                s.str_tag("db.query.text"),
                s.str_tag("loupe.db.statement_name"),
                s.patterns(),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
