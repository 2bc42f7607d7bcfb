//! Trace and span ids: random, never zero, or taken from an inbound W3C traceparent header.

use rand::Rng as _;

pub fn new_trace_id() -> u128 {
    let mut rng = rand::rng();
    loop {
        let id: u128 = rng.random();
        if id != 0 {
            return id;
        }
    }
}

pub fn new_span_id() -> u64 {
    let mut rng = rand::rng();
    loop {
        let id: u64 = rng.random();
        if id != 0 {
            return id;
        }
    }
}

/// `version-traceid-parentid-flags` (W3C Trace Context): the trace id and the caller's span id.
pub fn parse_traceparent(header: &str) -> Option<(u128, u64)> {
    let mut parts = header.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |field: &str, len: usize| {
        field.len() == len && field.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok()?;
    let span_id = u64::from_str_radix(parent, 16).ok()?;
    (trace_id != 0 && span_id != 0).then_some((trace_id, span_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_gives_trace_and_parent() {
        let parsed = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            parsed,
            Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7))
        );
    }

    #[test]
    fn malformed_or_zero_traceparent_is_ignored() {
        assert_eq!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-01"),
            None
        );
        assert_eq!(
            parse_traceparent("zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(parse_traceparent(""), None);
    }

    #[test]
    fn generated_ids_are_nonzero_and_distinct() {
        assert_ne!(new_trace_id(), 0);
        assert_ne!(new_span_id(), new_span_id());
    }
}
