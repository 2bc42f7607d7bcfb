//! Redis commands to CLIENT spans with OTel database semantic conventions. Arguments never
//! leave loupe: the command is exported with each argument replaced by `?` (`SET ? ?`), and an
//! error reply by its code (`WRONGTYPE`), never its message. A read that found nothing is a
//! cache miss: `loupe.cache.hit=false`.

use super::{
    http::{Actor, Endpoints, SpanIds},
    model::{OpType, SpanKind, SpanRecord, call_key},
};
use crate::protocols::redis::CommandDone;

/// A CLIENT span for one command. `ends` is the connection it went over, where known.
pub fn command_span(
    done: &CommandDone,
    ends: Option<&Endpoints>,
    ids: SpanIds,
    actor: Actor,
) -> SpanRecord {
    let mut span = SpanRecord {
        trace_id: ids.trace_id,
        span_id: ids.span_id,
        parent_span_id: ids.parent_span_id,
        kind: SpanKind::Client,
        op: OpType::CacheClient,
        name: done.operation.clone(),
        start_ns: done.start.enter_ns,
        end_ns: done.end.exit_ns.max(done.start.enter_ns),
        attributes: Vec::with_capacity(12),
        error: None,
        pid: actor.pid,
        tid: actor.tid,
        events: Vec::new(),
        call_key: None,
    };
    let database = done.database.map(|db| db.to_string());
    span.call_key = done.values_hash.map(|values| {
        call_key(&[
            "redis",
            database.as_deref().unwrap_or("?"),
            &values.to_string(),
        ])
    });
    ids.mark(&mut span);
    span.set("db.system.name", "redis");
    span.set("db.operation.name", done.operation.clone());
    span.set("db.query.text", done.text.clone());
    if let Some(database) = database {
        span.set("db.namespace", database);
    }
    if let Some(miss) = done.miss {
        span.set("loupe.cache.hit", !miss);
    }
    if let Some(ends) = ends
        && let (Some(peer), Some(ip)) = (ends.peer, ends.peer_ip())
    {
        span.set("server.address", ip.clone());
        span.set("server.port", i64::from(peer.port()));
        span.set("network.peer.address", ip);
        span.set("network.peer.port", i64::from(peer.port()));
    }
    if let Some(code) = &done.error {
        span.set("db.response.status_code", code.clone());
        span.error = Some(code.clone());
    }
    span
}
