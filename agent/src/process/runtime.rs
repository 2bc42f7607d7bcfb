//! How a target schedules its requests onto threads, read from its executable: the parent rule
//! (`spans::parent`) trusts a thread as the key only where a request stays on one.
//!
//! - A Go binary (its ELF has `.go.buildinfo` or `.gopclntab`, which stripping keeps) runs
//!   goroutines on whatever thread is free. Where its Go version (in `.go.buildinfo`) is one
//!   whose runtime layout loupe knows, the kernel reads the running goroutine's id at each
//!   syscall and the goroutine is the key: [`Runtime::Goroutines`]. Otherwise
//!   [`Runtime::SharedThreads`].
//! - nginx runs each event to completion on its worker's one thread:
//!   [`Runtime::RunToCompletion`].
//! - CPython 3.11-3.13 (its executable or libpython exports `_PyRuntime`): the kernel reads each
//!   thread's current contextvars Context (`process::python`): [`Runtime::Tasks`].
//! - Everything else: [`Runtime::Threads`].

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    sync::atomic::{AtomicBool, Ordering},
};

use loupe_common::GoLayout;

pub use crate::spans::parent::Runtime;

/// Section names only Go's toolchain writes.
const GO_SECTIONS: &[&str] = &[".go.buildinfo", ".gopclntab"];
/// Executables known to run each event to completion.
const RUN_TO_COMPLETION: &[&str] = &["nginx"];

/// What the Go probes read, by Go version (major 1, minor), on x86-64: the byte offsets in
/// `runtime.g` of `goid`, `parentGoid` and `m`, in `runtime.m` of `p`, in `runtime.p` of
/// `goidcache`, each read from the DWARF of a build by that version's own toolchain. Versions
/// outside the table get no goroutine keys: loupe does not guess a layout.
const GO_LAYOUTS: &[(u32, GoLayout)] = &[
    (21, layout(152, 272, 208, 384)),
    (22, layout(152, 272, 208, 384)),
    (23, layout(160, 280, 208, 376)),
    (24, layout(160, 280, 208, 376)),
    (25, layout(152, 272, 200, 376)),
    (26, layout(152, 280, 208, 384)),
];

const fn layout(g_goid: u32, g_parent_goid: u32, m_p: u32, p_goidcache: u32) -> GoLayout {
    GoLayout {
        g_goid,
        g_parent_goid,
        g_m: 48,
        m_p,
        p_goidcache,
        _pad: 0,
    }
}

/// Whether loupe reads runtimes' own units of work (goroutines, asyncio tasks): set once at start
/// (`--no-runtime-adapters` clears it), read by everything that would read them, so the kernel
/// side and the parent rule always agree.
static ADAPTERS: AtomicBool = AtomicBool::new(true);

/// Turns the runtime adapters on or off (at start, before anything attaches).
pub fn set_adapters(on: bool) {
    ADAPTERS.store(on, Ordering::Relaxed);
}

pub fn adapters() -> bool {
    ADAPTERS.load(Ordering::Relaxed)
}

/// The runtime layout of `pid`'s executable, when it is an x86-64 Go program of a version in
/// [`GO_LAYOUTS`] (and the adapters are on).
pub fn go_layout(pid: u32) -> Option<GoLayout> {
    if !adapters() {
        return None;
    }
    let mut file = File::open(format!("/proc/{pid}/exe")).ok()?;
    let version = go_version(&mut file)?;
    layout_of(&version)
}

fn layout_of(version: &str) -> Option<GoLayout> {
    let minor: u32 = version
        .strip_prefix("go1.")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    GO_LAYOUTS
        .iter()
        .find(|(known, _)| *known == minor)
        .map(|(_, layout)| *layout)
}

/// The Go version an x86-64 executable was built with (`go1.26.8`), from its `.go.buildinfo`:
/// the magic `\xff Go buildinf:`, pointer size, flags (0x2: the strings are inline, Go 1.18+),
/// then at offset 32 the version as a varint-prefixed string.
pub fn go_version(file: &mut (impl Read + Seek)) -> Option<String> {
    const EM_X86_64: u16 = 62;
    let sections = sections(file)?;
    if sections.machine != EM_X86_64 {
        return None;
    }
    let info = sections.list.iter().find(|s| s.name == ".go.buildinfo")?;
    let mut head = [0u8; 32 + 1 + 64];
    file.seek(SeekFrom::Start(info.offset)).ok()?;
    let n = file.read(&mut head).ok()?;
    let head = &head[..n];
    if head.get(..14)? != b"\xff Go buildinf:" || head.get(15)? & 0x2 == 0 {
        return None;
    }
    let len = usize::from(*head.get(32)?);
    if len >= 0x80 {
        return None;
    }
    let version = head.get(33..33 + len)?;
    Some(String::from_utf8_lossy(version).into_owned())
}

/// The runtime of `pid`; [`Runtime::Threads`] when its executable cannot be read.
pub fn runtime_of(pid: u32) -> Runtime {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let name = exe
        .as_ref()
        .and_then(|path| path.file_name())
        .map(|name| name.to_string_lossy().into_owned());
    if name
        .as_deref()
        .is_some_and(|name| RUN_TO_COMPLETION.contains(&name))
    {
        return Runtime::RunToCompletion;
    }
    // Through /proc/PID/exe, so a binary in another mount namespace or since deleted is read.
    let go = File::open(format!("/proc/{pid}/exe"))
        .is_ok_and(|mut file| elf_has_section(&mut file, GO_SECTIONS));
    match (go, go_layout(pid)) {
        (true, Some(_)) => Runtime::Goroutines,
        (true, None) => Runtime::SharedThreads,
        _ if adapters() && super::python::interpreter(pid).is_some() => Runtime::Tasks,
        _ => Runtime::Threads,
    }
}

/// File offsets where uprobes go for the Go functions `names` in an x86-64 Go executable,
/// stripped or not, from its `.gopclntab`: Go's text starts where the ELF entry point (Go's own
/// `_rt0_amd64_linux`, when the Go linker linked it) says, else at the table's `textStart`.
/// Every function is checked to start with the stack-bound check Go compiles into each of its
/// functions (`cmp rsp|r12, [r14+16]`, after a `lea r12, [rsp-N]` in large frames, then a `jbe`
/// to morestack): one that does not is None, never a guess (a uprobe inside an instruction
/// would break the target). The offset is that of the `push rbp` right after the check, where
/// there is one: the kernel emulates a push, while it single-steps the `cmp` with its memory
/// operand (several microseconds a hit), and a function entered again after its stack grew
/// fires once. The registers the probes read (the arguments, r14) are the entry's there.
pub fn go_function_offsets(
    file: &mut (impl Read + Seek),
    names: &[&str],
) -> Option<Vec<Option<u64>>> {
    const MAX_TABLE: u64 = 256 << 20;
    let sections = sections(file)?;
    let table = sections.list.iter().find(|s| s.name == ".gopclntab")?;
    let text = sections.list.iter().find(|s| s.name == ".text")?;
    if table.size > MAX_TABLE {
        return None;
    }
    let mut bytes = vec![0u8; table.size as usize];
    file.seek(SeekFrom::Start(table.offset)).ok()?;
    file.read_exact(&mut bytes).ok()?;
    let mut wanted = names.to_vec();
    wanted.push("_rt0_amd64_linux");
    let (text_start, found) = super::gopclntab::entries(&bytes, &wanted)?;
    let base = match found.last().copied().flatten() {
        Some(rt0) if sections.entry >= rt0 => sections.entry - rt0,
        _ if text_start != 0 => text_start,
        _ => return None,
    };
    let text_end = text.addr.checked_add(text.size)?;
    Some(
        found[..names.len()]
            .iter()
            .map(|entry| {
                let addr = base.checked_add((*entry)?)?;
                if addr < text.addr || addr >= text_end {
                    return None;
                }
                let offset = addr - text.addr + text.offset;
                let mut head = [0u8; 20];
                file.seek(SeekFrom::Start(offset)).ok()?;
                file.read_exact(&mut head).ok()?;
                go_probe_offset(&head).map(|past| offset + past)
            })
            .collect(),
    )
}

/// Where in a function beginning with `code` its uprobe goes: past the stack-bound check of a
/// Go (ABIInternal) function when a `push rbp` follows it, else 0 (its first instruction); None
/// when `code` does not begin with that check.
fn go_probe_offset(code: &[u8; 20]) -> Option<u64> {
    const CHECK_RSP: [u8; 4] = [0x49, 0x3b, 0x66, 0x10];
    const CHECK_R12: [u8; 4] = [0x4d, 0x3b, 0x66, 0x10];
    let check_end = if code[..4] == CHECK_RSP {
        4
    } else if code[..4] == [0x4c, 0x8d, 0x64, 0x24] && code[5..9] == CHECK_R12 {
        9
    } else if code[..4] == [0x4c, 0x8d, 0xa4, 0x24] && code[8..12] == CHECK_R12 {
        12
    } else {
        return None;
    };
    // jbe rel8 or jbe rel32 (to the morestack call at the function's end), then push rbp.
    let push_at = match code[check_end] {
        0x76 => check_end + 2,
        0x0f if code[check_end + 1] == 0x86 => check_end + 6,
        _ => return Some(0),
    };
    Some(if code[push_at] == 0x55 {
        push_at as u64
    } else {
        0
    })
}

/// Whether a little-endian ELF64 file has a section with one of `names`. Reads only the
/// headers and the section-name table; anything malformed answers false.
pub fn elf_has_section(file: &mut (impl Read + Seek), names: &[&str]) -> bool {
    sections(file).is_some_and(|found| found.list.iter().any(|s| names.contains(&s.name.as_str())))
}

/// What loupe reads of an ELF file: its machine, entry point and sections.
struct Sections {
    machine: u16,
    entry: u64,
    list: Vec<Section>,
}

struct Section {
    name: String,
    /// Its virtual address.
    addr: u64,
    /// Where its bytes are in the file.
    offset: u64,
    size: u64,
}

/// The sections of a little-endian ELF64 file, or None where it is not one (or is malformed,
/// or outside sane bounds).
fn sections(file: &mut (impl Read + Seek)) -> Option<Sections> {
    const SHDR_LEN: usize = 64;
    let mut header = [0u8; 64];
    file.read_exact(&mut header).ok()?;
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let shoff = u64_at(&header, 0x28);
    let shentsize = usize::from(u16_at(&header, 0x3a));
    let shnum = usize::from(u16_at(&header, 0x3c));
    let shstrndx = usize::from(u16_at(&header, 0x3e));
    if shentsize != SHDR_LEN || shnum == 0 || shnum > 4096 || shstrndx >= shnum {
        return None;
    }
    let mut table = vec![0u8; shnum * SHDR_LEN];
    file.seek(SeekFrom::Start(shoff)).ok()?;
    file.read_exact(&mut table).ok()?;
    let strtab = &table[shstrndx * SHDR_LEN..(shstrndx + 1) * SHDR_LEN];
    let (str_offset, str_size) = (u64_at(strtab, 0x18), u64_at(strtab, 0x20));
    if str_size > 1 << 20 {
        return None;
    }
    let mut strings = vec![0u8; str_size as usize];
    file.seek(SeekFrom::Start(str_offset)).ok()?;
    file.read_exact(&mut strings).ok()?;
    let list = table
        .chunks_exact(SHDR_LEN)
        .filter_map(|section| {
            let start = u32_at(section, 0) as usize;
            let rest = strings.get(start..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            Some(Section {
                name: String::from_utf8_lossy(&rest[..end]).into_owned(),
                addr: u64_at(section, 0x10),
                offset: u64_at(section, 0x18),
                size: u64_at(section, 0x20),
            })
        })
        .collect();
    Some(Sections {
        machine: u16_at(&header, 0x12),
        entry: u64_at(&header, 0x18),
        list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn code(bytes: &[u8]) -> [u8; 20] {
        let mut out = [0xccu8; 20];
        out[..bytes.len()].copy_from_slice(bytes);
        out
    }

    #[test]
    fn go_probes_go_past_the_stack_check_onto_push_rbp() {
        // runtime.newproc (go1.26): cmp rsp,[r14+16]; jbe rel8; push rbp
        let small = code(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x4c, 0x55, 0x48, 0x89, 0xe5]);
        assert_eq!(go_probe_offset(&small), Some(6));
        // net/http.(*Request).write: lea r12,[rsp-0x120]; cmp r12,[r14+16]; jbe rel32; push rbp
        let large = code(&[
            0x4c, 0x8d, 0xa4, 0x24, 0xe0, 0xfe, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
            0x0a, 0x0e, 0x00, 0x00, 0x55,
        ]);
        assert_eq!(go_probe_offset(&large), Some(18));
        // lea r12,[rsp-0x40] (disp8); cmp; jbe rel8; push rbp
        let medium = code(&[
            0x4c, 0x8d, 0x64, 0x24, 0xc0, 0x4d, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55,
        ]);
        assert_eq!(go_probe_offset(&medium), Some(11));
        // The check without a frame push after it: the function's first instruction.
        let frameless = code(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x4c, 0x48, 0x83]);
        assert_eq!(go_probe_offset(&frameless), Some(0));
        // Not a Go function's start: no probe.
        assert_eq!(go_probe_offset(&code(&[0x55, 0x48, 0x89, 0xe5])), None);
    }

    /// A minimal ELF64 LSB file: the header, a name table, and section headers for a null
    /// section, the name table and each of `sections`.
    fn elf(sections: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut name_offsets = Vec::new();
        for name in std::iter::once(".shstrtab").chain(sections.iter().copied()) {
            name_offsets.push(strings.len() as u32);
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
        }
        let str_offset = 64u64;
        let shoff = str_offset + strings.len() as u64;
        let shnum = 2 + sections.len() as u16;
        let mut file = vec![0u8; 64];
        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = 2;
        file[5] = 1;
        file[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        file[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        file[0x3c..0x3e].copy_from_slice(&shnum.to_le_bytes());
        file[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        file.extend_from_slice(&strings);
        file.extend_from_slice(&[0u8; 64]);
        for (i, offset) in name_offsets.iter().enumerate() {
            let mut header = [0u8; 64];
            header[..4].copy_from_slice(&offset.to_le_bytes());
            if i == 0 {
                header[0x18..0x20].copy_from_slice(&str_offset.to_le_bytes());
                header[0x20..0x28].copy_from_slice(&(strings.len() as u64).to_le_bytes());
            }
            file.extend_from_slice(&header);
        }
        file
    }

    #[test]
    fn a_go_section_is_found_among_the_others() {
        let go = elf(&[".text", ".gopclntab", ".data"]);
        assert!(elf_has_section(&mut Cursor::new(go), GO_SECTIONS));
        let stripped = elf(&[".text", ".go.buildinfo"]);
        assert!(elf_has_section(&mut Cursor::new(stripped), GO_SECTIONS));
        let c = elf(&[".text", ".data", ".eh_frame"]);
        assert!(!elf_has_section(&mut Cursor::new(c), GO_SECTIONS));
    }

    #[test]
    fn what_is_not_an_elf_file_has_no_sections() {
        assert!(!elf_has_section(
            &mut Cursor::new(b"#!/bin/sh\n".to_vec()),
            GO_SECTIONS
        ));
        let mut cut = elf(&[".gopclntab"]);
        cut.truncate(100);
        assert!(!elf_has_section(&mut Cursor::new(cut), GO_SECTIONS));
        let mut wild = elf(&[".gopclntab"]);
        wild[0x3c..0x3e].copy_from_slice(&60_000u16.to_le_bytes());
        assert!(!elf_has_section(&mut Cursor::new(wild), GO_SECTIONS));
    }

    #[test]
    fn the_layout_follows_the_go_version() {
        let goid = |version: &str| layout_of(version).map(|l| l.g_goid);
        assert_eq!(goid("go1.22.12"), Some(152));
        assert_eq!(goid("go1.23.4"), Some(160));
        assert_eq!(goid("go1.24.0"), Some(160));
        assert_eq!(goid("go1.26.8"), Some(152));
        assert_eq!(goid("go1.26rc1"), Some(152));
        assert_eq!(layout_of("go1.25.1").map(|l| l.m_p), Some(200));
        assert_eq!(goid("go1.20.5"), None, "before the table");
        assert_eq!(goid("go1.27.0"), None, "after it: no guess");
        assert_eq!(goid("devel +abc"), None);
    }

    #[test]
    fn a_go_version_is_read_from_build_info() {
        let mut file = elf(&[".text", ".go.buildinfo"]);
        file[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        // Point .go.buildinfo (the third section header) at a blob appended to the file.
        let shoff = u64::from_le_bytes(file[0x28..0x30].try_into().unwrap()) as usize;
        let at = file.len() as u64;
        let header = shoff + 3 * 64;
        file[header + 0x18..header + 0x20].copy_from_slice(&at.to_le_bytes());
        let mut info = b"\xff Go buildinf:\x08\x02".to_vec();
        info.resize(32, 0);
        info.push(8);
        info.extend_from_slice(b"go1.26.8");
        file.extend_from_slice(&info);
        assert_eq!(
            go_version(&mut Cursor::new(file.clone())).as_deref(),
            Some("go1.26.8")
        );
        file[0x12..0x14].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(
            go_version(&mut Cursor::new(file)),
            None,
            "arm64: g is not in r14"
        );
    }

    #[test]
    fn this_test_binary_is_read_and_is_not_go() {
        assert_eq!(runtime_of(std::process::id()), Runtime::Threads);
        let mut exe = File::open("/proc/self/exe").unwrap();
        assert!(elf_has_section(&mut exe, &[".text"]));
    }
}
