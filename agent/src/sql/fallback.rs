//! A conservative normalizer for statements pg_query rejects (other dialects, truncated text):
//! every quoted string, dollar-quoted string and number becomes `?`. It may replace too much,
//! never too little.

/// `text` with string, dollar-quoted and numeric literals replaced by `?`.
pub fn normalize(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\'' {
            // '...' with '' escapes; an unterminated one runs to the end.
            i += 1;
            while i < bytes.len() {
                if bytes[i] == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.push('?');
        } else if b == b'$'
            && let Some(end) = dollar_quote_end(bytes, i)
        {
            out.push('?');
            i = end;
        } else if b.is_ascii_digit() && !prev_is_word(bytes, i) {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            out.push('?');
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn prev_is_word(bytes: &[u8], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'$')
}

/// The end of a `$tag$ ... $tag$` string starting at `start`, if it is one.
fn dollar_quote_end(bytes: &[u8], start: usize) -> Option<usize> {
    let tag_end = start + 1 + bytes[start + 1..].iter().position(|&b| b == b'$')?;
    let tag = &bytes[start..=tag_end];
    if !tag[1..tag.len() - 1]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        return None;
    }
    if tag.len() > 2 && tag[1].is_ascii_digit() {
        return None; // $1 is a parameter, not a quote
    }
    let body = &bytes[tag_end + 1..];
    let close = body.windows(tag.len()).position(|w| w == tag)?;
    Some(tag_end + 1 + close + tag.len())
}

/// FNV-1a of the normalized text, as 16 hex digits.
pub fn fingerprint(normalized: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in normalized.to_ascii_lowercase().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The word after the first FROM, INTO or UPDATE.
pub fn first_table(text: &str) -> Option<String> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(2).find_map(|pair| {
        let keyword = pair[0].to_ascii_uppercase();
        matches!(keyword.as_str(), "FROM" | "INTO" | "UPDATE" | "JOIN").then(|| {
            pair[1]
                .trim_matches(|c: char| c == '"' || c == ';')
                .to_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_literal_is_replaced() {
        assert_eq!(
            normalize("x = 'it''s' AND y = 42 AND z = 3.5e2"),
            "x = ? AND y = ? AND z = ?"
        );
        assert_eq!(
            normalize("body = $tag$ secret $tag$ AND p = $1"),
            "body = ? AND p = $1"
        );
        assert_eq!(normalize("t2.col1 = 'unterminated"), "t2.col1 = ?");
        assert_eq!(normalize("naïve = 'é'"), "naïve = ?");
    }

    #[test]
    fn the_first_table_follows_from_into_or_update() {
        assert_eq!(
            first_table("SELEC a FROM users WHERE"),
            Some("users".into())
        );
        assert_eq!(
            first_table("INSERT INTO \"orders\"(a)"),
            Some("orders".into())
        );
        assert_eq!(first_table("VACUUM"), None);
    }
}
