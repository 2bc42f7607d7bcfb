//! Just enough of PostgreSQL's wire protocol to run one simple query with trust authentication:
//! the demo's database client uses no libpq, like pg8000 or pgx.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

pub struct Outcome {
    pub rows: usize,
    /// SQLSTATE of an ErrorResponse.
    pub error: Option<String>,
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn read_message(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    stream.read_exact(&mut body)?;
    Ok((header[0], body))
}

fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|code| String::from_utf8_lossy(code).into_owned())
        .unwrap_or_default()
}

/// Reads until ReadyForQuery; counts DataRows and keeps the first error's SQLSTATE.
fn until_ready(stream: &mut TcpStream) -> std::io::Result<Outcome> {
    let mut outcome = Outcome {
        rows: 0,
        error: None,
    };
    loop {
        let (kind, body) = read_message(stream)?;
        match kind {
            b'D' => outcome.rows += 1,
            b'E' => outcome.error = outcome.error.or(Some(sqlstate(&body))),
            b'R' if body.get(0..4) != Some(&[0, 0, 0, 0]) => {
                return Err(std::io::Error::other(
                    "only trust authentication is supported",
                ));
            }
            b'Z' => return Ok(outcome),
            _ => {}
        }
    }
}

/// Connects to `addr` as `postgres`, runs `sql` with the simple query protocol, disconnects.
pub fn simple_query(addr: &str, database: &str, sql: &str) -> std::io::Result<Outcome> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _ = stream.set_nodelay(true);
    let mut startup = 196_608u32.to_be_bytes().to_vec();
    startup.extend_from_slice(format!("user\0postgres\0database\0{database}\0\0").as_bytes());
    let mut first = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    first.extend_from_slice(&startup);
    stream.write_all(&first)?;
    let ready = until_ready(&mut stream)?;
    if let Some(code) = ready.error {
        return Err(std::io::Error::other(format!(
            "connection refused by the server: {code}"
        )));
    }
    let mut query = sql.as_bytes().to_vec();
    query.push(0);
    stream.write_all(&message(b'Q', &query))?;
    let outcome = until_ready(&mut stream)?;
    let _ = stream.write_all(&message(b'X', b""));
    Ok(outcome)
}
