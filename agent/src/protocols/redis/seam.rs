//! Redis behind the protocol seam: recognised by a client's first command, or (a connection open
//! before attach) by a write of whole commands.

use loupe_common::SocketRole;

use super::{
    CommandDone, RedisConversation, RedisEvent, looks_like_resp, opens_redis, span::command_span,
};
use crate::{
    protocols::{
        Adapted, CallDone, Finished, First, Kind, ProtocolSpec, Recognised, Report, Surroundings,
    },
    spans::{Actor, Endpoints, SpanIds, model::SpanRecord},
};

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: "redis",
    recognise,
};

impl CallDone for CommandDone {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn span(&self, ids: SpanIds, ends: Option<&Endpoints>, actor: Actor) -> SpanRecord {
        command_span(self, ends, ids, actor)
    }
}

/// The target is the client: loupe reads commands from the side that sends them. Seen from its
/// connect, a connection's first write opens it; found open at attach, it is read from its next
/// command, and what it selected before is not known.
fn recognise(first: &First<'_>, _: &mut dyn Surroundings) -> Option<Recognised> {
    if first.role == SocketRole::Server || !first.egress {
        return None;
    }
    let conversation = if first.opened && opens_redis(first.captured) {
        RedisConversation::new()
    } else if looks_like_resp(first.captured, first.total_len, true) {
        RedisConversation::resumed()
    } else {
        return None;
    };
    let parser = Adapted::new(
        Kind::Redis,
        conversation,
        RedisConversation::push,
        RedisConversation::close,
        report,
    );
    Some(Recognised {
        role: SocketRole::Client,
        parser: Box::new(parser),
    })
}

fn report(event: RedisEvent) -> Report {
    match event {
        RedisEvent::Started { seq } => Report::Started {
            seq,
            traceparent: None,
            line: 0,
        },
        RedisEvent::Abandoned { seq } => Report::Abandoned { seq },
        RedisEvent::Done(done) => Report::Finished(Finished::Call(Box::new(done))),
    }
}
