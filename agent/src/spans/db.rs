//! PostgreSQL queries to CLIENT spans with OTel database semantic conventions. The statement is
//! exported only normalized: literals never leave loupe. Error messages are not exported either
//! (they quote data); the SQLSTATE is.

use super::{
    http::{Actor, Endpoints, SpanIds},
    model::{OpType, SpanKind, SpanRecord},
};
use crate::{protocols::postgres::QueryDone, sql::Statement};

/// A CLIENT span for one query.
pub fn query_span(
    query: &QueryDone,
    statement: &Statement,
    ends: &Endpoints,
    ids: SpanIds,
    actor: Actor,
) -> SpanRecord {
    let name = match (&statement.operation, &statement.table) {
        (Some(operation), Some(table)) => format!("{operation} {table}"),
        (Some(operation), None) => operation.clone(),
        _ => "postgresql".to_owned(),
    };
    let mut span = SpanRecord {
        trace_id: ids.trace_id,
        span_id: ids.span_id,
        parent_span_id: ids.parent_span_id,
        kind: SpanKind::Client,
        op: OpType::DbClient,
        name,
        start_ns: query.start.enter_ns,
        end_ns: query.end.exit_ns.max(query.start.enter_ns),
        attributes: Vec::with_capacity(14),
        error: None,
        pid: actor.pid,
        tid: actor.tid,
    };
    span.set("db.system.name", "postgresql");
    span.set("db.query.text", statement.normalized.clone());
    span.set("loupe.db.fingerprint", statement.fingerprint.clone());
    if let Some(operation) = &statement.operation {
        span.set("db.operation.name", operation.clone());
    }
    if let Some(table) = &statement.table {
        span.set("db.collection.name", table.clone());
    }
    if let Some(database) = &query.database {
        span.set("db.namespace", database.clone());
    }
    if let Some(rows) = query.rows {
        let key = match statement.operation.as_deref() {
            Some("INSERT" | "UPDATE" | "DELETE" | "MERGE") => "loupe.db.affected_rows",
            _ => "db.response.returned_rows",
        };
        span.set(key, rows as i64);
    }
    if query.text_truncated {
        span.set("loupe.db.query_truncated", true);
    }
    if let (Some(peer), Some(ip)) = (ends.peer, ends.peer_ip()) {
        span.set("server.address", ip.clone());
        span.set("server.port", i64::from(peer.port()));
        span.set("network.peer.address", ip);
        span.set("network.peer.port", i64::from(peer.port()));
    }
    if let Some(code) = &query.sqlstate {
        span.set("db.response.status_code", code.clone());
        span.error = Some(format!("SQLSTATE {code}"));
    }
    span
}
