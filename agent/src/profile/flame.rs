//! With --profile-dir: the folded stacks of a slow span and its flamegraph (inferno), named by
//! trace and span id.

use std::path::{Path, PathBuf};

use super::stacks::Folded;
use crate::spans::{AttrValue, SpanEvent, SpanRecord};

/// One profile of a slow span, ready to go on it.
pub struct Profile<'a> {
    /// The span event's name (`cpu_profile`, `off_cpu_profile`).
    pub event: &'static str,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub folded: &'a Folded,
    /// The flamegraph's title and file part (see [`write`]), and the span attribute its path
    /// goes in.
    pub title: String,
    pub part: &'static str,
    pub path_key: &'static str,
}

/// Puts `profile` on `span` as an event just inside its end (Jaeger's UI hides an event stamped
/// at or after its span's end, in its microseconds), after writing its flamegraph into `dir`
/// when there is one (its path in the event's `path` and the span's `path_key`).
pub fn attach(span: &mut SpanRecord, mut profile: Profile<'_>, dir: Option<&Path>) {
    if let Some(dir) = dir {
        match write(
            dir,
            span.trace_id,
            span.span_id,
            &profile.title,
            profile.folded,
            profile.part,
        ) {
            Ok(path) => {
                let path = path.display().to_string();
                profile.attributes.push(("path", path.clone().into()));
                span.set(profile.path_key, path);
            }
            Err(err) => tracing::warn!("cannot write a flamegraph into {}: {err}", dir.display()),
        }
    }
    span.events.push(SpanEvent {
        name: profile.event,
        time_ns: span.end_ns.saturating_sub(1_000).max(span.start_ns),
        attributes: profile.attributes,
    });
}

/// Writes `<trace>-<span><part>.folded` and `.svg` into `dir` (`part`: "" for the CPU
/// profile, ".offcpu" for the off-CPU one); returns the SVG's path.
pub fn write(
    dir: &Path,
    trace_id: u128,
    span_id: u64,
    title: &str,
    folded: &Folded,
    part: &str,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stem = format!("{trace_id:032x}-{span_id:016x}{part}");
    let lines: Vec<String> = folded
        .stacks
        .iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect();
    std::fs::write(dir.join(format!("{stem}.folded")), lines.join("\n") + "\n")?;
    let svg = dir.join(format!("{stem}.svg"));
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    if !part.is_empty() {
        // Off-CPU time: blue, as is the custom (Brendan Gregg's off-CPU flame graphs).
        options.colors = inferno::flamegraph::color::Palette::Basic(
            inferno::flamegraph::color::BasicPalette::Blue,
        );
        options.count_name = "us".to_owned();
    }
    let file = std::io::BufWriter::new(std::fs::File::create(&svg)?);
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), file)
        .map_err(std::io::Error::other)?;
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::stacks::{Frame, fold};

    #[test]
    fn a_flamegraph_and_its_folded_file_are_written() {
        let dir = std::env::temp_dir().join(format!("loupe-flame-{}", std::process::id()));
        let user = [
            Frame::Named("app!burn".into()),
            Frame::Named("app!main".into()),
        ];
        let folded = fold([(&[][..], &user[..])]);
        let svg = write(&dir, 1, 2, "GET /burn", &folded, "").unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("<svg") && text.contains("app!burn"), "{text}");
        let folded_text = std::fs::read_to_string(svg.with_extension("folded")).unwrap();
        assert_eq!(folded_text, "app!main;app!burn 1\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
