//! PostgreSQL behind the protocol seam: recognised by a client's session start, or (a session
//! open before attach) by messages either side sends.

use loupe_common::SocketRole;

use super::{PgConversation, PgEvent, looks_like_session, opens_session};
use crate::protocols::{
    Chunk, Finished, First, Kind, Parser, ProtocolSpec, Recognised, Report, Surroundings,
};

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: "postgresql",
    recognise,
};

/// The target is always the client: loupe reads queries from the side that sends them.
fn recognise(first: &First<'_>, around: &mut dyn Surroundings) -> Option<Recognised> {
    if first.role == SocketRole::Server {
        return None;
    }
    let conversation = if first.egress && opens_session(first.captured) {
        PgConversation::new()
    } else if looks_like_session(first.captured, first.total_len, first.egress) {
        // A session opened before loupe attached (a warm pool): whatever it says next.
        PgConversation::resumed(around.resumed_database())
    } else {
        return None;
    };
    Some(Recognised {
        role: SocketRole::Client,
        parser: Box::new(PgParser {
            conversation,
            events: Vec::new(),
        }),
    })
}

/// A [`PgConversation`] reporting through the seam.
pub struct PgParser {
    conversation: PgConversation,
    events: Vec<PgEvent>,
}

impl PgParser {
    fn report(&mut self, out: &mut Vec<Report>) {
        out.extend(self.events.drain(..).map(|event| match event {
            PgEvent::Started { seq } => Report::Started {
                seq,
                traceparent: None,
                line: 0,
            },
            PgEvent::Skipped { seq } => Report::Abandoned { seq },
            PgEvent::Done(query) => Report::Finished(Finished::Postgres(Box::new(query))),
        }));
    }
}

impl Parser for PgParser {
    fn kind(&self) -> Kind {
        Kind::Postgres
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
