//! CPython interpreters, read from outside: where each thread of a Python target keeps its
//! current contextvars Context, so that the kernel can read it at every syscall (an asyncio loop
//! runs each task in its own Context: the Context is the task).
//!
//! Works on stock, stripped interpreters: it needs only `_PyRuntime` and `Py_Version`, which
//! every CPython 3.11+ exports (.dynsym) from its executable or its libpython. From
//! `_PyRuntime` it walks the interpreter's thread states and matches each to a thread of the
//! process by its native thread id. The struct offsets are per version, compiled from each
//! version's own headers; a layout is trusted for a process only once what it reads there makes
//! sense: every thread state points back at its interpreter, one of them belongs to a live thread
//! of the process, and a thread's `context` points at an object whose type is
//! `_contextvars.Context`. Versions outside the table, or a process where the check fails, get
//! no Context keys (their calls nest as threads do).

use std::{
    collections::HashSet,
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// Byte offsets (x86-64, release builds) of what the walk reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyLayout {
    /// `_PyRuntimeState.interpreters.head`
    pub runtime_interpreters: u64,
    /// `PyInterpreterState.threads.head`
    pub interp_threads: u64,
    /// `PyThreadState.next`
    pub thread_next: u64,
    /// `PyThreadState.interp`
    pub thread_interp: u64,
    /// `PyThreadState.native_thread_id`
    pub thread_native_id: u64,
    /// `PyThreadState.context`
    pub thread_context: u64,
}

/// Layouts by (major, minor), each from `offsetof` compiled against that version's headers and
/// checked on a live interpreter of it (3.11.2 Debian, 3.11.7, 3.12.1, 3.13.0).
const LAYOUTS: &[((u32, u32), PyLayout)] = &[
    ((3, 11), layout(40, 16, 160, 224)),
    ((3, 12), layout(40, 72, 144, 208)),
    ((3, 13), layout(632, 7344, 160, 208)),
];

const fn layout(interpreters: u64, threads: u64, native_id: u64, context: u64) -> PyLayout {
    PyLayout {
        runtime_interpreters: interpreters,
        interp_threads: threads,
        thread_next: 8,
        thread_interp: 16,
        thread_native_id: native_id,
        thread_context: context,
    }
}

/// The layout of CPython `major.minor`, if loupe knows it.
pub fn layout_of(version: (u32, u32)) -> Option<PyLayout> {
    LAYOUTS
        .iter()
        .find(|(known, _)| *known == version)
        .map(|(_, layout)| *layout)
}

/// The type name a Context object has in every version of the table.
const CONTEXT_TYPE: &[u8] = b"_contextvars.Context";
/// Thread states walked at most per interpreter.
const MAX_THREADS: usize = 1024;

/// A CPython interpreter in a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interpreter {
    pub version: (u32, u32),
    /// Where `_PyRuntime` is in the process.
    pub runtime: u64,
    pub layout: PyLayout,
}

/// Why a process's thread states could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PyError {
    #[error("cannot read its memory: {0}")]
    Memory(#[from] std::io::Error),
    #[error("its interpreter list is empty")]
    NoInterpreter,
    #[error("no thread state matches a thread of the process (unexpected layout)")]
    NoThread,
    #[error("a thread state does not point back at its interpreter (unexpected layout)")]
    Inconsistent,
    #[error("a thread's context is not a Context object (unexpected layout)")]
    NotAContext,
}

/// The CPython interpreter of `pid`: its executable or a mapped libpython that exports
/// `_PyRuntime`, of a version in the table. None for any other process.
pub fn interpreter(pid: u32) -> Option<Interpreter> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mappings = parse_mappings(&maps);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    // The executable first (a static interpreter), then a libpython.
    let mut files: Vec<&str> = Vec::new();
    for mapping in &mappings {
        let name = mapping.path.rsplit('/').next().unwrap_or(mapping.path);
        let is_exe = exe.as_deref() == Some(Path::new(mapping.path));
        if (is_exe || name.starts_with("libpython3")) && !files.contains(&mapping.path) {
            files.push(mapping.path);
        }
    }
    files.sort_by_key(|path| exe.as_deref() != Some(Path::new(path)));
    files.into_iter().find_map(|path| {
        let host = PathBuf::from(format!("/proc/{pid}/root{path}"));
        let (runtime_at, version_at) = exported(&host)?;
        let version = read_version(&host, version_at)?;
        let layout = layout_of(version)?;
        let runtime = address_of(&mappings, path, runtime_at)?;
        Some(Interpreter {
            version,
            runtime,
            layout,
        })
    })
}

/// File offsets of `_PyRuntime` and `Py_Version` in an ELF file, where it exports both.
fn exported(path: &Path) -> Option<(u64, u64)> {
    use blazesym::inspect::{Inspector, source::Elf, source::Source};
    let inspector = Inspector::new();
    let mut elf = Elf::new(path);
    elf.debug_syms = false;
    let found = inspector
        .lookup(&Source::Elf(elf), &["_PyRuntime", "Py_Version"])
        .ok()?;
    let offset = |i: usize| found.get(i)?.iter().find_map(|symbol| symbol.file_offset);
    Some((offset(0)?, offset(1)?))
}

/// `Py_Version` (PY_VERSION_HEX: 0x030b07f0 is 3.11.7) as (major, minor).
fn read_version(path: &Path, at: u64) -> Option<(u32, u32)> {
    let mut raw = [0u8; 4];
    File::open(path).ok()?.read_exact_at(&mut raw, at).ok()?;
    let hex = u32::from_le_bytes(raw);
    Some((hex >> 24, (hex >> 16) & 0xff))
}

/// A file-backed mapping of /proc/PID/maps.
#[derive(Debug, PartialEq, Eq)]
struct Mapping<'a> {
    start: u64,
    end: u64,
    offset: u64,
    path: &'a str,
}

fn parse_mappings(maps: &str) -> Vec<Mapping<'_>> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let _perms = fields.next()?;
            let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let _dev = fields.next()?;
            let _inode = fields.next()?;
            let path = fields.next()?.trim_start();
            if !path.starts_with('/') || path.ends_with(" (deleted)") {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset,
                path,
            })
        })
        .collect()
}

/// Where file offset `at` of `path` is mapped.
fn address_of(mappings: &[Mapping<'_>], path: &str, at: u64) -> Option<u64> {
    mappings.iter().find_map(|m| {
        (m.path == path && m.offset <= at && at < m.offset + (m.end - m.start))
            .then(|| m.start + (at - m.offset))
    })
}

/// A thread of a Python process and where its thread state keeps its current Context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextField {
    pub tid: u32,
    pub address: u64,
}

/// Reads `pid`'s thread states: for each thread of the process that has one, where its
/// `context` is. Err where the layout does not fit what the process holds.
///
/// `confirmed`: whether a Context was already seen through this layout in this process; if
/// not, one must be seen now (a thread whose context is still unset proves nothing).
pub fn context_fields(
    pid: u32,
    interpreter: &Interpreter,
    confirmed: bool,
) -> Result<Vec<ContextField>, PyError> {
    let mem = File::open(format!("/proc/{pid}/mem"))?;
    let read = |at: u64| read_u64(&mem, at);
    let layout = &interpreter.layout;
    let interp = read(interpreter.runtime + layout.runtime_interpreters)?;
    if interp == 0 {
        return Err(PyError::NoInterpreter);
    }
    let threads: HashSet<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    let mut fields = Vec::new();
    let mut context_seen = confirmed;
    let mut tstate = read(interp + layout.interp_threads)?;
    for _ in 0..MAX_THREADS {
        if tstate == 0 {
            break;
        }
        if read(tstate + layout.thread_interp)? != interp {
            return Err(PyError::Inconsistent);
        }
        let native = read(tstate + layout.thread_native_id)?;
        if let Ok(tid) = u32::try_from(native)
            && threads.contains(&tid)
        {
            let address = tstate + layout.thread_context;
            let context = read(address)?;
            if context != 0 && !context_seen {
                if !is_context(&mem, context)? {
                    return Err(PyError::NotAContext);
                }
                context_seen = true;
            }
            fields.push(ContextField { tid, address });
        }
        tstate = read(tstate + layout.thread_next)?;
    }
    if fields.is_empty() {
        return Err(PyError::NoThread);
    }
    if !context_seen {
        // Nothing proves the context offset yet: no keys until something does.
        return Ok(Vec::new());
    }
    Ok(fields)
}

/// The u64 at `at` in a process's memory.
fn read_u64(mem: &File, at: u64) -> Result<u64, PyError> {
    let mut raw = [0u8; 8];
    mem.read_exact_at(&mut raw, at)?;
    Ok(u64::from_le_bytes(raw))
}

/// Whether the object at `object` is a Context: `ob_type` (offset 8), whose `tp_name` (offset
/// 24) reads `_contextvars.Context`.
fn is_context(mem: &File, object: u64) -> Result<bool, PyError> {
    let read = |at: u64| read_u64(mem, at);
    let kind = read(object + 8)?;
    let name = read(kind + 24)?;
    let mut raw = [0u8; CONTEXT_TYPE.len() + 1];
    mem.read_exact_at(&mut raw, name)?;
    Ok(&raw[..CONTEXT_TYPE.len()] == CONTEXT_TYPE && raw[CONTEXT_TYPE.len()] == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_outside_the_table_get_no_layout() {
        assert!(layout_of((3, 11)).is_some());
        assert!(layout_of((3, 13)).is_some());
        assert_eq!(layout_of((3, 10)), None);
        assert_eq!(layout_of((3, 14)), None);
        assert_eq!(layout_of((2, 7)), None);
    }

    #[test]
    fn a_file_offset_is_found_in_the_mapping_that_holds_it() {
        let maps = "\
00400000-0041f000 r--p 00000000 fe:01 123 /usr/bin/python3.11
0041f000-006d2000 r-xp 0001f000 fe:01 123 /usr/bin/python3.11
00a5a000-00a9e000 rw-p 00659000 fe:01 123 /usr/bin/python3.11
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
7f0000002000-7f0000003000 r--p 00000000 fe:01 9 /lib/libc.so.6 (deleted)
";
        let mappings = parse_mappings(maps);
        assert_eq!(
            mappings.len(),
            3,
            "anonymous and deleted mappings are left out"
        );
        let path = "/usr/bin/python3.11";
        assert_eq!(address_of(&mappings, path, 0x0065_b740), Some(0x00a5_c740));
        assert_eq!(address_of(&mappings, path, 0x0100_0000), None);
        assert_eq!(address_of(&mappings, "/other", 0x10), None);
    }
}
