//! Unwinding a sample's user stack from the copy the kernel took, with each module's
//! `.eh_frame` (DWARF CFI), so that code built without frame pointers (Debian's libraries, Rust
//! release binaries) still gives the whole stack. framehop does the unwinding and falls back to
//! frame pointers where a module has no unwind information; this module feeds it the process's
//! modules (read from `/proc/PID/maps`, the files mapped from `/proc/PID/map_files`) and the
//! stack bytes.
//!
//! It runs on the symbolizer's thread: it reads files, and it never runs on the async runtime.

use std::{collections::HashMap, fs::File, ops::Range, sync::Arc, time::Instant};

use framehop::{
    Module, ModuleSectionInfo, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use memmap2::Mmap;
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use crate::events::UnwindInput;

/// Frames unwound at most per sample.
pub const MAX_FRAMES: usize = 128;
/// Processes whose modules are kept (past it, all are forgotten and read again when needed).
const MAX_PROCESSES: usize = 64;
/// A process's modules are read again at most this often (a sample outside all of them: a
/// library loaded since).
const REREAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A user stack, innermost first: the sampled instruction pointer, then each caller's address
/// (its return address minus one, inside the call instruction).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unwound {
    pub frames: Vec<u64>,
    /// The unwinding reached the stack's root; false when it stopped on the way (no unwind
    /// information, the copy too short, the frame limit).
    pub complete: bool,
}

/// Part of a mapped file: what framehop reads a module's sections from.
#[derive(Clone)]
pub struct Section {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl std::ops::Deref for Section {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

struct Process {
    unwinder: UnwinderX86_64<Section>,
    /// Where its modules are mapped.
    ranges: Vec<Range<u64>>,
    read_at: Instant,
}

/// Unwinders per process, with their modules.
pub struct Unwinders {
    processes: HashMap<u32, Process>,
    cache: CacheX86_64,
}

impl Default for Unwinders {
    fn default() -> Self {
        Self::new()
    }
}

impl Unwinders {
    pub fn new() -> Self {
        Self {
            processes: HashMap::new(),
            cache: CacheX86_64::new(),
        }
    }

    /// Unwinds one sample of process `pid`.
    pub fn unwind(&mut self, pid: u32, input: &UnwindInput) -> Unwound {
        let stale = self.processes.get(&pid).is_none_or(|process| {
            !process.ranges.iter().any(|r| r.contains(&input.ip))
                && process.read_at.elapsed() >= REREAD_EVERY
        });
        if stale {
            if self.processes.len() >= MAX_PROCESSES {
                self.processes.clear();
            }
            self.processes.insert(pid, read_process(pid));
        }
        let Some(process) = self.processes.get(&pid) else {
            return Unwound::default();
        };
        unwind_with(&process.unwinder, &mut self.cache, input)
    }
}

fn unwind_with(
    unwinder: &UnwinderX86_64<Section>,
    cache: &mut CacheX86_64,
    input: &UnwindInput,
) -> Unwound {
    let (sp, stack) = (input.sp, &input.stack);
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        let offset = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
        let bytes = stack
            .get(offset..offset.checked_add(8).ok_or(())?)
            .ok_or(())?;
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
    };
    let mut frames = unwinder.iter_frames(
        input.ip,
        UnwindRegsX86_64::new(input.ip, input.sp, input.bp),
        cache,
        &mut read_stack,
    );
    let mut out = Unwound::default();
    while out.frames.len() < MAX_FRAMES {
        match frames.next() {
            Ok(Some(frame)) => out.frames.push(frame.address_for_lookup()),
            Ok(None) => {
                out.complete = true;
                break;
            }
            Err(_) => break,
        }
    }
    out
}

/// The process's executable file mappings as framehop modules (those that cannot be read are
/// left out: unwinding through them falls back to frame pointers).
fn read_process(pid: u32) -> Process {
    let mut unwinder = UnwinderX86_64::new();
    let mut ranges = Vec::new();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    for file in file_mappings(&maps) {
        if let Some(module) = load_module(pid, &file) {
            ranges.push(module.avma_range());
            unwinder.add_module(module);
        }
    }
    Process {
        unwinder,
        ranges,
        read_at: Instant::now(),
    }
}

/// One file's executable mappings in a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMapping {
    pub path: String,
    /// The first executable mapping: its addresses and the file offset of its start.
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// From the first executable mapping's start to the last one's end.
    pub range: Range<u64>,
}

/// The executable mappings of files in a maps file, one per file, by address.
pub fn file_mappings(maps: &str) -> Vec<FileMapping> {
    let mut out: Vec<FileMapping> = Vec::new();
    for line in maps.lines().filter_map(super::maps::exec_line) {
        let (start, end, offset) = (line.start, line.end, line.offset);
        // A deleted file is still mapped ("(deleted)" follows): map_files still opens it.
        let path = line.path.trim_end_matches(" (deleted)");
        if !path.starts_with('/') {
            continue;
        }
        match out.iter_mut().find(|m| m.path == path) {
            Some(known) => {
                known.range.start = known.range.start.min(start);
                known.range.end = known.range.end.max(end);
            }
            None => out.push(FileMapping {
                path: path.to_owned(),
                start,
                end,
                offset,
                range: start..end,
            }),
        }
    }
    out.sort_by_key(|m| m.range.start);
    out
}

/// The module of one mapped file: its sections read from the file the process mapped.
fn load_module(pid: u32, mapping: &FileMapping) -> Option<Module<Section>> {
    let opened = File::open(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    ))
    .or_else(|_| File::open(format!("/proc/{pid}/root{}", mapping.path)))
    .ok()?;
    // SAFETY: the map is read only; a file changed under it (a library replaced in place,
    // which package managers never do: they rename) would give wrong unwinding, not UB in
    // safe code reading the bytes, since they are only ever read as bytes.
    let map = Arc::new(unsafe { Mmap::map(&opened) }.ok()?);
    let file = object::File::parse(&map[..]).ok()?;
    let bias = load_bias(&file, mapping)?;
    let info = ElfSections {
        file: &file,
        map: map.clone(),
    };
    Some(Module::new(
        mapping.path.clone(),
        mapping.range.clone(),
        bias,
        info,
    ))
}

/// Where the file's address 0 is in the process. The kernel maps a loadable segment from its
/// file offset rounded down to a page, at its address rounded down alike: the segment whose
/// rounded offset is the mapping's gives the bias (the mapping's start less its rounded
/// address).
fn load_bias(file: &object::File<'_>, mapping: &FileMapping) -> Option<u64> {
    const PAGE: u64 = 4096;
    file.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let page_offset = offset & !(PAGE - 1);
        (page_offset == mapping.offset && size > 0)
            .then(|| mapping.start.wrapping_sub(segment.address() & !(PAGE - 1)))
    })
}

/// A module's sections as framehop asks for them (ELF: the base address is 0).
struct ElfSections<'a> {
    file: &'a object::File<'a>,
    map: Arc<Mmap>,
}

impl ModuleSectionInfo<Section> for ElfSections<'_> {
    fn base_svma(&self) -> u64 {
        0
    }

    fn section_svma_range(&mut self, name: &[u8]) -> Option<Range<u64>> {
        let section = self.file.section_by_name_bytes(name)?;
        Some(section.address()..section.address() + section.size())
    }

    fn section_data(&mut self, name: &[u8]) -> Option<Section> {
        let section = self.file.section_by_name_bytes(name)?;
        let (offset, size) = section.file_range()?;
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        (end <= self.map.len()).then(|| Section {
            map: self.map.clone(),
            range: start..end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_executable_mappings_are_one_module() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:01 123 /usr/bin/app
55d0c0100000-55d0c0500000 r-xp 00100000 fe:01 123 /usr/bin/app
55d0c0500000-55d0c0600000 r--p 00500000 fe:01 123 /usr/bin/app
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f1000028000-7f10001bd000 r-xp 00028000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
7f2000000000-7f2000001000 r-xp 00000000 fe:01 789 /tmp/old.so (deleted)
";
        let mappings = file_mappings(maps);
        let paths: Vec<&str> = mappings.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr/bin/app",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/tmp/old.so"
            ],
            "[vdso] and anonymous memory are no file"
        );
        assert_eq!(mappings[0].range, 0x55d0c0100000..0x55d0c0500000);
        assert_eq!(mappings[0].offset, 0x100000);
    }

    /// The registers and a copy of the stack of this very thread, taken here: what the kernel
    /// gives for a sample. Unwinding it must reach the test harness's frames through the std
    /// frames (this test binary, like a release build, is not asked to keep frame pointers).
    #[inline(never)]
    fn snapshot() -> UnwindInput {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers; touches no memory.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
            );
        }
        // The thread's stack from sp up, as far as it is mapped (at most 256 KiB).
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let top = maps
            .lines()
            .filter_map(|line| {
                let (start, end) = line.split_whitespace().next()?.split_once('-')?;
                let (start, end) = (
                    u64::from_str_radix(start, 16).ok()?,
                    u64::from_str_radix(end, 16).ok()?,
                );
                (start <= sp && sp < end).then_some(end)
            })
            .next()
            .unwrap();
        let len = (top - sp).min(256 * 1024) as usize;
        // SAFETY: [sp, sp + len) is inside the mapping that holds this thread's stack.
        let stack = unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec();
        UnwindInput { ip, sp, bp, stack }
    }

    #[inline(never)]
    fn outer_frame_for_the_unwinder() -> UnwindInput {
        std::hint::black_box(snapshot())
    }

    #[test]
    fn this_threads_stack_unwinds_to_its_root_through_eh_frame() {
        let input = outer_frame_for_the_unwinder();
        let mut unwinders = Unwinders::new();
        let unwound = unwinders.unwind(std::process::id(), &input);
        assert!(
            unwound.frames.len() >= 5,
            "only {} frames: {:x?}",
            unwound.frames.len(),
            unwound.frames
        );
        assert!(unwound.complete, "stopped short: {:x?}", unwound.frames);
        // The caller's frame is among the first few: this file's functions, by address.
        let own = outer_frame_for_the_unwinder as *const () as u64;
        assert!(
            unwound.frames[1..4]
                .iter()
                .any(|&addr| addr > own && addr < own + 4096),
            "the caller {own:x} is not near the top: {:x?}",
            unwound.frames
        );
    }

    #[test]
    fn a_stack_copy_that_ends_too_soon_is_not_complete() {
        let mut input = outer_frame_for_the_unwinder();
        input.stack.truncate(64);
        let unwound = Unwinders::new().unwind(std::process::id(), &input);
        assert!(!unwound.complete, "{:x?}", unwound.frames);
        assert!(
            !unwound.frames.is_empty(),
            "the sampled ip is always a frame"
        );
    }
}
