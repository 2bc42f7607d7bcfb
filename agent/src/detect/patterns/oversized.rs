//! `oversized_response`: the request's own response body, or an outbound call's, above
//! --large-response; a query result above --large-result-rows.

use super::{Finding, Pattern, bytes_text, event, ms};
use crate::{
    config::DiagnosisConfig,
    detect::tree::{Tree, label},
    spans::OpType,
};

pub fn detect(tree: &Tree<'_>, config: &DiagnosisConfig, findings: &mut Vec<Finding>) {
    let body = |span: &crate::spans::SpanRecord| {
        span.attr_int("http.response.body.size")
            .map_or(0, |n| n.max(0) as u64)
    };
    let own = body(tree.parent);
    if own > config.large_response_bytes {
        findings.push(Finding {
            pattern: Pattern::OversizedResponse,
            cost_ns: tree.duration_ns(),
            children: Vec::new(),
            advice: format!(
                "{} response: paginate, filter the fields or compress it",
                bytes_text(own)
            ),
            event: event(
                Pattern::OversizedResponse,
                tree.parent.end_ns,
                vec![
                    ("what", tree.parent.name.clone().into()),
                    ("http.response.body.size", (own as i64).into()),
                ],
            ),
        });
    }
    for (index, child) in tree.children.iter().enumerate() {
        let (size_text, attributes) = match child.op {
            OpType::HttpClient if body(child) > config.large_response_bytes => {
                let size = body(child);
                (
                    format!("{} response", bytes_text(size)),
                    ("http.response.body.size", size as i64),
                )
            }
            OpType::DbClient => match child.attr_int("db.response.returned_rows") {
                Some(rows) if rows.max(0) as u64 > config.large_result_rows => {
                    (format!("{rows} rows"), ("db.response.returned_rows", rows))
                }
                _ => continue,
            },
            _ => continue,
        };
        let text = label(child);
        let (start, end) = tree.clipped(child);
        findings.push(Finding {
            pattern: Pattern::OversizedResponse,
            cost_ns: end - start,
            children: vec![index],
            advice: format!(
                "{size_text} from {text}: fetch only what is used (paginate, filter, LIMIT)"
            ),
            event: event(
                Pattern::OversizedResponse,
                child.end_ns,
                vec![
                    ("what", text.into()),
                    (attributes.0, attributes.1.into()),
                    ("duration_ms", ms(end - start).into()),
                ],
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect::patterns::testing::*, spans::SpanRecord};

    fn run(parent: &SpanRecord, children: &[SpanRecord]) -> Vec<Finding> {
        let mut found = Vec::new();
        detect(
            &Tree::new(parent, children),
            &DiagnosisConfig::default(),
            &mut found,
        );
        found
    }

    #[test]
    fn a_large_own_response_is_oversized() {
        let mut parent = server(0, 100);
        parent.set("http.response.body.size", 2i64 << 20);
        let found = run(&parent, &[]);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].advice.starts_with("2.0 MiB response"),
            "{}",
            found[0].advice
        );
        parent.set("http.response.body.size", 1i64 << 20);
        assert!(run(&parent, &[]).is_empty(), "exactly the limit is fine");
    }

    #[test]
    fn a_large_download_or_result_is_oversized() {
        let parent = server(0, 100);
        let mut download = call("10.0.0.1", 80, "/export", 0, 50);
        download.set("http.response.body.size", 3i64 << 20);
        let mut rows = query("SELECT * FROM events", "f", 50, 90);
        rows.set("db.response.returned_rows", 20_000i64);
        let mut few = query("SELECT * FROM users", "g", 90, 95);
        few.set("db.response.returned_rows", 20i64);
        let found = run(&parent, &[download, rows, few]);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].children, vec![0]);
        assert_eq!(found[1].children, vec![1]);
        assert!(
            found[1].advice.starts_with("20000 rows"),
            "{}",
            found[1].advice
        );
    }
}
