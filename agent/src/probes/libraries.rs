//! Uprobes on the libraries target processes map: libpq, and in Go programs whose goroutines
//! loupe reads, the executable's net/http Transport (the seam for OpenSSL is another
//! [`LibrarySpec`]). Attached per process, so an untargeted process that uses the same file pays
//! nothing; rescanned while loupe runs, so a library loaded later (dlopen, a lazily imported
//! driver) is probed too.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use loupe_common::{
    GO_PROBES, LIBPQ_PROBES, TLS_PROBES,
    names::{
        PROGRAM_GO_ENTER, PROGRAM_LIBPQ_ENTER, PROGRAM_LIBPQ_RETURN, PROGRAM_TLS_ENTER,
        PROGRAM_TLS_RETURN,
    },
};

use super::ProbeError;
use crate::config::LibpqMode;
use crate::process::{
    MappedLibrary, mapped_libraries,
    runtime::{go_function_offsets, go_layout},
};

/// One probed function: where the entry and (optionally) return probes go and their cookie.
struct FunctionProbe {
    symbol: &'static str,
    cookie: u64,
    with_return: bool,
}

/// Where a probed library is found in a process.
enum Source {
    /// Shared objects whose file name starts with this, in /proc/PID/maps.
    Mapped(&'static str),
    /// The executable itself, when it is a Go program whose goroutine ids loupe reads.
    GoExecutable,
    /// The executable itself, when it exports this symbol: a library linked in statically
    /// with its symbols kept (Node.js and its OpenSSL).
    ExecutableExporting(&'static str),
}

/// A library loupe knows how to probe.
struct LibrarySpec {
    source: Source,
    enter_program: &'static str,
    /// The return probe's program, for functions `with_return`.
    return_program: Option<&'static str>,
    functions: fn() -> Vec<FunctionProbe>,
    /// Probed in a process only once it asked for it ([`LibraryProbes::want`]), unless
    /// `--libpq always`: libpq, whose uprobes add to the wire only where it cannot read.
    on_demand: bool,
    /// Where the functions start (file offsets, by the order of `functions`); a function it
    /// cannot place is left to aya to find by its symbol.
    locate: Locate,
}

/// Finds where functions start in a file: their file offsets in the order of the names asked
/// for (None for one it cannot place), or None for a file it cannot read.
type Locate = fn(&Path, &[&str]) -> Option<Vec<Option<u64>>>;

/// A shared object's (or an executable's) functions, from its dynamic symbol table and then its
/// symbol table, the order aya looks in. The file is read once for all of them: aya's attach by
/// symbol maps and parses the whole file again for every uprobe (14 for libpq).
fn elf_locate(path: &Path, names: &[&str]) -> Option<Vec<Option<u64>>> {
    let file = std::fs::File::open(path).ok()?;
    // Mapped, not read: only the pages of its headers and symbol tables are touched (node is
    // ~100 MB).
    // SAFETY: a private read-only mapping, as aya makes for the same lookup; a library being
    // rewritten in place while it is mapped by a running process would crash that process first.
    let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) }.ok()?;
    symbol_file_offsets(&map[..], names)
}

/// Pure part of [`elf_locate`]: the file offset of each named symbol, translated from its address
/// as aya does for an executable or shared object (address - section address + section offset).
fn symbol_file_offsets<'data, R: object::ReadRef<'data>>(
    data: R,
    names: &[&str],
) -> Option<Vec<Option<u64>>> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let elf = object::File::parse(data).ok()?;
    let translate = matches!(
        elf.kind(),
        object::ObjectKind::Dynamic | object::ObjectKind::Executable
    );
    let mut offsets = vec![None; names.len()];
    for symbol in elf.dynamic_symbols().chain(elf.symbols()) {
        let Ok(name) = symbol.name() else {
            continue;
        };
        let Some(i) = names.iter().position(|wanted| *wanted == name) else {
            continue;
        };
        if offsets[i].is_some() {
            continue;
        }
        offsets[i] = if translate {
            symbol
                .section_index()
                .and_then(|index| elf.section_by_index(index).ok())
                .and_then(|section| {
                    let (file_offset, _) = section.file_range()?;
                    (symbol.address().checked_sub(section.address())?).checked_add(file_offset)
                })
        } else {
            Some(symbol.address())
        };
    }
    Some(offsets)
}

/// A Go executable's functions, from `.gopclntab`: stripped binaries have no `.symtab`.
fn go_locate(path: &Path, names: &[&str]) -> Option<Vec<Option<u64>>> {
    let mut file = std::fs::File::open(path).ok()?;
    go_function_offsets(&mut file, names)
}

fn libpq_functions() -> Vec<FunctionProbe> {
    LIBPQ_PROBES
        .iter()
        .map(|probe| FunctionProbe {
            symbol: probe.symbol,
            cookie: probe.function as u64,
            with_return: probe.returns_result,
        })
        .collect()
}

fn tls_functions() -> Vec<FunctionProbe> {
    TLS_PROBES
        .iter()
        .map(|(symbol, function)| FunctionProbe {
            symbol,
            cookie: *function as u64,
            with_return: true,
        })
        .collect()
}

fn go_functions() -> Vec<FunctionProbe> {
    GO_PROBES
        .iter()
        .map(|(symbol, function)| FunctionProbe {
            symbol,
            cookie: *function as u64,
            with_return: false,
        })
        .collect()
}

const LIBRARIES: &[LibrarySpec] = &[
    LibrarySpec {
        source: Source::Mapped("libpq"),
        enter_program: PROGRAM_LIBPQ_ENTER,
        return_program: Some(PROGRAM_LIBPQ_RETURN),
        functions: libpq_functions,
        on_demand: true,
        locate: elf_locate,
    },
    LibrarySpec {
        source: Source::Mapped("libssl"),
        enter_program: PROGRAM_TLS_ENTER,
        return_program: Some(PROGRAM_TLS_RETURN),
        functions: tls_functions,
        on_demand: false,
        locate: elf_locate,
    },
    LibrarySpec {
        source: Source::ExecutableExporting("SSL_read"),
        enter_program: PROGRAM_TLS_ENTER,
        return_program: Some(PROGRAM_TLS_RETURN),
        functions: tls_functions,
        on_demand: false,
        locate: elf_locate,
    },
    LibrarySpec {
        source: Source::GoExecutable,
        enter_program: PROGRAM_GO_ENTER,
        return_program: None,
        functions: go_functions,
        on_demand: false,
        locate: go_locate,
    },
];

/// The files of `spec` that `pid` runs. `checked_exe` remembers which processes' executables
/// were already looked at for which spec (an executable does not change without an exec, which
/// makes a new target).
fn find(
    spec: &LibrarySpec,
    pid: u32,
    checked_exe: &mut Vec<(u32, &'static str)>,
) -> Vec<MappedLibrary> {
    if let Source::Mapped(prefix) = spec.source {
        return mapped_libraries(pid, prefix);
    }
    if checked_exe.contains(&(pid, spec.enter_program)) {
        return Vec::new();
    }
    checked_exe.push((pid, spec.enter_program));
    let host_path = PathBuf::from(format!("/proc/{pid}/exe"));
    let probed = match spec.source {
        Source::GoExecutable => go_layout(pid).is_some(),
        Source::ExecutableExporting(symbol) => exports_symbol(&host_path, symbol),
        Source::Mapped(_) => false,
    };
    if !probed {
        return Vec::new();
    }
    let Ok(path) = std::fs::read_link(&host_path) else {
        return Vec::new();
    };
    vec![MappedLibrary {
        path: path.to_string_lossy().into_owned(),
        host_path,
    }]
}

/// Whether the ELF file at `path` exports `symbol` (its dynamic symbol table, or its symbol
/// table where it has one).
fn exports_symbol(path: &Path, symbol: &str) -> bool {
    use blazesym::inspect::{Inspector, source::Elf, source::Source};
    let mut elf = Elf::new(path);
    elf.debug_syms = false;
    Inspector::new()
        .lookup(&Source::Elf(elf), &[symbol])
        .is_ok_and(|found| found.first().is_some_and(|hits| !hits.is_empty()))
}

/// A library file probed in one process.
struct Attached {
    path: String,
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// Something that changed, to tell the user.
#[derive(Debug)]
pub enum LibraryNews {
    Attached {
        pid: u32,
        path: String,
        probes: usize,
    },
    Failed {
        pid: u32,
        path: String,
        reason: String,
    },
}

/// Which library files are probed in which process, and the links that keep them probed.
#[derive(Default)]
pub struct LibraryProbes {
    attached: HashMap<u32, Vec<Attached>>,
    /// Files that could not be probed in a process: not retried.
    failed: HashMap<u32, Vec<String>>,
    /// The programs loaded into the kernel (each on first use).
    loaded: Vec<&'static str>,
    /// Processes whose executable was looked at for Go.
    checked_exe: Vec<(u32, &'static str)>,
    /// Whether on-demand libraries are probed everywhere (`--libpq always`).
    always: bool,
    /// Processes that asked for the on-demand libraries.
    wanted: Vec<u32>,
}

impl LibraryProbes {
    pub fn new(libpq: LibpqMode) -> Self {
        Self {
            always: libpq == LibpqMode::Always,
            ..Self::default()
        }
    }

    /// `pid` asked for the on-demand libraries (libpq): they are probed at the next scan.
    pub fn want(&mut self, pid: u32) {
        if !self.wanted.contains(&pid) {
            self.wanted.push(pid);
        }
    }

    /// Whether OpenSSL's uprobes are attached in some process.
    pub fn tls_probed(&self) -> bool {
        self.attached
            .values()
            .flatten()
            .any(|lib| lib.links.iter().any(|(name, _)| *name == PROGRAM_TLS_ENTER))
    }

    /// Uprobes attached now, over all processes.
    pub fn probe_count(&self) -> usize {
        self.attached
            .values()
            .flatten()
            .map(|lib| lib.links.len())
            .sum()
    }

    /// Probes every known library newly mapped by one of `pids`, and lets go of processes that
    /// are no longer in `pids`.
    pub fn scan(&mut self, ebpf: &mut Ebpf, pids: &[u32]) -> Vec<LibraryNews> {
        let gone: Vec<u32> = self
            .attached
            .keys()
            .copied()
            .filter(|pid| !pids.contains(pid))
            .collect();
        for pid in gone {
            self.detach_process(ebpf, pid);
        }
        self.failed.retain(|pid, _| pids.contains(pid));
        self.checked_exe.retain(|(pid, _)| pids.contains(pid));
        self.wanted.retain(|pid| pids.contains(pid));
        let mut news = Vec::new();
        for &pid in pids {
            for spec in LIBRARIES {
                if spec.on_demand && !self.always && !self.wanted.contains(&pid) {
                    continue;
                }
                for library in find(spec, pid, &mut self.checked_exe) {
                    let known = self
                        .attached
                        .get(&pid)
                        .is_some_and(|libs| libs.iter().any(|lib| lib.path == library.path))
                        || self
                            .failed
                            .get(&pid)
                            .is_some_and(|paths| paths.contains(&library.path));
                    if known {
                        continue;
                    }
                    news.push(self.attach_library(ebpf, pid, spec, library));
                }
            }
        }
        news
    }

    fn attach_library(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        spec: &LibrarySpec,
        library: MappedLibrary,
    ) -> LibraryNews {
        match attach_functions(ebpf, pid, spec, &library.host_path, &mut self.loaded) {
            Ok(links) => {
                let probes = links.len();
                self.attached.entry(pid).or_default().push(Attached {
                    path: library.path.clone(),
                    links,
                });
                LibraryNews::Attached {
                    pid,
                    path: library.path,
                    probes,
                }
            }
            Err(reason) => {
                self.failed
                    .entry(pid)
                    .or_default()
                    .push(library.path.clone());
                LibraryNews::Failed {
                    pid,
                    path: library.path,
                    reason,
                }
            }
        }
    }

    /// Detaches the probes of `pid` and forgets what was tried there: it exited, or another
    /// process has its pid now (scanned afresh on the next scan).
    pub fn forget(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.detach_process(ebpf, pid);
        self.failed.remove(&pid);
        self.checked_exe.retain(|(owner, _)| *owner != pid);
        self.wanted.retain(|owner| *owner != pid);
    }

    fn detach_process(&mut self, ebpf: &mut Ebpf, pid: u32) {
        for library in self.attached.remove(&pid).unwrap_or_default() {
            for (program, link) in library.links {
                if let Ok(program) = uprobe(ebpf, program) {
                    // The process is gone: a failed detach only means the link went with it.
                    let _ = program.detach(link);
                }
            }
        }
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::ProgramType {
            name,
            source: Box::new(source),
        })
}

/// Attaches every function of `spec` in `path` for `pid`; all or nothing, so a library is
/// either fully probed or not at all (a query seen half would be worse than none).
fn attach_functions(
    ebpf: &mut Ebpf,
    pid: u32,
    spec: &LibrarySpec,
    path: &Path,
    loaded: &mut Vec<&'static str>,
) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or("pid 0")?);
    if spec.enter_program == PROGRAM_TLS_ENTER {
        // Before the first OpenSSL call is seen: its syscalls are known for its own.
        super::set_runtime(ebpf, loupe_common::RUNTIME_TLS, true);
    }
    for name in std::iter::once(spec.enter_program).chain(spec.return_program) {
        if loaded.contains(&name) {
            continue;
        }
        uprobe(ebpf, name)
            .and_then(|program| {
                program.load().map_err(|source| ProbeError::Verify {
                    name,
                    source: Box::new(source),
                })
            })
            .map_err(|err| error_chain(&err))?;
        loaded.push(name);
    }
    // Timed from here: finding the functions and attaching to them, not the programs' loads.
    let started = std::time::Instant::now();
    let functions = (spec.functions)();
    let names: Vec<&str> = functions.iter().map(|function| function.symbol).collect();
    let offsets = (spec.locate)(path, &names).unwrap_or_default();
    let mut links = Vec::new();
    let mut result = Ok(());
    for (i, function) in functions.iter().enumerate() {
        let mut programs = vec![spec.enter_program];
        if function.with_return {
            programs.extend(spec.return_program);
        }
        for name in programs {
            let attached = uprobe(ebpf, name)
                .map_err(|err| error_chain(&err))
                .and_then(|program| {
                    let location = match offsets.get(i).copied().flatten() {
                        Some(offset) => UProbeAttachLocation::AbsoluteOffset(offset),
                        None => UProbeAttachLocation::Symbol(function.symbol),
                    };
                    let point = UProbeAttachPoint {
                        location,
                        cookie: Some(function.cookie),
                    };
                    program
                        .attach(point, PathBuf::from(path), scope)
                        .map_err(|err| format!("{}: {}", function.symbol, error_chain(&err)))
                });
            match attached {
                Ok(link) => links.push((name, link)),
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        if result.is_err() {
            break;
        }
    }
    if let Err(err) = result {
        for (name, link) in links {
            if let Ok(program) = uprobe(ebpf, name) {
                let _ = program.detach(link);
            }
        }
        return Err(err);
    }
    tracing::debug!(
        "attached {} uprobes in {} in {:?}",
        links.len(),
        path.display(),
        started.elapsed()
    );
    Ok(links)
}

/// An error and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C library this test binary runs with, as its maps show it.
    fn libc_path() -> PathBuf {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = crate::process::libraries::parse_maps(&maps, "libc")
            .into_iter()
            .next()
            .expect("libc is mapped");
        PathBuf::from(path)
    }

    #[test]
    fn symbol_offsets_are_the_ones_blazesym_finds_and_missing_ones_are_none() {
        use blazesym::inspect::{Inspector, source::Elf, source::Source};
        let path = libc_path();
        let names = ["malloc", "free", "recv", "no_such_function_here"];
        let offsets = elf_locate(&path, &names).expect("libc is an ELF file");
        let mut elf = Elf::new(&path);
        elf.debug_syms = false;
        let inspector = Inspector::new();
        let found = inspector.lookup(&Source::Elf(elf), &names).unwrap();
        for (i, name) in names.iter().enumerate() {
            let expected = found[i].iter().find_map(|sym| sym.file_offset);
            assert_eq!(offsets[i], expected, "{name}");
        }
        assert!(offsets[..3].iter().all(Option::is_some), "{offsets:?}");
        assert_eq!(offsets[3], None);
        assert_eq!(elf_locate(Path::new("/proc/self/status"), &names), None);
    }
}
