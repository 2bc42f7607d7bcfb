//! Redis commands to CLIENT spans with OTel database semantic conventions. Arguments never
//! leave loupe: the command is exported with each argument replaced by `?` (`SET ? ?`), and an
//! error reply by its code (`WRONGTYPE`), never its message. A read that found nothing is a
//! cache miss: `loupe.cache.hit=false`.

use super::CommandDone;
use crate::spans::{
    Actor, Endpoints, SpanIds,
    http::{new_span, set_server_peer},
    model::{OpType, SpanKind, SpanRecord, call_key},
};

/// A CLIENT span for one command. `ends` is the connection it went over, where known.
pub fn command_span(
    done: &CommandDone,
    ends: Option<&Endpoints>,
    ids: SpanIds,
    actor: Actor,
) -> SpanRecord {
    let mut span = new_span(
        SpanKind::Client,
        OpType::CacheClient,
        done.operation.clone(),
        (done.start.enter_ns, done.end.exit_ns),
        ids,
        actor,
    );
    let database = done.database.map(|db| db.to_string());
    span.call_key = done.values_hash.map(|values| {
        call_key(&[
            "redis",
            database.as_deref().unwrap_or("?"),
            &values.to_string(),
        ])
    });
    span.cache_key = done.key_hash;
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
    set_server_peer(&mut span, ends);
    if let Some(code) = &done.error {
        span.set("db.response.status_code", code.clone());
        span.error = Some(code.clone());
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::Timing;

    fn done(operation: &str, text: &str) -> CommandDone {
        CommandDone {
            seq: 0,
            start: Timing {
                enter_ns: 10,
                exit_ns: 11,
            },
            end: Timing {
                enter_ns: 20,
                exit_ns: 25,
            },
            operation: operation.to_owned(),
            text: text.to_owned(),
            key_hash: Some(1),
            values_hash: Some(2),
            error: None,
            miss: None,
            database: Some(2),
            reply_bytes: 5,
        }
    }

    fn span_of(done: &CommandDone) -> SpanRecord {
        let ids = SpanIds {
            trace_id: 1,
            span_id: 2,
            parent_span_id: Some(3),
            unnested: None,
        };
        command_span(done, None, ids, Actor { pid: 1, tid: 1 })
    }

    #[test]
    fn a_read_that_found_nothing_is_a_cache_miss() {
        let mut get = done("GET", "GET ?");
        get.miss = Some(true);
        let span = span_of(&get);
        assert_eq!(span.name, "GET");
        assert_eq!(span.op, OpType::CacheClient);
        assert_eq!((span.start_ns, span.end_ns), (10, 25));
        assert_eq!(span.attr_str("db.system.name"), Some("redis"));
        assert_eq!(span.attr_str("db.query.text"), Some("GET ?"));
        assert_eq!(span.attr_str("db.namespace"), Some("2"));
        assert_eq!(
            span.attr("loupe.cache.hit"),
            Some(&crate::spans::AttrValue::Bool(false))
        );
        assert!(span.call_key.is_some());
        assert_eq!(span.error, None);
    }

    #[test]
    fn an_error_reply_is_its_code_and_a_write_no_hit() {
        let mut push = done("LPUSH", "LPUSH ? ?");
        push.error = Some("WRONGTYPE".into());
        push.database = None;
        push.values_hash = None;
        let span = span_of(&push);
        assert_eq!(span.error.as_deref(), Some("WRONGTYPE"));
        assert_eq!(span.attr_str("db.response.status_code"), Some("WRONGTYPE"));
        assert_eq!(span.attr("loupe.cache.hit"), None);
        assert_eq!(span.attr("db.namespace"), None, "an unseen SELECT: unknown");
        assert_eq!(span.call_key, None, "values unseen: no repeat key");
    }
}
