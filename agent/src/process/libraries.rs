//! Shared libraries a process has mapped, from /proc/PID/maps: where uprobes go. The path is the
//! one the process sees; loupe opens it through /proc/PID/root, so a library inside a container
//! (or a private copy, like the libpq psycopg2-binary bundles) is the one probed.

use std::path::PathBuf;

/// A library file mapped executable by a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedLibrary {
    /// The path in the process's mount namespace, as maps shows it.
    pub path: String,
    /// The same file as loupe can open it: /proc/PID/root + path.
    pub host_path: PathBuf,
}

/// The distinct executable mappings of `pid` whose file name starts with `prefix` and is a
/// shared object (e.g. "libpq" matches libpq.so.5 and libpq-9c51d239.so.5.16).
pub fn mapped_libraries(pid: u32, prefix: &str) -> Vec<MappedLibrary> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    parse_maps(&maps, prefix)
        .into_iter()
        .map(|path| MappedLibrary {
            host_path: PathBuf::from(format!("/proc/{pid}/root{path}")),
            path,
        })
        .collect()
}

/// Pure part of [`mapped_libraries`]: the matching paths, each once, in order of appearance.
pub fn parse_maps(maps: &str, prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut fields = line.splitn(6, ' ');
        let (Some(_), Some(perms), Some(_), Some(_), Some(_), Some(path)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = path.trim_start();
        if !perms.contains('x') || !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.starts_with(prefix) && name.contains(".so") && !found.iter().any(|p| p == path) {
            found.push(path.to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::parse_maps;

    #[test]
    fn finds_system_and_bundled_libpq_once_each_and_nothing_else() {
        let maps = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 08:01 1234 /usr/bin/python3.11
7f1a00000000-7f1a00010000 r--p 00000000 08:01 555 /usr/lib/x86_64-linux-gnu/libpq.so.5.15
7f1a00010000-7f1a00040000 r-xp 00010000 08:01 555 /usr/lib/x86_64-linux-gnu/libpq.so.5.15
7f1a00040000-7f1a00050000 r--p 00040000 08:01 555 /usr/lib/x86_64-linux-gnu/libpq.so.5.15
7f1b00010000-7f1b00040000 r-xp 00010000 08:01 777 /venv/lib/python3.11/site-packages/psycopg2_binary.libs/libpq-9c51d239.so.5.16
7f1c00010000-7f1c00040000 r-xp 00010000 08:01 778 /usr/lib/x86_64-linux-gnu/libpqwalreceiver.txt
7f1d00010000-7f1d00040000 r-xp 00010000 08:01 779 /tmp/libpq.so.5 (deleted)
7f1e00010000-7f1e00040000 r-xp 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(
            parse_maps(maps, "libpq"),
            [
                "/usr/lib/x86_64-linux-gnu/libpq.so.5.15",
                "/venv/lib/python3.11/site-packages/psycopg2_binary.libs/libpq-9c51d239.so.5.16",
            ]
        );
        assert!(parse_maps(maps, "libssl").is_empty());
        assert!(parse_maps("garbage\n\n1 2 3\n", "libpq").is_empty());
    }
}
