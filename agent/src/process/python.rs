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
    /// Where a thread's frames are read, and how a code object is read.
    pub frames: FrameLayout,
}

/// The part of a layout that reads a thread's Python frames (x86-64, release builds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// `PyThreadState.cframe` (3.11, 3.12) or `PyThreadState.current_frame` (3.13).
    pub thread_frame: u32,
    /// `_PyCFrame.current_frame`; None where the thread state points at the frame itself.
    pub cframe_current: Option<u32>,
    /// `_PyInterpreterFrame.f_code` (`f_executable`), `.previous`, `.prev_instr`
    /// (`instr_ptr`), and the marker byte (`is_entry` on 3.11, `owner` after).
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instr: u32,
    pub frame_marker: u32,
    /// How the marker byte ends a run of frames one C call of the eval loop runs.
    pub marker: Marker,
    /// `PyCodeObject.co_firstlineno`, `.co_code_adaptive` (the first instruction).
    pub code_firstlineno: u64,
    pub code_instructions: u64,
    /// `sizeof(PyASCIIObject)` and `sizeof(PyCompactUnicodeObject)`: where a compact
    /// string's characters start.
    pub ascii_size: u64,
    pub compact_size: u64,
}

/// What a frame's marker byte says about the run of frames one `_PyEval_EvalFrameDefault`
/// call executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// 3.11's `is_entry`: non-zero on the outermost frame of the run.
    IsEntry,
    /// 3.12's and 3.13's `owner`: `FRAME_OWNED_BY_CSTACK` (3) marks the eval loop's own shim
    /// frame, which sits outside each run and is no Python function.
    OwnerCStack,
}

/// `PyCodeObject.co_filename`, `.co_qualname`, `.co_linetable` (the same on 3.11-3.13).
pub const CODE_FILENAME: u64 = 112;
pub const CODE_QUALNAME: u64 = 128;
pub const CODE_LINETABLE: u64 = 136;
/// `PyVarObject.ob_size` (a code object's instructions; a bytes object's length) and
/// `PyBytesObject.ob_sval`; `PyASCIIObject.length` and `.state`.
const VAR_SIZE: u64 = 16;
const BYTES_DATA: u64 = 32;
const STR_LENGTH: u64 = 16;
const STR_STATE: u64 = 32;

/// Layouts by (major, minor), each from `offsetof` compiled against that version's headers
/// (with `Py_BUILD_CORE`, for the internal frame and code structs) and checked on a live
/// interpreter of it (3.11.2 Debian, 3.11.7, 3.12.1, 3.13.0).
const LAYOUTS: &[((u32, u32), PyLayout)] = &[
    (
        (3, 11),
        layout(
            40,
            16,
            160,
            224,
            FrameLayout {
                thread_frame: 56,
                cframe_current: Some(8),
                frame_code: 32,
                frame_previous: 48,
                frame_instr: 56,
                frame_marker: 68,
                marker: Marker::IsEntry,
                code_firstlineno: 72,
                code_instructions: 184,
                ascii_size: 48,
                compact_size: 72,
            },
        ),
    ),
    (
        (3, 12),
        layout(
            40,
            72,
            144,
            208,
            FrameLayout {
                thread_frame: 56,
                cframe_current: Some(0),
                frame_code: 0,
                frame_previous: 8,
                frame_instr: 56,
                frame_marker: 70,
                marker: Marker::OwnerCStack,
                code_firstlineno: 68,
                code_instructions: 192,
                ascii_size: 40,
                compact_size: 56,
            },
        ),
    ),
    (
        (3, 13),
        layout(
            632,
            7344,
            160,
            208,
            FrameLayout {
                thread_frame: 72,
                cframe_current: None,
                frame_code: 0,
                frame_previous: 8,
                frame_instr: 56,
                frame_marker: 70,
                marker: Marker::OwnerCStack,
                code_firstlineno: 68,
                code_instructions: 200,
                ascii_size: 40,
                compact_size: 56,
            },
        ),
    ),
];

const fn layout(
    interpreters: u64,
    threads: u64,
    native_id: u64,
    context: u64,
    frames: FrameLayout,
) -> PyLayout {
    PyLayout {
        runtime_interpreters: interpreters,
        interp_threads: threads,
        thread_next: 8,
        thread_interp: 16,
        thread_native_id: native_id,
        thread_context: context,
        frames,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpreter {
    pub version: (u32, u32),
    /// Where `_PyRuntime` is in the process.
    pub runtime: u64,
    pub layout: PyLayout,
    /// The file name of the module that holds the interpreter (its executable, or its
    /// libpython), as stacks name it.
    pub module: String,
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
    #[error("a thread's frame does not hold a code object (unexpected layout)")]
    NotACode,
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
            module: path.rsplit('/').next().unwrap_or(path).to_owned(),
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

/// A thread of a Python process and its thread state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadState {
    pub tid: u32,
    pub tstate: u64,
}

/// A Python process's memory, read through /proc/PID/mem.
pub struct Memory(File);

impl Memory {
    pub fn open(pid: u32) -> Result<Self, PyError> {
        Ok(Self(File::open(format!("/proc/{pid}/mem"))?))
    }

    fn u64(&self, at: u64) -> Result<u64, PyError> {
        let mut raw = [0u8; 8];
        self.0.read_exact_at(&mut raw, at)?;
        Ok(u64::from_le_bytes(raw))
    }

    fn i32(&self, at: u64) -> Result<i32, PyError> {
        let mut raw = [0u8; 4];
        self.0.read_exact_at(&mut raw, at)?;
        Ok(i32::from_le_bytes(raw))
    }

    fn bytes(&self, at: u64, len: usize) -> Result<Vec<u8>, PyError> {
        let mut raw = vec![0u8; len];
        self.0.read_exact_at(&mut raw, at)?;
        Ok(raw)
    }

    /// Whether the object at `object` has type `name`: `ob_type` (offset 8), whose `tp_name`
    /// (offset 24) reads `name`.
    fn is_a(&self, object: u64, name: &[u8]) -> Result<bool, PyError> {
        let kind = self.u64(object + 8)?;
        let at = self.u64(kind + 24)?;
        let raw = self.bytes(at, name.len() + 1)?;
        Ok(&raw[..name.len()] == name && raw[name.len()] == 0)
    }

    /// The compact `str` at `object` (every name and file name of a code object is one).
    fn str(&self, object: u64, layout: &FrameLayout) -> Result<String, PyError> {
        let length = self.u64(object + STR_LENGTH)?;
        let state = self.i32(object + STR_STATE)? as u32;
        let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
        if compact == 0 || length > MAX_STR || !matches!(kind, 1 | 2 | 4) {
            return Err(PyError::NotACode);
        }
        let data = if ascii == 1 {
            layout.ascii_size
        } else {
            layout.compact_size
        };
        let raw = self.bytes(object + data, length as usize * kind as usize)?;
        Ok(match kind {
            1 => raw.iter().map(|&b| char::from(b)).collect(),
            2 => String::from_utf16_lossy(
                &raw.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect::<Vec<_>>(),
            ),
            _ => raw
                .chunks_exact(4)
                .map(|c| {
                    char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .unwrap_or(char::REPLACEMENT_CHARACTER)
                })
                .collect(),
        })
    }
}

/// Characters of a name read at most.
const MAX_STR: u64 = 4096;
/// Bytes of a line table read at most.
const MAX_LINETABLE: u64 = 1 << 20;
/// The type name of a code object.
const CODE_TYPE: &[u8] = b"code";

/// What a code object says of itself: enough to name a frame and find its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Code {
    pub qualname: String,
    pub filename: String,
    pub first_line: u32,
    /// `co_linetable` (the 3.11+ location table).
    pub linetable: Vec<u8>,
    /// Where its instructions start in the process, and how many code units it has.
    pub instructions: u64,
    pub units: u64,
}

/// Reads the code object at `code`; Err where it is not one.
pub fn read_code(mem: &Memory, code: u64, layout: &FrameLayout) -> Result<Code, PyError> {
    if code == 0 || !mem.is_a(code, CODE_TYPE)? {
        return Err(PyError::NotACode);
    }
    let table = mem.u64(code + CODE_LINETABLE)?;
    let table_len = mem.u64(table + VAR_SIZE)?;
    if table_len > MAX_LINETABLE {
        return Err(PyError::NotACode);
    }
    Ok(Code {
        qualname: mem.str(mem.u64(code + CODE_QUALNAME)?, layout)?,
        filename: mem.str(mem.u64(code + CODE_FILENAME)?, layout)?,
        first_line: u32::try_from(mem.i32(code + layout.code_firstlineno)?).unwrap_or(0),
        linetable: mem.bytes(table + BYTES_DATA, table_len as usize)?,
        instructions: code + layout.code_instructions,
        units: mem.u64(code + VAR_SIZE)?,
    })
}

/// Reads `pid`'s thread states: those of the threads the process has now. Err where the
/// layout does not fit what the process holds.
pub fn thread_states(pid: u32, interpreter: &Interpreter) -> Result<Vec<ThreadState>, PyError> {
    let mem = Memory::open(pid)?;
    let layout = &interpreter.layout;
    let interp = mem.u64(interpreter.runtime + layout.runtime_interpreters)?;
    if interp == 0 {
        return Err(PyError::NoInterpreter);
    }
    let threads: HashSet<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    let mut states = Vec::new();
    let mut tstate = mem.u64(interp + layout.interp_threads)?;
    for _ in 0..MAX_THREADS {
        if tstate == 0 {
            break;
        }
        if mem.u64(tstate + layout.thread_interp)? != interp {
            return Err(PyError::Inconsistent);
        }
        let native = mem.u64(tstate + layout.thread_native_id)?;
        if let Ok(tid) = u32::try_from(native)
            && threads.contains(&tid)
        {
            states.push(ThreadState { tid, tstate });
        }
        tstate = mem.u64(tstate + layout.thread_next)?;
    }
    if states.is_empty() {
        return Err(PyError::NoThread);
    }
    Ok(states)
}

/// Whether the layout's `context` offset is proven on `pid`: Ok(true) when some thread's
/// Context is set and is a Context object, Ok(false) while none is set (that proves nothing),
/// Err when one is set to something else.
pub fn contexts_fit(
    pid: u32,
    interpreter: &Interpreter,
    states: &[ThreadState],
) -> Result<bool, PyError> {
    let mem = Memory::open(pid)?;
    for state in states {
        let context = mem.u64(state.tstate + interpreter.layout.thread_context)?;
        if context != 0 {
            return if mem.is_a(context, CONTEXT_TYPE)? {
                Ok(true)
            } else {
                Err(PyError::NotAContext)
            };
        }
    }
    Ok(false)
}

/// Whether the layout's frame offsets are proven on `pid`: Ok(true) when some thread's
/// innermost Python frame (past the eval loop's shim frames) holds a code object, Ok(false)
/// while no thread runs Python code, Err when a frame holds something else.
pub fn frames_fit(
    pid: u32,
    interpreter: &Interpreter,
    states: &[ThreadState],
) -> Result<bool, PyError> {
    let mem = Memory::open(pid)?;
    let frames = &interpreter.layout.frames;
    for state in states {
        let mut frame = mem.u64(state.tstate + u64::from(frames.thread_frame))?;
        if let Some(current) = frames.cframe_current {
            if frame == 0 {
                continue;
            }
            frame = mem.u64(frame + u64::from(current))?;
        }
        for _ in 0..8 {
            if frame == 0 {
                break;
            }
            let marker = mem.bytes(frame + u64::from(frames.frame_marker), 1)?[0];
            if frames.marker == Marker::OwnerCStack && marker == OWNED_BY_CSTACK {
                frame = mem.u64(frame + u64::from(frames.frame_previous))?;
                continue;
            }
            let code = mem.u64(frame + u64::from(frames.frame_code))?;
            return match read_code(&mem, code, frames) {
                Ok(_) => Ok(true),
                Err(PyError::Memory(err)) => Err(PyError::Memory(err)),
                Err(_) => Err(PyError::NotACode),
            };
        }
    }
    Ok(false)
}

/// 3.12's and 3.13's `FRAME_OWNED_BY_CSTACK`.
pub const OWNED_BY_CSTACK: u8 = 3;

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
