//! Message heads: parsed with httparse into owned values, with a fallback for heads that were
//! only partly captured.

/// What loupe keeps of a request head: never bodies, never headers other than these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    /// The method as sent: a standard one borrowed from [`super::known_method`]'s table.
    pub method: std::borrow::Cow<'static, str>,
    /// The raw request-target (path and query, or absolute form).
    pub target: String,
    pub host: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// W3C trace context of the caller, if it sent one.
    pub traceparent: Option<String>,
    /// The head was not seen whole: fields past the capture are missing.
    pub truncated: bool,
}

/// What loupe keeps of a response head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub truncated: bool,
}

/// Either head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    Request(RequestHead),
    Response(ResponseHead),
}

/// The outcome of parsing the bytes accumulated so far.
pub enum Parsed {
    /// A whole head of `len` bytes.
    Complete { head: Head, len: usize },
    /// More bytes are needed.
    Partial,
    /// Not HTTP.
    Invalid,
}

/// Headers parsed in place; a head with more is parsed again with room for every line it has.
const INLINE_HEADERS: usize = 64;

/// The headers loupe reads, from (name, value) pairs.
#[derive(Default)]
struct Fields {
    host: Option<String>,
    content_length: Option<u64>,
    chunked: bool,
    traceparent: Option<String>,
}

impl Fields {
    fn take(&mut self, name: &str, value: &[u8]) {
        // The name first: the value of a header loupe does not read is never decoded.
        let read: fn(&mut Self, &str) = if name.eq_ignore_ascii_case("host") {
            |fields, value| fields.host = Some(value.to_owned())
        } else if name.eq_ignore_ascii_case("content-length") {
            |fields, value| fields.content_length = value.parse().ok()
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            |fields, value| {
                fields.chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
            }
        } else if name.eq_ignore_ascii_case("traceparent") {
            |fields, value| fields.traceparent = Some(value.to_owned())
        } else {
            return;
        };
        read(self, String::from_utf8_lossy(value).trim());
    }

    /// Header lines of a partial head, as far as whole lines were captured.
    fn from_partial(bytes: &[u8]) -> Self {
        let mut fields = Self::default();
        let mut lines = bytes.split(|&b| b == b'\n');
        lines.next(); // start line
        let complete_lines = bytes
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            .saturating_sub(1);
        for line in lines.take(complete_lines) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let name = String::from_utf8_lossy(&line[..colon]);
                fields.take(&name, &line[colon + 1..]);
            }
        }
        fields
    }
}

/// Parses a request head from the start of `bytes`.
pub fn parse_request(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; INLINE_HEADERS];
    match request_with(bytes, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => {
            request_with(bytes, &mut vec![httparse::EMPTY_HEADER; lines_in(bytes)])
        }
        parsed => parsed,
    }
    .unwrap_or(Parsed::Invalid)
}

/// Parses a response head from the start of `bytes`.
pub fn parse_response(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; INLINE_HEADERS];
    match response_with(bytes, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => {
            response_with(bytes, &mut vec![httparse::EMPTY_HEADER; lines_in(bytes)])
        }
        parsed => parsed,
    }
    .unwrap_or(Parsed::Invalid)
}

/// An upper bound on the header lines in `bytes` (heads are bounded by `Limits::max_head_bytes`).
fn lines_in(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count() + 1
}

/// A method as kept: the standard ones borrowed, not allocated per request.
pub(crate) fn method_text(method: &str) -> std::borrow::Cow<'static, str> {
    match super::known_method(method) {
        Some(known) => std::borrow::Cow::Borrowed(known),
        None => std::borrow::Cow::Owned(method.to_owned()),
    }
}

fn request_with<'b>(
    bytes: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Result<Parsed, httparse::Error> {
    let mut request = httparse::Request::new(headers);
    Ok(match request.parse(bytes)? {
        httparse::Status::Complete(len) => {
            let mut fields = Fields::default();
            for header in request.headers.iter() {
                fields.take(header.name, header.value);
            }
            Parsed::Complete {
                head: Head::Request(RequestHead {
                    method: method_text(request.method.unwrap_or_default()),
                    target: request.path.unwrap_or_default().to_owned(),
                    host: fields.host,
                    content_length: fields.content_length,
                    chunked: fields.chunked,
                    traceparent: fields.traceparent,
                    truncated: false,
                }),
                len,
            }
        }
        httparse::Status::Partial => Parsed::Partial,
    })
}

fn response_with<'b>(
    bytes: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Result<Parsed, httparse::Error> {
    let mut response = httparse::Response::new(headers);
    Ok(match response.parse(bytes)? {
        httparse::Status::Complete(len) => {
            let mut fields = Fields::default();
            for header in response.headers.iter() {
                fields.take(header.name, header.value);
            }
            Parsed::Complete {
                head: Head::Response(ResponseHead {
                    status: response.code.unwrap_or_default(),
                    content_length: fields.content_length,
                    chunked: fields.chunked,
                    truncated: false,
                }),
                len,
            }
        }
        httparse::Status::Partial => Parsed::Partial,
    })
}

/// What can be read from a request head that was cut short: the request line when it was
/// captured whole, and whole header lines.
pub fn truncated_request(bytes: &[u8]) -> Option<RequestHead> {
    let line_end = bytes.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&bytes[..line_end]).ok()?.trim_end();
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    if method.is_empty() || target.is_empty() {
        return None;
    }
    let fields = Fields::from_partial(bytes);
    Some(RequestHead {
        method: method_text(method),
        target: target.to_owned(),
        host: fields.host,
        content_length: fields.content_length,
        chunked: fields.chunked,
        traceparent: fields.traceparent,
        truncated: true,
    })
}

/// What can be read from a response head that was cut short: its status code.
pub fn truncated_response(bytes: &[u8]) -> Option<ResponseHead> {
    let code = bytes.get(9..12)?;
    if !bytes.starts_with(b"HTTP/1.") || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = std::str::from_utf8(code).ok()?.parse().ok()?;
    let fields = Fields::from_partial(bytes);
    Some(ResponseHead {
        status,
        content_length: fields.content_length,
        chunked: fields.chunked,
        truncated: true,
    })
}
