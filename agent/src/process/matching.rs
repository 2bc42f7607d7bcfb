//! Which processes `--exe PATH` and `--name COMM` name. A process matches `--exe` when it runs
//! the file PATH names (symlinks resolved): `/proc/PID/exe` is that path, or the same file
//! (device and inode, which holds across mount namespaces and for a file deleted while it runs
//! as well as hard links). It matches `--name` when its `comm` is the name, cut to the 15 bytes
//! the kernel keeps.
//!
//! The readers only read /proc; the decision is the pure [`Matcher::matches`].

use std::{
    fmt,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use loupe_common::{COMM_LEN, MAX_WATCH_COMMS, comm_key};

/// Distinct `--name` values at most: the kernel's table of watched names holds no more.
pub const MAX_NAMES: usize = MAX_WATCH_COMMS as usize;

/// Why a `--exe` or `--name` cannot be used, said in one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MatchError {
    #[error("--exe {path}: {reason}")]
    Exe { path: String, reason: String },
    #[error("--name must not be empty")]
    EmptyName,
    #[error("--name `{0}` holds a NUL byte, which no process name can")]
    NulInName(String),
}

/// A process name as the kernel keeps it: at most 15 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommName {
    /// As the user gave it.
    given: String,
    /// Its first 15 bytes: what a `comm` holds.
    bytes: Vec<u8>,
}

impl CommName {
    pub fn new(given: &str) -> Result<Self, MatchError> {
        if given.is_empty() {
            return Err(MatchError::EmptyName);
        }
        if given.contains('\0') {
            return Err(MatchError::NulInName(given.escape_default().to_string()));
        }
        let bytes = given.as_bytes()[..given.len().min(COMM_LEN - 1)].to_vec();
        Ok(Self {
            given: given.to_owned(),
            bytes,
        })
    }

    /// The bytes a matching `comm` holds.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the name is longer than a `comm` can be (only its first 15 bytes are compared).
    pub fn was_cut(&self) -> bool {
        self.bytes.len() < self.given.len()
    }

    /// The key the kernel looks it up by.
    pub fn key(&self) -> [u8; COMM_LEN] {
        comm_key(&self.bytes)
    }

    pub fn given(&self) -> &str {
        &self.given
    }
}

/// An executable file, as `--exe` named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExePath {
    /// As the user gave it.
    given: String,
    /// With every symlink resolved.
    path: PathBuf,
    /// (device, inode).
    file: (u64, u64),
}

impl ExePath {
    /// Resolves `given`, which must name an existing file.
    pub fn new(given: &Path) -> Result<Self, MatchError> {
        let fail = |reason: String| MatchError::Exe {
            path: given.display().to_string(),
            reason,
        };
        let path = std::fs::canonicalize(given).map_err(|err| fail(err.to_string()))?;
        let metadata = std::fs::metadata(&path).map_err(|err| fail(err.to_string()))?;
        if !metadata.is_file() {
            return Err(fail("not a file".to_owned()));
        }
        Ok(Self {
            given: given.display().to_string(),
            path,
            file: (metadata.dev(), metadata.ino()),
        })
    }

    /// The file with every symlink resolved.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What /proc shows of a process, as far as matching needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessFacts {
    /// Its `comm`, without the newline.
    pub comm: Vec<u8>,
    /// `/proc/PID/exe` as read, without the ` (deleted)` the kernel appends to a removed file.
    pub exe: Option<PathBuf>,
    /// (device, inode) of the file it runs.
    pub file: Option<(u64, u64)>,
}

impl ProcessFacts {
    /// Reads /proc. None for a process that is gone or runs no program of its own (a kernel
    /// thread, a zombie): there is nothing to observe in it.
    pub fn read(pid: u32) -> Option<Self> {
        let exe_link = format!("/proc/{pid}/exe");
        let exe = std::fs::read_link(&exe_link).ok().map(strip_deleted);
        let file = std::fs::metadata(&exe_link)
            .ok()
            .map(|metadata| (metadata.dev(), metadata.ino()));
        if exe.is_none() && file.is_none() {
            return None;
        }
        let mut comm = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
        if comm.last() == Some(&b'\n') {
            comm.pop();
        }
        Some(Self { comm, exe, file })
    }
}

/// `/proc/PID/exe` of a file removed while it runs reads `<path> (deleted)`: the path it ran
/// from is what `--exe` names (a binary replaced by an upgrade still matches).
fn strip_deleted(link: PathBuf) -> PathBuf {
    match link
        .to_str()
        .and_then(|text| text.strip_suffix(" (deleted)"))
    {
        Some(path) => PathBuf::from(path),
        None => link,
    }
}

/// The flag a process matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    Name(String),
    Exe(String),
}

impl fmt::Display for MatchedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => write!(f, "--name {name}"),
            Self::Exe(path) => write!(f, "--exe {path}"),
        }
    }
}

/// Every `--name` and `--exe` of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matcher {
    names: Vec<CommName>,
    exes: Vec<ExePath>,
}

impl Matcher {
    pub fn new(names: Vec<CommName>, exes: Vec<ExePath>) -> Self {
        Self { names, exes }
    }

    /// Nothing to watch for: only `--pid`.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.exes.is_empty()
    }

    pub fn names(&self) -> &[CommName] {
        &self.names
    }

    /// Executables can only be told in userspace: the kernel must report every exec.
    pub fn matches_executables(&self) -> bool {
        !self.exes.is_empty()
    }

    /// What a process with these facts matches, if anything: the first name, else the first
    /// executable.
    pub fn matches(&self, facts: &ProcessFacts) -> Option<MatchedBy> {
        if let Some(name) = self.names.iter().find(|name| name.bytes() == facts.comm) {
            return Some(MatchedBy::Name(name.given.clone()));
        }
        self.exes
            .iter()
            .find(|exe| {
                facts.exe.as_deref() == Some(exe.path.as_path()) || facts.file == Some(exe.file)
            })
            .map(|exe| MatchedBy::Exe(exe.given.clone()))
    }

    /// What the process `pid` matches now (read from /proc).
    pub fn match_pid(&self, pid: u32) -> Option<MatchedBy> {
        if self.is_empty() || pid == std::process::id() {
            return None;
        }
        self.matches(&ProcessFacts::read(pid)?)
    }

    /// Every running process that matches, but loupe itself.
    pub fn scan(&self) -> Vec<(u32, MatchedBy)> {
        if self.is_empty() {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut found: Vec<(u32, MatchedBy)> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, self.match_pid(pid)?)))
            .collect();
        found.sort_by_key(|(pid, _)| *pid);
        found
    }

    /// The flags, for telling the user what loupe waits for: `--name a, --exe /usr/bin/b`.
    pub fn describe(&self) -> String {
        self.names
            .iter()
            .map(|name| MatchedBy::Name(name.given.clone()))
            .chain(
                self.exes
                    .iter()
                    .map(|exe| MatchedBy::Exe(exe.given.clone())),
            )
            .map(|flag| flag.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(comm: &str, exe: Option<&str>, file: Option<(u64, u64)>) -> ProcessFacts {
        ProcessFacts {
            comm: comm.as_bytes().to_vec(),
            exe: exe.map(PathBuf::from),
            file,
        }
    }

    #[test]
    fn a_name_is_cut_to_the_fifteen_bytes_of_a_comm() {
        let name = CommName::new("a-very-long-service-name").unwrap();
        assert_eq!(name.bytes(), b"a-very-long-ser");
        assert!(name.was_cut());
        assert_eq!(&name.key()[..16], b"a-very-long-ser\0");
        let matcher = Matcher::new(vec![name], Vec::new());
        assert_eq!(
            matcher.matches(&facts("a-very-long-ser", None, None)),
            Some(MatchedBy::Name("a-very-long-service-name".into())),
            "the kernel cut the process's name the same way"
        );
        assert_eq!(matcher.matches(&facts("a-very-long-se", None, None)), None);

        let short = CommName::new("nginx").unwrap();
        assert!(!short.was_cut());
        let matcher = Matcher::new(vec![short], Vec::new());
        assert!(matcher.matches(&facts("nginx", None, None)).is_some());
        assert_eq!(matcher.matches(&facts("nginx2", None, None)), None);
        assert_eq!(matcher.matches(&facts("ngin", None, None)), None);
    }

    #[test]
    fn a_name_cut_inside_a_character_still_matches_the_kernels_bytes() {
        // 14 ASCII bytes and a 2-byte character: the kernel keeps 15 bytes, half the character.
        let name = CommName::new("service-numberé").unwrap();
        assert_eq!(name.bytes().len(), 15);
        let comm = &"service-numberé".as_bytes()[..15];
        let matcher = Matcher::new(vec![name], Vec::new());
        let seen = ProcessFacts {
            comm: comm.to_vec(),
            exe: None,
            file: None,
        };
        assert!(matcher.matches(&seen).is_some());
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(CommName::new(""), Err(MatchError::EmptyName));
        assert!(matches!(
            CommName::new("a\0b"),
            Err(MatchError::NulInName(_))
        ));
    }

    #[test]
    fn an_executable_is_resolved_through_its_symlinks() {
        let dir = std::env::temp_dir().join(format!("loupe-match-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let binary = dir.join("server");
        std::fs::write(&binary, b"#!/bin/true\n").unwrap();
        let link = dir.join("current");
        std::os::unix::fs::symlink(&binary, &link).unwrap();

        let exe = ExePath::new(&link).unwrap();
        assert_eq!(exe.path(), std::fs::canonicalize(&binary).unwrap());
        let metadata = std::fs::metadata(&binary).unwrap();
        let matcher = Matcher::new(Vec::new(), vec![exe]);
        let resolved = std::fs::canonicalize(&binary).unwrap();
        let by_path = facts("server", resolved.to_str(), None);
        assert_eq!(
            matcher.matches(&by_path),
            Some(MatchedBy::Exe(link.display().to_string())),
            "its /proc/PID/exe is the resolved path"
        );
        let by_file = facts(
            "server",
            Some("/elsewhere/in/a/container/server"),
            Some((metadata.dev(), metadata.ino())),
        );
        assert!(
            matcher.matches(&by_file).is_some(),
            "the same file seen under another path"
        );
        let other = facts("server", Some("/usr/bin/server"), Some((1, 2)));
        assert_eq!(
            matcher.matches(&other),
            None,
            "a same-named other file is not it"
        );

        let missing = ExePath::new(&dir.join("nothing-here")).unwrap_err();
        assert!(missing.to_string().starts_with("--exe "), "{missing}");
        assert!(
            ExePath::new(&dir).is_err(),
            "a directory is not an executable"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_deleted_executable_is_matched_by_the_path_it_ran_from() {
        assert_eq!(
            strip_deleted(PathBuf::from("/usr/sbin/nginx (deleted)")),
            PathBuf::from("/usr/sbin/nginx")
        );
        assert_eq!(
            strip_deleted(PathBuf::from("/usr/sbin/nginx")),
            PathBuf::from("/usr/sbin/nginx")
        );
    }

    #[test]
    fn this_process_is_found_by_its_executable_but_never_matched() {
        let me = std::process::id();
        let facts = ProcessFacts::read(me).expect("this process is in /proc");
        let exe = ExePath::new(&std::env::current_exe().unwrap()).unwrap();
        let matcher = Matcher::new(Vec::new(), vec![exe]);
        assert!(matcher.matches(&facts).is_some());
        assert_eq!(matcher.match_pid(me), None, "loupe never observes itself");
        assert!(!matcher.scan().iter().any(|(pid, _)| *pid == me));
        if std::fs::read_to_string("/proc/2/comm").is_ok_and(|comm| comm == "kthreadd\n") {
            assert_eq!(
                ProcessFacts::read(2),
                None,
                "kthreadd runs no program of its own"
            );
        }
    }

    #[test]
    fn the_flags_are_described_as_given() {
        let matcher = Matcher::new(
            vec![CommName::new("nginx").unwrap()],
            vec![ExePath::new(Path::new("/proc/self/exe")).unwrap()],
        );
        assert_eq!(matcher.describe(), "--name nginx, --exe /proc/self/exe");
        assert!(Matcher::default().is_empty());
    }
}
