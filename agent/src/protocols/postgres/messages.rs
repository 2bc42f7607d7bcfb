//! Bodies of the messages loupe reads. Every parser takes a possibly truncated body and returns
//! what it could read, never panicking.

/// A NUL-terminated string at the start of `body`, and what follows it.
pub fn cstr(body: &[u8]) -> (String, &[u8]) {
    match body.iter().position(|&b| b == 0) {
        Some(end) => (
            String::from_utf8_lossy(&body[..end]).into_owned(),
            &body[end + 1..],
        ),
        None => (String::from_utf8_lossy(body).into_owned(), &[]),
    }
}

/// An untyped first message: what the client asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// StartupMessage: the database (the user's name when none is given).
    Startup {
        database: Option<String>,
    },
    /// SSLRequest or GSSENCRequest: the server answers with one unframed byte.
    Encryption,
    Other,
}

pub fn opening(body: &[u8]) -> Opening {
    let Some(code) = body.get(0..4).map(super::be32) else {
        return Opening::Other;
    };
    match code {
        super::SSL_REQUEST | super::GSSENC_REQUEST => Opening::Encryption,
        super::PROTOCOL_V3 => {
            let mut rest = &body[4..];
            let (mut database, mut user) = (None, None);
            while !rest.is_empty() && rest[0] != 0 {
                let (key, after) = cstr(rest);
                let (value, after) = cstr(after);
                match key.as_str() {
                    "database" => database = Some(value),
                    "user" => user = Some(value),
                    _ => {}
                }
                rest = after;
            }
            Opening::Startup {
                database: database.or(user),
            }
        }
        _ => Opening::Other,
    }
}

/// Parse: (statement name, query text).
pub fn parse(body: &[u8]) -> (String, String) {
    let (name, rest) = cstr(body);
    let (query, _) = cstr(rest);
    (name, query)
}

/// Bind: (portal name, statement name, the rest: parameter formats, values, result formats).
pub fn bind(body: &[u8]) -> (String, String, &[u8]) {
    let (portal, rest) = cstr(body);
    let (statement, values) = cstr(rest);
    (portal, statement, values)
}

/// The rows a CommandComplete tag reports ("SELECT 3", "INSERT 0 1", "UPDATE 2"), if any.
pub fn tag_rows(tag: &str) -> Option<u64> {
    let mut words = tag.split_whitespace();
    let command = words.next()?;
    let last = words.next_back()?;
    match command {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY" => {
            last.parse().ok()
        }
        _ => None,
    }
}

/// The SQLSTATE (field `C`) of an ErrorResponse. The message is not kept: it can quote data.
pub fn sqlstate(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, after) = cstr(after);
        if field == b'C' {
            return Some(value);
        }
        rest = after;
    }
    None
}

/// Whether a prepared statement's name carries a digest of its text (pgx's
/// `stmtcache_<sha256 hex>`): such a name means the same statement on every connection. Other
/// names (`__asyncpg_stmt_1__`, `s1`) are counters, meaningful only on their own connection.
pub fn embeds_digest(name: &str) -> bool {
    let mut run = 0;
    for b in name.bytes() {
        if b.is_ascii_hexdigit() {
            run += 1;
            if run >= 16 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_gives_the_database_or_else_the_user() {
        let mut body = super::super::PROTOCOL_V3.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0app\0database\0shop\0\0");
        assert_eq!(
            opening(&body),
            Opening::Startup {
                database: Some("shop".into())
            }
        );
        let mut body = super::super::PROTOCOL_V3.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0app\0\0");
        assert_eq!(
            opening(&body),
            Opening::Startup {
                database: Some("app".into())
            }
        );
        assert_eq!(
            opening(&super::super::SSL_REQUEST.to_be_bytes()),
            Opening::Encryption
        );
    }

    #[test]
    fn tags_report_rows_for_the_commands_that_have_them() {
        assert_eq!(tag_rows("SELECT 3"), Some(3));
        assert_eq!(tag_rows("INSERT 0 12"), Some(12));
        assert_eq!(tag_rows("UPDATE 0"), Some(0));
        assert_eq!(tag_rows("BEGIN"), None);
        assert_eq!(tag_rows("CREATE TABLE"), None);
    }

    #[test]
    fn error_response_gives_its_sqlstate_only() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0\0";
        assert_eq!(sqlstate(body), Some("42P01".into()));
        assert_eq!(sqlstate(b"SERROR\0"), None);
        assert_eq!(sqlstate(b""), None);
    }

    #[test]
    fn a_digest_in_a_name_makes_it_the_same_statement_everywhere() {
        assert!(embeds_digest(
            "stmtcache_8c5a3e2b9b8f4f0e1d2c3b4a59687766554433221100ffee"
        ));
        assert!(!embeds_digest("__asyncpg_stmt_1a__"));
        assert!(!embeds_digest("s1"));
        assert!(!embeds_digest(""));
    }
}
