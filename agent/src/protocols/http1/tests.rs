//! Golden tests on captured byte streams (tests/fixtures/http1) and robustness tests.

use super::*;
use crate::protocols::Report;

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
        tail: &[],
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

/// The requests `events` reported as `Lost(Unseen(n))`, summed.
fn unseen(events: &[HttpEvent]) -> u64 {
    events
        .iter()
        .map(|event| match event {
            HttpEvent::Lost(Loss::Unseen(n)) => *n,
            _ => 0,
        })
        .sum()
}

fn abandoned(events: &[HttpEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match event {
            HttpEvent::Abandoned { seq } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn parse_errors(events: &[HttpEvent]) -> usize {
    events
        .iter()
        .filter(|event| matches!(event, HttpEvent::Lost(Loss::ParseError)))
        .count()
}

fn get(id: usize) -> Vec<u8> {
    format!("GET /r/{id} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

/// A response whose body is `id` bytes long: an exchange's body size names its request.
fn answer(id: usize) -> Vec<u8> {
    let mut response = format!("HTTP/1.1 200 OK\r\nContent-Length: {id}\r\n\r\n").into_bytes();
    response.resize(response.len() + id, b'.');
    response
}

fn targets(events: &[HttpEvent]) -> Vec<(String, u64)> {
    exchanges(events)
        .iter()
        .map(|e| (e.request.target.clone(), e.response_body_bytes))
        .collect()
}

#[test]
fn a_request_with_seventy_headers_and_the_five_after_it_on_its_connection_pair() {
    let mut many = b"GET /r/0 HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..70 {
        many.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut c = new();
    let mut chunks = vec![chunk(Flow::Request, 1, &many)];
    let answers: Vec<Vec<u8>> = (0..6).map(answer).collect();
    let requests: Vec<Vec<u8>> = (0..6).map(get).collect();
    chunks.push(chunk(Flow::Response, 2, &answers[0]));
    for id in 1..6 {
        chunks.push(chunk(Flow::Request, 10 * id as u64, &requests[id]));
        chunks.push(chunk(Flow::Response, 10 * id as u64 + 5, &answers[id]));
    }
    let events = feed(&mut c, chunks);
    let expected: Vec<(String, u64)> = (0..6).map(|id| (format!("/r/{id}"), id as u64)).collect();
    assert_eq!(targets(&events), expected);
    assert!(!exchanges(&events)[0].request.truncated);
    assert_eq!(c.stats(), ConversationStats::default());
}

#[test]
fn a_response_with_seventy_headers_pairs_and_frames_its_body() {
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..70 {
        many.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"Content-Length: 3\r\n\r\nabc");
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, CURL_GET),
            chunk(Flow::Response, 2, &many),
            chunk(Flow::Request, 3, CURL_GET),
            chunk(Flow::Response, 4, CURL_GET_RESPONSE),
        ],
    );
    let all = exchanges(&events);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].response_body_bytes, 3);
    assert!(all[0].framed);
}

/// The first bytes of a connection through the seam, as the stitcher gives them: held while
/// nothing recognises them, then replayed to the parser that does.
fn through_the_seam(pieces: &[&[u8]], response: &[u8]) -> Vec<Report> {
    struct Nothing;
    impl crate::protocols::Surroundings for Nothing {
        fn resumed_database(&mut self) -> Option<String> {
            None
        }
    }
    let mut first = crate::protocols::sniff::FirstBytes::default();
    let mut parser: Option<Box<dyn crate::protocols::Parser>> = None;
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let at = i as u64 * 10;
        if let Some(parser) = parser.as_mut() {
            parser.push(chunk(Flow::Request, at, piece), &mut out);
            continue;
        }
        let held = first.prefix(false, piece);
        let sniffing = crate::protocols::First {
            captured: held.as_deref().unwrap_or(piece),
            total_len: first.held_len() + piece.len(),
            egress: false,
            role: loupe_common::SocketRole::Unknown,
            opened: true,
        };
        match crate::protocols::recognise(&sniffing, &mut Nothing) {
            Some(mut recognised) => {
                assert_eq!(recognised.role, loupe_common::SocketRole::Server);
                first.replay(Flow::Request, |c| recognised.parser.push(c, &mut out));
                recognised
                    .parser
                    .push(chunk(Flow::Request, at, piece), &mut out);
                parser = Some(recognised.parser);
            }
            None => assert!(
                first.hold(
                    Timing::of(&chunk(Flow::Request, at, piece)),
                    piece,
                    piece.len()
                ),
                "piece {i} is held"
            ),
        }
    }
    let mut parser = parser.expect("recognised");
    parser.push(chunk(Flow::Response, 100_000, response), &mut out);
    out
}

fn finished_targets(reports: &[Report]) -> Vec<(String, u64)> {
    reports
        .iter()
        .filter_map(|report| match report {
            Report::Finished(crate::protocols::Finished::Http(e)) => {
                Some((e.request.target.clone(), e.request_first.enter_ns))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_first_write_shorter_than_the_method_is_recognised_with_what_follows() {
    let reports = through_the_seam(
        &[b"GE", b"T /r/1 HTTP/1.1\r\nHost: x\r\n\r\n"],
        CURL_GET_RESPONSE,
    );
    assert_eq!(
        finished_targets(&reports),
        vec![("/r/1".to_owned(), 0)],
        "timed from its first piece"
    );
}

#[test]
fn a_request_written_one_byte_at_a_time_is_recognised() {
    let request = get(7);
    let pieces: Vec<&[u8]> = request.chunks(1).collect();
    let reports = through_the_seam(&pieces, CURL_GET_RESPONSE);
    assert_eq!(finished_targets(&reports), vec![("/r/7".to_owned(), 0)]);
}

#[test]
fn a_thousand_continues_in_one_write_then_the_final_response_gives_its_status() {
    let continues = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1_000);
    let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n";
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, &POST[..head_len(POST)]),
            // What a 1,024-byte capture shows of the write.
            gappy(Flow::Response, 3, &continues[..1024], continues.len()),
            chunk(Flow::Request, 5, &POST[head_len(POST)..]),
            chunk(Flow::Response, 6, hints),
            chunk(Flow::Response, 7, POST_RESPONSE),
            chunk(Flow::Request, 9, CURL_GET),
            chunk(Flow::Response, 11, CURL_GET_RESPONSE),
        ],
    );
    let all = exchanges(&events);
    let statuses: Vec<u16> = all.iter().map(|e| e.response.status).collect();
    assert_eq!(statuses, vec![201, 200]);
    assert_eq!(all[0].response_first.enter_ns, 7);
    assert_eq!(all[0].request_body_bytes, 28);
    assert!(
        events.iter().all(|e| !matches!(
            e,
            HttpEvent::ResponseStarted {
                status: 100..=199,
                ..
            }
        )),
        "an interim response does not answer"
    );
}

#[test]
fn switching_protocols_ends_http_on_the_connection() {
    let mut c = new();
    let upgrade =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let mut switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
    switched.extend_from_slice(b"\x81\x05hello");
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, upgrade),
            chunk(Flow::Response, 3, &switched),
            chunk(Flow::Request, 5, b"\x81\x85\x00\x00\x00\x00hello"),
            chunk(Flow::Request, 6, CURL_GET),
            chunk(Flow::Response, 7, b"\x81\x02hi"),
        ],
    );
    let all = exchanges(&events);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].response.status, 101);
    assert_eq!(events.len(), 3, "started, answering, exchange: {events:?}");
    assert_eq!(c.stats().parse_errors, 0);
}

#[test]
fn a_head_longer_than_the_capture_is_head_and_its_body_is_what_its_framing_says() {
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Big: ".to_vec();
    head.resize(1 << 20, b'h');
    head.extend_from_slice(b"\r\n\r\n0123456789");
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, CURL_GET),
            gappy(Flow::Response, 3, &head[..1024], head.len()),
            chunk(Flow::Request, 5, CURL_GET),
            chunk(Flow::Response, 7, CURL_GET_RESPONSE),
        ],
    );
    let all = exchanges(&events);
    assert_eq!(all.len(), 2);
    assert!(all[0].response.truncated);
    assert_eq!(all[0].response_body_bytes, 10);
    assert_eq!(all[1].response_body_bytes, 27);
}

/// Pipelined requests as nginx reads them: reads of `sizes` bytes of which the first 1,024
/// are seen, each followed by one write per response to the requests it completed.
fn pipelined_as_nginx_reads(count: usize, sizes: &[usize]) -> (Vec<HttpEvent>, Conversation) {
    let requests: Vec<Vec<u8>> = (0..count).map(get).collect();
    let stream: Vec<u8> = requests.concat();
    let mut ends = Vec::new();
    let mut end = 0;
    for request in &requests {
        end += request.len();
        ends.push(end);
    }
    let answers: Vec<Vec<u8>> = (0..count).map(answer).collect();
    let mut c = new();
    let mut out = Vec::new();
    let (mut at, mut read_to, mut answered) = (0u64, 0usize, 0usize);
    for &size in sizes.iter().chain(std::iter::repeat(&8190)) {
        if read_to >= stream.len() {
            break;
        }
        let read = &stream[read_to..(read_to + size).min(stream.len())];
        read_to += read.len();
        at += 10;
        c.push(
            gappy(Flow::Request, at, &read[..read.len().min(1024)], read.len()),
            &mut out,
        );
        while answered < count && ends[answered] <= read_to {
            at += 10;
            c.push(chunk(Flow::Response, at, &answers[answered]), &mut out);
            answered += 1;
        }
    }
    (out, c)
}

#[test]
fn pipelined_requests_past_the_capture_are_counted_unseen_and_the_seen_ones_pair_right() {
    let (events, _) = pipelined_as_nginx_reads(1_000, &[1024, 8178, 8190, 8190, 8190]);
    let all = exchanges(&events);
    for e in &all {
        assert_eq!(
            e.request.target,
            format!("/r/{}", e.response_body_bytes),
            "a request pairs with its own response"
        );
    }
    assert!(all.len() >= 100, "the seen ones are spans: {}", all.len());
    assert_eq!(all.len() as u64 + unseen(&events), 1_000);
    assert!(abandoned(&events).is_empty(), "{:?}", abandoned(&events));
    assert_eq!(parse_errors(&events), 0);
}

#[test]
fn pipelined_requests_in_reads_of_any_size_are_all_accounted_for() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut all_sizes: Vec<Vec<usize>> = [[700, 3000, 5000], [2048, 1, 333], [1024, 1024, 1024]]
        .iter()
        .map(|s| s.to_vec())
        .collect();
    for _ in 0..200 {
        all_sizes.push((0..40).map(|_| 1 + rng.below(9_000)).collect());
    }
    for sizes in all_sizes {
        let (events, _) = pipelined_as_nginx_reads(500, &sizes);
        let all = exchanges(&events);
        for e in &all {
            assert_eq!(
                e.request.target,
                format!("/r/{}", e.response_body_bytes),
                "{sizes:?}"
            );
        }
        assert_eq!(all.len() as u64 + unseen(&events), 500, "{sizes:?}");
    }
}

/// A keep-alive connection of `count` request/response pairs, with the chunk at `dropped` (in
/// feeding order) lost.
fn keep_alive_dropping(count: usize, dropped: usize) -> Vec<HttpEvent> {
    let requests: Vec<Vec<u8>> = (0..count).map(get).collect();
    let answers: Vec<Vec<u8>> = (0..count).map(answer).collect();
    let mut chunks = Vec::new();
    for id in 0..count {
        chunks.push(chunk(Flow::Request, id as u64 * 10, &requests[id]));
        chunks.push(chunk(Flow::Response, id as u64 * 10 + 5, &answers[id]));
    }
    chunks.remove(dropped);
    let mut c = new();
    feed(&mut c, chunks)
}

#[test]
fn a_lost_response_on_a_keep_alive_connection_costs_one_pair() {
    let events = keep_alive_dropping(6, 3);
    let expected: Vec<(String, u64)> = [0, 2, 3, 4, 5]
        .iter()
        .map(|id| (format!("/r/{id}"), *id as u64))
        .collect();
    assert_eq!(targets(&events), expected);
    assert_eq!(
        abandoned(&events),
        vec![1],
        "the request whose answer was lost"
    );
}

#[test]
fn a_lost_request_on_a_keep_alive_connection_costs_one_pair() {
    let events = keep_alive_dropping(6, 2);
    let expected: Vec<(String, u64)> = [0, 2, 3, 4, 5]
        .iter()
        .map(|id| (format!("/r/{id}"), *id as u64))
        .collect();
    assert_eq!(targets(&events), expected);
    assert_eq!(unseen(&events), 1, "its response shows it was there");
}

#[test]
fn a_lost_piece_of_a_response_costs_its_pair_and_the_next_response_head_finds_the_step() {
    let answers: Vec<Vec<u8>> = (0..4).map(answer).collect();
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let requests: Vec<Vec<u8>> = (0..4).map(get).collect();
    let mut c = new();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, &requests[0]),
            chunk(Flow::Response, 2, &answers[0]),
            chunk(Flow::Request, 3, &requests[1]),
            chunk(Flow::Response, 4, chunked),
            // Lost: "3\r\nabc\r\n"; then the last chunk.
            chunk(Flow::Response, 6, b"0\r\n\r\n"),
            chunk(Flow::Request, 7, &requests[2]),
            chunk(Flow::Response, 8, &answers[2]),
            chunk(Flow::Request, 9, &requests[3]),
            chunk(Flow::Response, 10, &answers[3]),
        ],
    );
    let after: Vec<(String, u64)> = targets(&events)
        .into_iter()
        .filter(|(target, _)| target != "/r/1")
        .collect();
    assert_eq!(
        after,
        vec![("/r/0".into(), 0), ("/r/2".into(), 2), ("/r/3".into(), 3)],
        "{events:?}"
    );
}

#[test]
fn bytes_that_do_not_parse_are_reported_and_the_next_head_on_a_line_finds_the_step() {
    let mut c = new();
    let mut garbage_then_request = b"\x00\x01garbage\r\n".to_vec();
    garbage_then_request.extend_from_slice(&get(1));
    let answers: Vec<Vec<u8>> = (0..3).map(answer).collect();
    let events = feed(
        &mut c,
        [
            chunk(Flow::Request, 1, &get(0)),
            chunk(Flow::Response, 2, &answers[0]),
            chunk(Flow::Request, 3, &garbage_then_request),
            chunk(Flow::Response, 4, &answers[1]),
            chunk(Flow::Request, 5, &get(2)),
            chunk(Flow::Response, 6, &answers[2]),
        ],
    );
    let expected: Vec<(String, u64)> = (0..3).map(|id| (format!("/r/{id}"), id as u64)).collect();
    assert_eq!(targets(&events), expected);
    assert_eq!(parse_errors(&events), 1);
}

#[test]
fn requests_evicted_past_the_pending_bound_are_abandoned() {
    let mut c = Conversation::new(Limits {
        max_head_bytes: 16 * 1024,
        max_pending: 2,
    });
    let three = [get(0), get(1), get(2)].concat();
    let events = feed(&mut c, [chunk(Flow::Request, 1, &three)]);
    assert_eq!(abandoned(&events), vec![0]);
}
