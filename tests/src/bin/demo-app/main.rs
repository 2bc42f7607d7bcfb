//! demo-app: a small shop for loupe to watch. `frontend` serves the routes users call and calls
//! `backend` for some of them; `backend` is the dependency, with a slow route. std only: a thread
//! per connection, HTTP/1.1 keep-alive, Content-Length responses (chunked on /api/stream).
//! Routes and timings are listed in docs/contracts.md.

mod crunch;
mod pg;

use std::{
    hash::{BuildHasher, Hasher},
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

struct Request {
    method: String,
    target: String,
    body: Vec<u8>,
    close: bool,
}

struct Response {
    status: u16,
    body: Vec<u8>,
    chunked: bool,
}

impl Response {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            body: body.into(),
            chunked: false,
        }
    }
}

#[derive(Clone)]
enum Role {
    Frontend {
        backend: String,
        /// `host:port/database` of a PostgreSQL reached with trust authentication.
        database: Option<(String, String)>,
    },
    Backend,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let role_name = args.get(1).map(String::as_str).unwrap_or("");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let port: u16 = flag("--port").and_then(|p| p.parse().ok()).unwrap_or(0);
    let role = match role_name {
        "frontend" => match flag("--backend") {
            Some(url) => Role::Frontend {
                backend: url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned(),
                database: flag("--database").and_then(|spec| {
                    let (addr, db) = spec.split_once('/')?;
                    Some((addr.to_owned(), db.to_owned()))
                }),
            },
            None => usage("frontend needs --backend http://127.0.0.1:PORT"),
        },
        "backend" => Role::Backend,
        _ => usage("expected `frontend` or `backend`"),
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|err| {
        eprintln!("demo-app: error: cannot listen on 127.0.0.1:{port}: {err}");
        std::process::exit(1)
    });
    let addr = listener.local_addr().expect("bound");
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    let work_rounds = calibrate_work();
    for stream in listener.incoming().flatten() {
        let role = role.clone();
        std::thread::spawn(move || serve(stream, &role, work_rounds));
    }
}

fn usage(problem: &str) -> ! {
    eprintln!("demo-app: error: {problem}");
    eprintln!(
        "usage: demo-app frontend --port P --backend http://127.0.0.1:Q | demo-app backend --port Q"
    );
    std::process::exit(2)
}

fn serve(stream: TcpStream, role: &Role, work_rounds: u64) {
    // As real HTTP servers do: a response written in pieces (chunked) must not wait on Nagle.
    let _ = stream.set_nodelay(true);
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut writer = writer;
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(_) => {
                let _ = write_response(&mut writer, &Response::new(400, "bad request\n"), true);
                return;
            }
        };
        let response = match role {
            Role::Frontend { backend, database } => {
                frontend(&request, backend, database.as_ref(), work_rounds)
            }
            Role::Backend => backend_route(&request),
        };
        if write_response(&mut writer, &response, request.close).is_err() || request.close {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(std::io::Error::other("bad request line"));
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut length = 0usize;
    let mut close = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(std::io::Error::other("eof in headers"));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .parse()
                    .map_err(|_| std::io::Error::other("bad length"))?;
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
    }
    if length > 1 << 20 {
        return Err(std::io::Error::other("body too large"));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        target,
        body,
        close,
    }))
}

fn write_response(writer: &mut TcpStream, response: &Response, close: bool) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Unknown",
    };
    let connection = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nConnection: {connection}\r\n",
        response.status
    );
    if response.chunked {
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        writer.write_all(out.as_bytes())?;
        for piece in response.body.chunks(response.body.len().div_ceil(3).max(1)) {
            writer.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
            writer.write_all(piece)?;
            writer.write_all(b"\r\n")?;
        }
        writer.write_all(b"0\r\n\r\n")
    } else {
        out.push_str(&format!("Content-Length: {}\r\n\r\n", response.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&response.body);
        writer.write_all(&bytes)
    }
}

fn path_and_query(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

fn frontend(
    request: &Request,
    backend: &str,
    database: Option<&(String, String)>,
    work_rounds: u64,
) -> Response {
    let (path, query) = path_and_query(&request.target);
    match (request.method.as_str(), path) {
        ("GET", "/health") => Response::new(200, "ok"),
        ("GET", "/api/slow") => {
            std::thread::sleep(Duration::from_millis(1200));
            Response::new(200, r#"{"slow":true}"#)
        }
        ("GET", "/api/ledger/hold") => {
            // Holds the ledger's lock for `ms=` milliseconds (asleep while holding it).
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(1000);
            let _ledger = LEDGER.lock().unwrap_or_else(|e| e.into_inner());
            std::thread::sleep(Duration::from_millis(ms));
            Response::new(200, r#"{"held":true}"#)
        }
        ("GET", "/api/ledger/reserve") => {
            let entries = reserve_ledger();
            Response::new(200, format!(r#"{{"reserved":{entries}}}"#))
        }
        // `?user=N` (and `&delay=MS`, the backend's wait) goes on to the backend as it came.
        ("GET", "/api/checkout") => {
            let query = if query.is_empty() { "user=0" } else { query };
            proxy(backend, &format!("/score?{query}"), 200)
        }
        ("GET", "/api/checkout/slow") => proxy(backend, "/score/slow", 200),
        ("GET", "/api/missing") => proxy(backend, "/missing", 502),
        ("GET", "/api/fail") => Response::new(500, r#"{"error":"boom"}"#),
        ("GET", "/api/work") => {
            let checksum = burn(work_rounds);
            Response::new(200, format!(r#"{{"work":{checksum}}}"#))
        }
        ("GET", "/api/stream") => Response {
            status: 200,
            body: br#"{"items":["one","two","three","four","five","six"]}"#.to_vec(),
            chunked: true,
        },
        ("POST", "/api/orders") => Response::new(
            201,
            format!(r#"{{"id":1001,"bytes":{}}}"#, request.body.len()),
        ),
        ("GET", "/api/crunch") => {
            // CPU-bound: `ms=` milliseconds in crunch_numbers and libcrypto's SHA256, or a fixed
            // amount of work, `rounds=` calls of crunch_numbers (for measuring overhead). Other
            // parameters after it (a test's request id) are ignored.
            let first = query.split('&').next().unwrap_or("");
            let checksum = match first.split_once('=') {
                Some(("rounds", n)) => crunch::rounds(n.parse().unwrap_or(1)),
                Some(("ms", ms)) => crunch::crunch(Duration::from_millis(ms.parse().unwrap_or(0))),
                _ => crunch::crunch(Duration::from_millis(1500)),
            };
            Response::new(200, format!(r#"{{"checksum":{checksum}}}"#))
        }
        ("GET", "/api/report") => {
            // Two anti-patterns for loupe to name: one query per order (N+1) instead of one for
            // all, and the same backend call twice (repeated_call).
            let Some((addr, db)) = database else {
                return Response::new(503, r#"{"error":"no database configured"}"#);
            };
            let mut rows = 0;
            for id in 1..=8 {
                let sql = format!("SELECT id, total FROM orders WHERE id = {id}");
                if let Ok(outcome) = pg::simple_query(addr, db, &sql) {
                    rows += outcome.rows;
                }
            }
            let _ = call(backend, "/score?user=7");
            match call(backend, "/score?user=7") {
                Ok((200, _)) => Response::new(200, format!(r#"{{"orders":{rows}}}"#)),
                _ => Response::new(502, r#"{"error":"backend"}"#),
            }
        }
        ("GET", p) if p.starts_with("/api/orders/") => {
            let user = &p["/api/orders/".len()..];
            let Some((addr, db)) = database else {
                return Response::new(503, r#"{"error":"no database configured"}"#);
            };
            if user.is_empty() || !user.bytes().all(|b| b.is_ascii_digit()) {
                return Response::new(404, r#"{"error":"no such user"}"#);
            }
            let sql = format!("SELECT id, total FROM orders WHERE user_id = {user}");
            match pg::simple_query(addr, db, &sql) {
                Ok(pg::Outcome { rows, error: None }) => {
                    Response::new(200, format!(r#"{{"user":{user},"orders":{rows}}}"#))
                }
                Ok(pg::Outcome {
                    error: Some(code), ..
                }) => Response::new(500, format!(r#"{{"sqlstate":"{code}"}}"#)),
                Err(err) => Response::new(502, format!(r#"{{"database_error":"{err}"}}"#)),
            }
        }
        ("GET", p) if p.starts_with("/api/users/") => {
            let id = &p["/api/users/".len()..];
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
                Response::new(200, format!(r#"{{"id":{id},"name":"user {id}"}}"#))
            } else {
                Response::new(404, r#"{"error":"no such user"}"#)
            }
        }
        _ => Response::new(404, r#"{"error":"not found"}"#),
    }
}

/// The shop's ledger: one lock every reservation takes (and /api/ledger/hold keeps).
static LEDGER: std::sync::Mutex<u64> = std::sync::Mutex::new(0);

/// Takes the ledger's lock to add an entry: blocks while another request holds it.
#[inline(never)]
fn reserve_ledger() -> u64 {
    let mut ledger = LEDGER.lock().unwrap_or_else(|e| e.into_inner());
    *ledger += 1;
    std::hint::black_box(*ledger)
}

/// Calls the backend; on success answers `ok_status` with its body, else 502.
fn proxy(backend: &str, target: &str, ok_status: u16) -> Response {
    match call(backend, target) {
        Ok((200, body)) => Response::new(ok_status, body),
        Ok((status, _)) => Response::new(502, format!(r#"{{"backend_status":{status}}}"#)),
        Err(err) => Response::new(502, format!(r#"{{"backend_error":"{err}"}}"#)),
    }
}

/// One outbound call: a new connection, `Connection: close`, one write.
fn call(backend: &str, target: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(backend)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: {backend}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, body))
}

fn backend_route(request: &Request) -> Response {
    let (path, query) = path_and_query(&request.target);
    match path {
        "/score" => {
            let delay = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("delay="))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(5);
            std::thread::sleep(Duration::from_millis(delay));
            Response::new(200, format!(r#"{{"score":42,"for":"{query}"}}"#))
        }
        "/score/slow" => {
            std::thread::sleep(Duration::from_millis(2100));
            Response::new(200, r#"{"score":7}"#)
        }
        _ => Response::new(404, r#"{"error":"not found"}"#),
    }
}

/// Real CPU work: `rounds` rounds of hashing.
fn burn(rounds: u64) -> u64 {
    let state = std::hash::RandomState::new();
    let mut value = 0u64;
    for i in 0..rounds {
        let mut hasher = state.build_hasher();
        hasher.write_u64(value ^ i);
        value = hasher.finish();
    }
    value
}

/// Rounds of [`burn`] that take about 1 ms on this machine.
fn calibrate_work() -> u64 {
    let mut rounds = 1_000;
    loop {
        let start = Instant::now();
        std::hint::black_box(burn(rounds));
        let took = start.elapsed();
        if took >= Duration::from_millis(20) {
            return (rounds as f64 * 1e-3 / took.as_secs_f64()).max(1.0) as u64;
        }
        rounds *= 2;
    }
}
