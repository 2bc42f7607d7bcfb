//! A real HTTP/1.1 client over a std TcpStream, timing each request as a user would see it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// One response and the wall time around it (write start to last byte read).
#[derive(Debug)]
pub struct Timed {
    pub status: u16,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

/// A keep-alive connection.
pub struct Client {
    reader: BufReader<TcpStream>,
    addr: String,
}

impl Client {
    pub fn connect(addr: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        Ok(Self {
            reader: BufReader::new(stream),
            addr: addr.to_owned(),
        })
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Timed> {
        self.request("GET", path, b"")
    }

    /// GET `path`, which must answer 200: the test fails with the body otherwise.
    pub fn get_ok(&mut self, path: &str) -> Timed {
        self.get_ok_with(path, &[])
    }

    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<Timed> {
        self.request_with(method, path, &[], body)
    }

    /// GET `path` with extra `headers` (e.g. a `traceparent`), which must answer 200.
    pub fn get_ok_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Timed {
        let response = self
            .request_with("GET", path, headers, b"")
            .unwrap_or_else(|err| panic!("GET {path}: {err}"));
        assert_eq!(
            response.status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        response
    }

    /// A request with extra `headers`.
    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Timed> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: loupe-tests\r\n",
            self.addr
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        let started = Instant::now();
        self.reader.get_mut().write_all(&bytes)?;
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line)?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line `{status_line}`")))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.contains("chunked")
                {
                    chunked = true;
                }
            }
        }
        let body = if chunked {
            self.read_chunked()?
        } else if method == "HEAD" {
            Vec::new()
        } else {
            let mut body = vec![0; length.unwrap_or(0)];
            self.reader.read_exact(&mut body)?;
            body
        };
        Ok(Timed {
            status,
            body,
            elapsed: started.elapsed(),
        })
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            self.reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk)?;
            if size == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
}

/// One request on a fresh connection.
pub fn get(addr: &str, path: &str) -> Timed {
    Client::connect(addr)
        .and_then(|mut c| c.get(path))
        .unwrap_or_else(|err| panic!("GET http://{addr}{path}: {err}"))
}

/// Each of `paths`, one at a time on one keep-alive connection, each answered 200: a test that
/// makes requests this way knows each query can only belong to the request in flight.
pub fn get_each<'a>(addr: &str, paths: impl IntoIterator<Item = &'a str>) {
    let mut client = Client::connect(addr).unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
    for path in paths {
        client.get_ok(path);
    }
}

/// `clients` keep-alive connections to `addr` at once, each sending `per_client` requests: the
/// n-th request of client c is `request(c, n)`, a path (which must answer 200) and what the test
/// keeps of it. Returns what was kept, every client's in order.
pub fn concurrently<T: Send>(
    addr: &str,
    clients: usize,
    per_client: usize,
    request: impl Fn(usize, usize) -> (String, T) + Sync,
) -> Vec<T> {
    let request = &request;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                scope.spawn(move || {
                    let mut client = Client::connect(addr)
                        .unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
                    (0..per_client)
                        .map(|n| {
                            let (path, kept) = request(c, n);
                            client.get_ok(&path);
                            kept
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("client thread"))
            .collect()
    })
}
