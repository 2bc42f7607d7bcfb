//! PostgreSQL behind the protocol seam: recognised by a client's session start, or (a session
//! open before attach) by messages either side sends.

use loupe_common::SocketRole;

use super::{PgConversation, PgEvent, looks_like_session, opens_session};
use crate::protocols::{
    Adapted, Finished, First, Kind, ProtocolSpec, Recognised, Report, Surroundings,
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
    let parser = Adapted::new(
        Kind::Postgres,
        conversation,
        PgConversation::push,
        PgConversation::close,
        report,
    );
    Some(Recognised {
        role: SocketRole::Client,
        parser: Box::new(parser),
    })
}

fn report(event: PgEvent) -> Report {
    match event {
        PgEvent::Started { seq } => Report::Started {
            seq,
            traceparent: None,
            line: 0,
        },
        PgEvent::Skipped { seq } | PgEvent::Abandoned { seq } => Report::Abandoned { seq },
        PgEvent::Lost(loss) => Report::Lost(loss),
        PgEvent::Encrypted => Report::Encrypted,
        PgEvent::Done(query) => Report::Finished(Finished::Postgres(Box::new(query))),
    }
}
