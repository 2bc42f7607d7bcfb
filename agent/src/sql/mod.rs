//! SQL statements made safe to export and easy to group: literals replaced by placeholders,
//! a fingerprint that is the same for the same statement with other literals, the operation and
//! the table. PostgreSQL's own parser (pg_query) does it; a statement it rejects still gets a
//! conservative tokenizer's normalization, so a literal never leaks because a query was unusual.

mod fallback;

use std::num::NonZeroUsize;

use lru::LruCache;
use rustc_hash::FxBuildHasher;

use crate::spans::model::Text;

/// What loupe exports about a statement. Its texts are shared: every span of the statement
/// carries them without a copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statement {
    /// The text with every literal replaced by a placeholder ($1, $2, ... or ?).
    pub normalized: Text,
    /// 16 hex digits, equal for statements that differ only in their literals.
    pub fingerprint: Text,
    /// SELECT, INSERT, UPDATE, DELETE, BEGIN, ... (upper case), when known.
    pub operation: Option<Text>,
    /// The first table the statement names, when known.
    pub table: Option<Text>,
    /// Its span's name, where the statement alone says it: `SELECT users`, or `BEGIN`.
    pub span_name: Option<Text>,
}

fn shared(text: String) -> Text {
    Text::Shared(text.into())
}

impl Statement {
    pub fn new(
        normalized: String,
        fingerprint: String,
        operation: Option<String>,
        table: Option<String>,
    ) -> Self {
        let span_name = match (&operation, &table) {
            (Some(operation), Some(table)) => Some(shared(format!("{operation} {table}"))),
            (Some(operation), None) => Some(shared(operation.clone())),
            _ => None,
        };
        Self {
            normalized: shared(normalized),
            fingerprint: shared(fingerprint),
            operation: operation.map(shared),
            table: table.map(shared),
            span_name,
        }
    }

    /// A statement known only by the name it was prepared under (before loupe attached, so its
    /// Parse went unseen): the name stands for it, and so does the fingerprint, which is the
    /// same wherever the name means the same statement: `scope` is where it does (one
    /// connection, for names that are counters), None where the name itself says (a digest).
    pub fn prepared(name: &str, scope: Option<&str>) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = rustc_hash::FxHasher::default();
        ("prepared", name, scope).hash(&mut hasher);
        Self::new(
            String::new(),
            format!("{:016x}", hasher.finish()),
            None,
            None,
        )
    }
}

/// Normalizes a statement.
pub fn analyze(text: &str) -> Statement {
    let operation = first_keyword(text);
    match (pg_query::normalize(text), pg_query::fingerprint(text, 0, 0)) {
        (Ok(normalized), Ok(fingerprint)) => {
            let table = pg_query::parse(text, 0)
                .ok()
                .and_then(|parsed| parsed.tables().into_iter().next());
            Statement::new(
                without_terminator(&normalized),
                fingerprint.hex,
                operation,
                table,
            )
        }
        _ => {
            let normalized = without_terminator(&fallback::normalize(text));
            let fingerprint = fallback::fingerprint(&normalized);
            Statement::new(
                normalized,
                fingerprint,
                operation,
                fallback::first_table(text),
            )
        }
    }
}

/// "SELECT 1;" and "SELECT 1" are one statement: the final semicolon is dropped.
fn without_terminator(text: &str) -> String {
    text.trim_end().trim_end_matches(';').trim_end().to_owned()
}

fn first_keyword(text: &str) -> Option<String> {
    let word: String = text
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    (!word.is_empty()).then(|| word.to_ascii_uppercase())
}

/// [`analyze`] with a bounded memo: applications send the same statements over and over, and
/// the parser costs tens of microseconds. Statements that differ only in their literals (pgbench's
/// `WHERE aid = 4711`, any client that inlines values) share an entry: the key is the text with
/// literals blanked by the cheap fallback scrubber. Text with `$` placeholders is its own key, as
/// `$1` and `$2` must not be confused. Past `capacity` the statement least recently seen is
/// forgotten (it is analyzed again when it comes back): a statement is never exported unanalyzed.
pub struct StatementCache {
    entries: LruCache<String, Statement, FxBuildHasher>,
}

impl StatementCache {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: LruCache::with_hasher(capacity, FxBuildHasher),
        }
    }

    /// The statement of a query whose text may be unknown (an empty statement then).
    pub fn analyze_text(&mut self, text: Option<&str>) -> Statement {
        text.map(|text| self.analyze(text)).unwrap_or_default()
    }

    pub fn analyze(&mut self, text: &str) -> Statement {
        let key = if text.contains('$') {
            // Its own key: looked up as it is, copied only when it is new.
            if let Some(statement) = self.entries.get(text) {
                return statement.clone();
            }
            text.to_owned()
        } else {
            fallback::normalize(text)
        };
        if let Some(statement) = self.entries.get(key.as_str()) {
            return statement.clone();
        }
        let statement = analyze(text);
        self.entries.put(key, statement.clone());
        statement
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders_and_fingerprints_ignore_them() {
        let a = analyze("SELECT name FROM users WHERE id = 42 AND email = 'ada@example.com'");
        let b = analyze("SELECT name FROM users WHERE id = 7 AND email = 'bob@example.com'");
        assert_eq!(
            a.normalized,
            "SELECT name FROM users WHERE id = $1 AND email = $2"
        );
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.operation.as_deref(), Some("SELECT"));
        assert_eq!(a.table.as_deref(), Some("users"));
        assert_ne!(
            a.fingerprint,
            analyze("SELECT name FROM orders WHERE id = 1").fingerprint
        );
    }

    #[test]
    fn statements_the_parser_rejects_are_still_scrubbed() {
        let s = analyze("SELEC secret FROM users WHERE token = 'abc123' AND n = 99");
        assert!(
            !s.normalized.contains("abc123") && !s.normalized.contains("99"),
            "{}",
            s.normalized
        );
        assert_eq!(s.fingerprint.len(), 16);
        assert_eq!(s.table.as_deref(), Some("users"));
    }

    #[test]
    fn already_parameterized_statements_keep_their_placeholders() {
        let s = analyze("INSERT INTO orders (user_id, total) VALUES ($1, $2)");
        assert_eq!(
            s.normalized,
            "INSERT INTO orders (user_id, total) VALUES ($1, $2)"
        );
        assert_eq!(s.operation.as_deref(), Some("INSERT"));
        assert_eq!(s.table.as_deref(), Some("orders"));
    }

    #[test]
    fn a_final_semicolon_is_not_part_of_the_statement() {
        let a = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 5;\n");
        let b = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 6");
        assert_eq!(
            a.normalized,
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        );
        assert_eq!((a.normalized, a.fingerprint), (b.normalized, b.fingerprint));
        assert_eq!(analyze("SELEC 1 ;").normalized, "SELEC ?");
    }

    #[test]
    fn a_prepared_name_is_one_statement_within_its_scope() {
        let here = Statement::prepared("__asyncpg_stmt_1__", Some("7:1"));
        assert_eq!(here.fingerprint.len(), 16);
        assert_eq!(here, Statement::prepared("__asyncpg_stmt_1__", Some("7:1")));
        assert_ne!(
            here.fingerprint,
            Statement::prepared("__asyncpg_stmt_1__", Some("7:2")).fingerprint,
            "the same counter on another connection is another statement"
        );
        assert_ne!(
            here.fingerprint,
            Statement::prepared("__asyncpg_stmt_2__", Some("7:1")).fingerprint
        );
        assert!(here.operation.is_none() && here.normalized.is_empty());
    }

    #[test]
    fn the_cache_returns_what_the_parser_would() {
        let mut cache = StatementCache::new(2);
        for text in [
            "SELECT 1",
            "SELECT 2",
            "SELECT 3",
            "SELECT 1",
            "SELECT * FROM t WHERE a = $1 AND b = $2",
            "SELECT * FROM t WHERE a = $2 AND b = $1",
            "SELECT * FROM t WHERE a = 'x' AND b = 2",
            "SELECT * FROM t WHERE a = 'y' AND b = 3",
            "SELEC nope 1",
            "SELEC nope 2",
        ] {
            assert_eq!(cache.analyze(text), analyze(text));
        }
        assert!(cache.entries.len() <= 2);
    }

    #[test]
    fn past_its_capacity_the_cache_keeps_the_statements_in_use() {
        let mut cache = StatementCache::new(2);
        let hot = "SELECT * FROM users WHERE id = $1";
        cache.analyze(hot);
        for n in 0..10 {
            // A stream of statements seen once, the hot one between them.
            let once = format!("SELECT * FROM t{n} WHERE a = $1");
            assert_eq!(
                cache.analyze(&once),
                analyze(&once),
                "analyzed past the cap"
            );
            assert!(!cache.analyze(&once).normalized.is_empty());
            assert!(cache.entries.contains(hot), "the hot statement stays");
            cache.analyze(hot);
        }
        assert_eq!(cache.entries.len(), 2);
    }
}
