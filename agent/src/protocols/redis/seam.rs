//! Redis behind the protocol seam: recognised by a client's first command, or (a connection open
//! before attach) by a write of whole commands.

use loupe_common::SocketRole;

use super::{
    CommandDone, RedisConversation, RedisEvent, looks_like_resp, opens_redis, span::command_span,
};
use crate::{
    protocols::{
        CallDone, Chunk, Finished, First, Kind, Parser, ProtocolSpec, Recognised, Report,
        Surroundings,
    },
    spans::{Actor, Endpoints, SpanIds, model::SpanRecord},
};

impl CallDone for CommandDone {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn span(&self, ids: SpanIds, ends: Option<&Endpoints>, actor: Actor) -> SpanRecord {
        command_span(self, ends, ids, actor)
    }
}

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: "redis",
    recognise,
};

/// The target is the client: loupe reads commands from the side that sends them.
fn recognise(first: &First<'_>, _: &mut dyn Surroundings) -> Option<Recognised> {
    if first.role == SocketRole::Server || !first.egress {
        return None;
    }
    // Seen from its connect, a connection's first write opens it; found open at attach, it is
    // read from its next command, and what it selected before is not known.
    let (conversation, resumed) = if first.opened && opens_redis(first.captured) {
        (RedisConversation::new(), false)
    } else if looks_like_resp(first.captured, first.total_len, true) {
        (RedisConversation::resumed(), true)
    } else {
        return None;
    };
    Some(Recognised {
        role: SocketRole::Client,
        parser: Box::new(RedisParser {
            conversation,
            resumed,
            events: Vec::new(),
        }),
    })
}

/// A [`RedisConversation`] reporting through the seam.
pub struct RedisParser {
    conversation: RedisConversation,
    /// Found open at attach: a SELECT before it went unseen, so no SELECT seen means nothing.
    resumed: bool,
    events: Vec<RedisEvent>,
}

impl RedisParser {
    fn report(&mut self, out: &mut Vec<Report>) {
        let resumed = self.resumed;
        out.extend(self.events.drain(..).map(|event| match event {
            RedisEvent::Started { seq } => Report::Started {
                seq,
                traceparent: None,
                line: 0,
            },
            RedisEvent::Abandoned { seq } => Report::Abandoned { seq },
            RedisEvent::Done(mut done) => {
                // A connection seen from its start that never selected is on database 0.
                if done.database.is_none() && !resumed {
                    done.database = Some(0);
                }
                Report::Finished(Finished::Call(Box::new(done)))
            }
        }));
    }
}

impl Parser for RedisParser {
    fn kind(&self) -> Kind {
        Kind::Redis
    }

    fn push(&mut self, chunk: Chunk<'_>, out: &mut Vec<Report>) {
        self.conversation.push(chunk, &mut self.events);
        self.report(out);
    }

    fn close(&mut self, out: &mut Vec<Report>) {
        self.conversation.close(&mut self.events);
        self.report(out);
    }
}
