//! Low-cardinality names from raw request targets: routes with ids collapsed, queries with values
//! redacted.

/// The path with every numeric, UUID or long-hex segment replaced by `{id}`:
/// `/api/users/42/orders/9f0c...` becomes `/api/users/{id}/orders/{id}`.
pub fn route(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    route_into(path, &mut out);
    out
}

/// [`route`], appended to `out`.
pub fn route_into(path: &str, out: &mut String) {
    let start = out.len();
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_id(segment) {
            out.push_str("{id}");
        } else {
            out.push_str(segment);
        }
    }
    if out.len() == start {
        out.push('/');
    }
}

fn is_id(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let bytes = segment.as_bytes();
    if bytes.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let is_uuid = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let is_long_hex = bytes.len() >= 16
        && bytes.iter().all(u8::is_ascii_hexdigit)
        && bytes.iter().any(u8::is_ascii_digit);
    is_uuid || is_long_hex
}

/// Splits a request target into path and query (without the `?`; None when absent). An
/// absolute-form target (`http://host/path`) yields its path.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    let target = match target.find("://") {
        Some(scheme_end) => {
            let rest = &target[scheme_end + 3..];
            rest.find('/').map_or("/", |slash| &rest[slash..])
        }
        None => target,
    };
    let target = target.split('#').next().unwrap_or(target);
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// The query with every value replaced by `?` (`user=42&q=shoes` -> `user=?&q=?`), so no value
/// reaches an exporter.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) => format!("{key}=?"),
            None => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_uuid_and_hex_segments_collapse() {
        assert_eq!(route("/api/users/42"), "/api/users/{id}");
        assert_eq!(
            route("/orders/123e4567-e89b-12d3-a456-426614174000/items/7"),
            "/orders/{id}/items/{id}"
        );
        assert_eq!(route("/blobs/9f0c2a7d5e4b3c1a"), "/blobs/{id}");
        assert_eq!(route("/api/v2/users"), "/api/v2/users");
        assert_eq!(
            route("/deadbeefdeadbeef"),
            "/deadbeefdeadbeef",
            "all letters is a word"
        );
        assert_eq!(route("/"), "/");
        assert_eq!(route(""), "/");
    }

    #[test]
    fn targets_split_into_path_and_query() {
        assert_eq!(split_target("/a/b?x=1"), ("/a/b", Some("x=1")));
        assert_eq!(split_target("/a"), ("/a", None));
        assert_eq!(split_target("http://h:80/p?q"), ("/p", Some("q")));
        assert_eq!(split_target("http://h"), ("/", None));
        assert_eq!(split_target("/p#frag"), ("/p", None));
    }

    #[test]
    fn query_values_never_survive_redaction() {
        assert_eq!(redact_query("user=42&q=shoes"), "user=?&q=?");
        assert_eq!(redact_query("flag&token=secret"), "flag&token=?");
        assert_eq!(redact_query("a=1=2&&b="), "a=?&b=?");
    }
}
