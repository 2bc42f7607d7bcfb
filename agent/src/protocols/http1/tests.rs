//! Golden tests on captured byte streams (tests/fixtures/http1) and robustness tests.

use super::*;

const CURL_GET: &[u8] = include_bytes!("../../../../tests/fixtures/http1/curl_get.request");
const CURL_GET_RESPONSE: &[u8] =
    include_bytes!("../../../../tests/fixtures/http1/curl_get.response");
const CHUNKED_RESPONSE: &[u8] = include_bytes!("../../../../tests/fixtures/http1/chunked.response");
const PIPELINED_REQUESTS: &[u8] =
    include_bytes!("../../../../tests/fixtures/http1/pipelined.requests");
const PIPELINED_RESPONSES: &[u8] =
    include_bytes!("../../../../tests/fixtures/http1/pipelined.responses");
const POST: &[u8] = include_bytes!("../../../../tests/fixtures/http1/post.request");
const POST_RESPONSE: &[u8] = include_bytes!("../../../../tests/fixtures/http1/post.response");

fn chunk(flow: Flow, at: u64, bytes: &[u8]) -> Chunk<'_> {
    gappy(flow, at, bytes, bytes.len())
}

fn gappy(flow: Flow, at: u64, captured: &[u8], total_len: usize) -> Chunk<'_> {
    Chunk {
        flow,
        enter_ns: at,
        exit_ns: at + 1,
        captured,
        total_len,
    }
}

fn feed<'a>(
    conversation: &mut Conversation,
    chunks: impl IntoIterator<Item = Chunk<'a>>,
) -> Vec<HttpEvent> {
    let mut out = Vec::new();
    for chunk in chunks {
        conversation.push(chunk, &mut out);
    }
    out
}

fn exchanges(events: &[HttpEvent]) -> Vec<&Exchange> {
    events
        .iter()
        .filter_map(|event| match event {
            HttpEvent::Exchange(exchange) => Some(exchange),
            _ => None,
        })
        .collect()
}

fn new() -> Conversation {
    Conversation::new(Limits::default())
}

fn head_len(message: &[u8]) -> usize {
    message.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
}

#[test]
fn curl_get_pairs_with_its_response() {
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 10, CURL_GET),
            chunk(Flow::Response, 20, CURL_GET_RESPONSE),
        ],
    );
    assert!(
        matches!(&events[0], HttpEvent::RequestStarted { seq: 0, first, traceparent: None, .. }
        if first.exit_ns == 11)
    );
    assert!(matches!(
        &events[1],
        HttpEvent::ResponseStarted {
            seq: 0,
            status: 200,
            ..
        }
    ));
    let exchange = exchanges(&events)[0];
    assert_eq!(exchange.request.method, "GET");
    assert_eq!(exchange.request.target, "/api/users/42?fields=name");
    assert_eq!(exchange.request.host.as_deref(), Some("shop.local:8080"));
    assert!(!exchange.request.truncated);
    assert_eq!(exchange.response.status, 200);
    assert_eq!(exchange.response.content_length, Some(27));
    assert_eq!(exchange.response_body_bytes, 27);
    assert_eq!(exchange.request_body_bytes, 0);
    assert_eq!(
        exchange.request_first,
        Timing {
            enter_ns: 10,
            exit_ns: 11
        }
    );
    assert_eq!(
        exchange.response_last,
        Timing {
            enter_ns: 20,
            exit_ns: 21
        }
    );
    assert!(exchange.framed);
    assert_eq!(c.is_http(), Some(true));
    assert_eq!(c.stats(), ConversationStats::default());
}

#[test]
fn keep_alive_connection_numbers_its_exchanges() {
    let mut c = new();
    let mut chunks = Vec::new();
    for i in 0..3u64 {
        chunks.push(chunk(Flow::Request, i * 100, CURL_GET));
        chunks.push(chunk(Flow::Response, i * 100 + 50, CURL_GET_RESPONSE));
    }
    let events = feed(&mut c, chunks);
    let seqs: Vec<u64> = exchanges(&events).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2]);
    assert_eq!(exchanges(&events)[2].request_first.enter_ns, 200);
}

#[test]
fn chunked_response_ends_at_its_last_chunk() {
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, CURL_GET),
            chunk(Flow::Response, 5, CHUNKED_RESPONSE),
        ],
    );
    let exchange = exchanges(&events)[0];
    assert!(exchange.response.chunked);
    assert!(exchange.framed);
    assert_eq!(
        exchange.response_body_bytes as usize,
        CHUNKED_RESPONSE.len() - head_len(CHUNKED_RESPONSE)
    );
}

#[test]
fn chunked_response_split_at_every_byte_gives_one_exchange() {
    for split in 1..CHUNKED_RESPONSE.len() {
        let mut c = new();
        let (a, b) = CHUNKED_RESPONSE.split_at(split);
        let events = feed(
            &mut c,
            [
                chunk(Flow::Request, 1, CURL_GET),
                chunk(Flow::Response, 5, a),
                chunk(Flow::Response, 9, b),
            ],
        );
        let all = exchanges(&events);
        assert_eq!(all.len(), 1, "split at {split}");
        assert_eq!(all[0].response_last.enter_ns, 9, "split at {split}");
        assert_eq!(all[0].response_first.enter_ns, 5, "split at {split}");
    }
}

#[test]
fn pipelined_requests_in_one_read_pair_in_order_with_responses_in_one_write() {
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, PIPELINED_REQUESTS),
            chunk(Flow::Response, 5, PIPELINED_RESPONSES),
        ],
    );
    let all = exchanges(&events);
    let summary: Vec<(u64, &str, u16, u64)> = all
        .iter()
        .map(|e| {
            (
                e.seq,
                e.request.target.as_str(),
                e.response.status,
                e.response_body_bytes,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![(0, "/a", 200, 1), (1, "/b", 404, 0), (2, "/c", 200, 2)]
    );
}

#[test]
fn request_head_arriving_one_byte_at_a_time_is_parsed_once() {
    let mut c = new();
    let chunks = CURL_GET
        .iter()
        .enumerate()
        .map(|(i, byte)| chunk(Flow::Request, i as u64 * 10, std::slice::from_ref(byte)));
    let mut events = feed(&mut c, chunks);
    events.extend(feed(
        &mut c,
        [chunk(Flow::Response, 5_000, CURL_GET_RESPONSE)],
    ));
    let started = events
        .iter()
        .filter(|e| matches!(e, HttpEvent::RequestStarted { .. }))
        .count();
    assert_eq!(started, 1);
    let exchange = exchanges(&events)[0];
    assert_eq!(exchange.request.target, "/api/users/42?fields=name");
    assert_eq!(exchange.request_first.enter_ns, 0);
    assert_eq!(
        exchange.request_last.enter_ns,
        (CURL_GET.len() as u64 - 1) * 10
    );
}

#[test]
fn post_body_split_over_reads_is_counted_and_its_end_timed() {
    let mut c = new();
    let head = head_len(POST);
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, &POST[..head - 3]),
            chunk(Flow::Request, 2, &POST[head - 3..head + 5]),
            chunk(Flow::Request, 3, &POST[head + 5..]),
            chunk(Flow::Response, 9, POST_RESPONSE),
        ],
    );
    let exchange = exchanges(&events)[0];
    assert_eq!(exchange.request.method, "POST");
    assert_eq!(exchange.request_body_bytes, 28);
    assert_eq!(exchange.request_last.enter_ns, 3);
    assert_eq!(exchange.response.status, 201);
    assert_eq!(exchange.response_body_bytes, 11);
}

#[test]
fn unseen_bytes_inside_a_body_of_known_length_cost_nothing() {
    let mut c = new();
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, CURL_GET),
            // The capture holds the head and a few body bytes; 100000 body bytes moved.
            gappy(Flow::Response, 5, head, head.len() + 60_000),
            gappy(Flow::Response, 7, b"xyz", 40_000),
            chunk(Flow::Request, 9, CURL_GET),
            chunk(Flow::Response, 11, CURL_GET_RESPONSE),
        ],
    );
    let all = exchanges(&events);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].response_body_bytes, 100_000);
    assert!(all[0].framed);
    assert_eq!(all[0].response_last.enter_ns, 7);
    assert_eq!(all[1].seq, 1);
}

#[test]
fn head_cut_by_the_capture_still_names_the_request_and_resyncs() {
    let mut c = new();
    let mut long = b"GET /search?q=1 HTTP/1.1\r\nHost: big\r\nCookie: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 3000));
    long.extend_from_slice(b"\r\n\r\n");
    let events = feed(
        &mut c,
        [
            gappy(Flow::Request, 1, &long[..256], long.len()),
            chunk(Flow::Response, 5, CURL_GET_RESPONSE),
            chunk(Flow::Request, 9, CURL_GET),
            chunk(Flow::Response, 11, CURL_GET_RESPONSE),
        ],
    );
    let all = exchanges(&events);
    assert_eq!(all.len(), 2);
    assert!(all[0].request.truncated);
    assert_eq!(all[0].request.method, "GET");
    assert_eq!(all[0].request.target, "/search?q=1");
    assert_eq!(all[0].request.host.as_deref(), Some("big"));
    assert_eq!(all[0].response.status, 200);
    assert!(!all[1].request.truncated);
}

#[test]
fn response_to_head_has_no_body_whatever_its_length_says() {
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"),
            chunk(
                Flow::Response,
                5,
                b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
            ),
        ],
    );
    let all = exchanges(&events);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].response_body_bytes, 0);
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    for status in [b"204 No Content".as_slice(), b"304 Not Modified".as_slice()] {
        let mut response = b"HTTP/1.1 ".to_vec();
        response.extend_from_slice(status);
        response.extend_from_slice(b"\r\nContent-Length: 10\r\n\r\n");
        let mut c = new();
        let events = feed(
            &mut c,
            [
                chunk(Flow::Request, 1, CURL_GET),
                chunk(Flow::Response, 5, &response),
            ],
        );
        assert_eq!(
            exchanges(&events).len(),
            1,
            "{}",
            String::from_utf8_lossy(status)
        );
    }
}

#[test]
fn continue_100_is_interim_and_the_final_response_pairs() {
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, &POST[..head_len(POST)]),
            chunk(Flow::Response, 3, b"HTTP/1.1 100 Continue\r\n\r\n"),
            chunk(Flow::Request, 5, &POST[head_len(POST)..]),
            chunk(Flow::Response, 7, POST_RESPONSE),
        ],
    );
    let all = exchanges(&events);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].response.status, 201);
    assert_eq!(all[0].response_first.enter_ns, 7);
    assert_eq!(all[0].request_body_bytes, 28);
}

#[test]
fn close_counts_a_request_that_got_no_response() {
    let mut c = new();
    let mut events = feed(&mut c, [chunk(Flow::Request, 1, CURL_GET)]);
    c.close(&mut events);
    assert!(exchanges(&events).is_empty());
    assert_eq!(c.stats().unanswered_requests, 1);
}

#[test]
fn response_without_length_ends_when_the_client_speaks_on_close_or_when_idle() {
    let unframed = b"HTTP/1.0 200 OK\r\n\r\nsome body";
    // The next request ends it.
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, CURL_GET),
            chunk(Flow::Response, 5, unframed),
            chunk(Flow::Response, 6, b" more"),
            chunk(Flow::Request, 9, CURL_GET),
        ],
    );
    let all = exchanges(&events);
    assert_eq!(all.len(), 1);
    assert!(!all[0].framed);
    assert_eq!(all[0].response_last.enter_ns, 6);
    assert_eq!(all[0].response_body_bytes, 14);
    // Close ends it.
    let mut c = new();
    let mut events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, CURL_GET),
            chunk(Flow::Response, 5, unframed),
        ],
    );
    c.close(&mut events);
    assert_eq!(exchanges(&events).len(), 1);
    // Idle ends it, but not before the idle time.
    let mut c = new();
    let mut events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, CURL_GET),
            chunk(Flow::Response, 5, unframed),
        ],
    );
    c.flush_idle(500, 1_000, &mut events);
    assert!(exchanges(&events).is_empty());
    c.flush_idle(1_006, 1_000, &mut events);
    assert_eq!(exchanges(&events).len(), 1);
}

#[test]
fn response_with_no_request_is_counted_not_paired() {
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Response, 1, CURL_GET_RESPONSE),
            chunk(Flow::Request, 3, CURL_GET),
            chunk(Flow::Response, 5, CURL_GET_RESPONSE),
        ],
    );
    assert_eq!(exchanges(&events).len(), 1);
    assert_eq!(c.stats().unsolicited_responses, 1);
}

#[test]
fn garbage_then_http_resyncs() {
    let mut c = new();
    let mut events = feed(
        &mut c,
        [chunk(Flow::Request, 1, b"\x16\x03\x01\x00\xa5\x01\x00")],
    );
    assert_eq!(c.is_http(), Some(false));
    events.extend(feed(
        &mut c,
        [
            chunk(Flow::Request, 3, CURL_GET),
            chunk(Flow::Response, 5, CURL_GET_RESPONSE),
        ],
    ));
    assert_eq!(exchanges(&events).len(), 1);
    assert_eq!(c.is_http(), Some(true));
    assert_eq!(c.stats().resyncs, 1);
    assert_eq!(c.stats().parse_errors, 1);
}

#[test]
fn looks_like_tells_requests_and_responses_from_other_bytes() {
    assert!(looks_like_request(b"GET / HTTP/1.1\r\n"));
    assert!(looks_like_request(b"OPTIONS * HTTP/1.1"));
    assert!(!looks_like_request(b"GETX /"));
    assert!(!looks_like_request(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"));
    assert!(looks_like_response(b"HTTP/1.1 200 OK"));
    assert!(!looks_like_response(b"HTTP/2 200"));
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn random_bytes_boundaries_and_gaps_never_panic_and_keep_order() {
    let pieces: [&[u8]; 10] = [
        CURL_GET,
        CURL_GET_RESPONSE,
        CHUNKED_RESPONSE,
        PIPELINED_REQUESTS,
        PIPELINED_RESPONSES,
        POST,
        POST_RESPONSE,
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"0\r\n\r\n",
        b"\r\n",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total_exchanges = 0;
    for _ in 0..3_000 {
        let mut c = Conversation::new(Limits {
            max_head_bytes: 64 + rng.below(512),
            max_pending: 1 + rng.below(8),
        });
        let mut out = Vec::new();
        let mut at = 0u64;
        for _ in 0..rng.below(24) {
            let mut bytes: Vec<u8> = if rng.below(3) == 0 {
                (0..rng.below(64)).map(|_| rng.next() as u8).collect()
            } else {
                let piece = pieces[rng.below(pieces.len())];
                let start = if rng.below(4) == 0 {
                    rng.below(piece.len())
                } else {
                    0
                };
                let end = start + rng.below(piece.len() - start + 1);
                piece[start..end].to_vec()
            };
            if rng.below(8) == 0 && !bytes.is_empty() {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
            let captured = rng.below(bytes.len() + 1);
            let total = bytes.len()
                + if rng.below(5) == 0 {
                    rng.below(5_000)
                } else {
                    0
                };
            let flow = if rng.below(2) == 0 {
                Flow::Request
            } else {
                Flow::Response
            };
            at += 1 + rng.below(10) as u64;
            c.push(gappy(flow, at, &bytes[..captured], total), &mut out);
            match rng.below(20) {
                0 => c.flush_idle(at + rng.below(3_000) as u64, 1_000, &mut out),
                1 => c.close(&mut out),
                _ => {}
            }
        }
        c.close(&mut out);
        let seqs: Vec<u64> = exchanges(&out).iter().map(|e| e.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "exchanges in request order: {seqs:?}"
        );
        total_exchanges += seqs.len();
    }
    assert!(
        total_exchanges > 100,
        "the generator must reach real exchanges, got {total_exchanges}"
    );
}
