//! The committed seed corpus, built from the HTTP fixtures and the kind of traffic the
//! protocols' tests feed, in the targets' input formats (fuzz/src/lib.rs: a config byte, then
//! steps `op [len:u16le bytes]`; ring records as the kernel writes them).

use loupe_common::{
    CloseEvent, ConnEvent, ConnLocalEvent, CpuSampleEvent, DATA_EVENT_HEADER_LEN, DupEvent,
    EventKind, ForkEvent, GoCallEvent, LIBPQ_CALL_HEADER_LEN, LIBPQ_HAS_RESULT, LibpqResultEvent,
};

/// A conversation target's input.
struct Script(Vec<u8>);

const REQUEST: u8 = 0;
const RESPONSE: u8 = 1;
/// Index into the targets' table of unseen tails: 100 bytes, 4 KiB.
const GAP_100: u8 = 18;
const GAP_4K: u8 = 26;

impl Script {
    fn new(config: u8) -> Self {
        Self(vec![config])
    }

    /// One chunk of `bytes` in `flow`, with unseen tail number `gap`.
    fn chunk(mut self, flow: u8, bytes: &[u8], gap: u8) -> Self {
        let len = u16::try_from(bytes.len()).expect("seed chunks are short");
        self.0.push(flow | (gap << 2));
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    fn whole(self, flow: u8, bytes: &[u8]) -> Self {
        self.chunk(flow, bytes, 0)
    }

    /// `bytes` in chunks of `size`.
    fn split(mut self, flow: u8, bytes: &[u8], size: usize) -> Self {
        for piece in bytes.chunks(size.max(1)) {
            self = self.chunk(flow, piece, 0);
        }
        self
    }

    /// The first `seen` bytes captured, the rest unseen (a gap of `gap`'s size follows too).
    fn cut(self, flow: u8, bytes: &[u8], seen: usize, gap: u8) -> Self {
        self.chunk(flow, &bytes[..seen.min(bytes.len())], gap)
    }

    /// An idle flush `idles` idle limits later.
    fn flush(mut self, idles: u8) -> Self {
        self.0.push(2 | (idles << 2));
        self
    }

    fn close(mut self) -> Self {
        self.0.push(3);
        self
    }
}

pub fn http(requests: &[Vec<u8>], responses: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (request, response) in requests.iter().zip(responses) {
        out.push(
            Script::new(0)
                .whole(REQUEST, request)
                .whole(RESPONSE, response)
                .0,
        );
        out.push(
            Script::new(0)
                .split(REQUEST, request, 7)
                .split(RESPONSE, response, 5)
                .close()
                .0,
        );
        // Small bounds (config bit 0): heads past 16 + 32 bytes, one request pending.
        out.push(
            Script::new(1 | 32 << 1)
                .whole(REQUEST, request)
                .whole(RESPONSE, response)
                .0,
        );
        // A capture that ends inside the head, then inside the body.
        out.push(
            Script::new(0)
                .cut(REQUEST, request, request.len() / 2, GAP_100)
                .cut(RESPONSE, response, response.len() - 1, GAP_4K)
                .flush(2)
                .0,
        );
    }
    let chunked = &responses[3];
    let get = &requests[0];
    out.push(
        Script::new(0)
            .whole(REQUEST, get)
            .split(RESPONSE, chunked, 3)
            .0,
    );
    out.push(
        Script::new(0)
            .whole(REQUEST, get)
            .split(RESPONSE, chunked, 1)
            .close()
            .0,
    );
    // Keep-alive: the same exchange three times, then a pipeline answered at once.
    let mut keep_alive = Script::new(0);
    for _ in 0..3 {
        keep_alive = keep_alive
            .whole(REQUEST, get)
            .whole(RESPONSE, &responses[0]);
    }
    out.push(keep_alive.0);
    out.push(
        Script::new(0)
            .whole(REQUEST, &requests[2])
            .whole(RESPONSE, &responses[2])
            .0,
    );
    // An unframed response ended by silence, and one ended by the close.
    let unframed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome body";
    out.push(
        Script::new(0)
            .whole(REQUEST, get)
            .whole(RESPONSE, unframed)
            .flush(3)
            .0,
    );
    out.push(
        Script::new(0)
            .whole(REQUEST, get)
            .whole(RESPONSE, unframed)
            .close()
            .0,
    );
    // 100 Continue before the real response; a HEAD whose response has a length and no body.
    out.push(
        Script::new(0)
            .whole(REQUEST, &requests[1])
            .whole(RESPONSE, b"HTTP/1.1 100 Continue\r\n\r\n")
            .whole(RESPONSE, &responses[1])
            .0,
    );
    out.push(
        Script::new(0)
            .whole(REQUEST, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
            .whole(RESPONSE, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            .whole(REQUEST, get)
            .whole(RESPONSE, &responses[0])
            .0,
    );
    // A response with no request seen (joined mid-way), then garbage.
    out.push(
        Script::new(0)
            .whole(RESPONSE, &responses[0])
            .whole(REQUEST, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            .0,
    );
    out
}

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(u32::try_from(body.len() + 4).expect("short")).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(text: &str) -> Vec<u8> {
    let mut out = text.as_bytes().to_vec();
    out.push(0);
    out
}

fn startup(database: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(format!("user\0app\0database\0{database}\0\0").as_bytes());
    let mut out = (u32::try_from(body.len() + 4).expect("short"))
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&body);
    out
}

fn ssl_request() -> Vec<u8> {
    [8u32.to_be_bytes(), 80_877_103u32.to_be_bytes()].concat()
}

fn greeting() -> Vec<u8> {
    [
        msg(b'R', &0u32.to_be_bytes()),
        msg(b'S', b"server_version\x0015\x00"),
        msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]),
        ready(),
    ]
    .concat()
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn query(text: &str) -> Vec<u8> {
    msg(b'Q', &cstr(text))
}

fn rows(n: usize, tag: &str) -> Vec<u8> {
    let mut out = msg(
        b'T',
        b"\x00\x01name\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
    );
    for _ in 0..n {
        out.extend(msg(b'D', b"\x00\x01\x00\x00\x00\x05alice"));
    }
    out.extend(msg(b'C', &cstr(tag)));
    out.extend(ready());
    out
}

fn error(code: &str) -> Vec<u8> {
    [
        msg(
            b'E',
            &[
                b"SERROR\0".as_slice(),
                format!("C{code}\0").as_bytes(),
                b"Mrelation does not exist\0\0",
            ]
            .concat(),
        ),
        ready(),
    ]
    .concat()
}

/// Parse, Bind (one text parameter), Describe, Execute, Sync.
fn extended(text: &str) -> Vec<u8> {
    [
        msg(b'P', &[cstr("s1"), cstr(text), vec![0, 0]].concat()),
        msg(b'B', b"\0s1\0\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x00"),
        msg(b'D', b"P\0"),
        msg(b'E', b"\0\x00\x00\x00\x00"),
        msg(b'S', b""),
    ]
    .concat()
}

fn extended_reply() -> Vec<u8> {
    [msg(b'1', b""), msg(b'2', b""), rows(1, "SELECT 1")].concat()
}

/// Client and server streams of whole sessions.
fn pg_sessions() -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (
            [
                startup("shop"),
                query("SELECT name FROM users WHERE id = 42"),
            ]
            .concat(),
            [greeting(), rows(3, "SELECT 3")].concat(),
        ),
        (
            [
                startup("shop"),
                extended("SELECT * FROM orders WHERE id = $1"),
            ]
            .concat(),
            [greeting(), extended_reply()].concat(),
        ),
        (
            [startup("db"), query("SELECT * FROM missing")].concat(),
            [greeting(), error("42P01")].concat(),
        ),
        (
            [
                startup("shop"),
                query("BEGIN"),
                query("INSERT INTO t VALUES (1)"),
                query("COMMIT"),
            ]
            .concat(),
            [
                greeting(),
                msg(b'C', &cstr("BEGIN")),
                ready(),
                msg(b'C', &cstr("INSERT 0 1")),
                ready(),
                msg(b'C', &cstr("COMMIT")),
                ready(),
            ]
            .concat(),
        ),
    ]
}

pub fn pg_conversation() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (client, server) in pg_sessions() {
        out.push(
            Script::new(0)
                .whole(REQUEST, &client)
                .whole(RESPONSE, &server)
                .0,
        );
        out.push(
            Script::new(0)
                .split(REQUEST, &client, 9)
                .split(RESPONSE, &server, 11)
                .close()
                .0,
        );
        out.push(
            Script::new(0)
                .whole(REQUEST, &client)
                .cut(RESPONSE, &server, server.len() / 2, GAP_100)
                .close()
                .0,
        );
    }
    // SSLRequest refused, then the session in the clear.
    out.push(
        Script::new(0)
            .whole(REQUEST, &ssl_request())
            .whole(RESPONSE, b"N")
            .whole(REQUEST, &[startup("shop"), query("SELECT 1")].concat())
            .whole(RESPONSE, &[greeting(), rows(1, "SELECT 1")].concat())
            .0,
    );
    // SSLRequest accepted: the rest is ciphertext.
    out.push(
        Script::new(0)
            .whole(REQUEST, &ssl_request())
            .whole(RESPONSE, b"S")
            .whole(REQUEST, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            .0,
    );
    // Joined mid-way (config 1, 2): a warm pool's next query, with and without its database.
    for config in [1, 2] {
        out.push(
            Script::new(config)
                .whole(REQUEST, &query("SELECT count(*) FROM orders"))
                .whole(RESPONSE, &rows(1, "SELECT 1"))
                .whole(REQUEST, &extended("UPDATE t SET a = $1"))
                .whole(RESPONSE, &extended_reply())
                .0,
        );
    }
    // A big result whose rows are past the capture; a pipeline whose first execution fails.
    let big_row = msg(
        b'D',
        &[b"\x00\x01\x00\x00\x10\x00".as_slice(), &[b'x'; 4096]].concat(),
    );
    out.push(
        Script::new(1)
            .whole(REQUEST, &query("SELECT blob FROM files"))
            .cut(RESPONSE, &big_row, 300, GAP_4K)
            .whole(RESPONSE, &[msg(b'C', &cstr("SELECT 1")), ready()].concat())
            .0,
    );
    out.push(
        Script::new(1)
            .whole(
                REQUEST,
                &[extended("SELECT 1/0"), extended("SELECT 2")].concat(),
            )
            .whole(
                RESPONSE,
                &[msg(b'1', b""), msg(b'2', b""), error("22012")].concat(),
            )
            .0,
    );
    out
}

pub fn pg_framer() -> Vec<Vec<u8>> {
    // Config bit 0: the backend's kinds; bit 1: the first message is untyped.
    let mut out = Vec::new();
    for (client, server) in pg_sessions() {
        out.push(Script::new(2).whole(REQUEST, &client).0);
        out.push(Script::new(2).split(REQUEST, &client, 3).0);
        out.push(Script::new(1).whole(RESPONSE, &server).0);
        out.push(Script::new(1).split(RESPONSE, &server, 6).0);
        out.push(
            Script::new(1)
                .cut(RESPONSE, &server, 12, GAP_100)
                .whole(RESPONSE, &ready())
                .0,
        );
    }
    // SSLRequest, refused: the framer expects the untyped StartupMessage again (a flush step).
    out.push(
        Script::new(2)
            .whole(REQUEST, &ssl_request())
            .flush(0)
            .whole(REQUEST, &startup("shop"))
            .0,
    );
    out
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
    }
    out
}

pub fn redis() -> Vec<Vec<u8>> {
    let exchanges: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (cmd(&["GET", "user:1"]), b"$-1\r\n".to_vec()),
        (
            cmd(&["SET", "user:1", "alice", "EX", "60"]),
            b"+OK\r\n".to_vec(),
        ),
        (cmd(&["GET", "user:1"]), b"$5\r\nalice\r\n".to_vec()),
        (
            cmd(&["MGET", "a", "b", "c"]),
            b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n3\r\n".to_vec(),
        ),
        (cmd(&["SELECT", "2"]), b"+OK\r\n".to_vec()),
        (cmd(&["INCR", "n"]), b":7\r\n".to_vec()),
        (
            cmd(&["LPUSH", "l", "x"]),
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n".to_vec(),
        ),
        (
            cmd(&["HELLO", "3"]),
            b"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n".to_vec(),
        ),
        (
            cmd(&["HGETALL", "h"]),
            b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n".to_vec(),
        ),
        (b"PING\r\n".to_vec(), b"+PONG\r\n".to_vec()),
        (cmd(&["SMEMBERS", "s"]), b"~2\r\n+a\r\n+b\r\n".to_vec()),
        (cmd(&["GET", "f"]), b",3.14\r\n".to_vec()),
        (cmd(&["EXISTS", "k"]), b"#t\r\n".to_vec()),
        (cmd(&["GET", "nil3"]), b"_\r\n".to_vec()),
    ];
    let mut out = Vec::new();
    for (command, reply) in &exchanges {
        out.push(
            Script::new(0)
                .whole(REQUEST, command)
                .whole(RESPONSE, reply)
                .0,
        );
        out.push(
            Script::new(0)
                .split(REQUEST, command, 3)
                .split(RESPONSE, reply, 2)
                .close()
                .0,
        );
    }
    // A pipeline answered at once; MULTI/EXEC.
    let (commands, replies): (Vec<Vec<u8>>, Vec<Vec<u8>>) = exchanges[..6].iter().cloned().unzip();
    out.push(
        Script::new(0)
            .whole(REQUEST, &commands.concat())
            .whole(RESPONSE, &replies.concat())
            .0,
    );
    out.push(
        Script::new(0)
            .whole(
                REQUEST,
                &[
                    cmd(&["MULTI"]),
                    cmd(&["INCR", "a"]),
                    cmd(&["GET", "b"]),
                    cmd(&["EXEC"]),
                ]
                .concat(),
            )
            .whole(
                RESPONSE,
                b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n$1\r\nb\r\n",
            )
            .0,
    );
    // Subscriber mode: pushes answer no command.
    out.push(
        Script::new(0)
            .whole(REQUEST, &cmd(&["SUBSCRIBE", "news"]))
            .whole(RESPONSE, b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n")
            .whole(
                RESPONSE,
                b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n",
            )
            .whole(
                RESPONSE,
                b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n",
            )
            .0,
    );
    // A value larger than the capture, skipped by count; then the next exchange.
    let big = [b"$4096\r\n".as_slice(), &[b'v'; 4096], b"\r\n"].concat();
    out.push(
        Script::new(0)
            .whole(REQUEST, &cmd(&["GET", "big"]))
            .cut(RESPONSE, &big, 200, GAP_4K)
            .whole(REQUEST, &cmd(&["GET", "user:1"]))
            .whole(RESPONSE, b"$5\r\nalice\r\n")
            .0,
    );
    // Joined mid-way (config 1): a reply first, then a command.
    out.push(
        Script::new(1)
            .whole(RESPONSE, b"+OK\r\n")
            .whole(REQUEST, &cmd(&["GET", "k"]))
            .whole(RESPONSE, b"$1\r\nv\r\n")
            .0,
    );
    out
}

/// A ring record of kind `kind`: its header, then `body` (the struct's fields after the header,
/// little-endian as the kernel writes them), zero-filled to `size`.
fn record(kind: EventKind, conn_id: u64, body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&4242u32.to_le_bytes());
    out.extend_from_slice(&4243u32.to_le_bytes());
    out.extend_from_slice(&7i32.to_le_bytes());
    out.extend_from_slice(&conn_id.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(size.max(out.len()), 0);
    out
}

fn sockaddr_v4(port: u16) -> [u8; 32] {
    let mut raw = [0u8; 32];
    raw[0..2].copy_from_slice(&2u16.to_ne_bytes());
    raw[2..4].copy_from_slice(&port.to_be_bytes());
    raw[4..8].copy_from_slice(&[127, 0, 0, 1]);
    raw
}

fn sockaddr_v6(port: u16) -> [u8; 32] {
    let mut raw = [0u8; 32];
    raw[0..2].copy_from_slice(&10u16.to_ne_bytes());
    raw[2..4].copy_from_slice(&port.to_be_bytes());
    raw[8..24].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]);
    raw
}

fn le(fields: &[&[u8]]) -> Vec<u8> {
    fields.concat()
}

pub fn ring_records() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let payload = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for (kind, direction) in [
        (EventKind::Data, 0u32),
        (EventKind::Data, 1),
        (EventKind::TlsData, 1),
    ] {
        let total = payload.len() as u32 + 10;
        let body = le(&[
            &1_000u64.to_le_bytes(),
            &2_000u64.to_le_bytes(),
            &total.to_le_bytes(),
            &(payload.len() as u32).to_le_bytes(),
            &direction.to_le_bytes(),
            &0u32.to_le_bytes(),
            &5u64.to_le_bytes(),
            &1u64.to_le_bytes(),
        ]);
        let mut data = record(kind, 99, &body, DATA_EVENT_HEADER_LEN);
        data.extend_from_slice(payload);
        out.push(data);
    }
    for (role, peer, local) in [
        (1u32, sockaddr_v4(8080), [0u8; 32]),
        (2, sockaddr_v6(5432), sockaddr_v4(40000)),
    ] {
        let local_len: u32 = if local[0] == 0 { 0 } else { 16 };
        let body = le(&[
            &3_000u64.to_le_bytes(),
            &role.to_le_bytes(),
            &16u32.to_le_bytes(),
            &peer,
            &local_len.to_le_bytes(),
            &0u32.to_le_bytes(),
            &local,
        ]);
        out.push(record(EventKind::Conn, 99, &body, size_of::<ConnEvent>()));
    }
    out.push(record(
        EventKind::ConnLocal,
        99,
        &sockaddr_v4(41000),
        size_of::<ConnLocalEvent>(),
    ));
    out.push(record(
        EventKind::Close,
        99,
        &4_000u64.to_le_bytes(),
        size_of::<CloseEvent>(),
    ));
    out.push(record(
        EventKind::Fork,
        0,
        &le(&[&5_000u64.to_le_bytes(), &4244u32.to_le_bytes()]),
        size_of::<ForkEvent>(),
    ));
    out.push(record(
        EventKind::Dup,
        99,
        &le(&[&6_000u64.to_le_bytes(), &3i32.to_le_bytes()]),
        size_of::<DupEvent>(),
    ));
    out.push(record(
        EventKind::GoCall,
        0,
        &le(&[
            &7_000u64.to_le_bytes(),
            &1u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &17u64.to_le_bytes(),
            &1u64.to_le_bytes(),
            &0xc000_1000u64.to_le_bytes(),
        ]),
        size_of::<GoCallEvent>(),
    ));
    // PQexec and PQprepare with their text, PQexecPrepared with a name only.
    let text = b"SELECT * FROM users WHERE id = 1";
    for (function, name) in [(1u32, &b""[..]), (3, b"s1"), (4, b"s1")] {
        let mut name_field = [0u8; 64];
        name_field[..name.len()].copy_from_slice(name);
        let body = le(&[
            &8_000u64.to_le_bytes(),
            &0x5555_0000u64.to_le_bytes(),
            &function.to_le_bytes(),
            &(text.len() as u32).to_le_bytes(),
            &0u32.to_le_bytes(),
            &(name.len() as u32).to_le_bytes(),
            &name_field,
        ]);
        let mut call = record(EventKind::LibpqCall, 0, &body, LIBPQ_CALL_HEADER_LEN);
        call.extend_from_slice(text);
        out.push(call);
    }
    let mut sqlstate = [0u8; 8];
    sqlstate[..5].copy_from_slice(b"42P01");
    let mut cmd_status = [0u8; 64];
    cmd_status[..8].copy_from_slice(b"SELECT 1");
    out.push(record(
        EventKind::LibpqResult,
        0,
        &le(&[
            &9_000u64.to_le_bytes(),
            &0x5555_0000u64.to_le_bytes(),
            &1u32.to_le_bytes(),
            &LIBPQ_HAS_RESULT.to_le_bytes(),
            &2u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &sqlstate,
            &cmd_status,
        ]),
        size_of::<LibpqResultEvent>(),
    ));
    out.push(record(
        EventKind::CpuSample,
        0,
        &le(&[
            &10_000u64.to_le_bytes(),
            &16u32.to_le_bytes(),
            &8u32.to_le_bytes(),
            &0x4000_1000u64.to_le_bytes(),
            &0x4000_2000u64.to_le_bytes(),
        ]),
        size_of::<CpuSampleEvent>(),
    ));
    // Cut records and an unknown kind.
    out.push(out[0][..DATA_EVENT_HEADER_LEN - 1].to_vec());
    out.push(out[3][..20].to_vec());
    out.push(record(EventKind::Data, 0, &[], 0)[..16].to_vec());
    let mut unknown = out[5].clone();
    unknown[0] = 0xee;
    out.push(unknown);
    out
}
