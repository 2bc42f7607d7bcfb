//! Stacks to folded form (`root;...;leaf count`), keeping only frames that can be trusted.
//!
//! A user stack comes from a frame-pointer walk. The sampled instruction pointer (the first
//! frame) is always right; a later frame that points into no executable mapping is what a walk
//! through code built without frame pointers returns, and everything from there on is garbage:
//! the stack is cut there and marked `[truncated]` at its root. Frames never get invented.

use std::collections::HashMap;

/// One user frame after symbolization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `module!function`, or `module+0xoffset` when the module has no symbol for it.
    Named(String),
    /// Points into no executable mapping.
    Unmapped,
}

/// The marker at the root of a cut stack.
pub const TRUNCATED: &str = "[truncated]";

/// Stacks of one span, folded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Folded {
    /// Folded stacks and their sample counts, most samples first.
    pub stacks: Vec<(String, u64)>,
    /// Innermost frames and their sample counts, most first.
    pub leaves: Vec<(String, u64)>,
    pub samples: u64,
    /// Samples whose stack was cut.
    pub truncated: u64,
}

/// Folds samples given as (kernel frames, user frames), both innermost first.
pub fn fold<'a>(samples: impl IntoIterator<Item = (&'a [String], &'a [Frame])>) -> Folded {
    let mut stacks: HashMap<String, u64> = HashMap::new();
    let mut leaves: HashMap<String, u64> = HashMap::new();
    let mut folded = Folded::default();
    for (kernel, user) in samples {
        let (line, leaf, cut) = fold_one(kernel, user);
        folded.samples += 1;
        folded.truncated += u64::from(cut);
        *stacks.entry(line).or_default() += 1;
        *leaves.entry(leaf).or_default() += 1;
    }
    folded.stacks = ranked(stacks);
    folded.leaves = ranked(leaves);
    folded
}

fn ranked(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The user frames that can be trusted (innermost first), and whether the stack was cut at an
/// unmapped frame past the first.
pub fn trusted(user: &[Frame]) -> (Vec<&str>, bool) {
    let mut kept: Vec<&str> = Vec::new();
    for (i, frame) in user.iter().enumerate() {
        match frame {
            Frame::Named(name) => kept.push(name),
            Frame::Unmapped if i == 0 => kept.push("[unknown]"),
            Frame::Unmapped => return (kept, true),
        }
    }
    (kept, false)
}

/// One stack: (folded line, leaf frame, whether it was cut).
fn fold_one(kernel: &[String], user: &[Frame]) -> (String, String, bool) {
    let (kept, cut) = trusted(user);
    let mut parts: Vec<&str> = Vec::with_capacity(kept.len() + kernel.len() + 1);
    if cut {
        parts.push(TRUNCATED);
    }
    parts.extend(kept.iter().rev());
    parts.extend(kernel.iter().rev().map(String::as_str));
    let leaf = kernel
        .first()
        .map(String::as_str)
        .or(kept.first().copied())
        .unwrap_or("[unknown]")
        .to_owned();
    if parts.is_empty() {
        parts.push("[unknown]");
    }
    (parts.join(";"), leaf, cut)
}

/// The top stacks as `stack count` lines, at most `max_lines` and `max_bytes` in all.
pub fn top_lines(folded: &Folded, max_lines: usize, max_bytes: usize) -> String {
    let mut out = String::new();
    for (stack, count) in folded.stacks.iter().take(max_lines) {
        let line = format!("{stack} {count}\n");
        if out.len() + line.len() > max_bytes {
            break;
        }
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Frame {
        Frame::Named(name.to_owned())
    }

    #[test]
    fn stacks_fold_root_first_and_count() {
        let user = [named("app!burn"), named("app!handle"), named("app!main")];
        let other = [named("libcrypto.so.3!sha256_block"), named("app!main")];
        let folded = fold([
            (&[][..], &user[..]),
            (&[][..], &user[..]),
            (&[][..], &other[..]),
        ]);
        assert_eq!(folded.samples, 3);
        assert_eq!(
            folded.stacks,
            vec![
                ("app!main;app!handle;app!burn".to_owned(), 2),
                ("app!main;libcrypto.so.3!sha256_block".to_owned(), 1)
            ]
        );
        assert_eq!(folded.leaves[0], ("app!burn".to_owned(), 2));
        assert_eq!(folded.truncated, 0);
    }

    #[test]
    fn a_walk_into_nowhere_is_cut_and_marked_never_invented() {
        let user = [
            named("app!burn"),
            Frame::Unmapped,
            named("app!looks_plausible"),
        ];
        let folded = fold([(&[][..], &user[..])]);
        assert_eq!(folded.stacks[0].0, "[truncated];app!burn");
        assert_eq!(folded.truncated, 1);
    }

    #[test]
    fn the_leaf_is_kept_even_where_it_has_no_module() {
        let user = [Frame::Unmapped];
        let folded = fold([(&[][..], &user[..])]);
        assert_eq!(folded.stacks[0].0, "[unknown]");
        assert_eq!(folded.truncated, 0);
    }

    #[test]
    fn kernel_frames_sit_above_the_user_stack() {
        let kernel = [
            "vmlinux!copy_user".to_owned(),
            "vmlinux!do_syscall_64".to_owned(),
        ];
        let user = [named("libc.so.6!write"), named("app!main")];
        let folded = fold([(&kernel[..], &user[..])]);
        assert_eq!(
            folded.stacks[0].0,
            "app!main;libc.so.6!write;vmlinux!do_syscall_64;vmlinux!copy_user"
        );
        assert_eq!(folded.leaves[0].0, "vmlinux!copy_user");
    }

    #[test]
    fn top_lines_are_bounded() {
        let a = [named("a")];
        let b = [named("b")];
        let folded = fold([(&[][..], &a[..]), (&[][..], &a[..]), (&[][..], &b[..])]);
        assert_eq!(top_lines(&folded, 10, 4096), "a 2\nb 1\n");
        assert_eq!(top_lines(&folded, 1, 4096), "a 2\n");
        assert_eq!(top_lines(&folded, 10, 5), "a 2\n");
    }
}
