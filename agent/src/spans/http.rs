//! HTTP exchanges to spans, with OTel semantic-convention attributes. Bodies and headers other
//! than Host never reach a span; query values are redacted.

use std::{net::SocketAddr, sync::Arc};

use super::{
    model::{AttrValue, OpType, SpanKind, SpanRecord, Text, call_key},
    names::Names,
    parent::Unnested,
    route::{redact_query, split_target},
};
use crate::protocols::http1::{self, Exchange};

/// What the connection knows of its two ends.
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// `peer`'s IP as text, formatted once per connection and shared by its spans.
    peer_ip: Option<Arc<str>>,
    /// Its bytes were read as plaintext from OpenSSL: the connection is TLS (`https`).
    pub tls: bool,
}

impl Endpoints {
    pub fn new(peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Self {
        Self {
            peer,
            local,
            peer_ip: peer.map(|p| Arc::from(p.ip().to_string())),
            tls: false,
        }
    }

    /// Fills in what a /proc look-up found.
    pub fn learn(&mut self, peer: SocketAddr, local: SocketAddr) {
        self.local = Some(local);
        if self.peer.is_none() {
            *self = Self {
                tls: self.tls,
                ..Self::new(Some(peer), Some(local))
            };
        }
    }

    pub fn peer_ip(&self) -> Option<Text> {
        self.peer_ip.clone().map(Text::Shared)
    }
}

/// Ids a span was given when its request started.
#[derive(Clone, Copy, Debug)]
pub struct SpanIds {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    /// Why a call has no parent (calls only; `loupe.parent` on its span).
    pub unnested: Option<Unnested>,
}

impl SpanIds {
    /// Says on a call's span why it has no parent, where it has none.
    pub fn mark(&self, span: &mut SpanRecord) {
        if let Some(why) = self.unnested {
            span.set("loupe.parent", why.as_str());
        }
    }
}

/// Who did it.
#[derive(Clone, Copy, Debug)]
pub struct Actor {
    pub pid: u32,
    pub tid: u32,
}

/// `host[:port]` from a Host header; IPv6 literals keep no brackets.
pub fn split_host(host: &str) -> (&str, Option<u16>) {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[')
        && let Some((ip, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (ip, port);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}

fn base_span(
    exchange: &Exchange,
    kind: SpanKind,
    ids: SpanIds,
    actor: Actor,
    names: &mut Names,
) -> SpanRecord {
    let (path, query) = split_target(&exchange.request.target);
    let method: &str = &exchange.request.method;
    let route = names.route(method, path);
    let status = exchange.response.status;
    let (op, start_ns) = match kind {
        // The server's request starts when its first bytes were read.
        SpanKind::Server => (OpType::HttpServer, exchange.request_first.exit_ns),
        // The client's call starts when it began writing the request.
        SpanKind::Client => (OpType::HttpClient, exchange.request_first.enter_ns),
    };
    let mut span = new_span(
        kind,
        op,
        route.name,
        (start_ns, exchange.response_last.exit_ns),
        ids,
        actor,
    );
    span.add("http.request.method", method_value(method));
    // A path with no id in it is its route: the same text, shared.
    let path = if route.route == path {
        route.route.clone()
    } else {
        Text::Owned(path.to_owned())
    };
    span.add("url.path", path);
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        span.add("url.query", redact_query(query));
    }
    // Semantic conventions: `http.route` is a server's; a client's templated path is
    // `url.template`.
    match kind {
        SpanKind::Server => span.add("http.route", route.route),
        SpanKind::Client => span.add("url.template", route.route),
    }
    span.add("http.response.status_code", i64::from(status));
    span.add("http.request.body.size", exchange.request_body_bytes as i64);
    span.add(
        "http.response.body.size",
        exchange.response_body_bytes as i64,
    );
    span.add("network.protocol.name", "http");
    span
}

/// A request method as an attribute: the standard ones borrowed, not allocated per span.
fn method_value(method: &str) -> AttrValue {
    match http1::known_method(method) {
        Some(known) => AttrValue::from(known),
        None => AttrValue::from(method.to_owned()),
    }
}

/// A span with `ids`, made by `actor`, from `window.0` to `window.1` (never before its start).
pub fn new_span(
    kind: SpanKind,
    op: OpType,
    name: impl Into<Text>,
    window: (u64, u64),
    ids: SpanIds,
    actor: Actor,
) -> SpanRecord {
    SpanRecord {
        trace_id: ids.trace_id,
        span_id: ids.span_id,
        parent_span_id: ids.parent_span_id,
        kind,
        op,
        name: name.into(),
        start_ns: window.0,
        end_ns: window.1.max(window.0),
        attributes: Vec::with_capacity(16),
        error: None,
        pid: actor.pid,
        tid: actor.tid,
        events: Vec::new(),
        call_key: None,
        cache_key: None,
        sampling_threshold: None,
        sampled_out: false,
    }
}

/// A client span's server: `server.address`/`server.port` and `network.peer.*`, from the
/// connection's peer.
pub fn set_server_peer(span: &mut SpanRecord, ends: Option<&Endpoints>) {
    if let Some(ends) = ends
        && let (Some(peer), Some(ip)) = (ends.peer, ends.peer_ip())
    {
        span.set("server.address", ip.clone());
        span.set("server.port", i64::from(peer.port()));
        span.set("network.peer.address", ip);
        span.set("network.peer.port", i64::from(peer.port()));
    }
}

fn set_peer(span: &mut SpanRecord, ends: &Endpoints) {
    if let (Some(peer), Some(ip)) = (ends.peer, ends.peer_ip()) {
        span.set("network.peer.address", ip);
        span.set("network.peer.port", i64::from(peer.port()));
    }
}

/// [`set_peer`] on a span being built that has no peer yet.
fn add_peer(span: &mut SpanRecord, ends: &Endpoints) {
    if let (Some(peer), Some(ip)) = (ends.peer, ends.peer_ip()) {
        span.add("network.peer.address", ip);
        span.add("network.peer.port", i64::from(peer.port()));
    }
}

/// A SERVER span for an inbound request. 5xx is an error.
pub fn server_span(
    exchange: &Exchange,
    ends: &Endpoints,
    ids: SpanIds,
    actor: Actor,
    names: &mut Names,
) -> SpanRecord {
    let mut span = base_span(exchange, SpanKind::Server, ids, actor, names);
    let (host, port) = match exchange.request.host.as_deref().map(split_host) {
        Some((host, port)) => (
            Some(names.text(host)),
            port.or(ends.local.map(|l| l.port())),
        ),
        None => (
            ends.local.map(|l| names.text(&l.ip().to_string())),
            ends.local.map(|l| l.port()),
        ),
    };
    if let Some(host) = host {
        span.add("server.address", host);
    }
    if let Some(port) = port {
        span.add("server.port", i64::from(port));
    }
    if let Some(ip) = ends.peer_ip() {
        span.add("client.address", ip);
    }
    add_peer(&mut span, ends);
    span.add("url.scheme", scheme(ends));
    if exchange.response.status >= 500 {
        span.error = Some(format!("HTTP {}", exchange.response.status));
    }
    span
}

fn scheme(ends: &Endpoints) -> &'static str {
    if ends.tls { "https" } else { "http" }
}

/// A CLIENT span for an outbound call. 4xx and 5xx are errors.
pub fn client_span(
    exchange: &Exchange,
    ends: &Endpoints,
    ids: SpanIds,
    actor: Actor,
    names: &mut Names,
) -> SpanRecord {
    let mut span = base_span(exchange, SpanKind::Client, ids, actor, names);
    ids.mark(&mut span);
    let from_host = exchange.request.host.as_deref().map(split_host);
    let host = from_host
        .as_ref()
        .map(|(host, _)| names.text(host))
        .or_else(|| ends.peer_ip());
    let port = from_host
        .and_then(|(_, port)| port)
        .or(ends.peer.map(|p| p.port()));
    if let Some(host) = &host {
        span.set("server.address", host.clone());
    }
    if let Some(port) = port {
        span.set("server.port", i64::from(port));
    }
    set_peer(&mut span, ends);
    let port_text = port.map(|p| p.to_string()).unwrap_or_default();
    span.call_key = Some(call_key(&[
        &exchange.request.method,
        host.as_deref().unwrap_or_default(),
        &port_text,
        &exchange.request.target,
    ]));
    if let Some(host) = host {
        let (path, query) = split_target(&exchange.request.target);
        let default_port = if ends.tls { 443 } else { 80 };
        let query = query
            .map(|q| format!("?{}", redact_query(q)))
            .unwrap_or_default();
        let scheme = scheme(ends);
        let full = match port {
            Some(port) if port != default_port => {
                format!("{scheme}://{host}:{port}{path}{query}")
            }
            _ => format!("{scheme}://{host}{path}{query}"),
        };
        span.set("url.full", full);
    }
    if exchange.response.status >= 400 {
        span.error = Some(format!("HTTP {}", exchange.response.status));
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_are_borrowed_and_others_kept_as_sent() {
        assert!(matches!(
            method_value("GET"),
            AttrValue::Str(Text::Static("GET"))
        ));
        assert!(matches!(
            method_value("DELETE"),
            AttrValue::Str(Text::Static("DELETE"))
        ));
        let AttrValue::Str(Text::Owned(other)) = method_value("PROPFIND") else {
            panic!("an unknown method is its own text");
        };
        assert_eq!(other, "PROPFIND");
        assert!(matches!(
            method_value("get"),
            AttrValue::Str(Text::Owned(_))
        ));
    }

    #[test]
    fn host_headers_split_into_name_and_port() {
        assert_eq!(split_host("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host("example.com"), ("example.com", None));
        assert_eq!(split_host("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host("::1"), ("::1", None));
        assert_eq!(split_host("h:notaport"), ("h:notaport", None));
    }
}
