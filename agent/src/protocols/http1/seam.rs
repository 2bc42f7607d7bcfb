//! HTTP/1 behind the protocol seam: recognised by a request line, either way.

use loupe_common::SocketRole;

use super::{Conversation, HttpEvent, Limits, looks_like_request};
use crate::protocols::{
    Adapted, Finished, First, Kind, ProtocolSpec, Recognised, Report, Surroundings,
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
    let parser = Adapted::new(
        Kind::Http,
        Conversation::new(Limits::default()),
        Conversation::push,
        Conversation::close,
        report,
    )
    .with_flush_idle(Conversation::flush_idle);
    Some(Recognised {
        role: if first.egress {
            SocketRole::Client
        } else {
            SocketRole::Server
        },
        parser: Box::new(parser),
    })
}

fn report(event: HttpEvent) -> Report {
    match event {
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
        HttpEvent::Abandoned { seq } => Report::Abandoned { seq },
        HttpEvent::Lost(loss) => Report::Lost(loss),
    }
}
