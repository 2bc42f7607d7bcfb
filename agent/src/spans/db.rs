//! PostgreSQL queries to CLIENT spans with OTel database semantic conventions. The statement is
//! exported only normalized: literals never leave loupe. Error messages are not exported either
//! (they quote data); the SQLSTATE is.
//!
//! A query can be seen by the wire parser, by the libpq uprobes, or both: [`QueryFacts`] is what
//! the sources agreed on, built by [`QueryFacts::from_wire`] and [`QueryFacts::merged`].

use super::{
    http::{Actor, Endpoints, SpanIds, new_span, set_server_peer},
    model::{OpType, SpanKind, SpanRecord, Text, call_key},
};
use crate::{libpq::LibpqQuery, protocols::postgres::QueryDone, sql::Statement};

/// Which probes saw a query (`loupe.db.source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuerySource {
    Wire,
    Libpq,
    LibpqAndWire,
}

impl QuerySource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Wire => "wire",
            Self::Libpq => "libpq",
            Self::LibpqAndWire => "libpq+wire",
        }
    }
}

/// Everything known about one query.
#[derive(Clone, Debug)]
pub struct QueryFacts<'a> {
    /// The statement as sent (literals included): only its normalized form is exported.
    pub text: Option<&'a str>,
    pub text_truncated: bool,
    pub statement_name: Option<&'a str>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub rows: Option<u64>,
    pub failed: bool,
    pub sqlstate: Option<&'a str>,
    pub database: Option<&'a str>,
    /// The bound parameter values' hash (wire, extended protocol), for spotting repeats.
    pub values: Option<u64>,
    pub source: QuerySource,
}

impl<'a> QueryFacts<'a> {
    pub fn from_wire(query: &'a QueryDone) -> Self {
        Self {
            text: Some(query.text.as_str()).filter(|t| !t.is_empty()),
            text_truncated: query.text_truncated,
            statement_name: query.statement_name.as_deref(),
            start_ns: query.start.enter_ns,
            end_ns: query.end.exit_ns,
            rows: query.rows,
            failed: query.sqlstate.is_some(),
            sqlstate: query.sqlstate.as_deref(),
            database: query.database.as_deref(),
            values: query.values,
            source: QuerySource::Wire,
        }
    }

    /// libpq's view, completed by the wire's where it saw the same query: libpq knows the whole
    /// statement and what the application waited; the wire knows the database and the tag.
    pub fn merged(libpq: &'a LibpqQuery, wire: Option<&'a QueryDone>) -> Self {
        let (text, text_truncated) = match (&libpq.text, wire) {
            (Some(text), _) => (Some(text.as_str()), libpq.text_truncated),
            (None, Some(wire)) => (
                Some(wire.text.as_str()).filter(|t| !t.is_empty()),
                wire.text_truncated,
            ),
            (None, None) => (None, false),
        };
        let wire_sqlstate = wire.and_then(|w| w.sqlstate.as_deref());
        Self {
            text,
            text_truncated,
            statement_name: libpq
                .statement_name
                .as_deref()
                .or(wire.and_then(|w| w.statement_name.as_deref())),
            start_ns: libpq.start_ns,
            end_ns: libpq.end_ns,
            rows: wire.and_then(|w| w.rows).or(libpq.rows),
            failed: libpq.failed || wire_sqlstate.is_some(),
            sqlstate: libpq.sqlstate.as_deref().or(wire_sqlstate),
            database: wire.and_then(|w| w.database.as_deref()),
            values: wire.and_then(|w| w.values),
            source: if wire.is_some() {
                QuerySource::LibpqAndWire
            } else {
                QuerySource::Libpq
            },
        }
    }
}

/// The exact call, for spotting repeats: the text with its literals, plus the bound values when
/// it has `$n` placeholders; a statement known by its prepared name, with its bound values.
/// None when values were bound but not seen (libpq alone, a Bind cut short): `WHERE id = $1`
/// with unknown values is not one call.
fn exact_call(facts: &QueryFacts<'_>, statement: &Statement) -> Option<u64> {
    if facts.text_truncated {
        // Two statements that share their first kilobytes are not one call.
        return None;
    }
    let database = facts.database.unwrap_or_default();
    let Some(text) = facts.text else {
        let values = facts.values?.to_string();
        let prepared = Some(statement.fingerprint.as_str()).filter(|f| !f.is_empty())?;
        return Some(call_key(&[prepared, database, &values]));
    };
    if !text.contains('$') {
        return Some(call_key(&[text, database]));
    }
    let values = facts.values?.to_string();
    Some(call_key(&[text, database, &values]))
}

/// A CLIENT span for one query. `ends` is the connection it went over, where known.
pub fn query_span(
    facts: &QueryFacts<'_>,
    statement: &Statement,
    ends: Option<&Endpoints>,
    ids: SpanIds,
    actor: Actor,
) -> SpanRecord {
    let name = match (&statement.span_name, facts.statement_name) {
        (Some(name), _) => name.clone(),
        (None, Some(name)) if facts.text.is_none() => Text::Owned(format!("EXECUTE {name}")),
        _ => Text::Static("postgresql"),
    };
    let mut span = new_span(
        SpanKind::Client,
        OpType::DbClient,
        name,
        (facts.start_ns, facts.end_ns),
        ids,
        actor,
    );
    span.call_key = exact_call(facts, statement);
    ids.mark(&mut span);
    span.set("db.system.name", "postgresql");
    if facts.text.is_some() {
        span.set("db.query.text", statement.normalized.clone());
    }
    if !statement.fingerprint.is_empty() {
        span.set("loupe.db.fingerprint", statement.fingerprint.clone());
    }
    span.set("loupe.db.source", facts.source.as_str());
    if let Some(operation) = &statement.operation {
        span.set("db.operation.name", operation.clone());
    }
    if let Some(table) = &statement.table {
        span.set("db.collection.name", table.clone());
    }
    if let Some(name) = facts.statement_name {
        span.set("loupe.db.statement_name", name.to_owned());
    }
    if let Some(database) = facts.database {
        span.set("db.namespace", database.to_owned());
    }
    if let Some(rows) = facts.rows {
        let key = match statement.operation.as_deref() {
            Some("INSERT" | "UPDATE" | "DELETE" | "MERGE") => "loupe.db.affected_rows",
            _ => "db.response.returned_rows",
        };
        span.set(key, rows as i64);
    }
    if facts.text_truncated {
        span.set("loupe.db.query_truncated", true);
    }
    set_server_peer(&mut span, ends);
    if let Some(code) = facts.sqlstate {
        span.set("db.response.status_code", code.to_owned());
        span.error = Some(format!("SQLSTATE {code}"));
    } else if facts.failed {
        span.error = Some("query failed".to_owned());
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(text: &'static str, values: Option<u64>) -> QueryFacts<'static> {
        QueryFacts {
            text: Some(text),
            text_truncated: false,
            statement_name: None,
            start_ns: 0,
            end_ns: 1,
            rows: None,
            failed: false,
            sqlstate: None,
            database: Some("shop"),
            values,
            source: QuerySource::Wire,
        }
    }

    fn exact_call(facts: &QueryFacts<'_>) -> Option<u64> {
        let statement = crate::sql::analyze(facts.text.unwrap_or_default());
        super::exact_call(facts, &statement)
    }

    #[test]
    fn a_prepared_statement_is_one_call_with_the_same_bound_values() {
        let mut named = facts("", Some(7));
        named.text = None;
        named.statement_name = Some("stmtcache_0123456789abcdef0123");
        let statement = Statement::prepared("stmtcache_0123456789abcdef0123", None);
        let key = super::exact_call(&named, &statement);
        assert!(key.is_some());
        named.values = Some(8);
        assert_ne!(key, super::exact_call(&named, &statement));
        named.values = None;
        assert_eq!(super::exact_call(&named, &statement), None, "values unseen");
        let span = query_span(
            &named,
            &statement,
            None,
            SpanIds {
                trace_id: 1,
                span_id: 2,
                parent_span_id: None,
                unnested: None,
            },
            Actor { pid: 1, tid: 1 },
        );
        assert_eq!(span.name, "EXECUTE stmtcache_0123456789abcdef0123");
        assert_eq!(
            span.attr_str("loupe.db.fingerprint"),
            Some(statement.fingerprint.as_str())
        );
        assert_eq!(span.attr("db.query.text"), None);
        assert_eq!(span.attr("loupe.db.query_truncated"), None);
    }

    #[test]
    fn an_exact_call_is_the_text_with_its_literals_or_its_bound_values() {
        let inlined = exact_call(&facts("SELECT * FROM t WHERE id = 1", None));
        assert!(inlined.is_some());
        assert_ne!(
            inlined,
            exact_call(&facts("SELECT * FROM t WHERE id = 2", None))
        );
        let bound = "SELECT * FROM t WHERE id = $1";
        assert_eq!(exact_call(&facts(bound, None)), None, "values unseen");
        let mut cut = facts("INSERT INTO t VALUES (1, 2, 3", None);
        cut.text_truncated = true;
        assert_eq!(exact_call(&cut), None, "a cut text is not an exact call");
        assert_eq!(
            exact_call(&facts(bound, Some(7))),
            exact_call(&facts(bound, Some(7)))
        );
        assert_ne!(
            exact_call(&facts(bound, Some(7))),
            exact_call(&facts(bound, Some(8)))
        );
    }
}
