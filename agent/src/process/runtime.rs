//! How a target schedules its requests onto threads, read from its executable: the parent rule
//! (`spans::parent`) trusts a thread as the key only where a request stays on one.
//!
//! - A Go binary (its ELF has `.go.buildinfo` or `.gopclntab`, which stripping keeps) runs
//!   goroutines on whatever thread is free: [`Runtime::SharedThreads`].
//! - nginx runs each event to completion on its worker's one thread:
//!   [`Runtime::RunToCompletion`].
//! - Everything else: [`Runtime::Threads`].

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
};

pub use crate::spans::parent::Runtime;

/// Section names only Go's toolchain writes.
const GO_SECTIONS: &[&str] = &[".go.buildinfo", ".gopclntab"];
/// Executables known to run each event to completion.
const RUN_TO_COMPLETION: &[&str] = &["nginx"];

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
    if go {
        Runtime::SharedThreads
    } else {
        Runtime::Threads
    }
}

/// Whether a little-endian ELF64 file has a section with one of `names`. Reads only the
/// headers and the section-name table; anything malformed answers false.
pub fn elf_has_section(file: &mut (impl Read + Seek), names: &[&str]) -> bool {
    section_names(file).is_some_and(|found| found.iter().any(|n| names.contains(&n.as_str())))
}

/// The section names of a little-endian ELF64 file, or None where it is not one (or is
/// malformed, or outside sane bounds).
fn section_names(file: &mut (impl Read + Seek)) -> Option<Vec<String>> {
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
    let names = table
        .chunks_exact(SHDR_LEN)
        .filter_map(|section| {
            let start = u32_at(section, 0) as usize;
            let rest = strings.get(start..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            Some(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .collect();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

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
    fn this_test_binary_is_read_and_is_not_go() {
        assert_eq!(runtime_of(std::process::id()), Runtime::Threads);
        let mut exe = File::open("/proc/self/exe").unwrap();
        assert!(elf_has_section(&mut exe, &[".text"]));
    }
}
