//! HTTP/1 in the shapes production sends, from raw TCP clients on loopback: a request with 70
//! headers, a first write shorter than the method, a request a byte at a time, 1,000 pipelined
//! requests in one write (nginx), 1,000 `100 Continue` in one write, `103 Early Hints`, a 1 MiB
//! response head and `101 Switching Protocols` (a raw-socket server). Every request carries a
//! unique id in its path, checked against its span in Jaeger; what loupe could not see is in the
//! summary counters, exactly.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use loupe_tests::{
    jaeger::{Jaeger, Span},
    procs::{Loupe, Nginx, RawHttp, args, otlp_args},
    require_root,
};

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Reads until `buf` holds `count` final responses (`HTTP/1.1 2xx`) and `tail` after the last
/// one's head ends.
fn read_finals(stream: &mut TcpStream, count: usize, body: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = vec![0; 1 << 16];
    loop {
        let finals = buf
            .windows(10)
            .filter(|w| w.starts_with(b"HTTP/1.1 2"))
            .count();
        if finals >= count {
            let last = buf
                .windows(10)
                .rposition(|w| w.starts_with(b"HTTP/1.1 2"))
                .unwrap();
            if let Some(end) = buf[last..].windows(4).position(|w| w == b"\r\n\r\n")
                && buf.len() >= last + end + 4 + body
            {
                return buf;
            }
        }
        let n = stream.read(&mut chunk).expect("read a response");
        assert!(n > 0, "the server closed after {finals} responses");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: loupe-test\r\n\r\n").into_bytes()
}

/// One request on `stream`, its `ok` answered.
fn exchange(stream: &mut TcpStream, request: &[u8]) {
    stream.write_all(request).expect("write");
    read_finals(stream, 1, 3);
}

/// Server spans by `url.path`: how many of each.
fn by_path(spans: &[Span]) -> HashMap<String, Vec<&Span>> {
    let mut paths: HashMap<String, Vec<&Span>> = HashMap::new();
    for span in spans.iter().filter(|s| s.kind() == "server") {
        if let Some(path) = span.str_tag("url.path") {
            paths.entry(path.to_owned()).or_default().push(span);
        }
    }
    paths
}

#[test]
fn nginx_requests_of_every_shape_are_spans_or_counted_unseen() {
    require_root();
    let jaeger = Jaeger::start();
    let nginx = Nginx::start();
    let loupe = Loupe::attach(&args(&[
        "--pid",
        &nginx.master_pid().to_string(),
        "--otlp-endpoint",
        &jaeger.grpc_endpoint(),
        "--service-name",
        "hardening-nginx",
    ]));
    let mut expected: Vec<String> = Vec::new();

    // 70 headers, then five more requests on the same keep-alive connection.
    let mut stream = connect(&nginx.addr);
    let mut many = b"GET /many/0 HTTP/1.1\r\nHost: loupe-test\r\n".to_vec();
    for i in 0..70 {
        many.extend_from_slice(format!("X-Header-{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    exchange(&mut stream, &many);
    expected.push("/many/0".into());
    for id in 1..6 {
        exchange(&mut stream, &get(&format!("/many/{id}")));
        expected.push(format!("/many/{id}"));
    }

    // A first write shorter than the method. The pause lets nginx read the two bytes alone,
    // as it would from a slow client.
    let mut stream = connect(&nginx.addr);
    let split = get("/split/0");
    stream.write_all(&split[..2]).expect("write");
    std::thread::sleep(Duration::from_millis(200));
    exchange(&mut stream, &split[2..]);
    exchange(&mut stream, &get("/split/1"));
    expected.extend(["/split/0".into(), "/split/1".into()]);

    // One byte at a time.
    let mut stream = connect(&nginx.addr);
    let bytes = get("/byte/0");
    for (i, byte) in bytes.iter().enumerate() {
        stream.write_all(std::slice::from_ref(byte)).expect("write");
        if i + 1 < bytes.len() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    read_finals(&mut stream, 1, 3);
    expected.push("/byte/0".into());

    // 1,000 pipelined requests in one write: nginx reads them in a few large reads, of which
    // loupe sees the first 1,024 bytes each.
    let mut stream = connect(&nginx.addr);
    let pipelined: Vec<u8> = (0..1_000)
        .flat_map(|id| get(&format!("/pipe/{id}")))
        .collect();
    stream.write_all(&pipelined).expect("write");
    read_finals(&mut stream, 1_000, 3);
    drop(stream);

    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    eprintln!("{}", finished.summary_line());
    let summary = finished.summary();
    let unseen = summary["requests_unseen"];
    assert!(unseen < 1_000, "{}", finished.summary_line());
    let total = expected.len() + 1_000 - unseen as usize;
    let spans = jaeger.wait_for_spans("hardening-nginx", total, |s| s.kind() == "server");
    let paths = by_path(&spans);
    for path in &expected {
        let found = paths.get(path).map_or(0, Vec::len);
        assert_eq!(found, 1, "{path}: {}", finished.summary_line());
        assert_eq!(
            paths[path][0].int_tag("http.response.status_code"),
            Some(200),
            "{path}"
        );
    }
    let piped: Vec<&String> = paths.keys().filter(|p| p.starts_with("/pipe/")).collect();
    eprintln!("pipelined: {} spans, {unseen} unseen", piped.len());
    assert!(
        paths
            .iter()
            .filter(|(p, _)| p.starts_with("/pipe/"))
            .all(|(_, s)| s.len() == 1),
        "each pipelined request at most once"
    );
    assert_eq!(
        piped.len() as u64 + unseen,
        1_000,
        "every pipelined request is a span or counted unseen: {}",
        finished.summary_line()
    );
    assert!(
        piped.len() >= 100,
        "the pipelined requests loupe saw are spans: {} ({})",
        piped.len(),
        finished.summary_line()
    );
    assert_eq!(summary["parse_errors"], 0, "{}", finished.summary_line());
    assert_eq!(
        summary["requests_abandoned"],
        0,
        "{}",
        finished.summary_line()
    );
}

#[test]
fn interim_responses_a_big_head_and_an_upgrade_are_read_as_they_are() {
    require_root();
    let jaeger = Jaeger::start();
    let server = RawHttp::start();
    let loupe = Loupe::attach(&otlp_args(
        server.pid(),
        &jaeger.grpc_endpoint(),
        "hardening-raw",
        &[],
    ));

    let mut stream = connect(&server.addr);
    // 1,000 `100 Continue` in one write, then the final response.
    stream.write_all(&get("/continues/0")).expect("write");
    read_finals(&mut stream, 1, 10);
    exchange(&mut stream, &get("/after/0"));
    // `103 Early Hints`, then the final response, in one write.
    stream.write_all(&get("/hints/0")).expect("write");
    read_finals(&mut stream, 1, 10);
    // A 1 MiB head: 10 bytes of body.
    stream.write_all(&get("/big-head/0")).expect("write");
    read_finals(&mut stream, 1, 10);
    exchange(&mut stream, &get("/after/1"));
    drop(stream);

    // 101: what follows is not HTTP.
    let mut stream = connect(&server.addr);
    stream.write_all(&get("/upgrade/0")).expect("write");
    let mut buf = [0; 4096];
    let n = stream.read(&mut buf).expect("read the 101");
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    for frame in [b"\x00\x01 not http".as_slice(), b"GET lookalike\r\n\r\n"] {
        stream.write_all(frame).expect("write");
        let mut echoed = vec![0; frame.len()];
        stream.read_exact(&mut echoed).expect("echo");
    }
    drop(stream);

    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let spans = jaeger.wait_for_spans("hardening-raw", 6, |s| s.kind() == "server");
    let paths = by_path(&spans);
    let status_and_body = |path: &str| {
        let found = paths
            .get(path)
            .unwrap_or_else(|| panic!("no span for {path}: {}", finished.summary_line()));
        assert_eq!(found.len(), 1, "{path}");
        (
            found[0].int_tag("http.response.status_code"),
            found[0].int_tag("http.response.body.size"),
        )
    };
    assert_eq!(status_and_body("/continues/0"), (Some(200), Some(10)));
    assert_eq!(status_and_body("/hints/0"), (Some(200), Some(10)));
    assert_eq!(
        status_and_body("/big-head/0"),
        (Some(200), Some(10)),
        "the head is not body"
    );
    assert_eq!(status_and_body("/upgrade/0").0, Some(101));
    assert_eq!(status_and_body("/after/0").0, Some(200));
    assert_eq!(status_and_body("/after/1").0, Some(200));
    assert_eq!(
        paths.len(),
        6,
        "nothing after the upgrade is HTTP: {:?}",
        paths.keys()
    );
    let summary = finished.summary();
    assert_eq!(summary["parse_errors"], 0, "{}", finished.summary_line());
    assert_eq!(
        summary["requests_abandoned"],
        0,
        "{}",
        finished.summary_line()
    );
}
