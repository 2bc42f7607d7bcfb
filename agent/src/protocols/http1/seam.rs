//! HTTP/1 behind the protocol seam: recognised by a request line, either way.

use loupe_common::SocketRole;

use super::{Conversation, HttpEvent, Limits, looks_like_request};
use crate::protocols::{
    Chunk, Finished, First, Kind, Parser, ProtocolSpec, Recognised, Report, Surroundings,
};

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: "http/1",
    recognise,
};

/// A request line read makes the target the server; written, the client.
fn recognise(first: &First<'_>, _: &mut dyn Surroundings) -> Option<Recognised> {
    if !looks_like_request(first.captured) {
        return None;
    }
    Some(Recognised {
        role: if first.egress {
            SocketRole::Client
        } else {
            SocketRole::Server
        },
        parser: Box::new(HttpParser::default()),
    })
}

/// A [`Conversation`] reporting through the seam.
pub struct HttpParser {
    conversation: Conversation,
    events: Vec<HttpEvent>,
}

impl Default for HttpParser {
    fn default() -> Self {
        Self {
            conversation: Conversation::new(Limits::default()),
            events: Vec::new(),
        }
    }
}

impl HttpParser {
    fn report(&mut self, out: &mut Vec<Report>) {
        out.extend(self.events.drain(..).map(|event| match event {
            HttpEvent::RequestStarted {
                seq,
                traceparent,
                line,
                ..
            } => Report::Started {
                seq,
                traceparent,
                line,
            },
            HttpEvent::ResponseStarted { seq, .. } => Report::Answering { seq },
            HttpEvent::Exchange(exchange) => Report::Finished(Finished::Http(Box::new(exchange))),
        }));
    }
}

impl Parser for HttpParser {
    fn kind(&self) -> Kind {
        Kind::Http
    }

    fn push(&mut self, chunk: Chunk<'_>, out: &mut Vec<Report>) {
        self.conversation.push(chunk, &mut self.events);
        self.report(out);
    }

    fn close(&mut self, out: &mut Vec<Report>) {
        self.conversation.close(&mut self.events);
        self.report(out);
    }

    fn flush_idle(&mut self, now_ns: u64, idle_ns: u64, out: &mut Vec<Report>) {
        self.conversation
            .flush_idle(now_ns, idle_ns, &mut self.events);
        self.report(out);
    }
}
