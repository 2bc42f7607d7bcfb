//! The symbolizer thread: turns the CPU samples of a slow span into its `cpu_profile` event
//! (and, with --profile-dir, a flamegraph), then hands the span to the exporter. It runs on its
//! own OS thread because blazesym's Symbolizer is not Send; the stitch stage never waits on it
//! (a full queue sends the span on without its profile, counted).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, mpsc as std_mpsc},
};

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Kernel, Process, Source},
    },
};
use tokio::sync::mpsc;

use super::{
    flame,
    maps::{Mapping, find, module_offset, parse_exec_mappings},
    offcpu,
    python::PythonNames,
    samples::Wait,
    stacks::{Folded, Frame, fold, top_lines},
    unwind::Unwinders,
};
use crate::{
    detect::ProblemBoard,
    events::{CpuSample, SampleSource},
    spans::SpanRecord,
    stats::Counters,
};

/// How the profiles are made.
#[derive(Clone, Debug)]
pub struct ProfileSettings {
    /// Samples per second of a hot thread.
    pub hz: u64,
    /// Samples per second of every target thread on a CPU, all the time (`--profile-always`).
    pub always_hz: Option<u64>,
    /// Watch hot threads off the CPU (off_cpu_profile).
    pub off_cpu: bool,
    /// Where flamegraphs go, if anywhere.
    pub dir: Option<PathBuf>,
}

/// A slow span and the samples and waits of its thread within it.
pub struct ProfileJob {
    pub span: SpanRecord,
    pub samples: Vec<CpuSample>,
    pub waits: Vec<Wait>,
}

/// Folded stacks in the event: at most this many lines and bytes.
const TOP_STACKS: usize = 10;
const MAX_STACK_BYTES: usize = 4096;
/// Jobs waiting for the symbolizer.
const QUEUE: usize = 256;

/// Starts the thread; spans leave through `spans` with their profile attached.
pub fn spawn_symbolizer(
    settings: ProfileSettings,
    spans: mpsc::Sender<SpanRecord>,
    board: Arc<Mutex<ProblemBoard>>,
    counters: Arc<Counters>,
) -> std::io::Result<(
    std_mpsc::SyncSender<ProfileJob>,
    std::thread::JoinHandle<()>,
)> {
    let (tx, rx) = std_mpsc::sync_channel::<ProfileJob>(QUEUE);
    let handle = std::thread::Builder::new()
        .name("loupe-symbolize".into())
        .spawn(move || {
            let mut names = Names::new();
            let mut unwinders = Unwinders::new();
            for job in rx {
                let span = profile(
                    job,
                    &settings,
                    &mut names,
                    &mut unwinders,
                    &board,
                    &counters,
                );
                if spans.blocking_send(span).is_err() {
                    Counters::add(&counters.spans_dropped, 1);
                }
            }
        })?;
    Ok((tx, handle))
}

/// Symbolizes, folds and attaches; the span comes back whatever happens.
fn profile(
    job: ProfileJob,
    settings: &ProfileSettings,
    names: &mut Names,
    unwinders: &mut Unwinders,
    board: &Mutex<ProblemBoard>,
    counters: &Counters,
) -> SpanRecord {
    let ProfileJob {
        mut span,
        samples,
        waits,
    } = job;
    let first_sample = samples.iter().map(|s| s.ts_ns).min();
    if !samples.is_empty() {
        cpu_profile(
            &mut span, samples, settings, names, unwinders, board, counters,
        );
    }
    if !waits.is_empty() {
        let folded = fold_waits(&waits, names, unwinders);
        offcpu::attach(&mut span, &folded, first_sample, settings.dir.as_deref());
        if let Ok(mut board) = board.lock() {
            board.record_waits(&span.name, &folded.by_place());
        }
    }
    span
}

/// The `cpu_profile` event, and with --profile-dir its flamegraph.
fn cpu_profile(
    span: &mut SpanRecord,
    samples: Vec<CpuSample>,
    settings: &ProfileSettings,
    names: &mut Names,
    unwinders: &mut Unwinders,
    board: &Mutex<ProblemBoard>,
    counters: &Counters,
) {
    // The always-on samples are the span's part before its threshold, at another rate: they
    // are folded apart, never mixed into the hot thread's counts.
    let (early, samples): (Vec<CpuSample>, Vec<CpuSample>) = samples
        .into_iter()
        .partition(|s| s.source == SampleSource::Background);
    let folded = fold_samples(&samples, names, unwinders);
    let early_folded = fold_samples(&early, names, unwinders);
    Counters::add(
        &counters.stacks_truncated,
        folded.truncated + early_folded.truncated,
    );
    // Sampling starts when the span passes its threshold, not when it starts: the share is of
    // the time the thread was sampled (first sample to the span's end).
    let first = samples
        .iter()
        .map(|s| s.ts_ns)
        .min()
        .unwrap_or(span.start_ns);
    let sampled_ns = span.end_ns.saturating_sub(first.max(span.start_ns));
    let seconds = (sampled_ns as f64 / 1e9).max(1.0 / settings.hz as f64);
    let on_cpu = if seconds > 0.0 {
        (folded.samples as f64 / settings.hz as f64 / seconds).min(1.0)
    } else {
        0.0
    };
    let mut attributes = vec![
        ("samples", (folded.samples as i64).into()),
        ("on_cpu_share", ((on_cpu * 1000.0).round() / 1000.0).into()),
        ("hz", (settings.hz as i64).into()),
        ("sampled_ms", ((sampled_ns / 1_000_000) as i64).into()),
        (
            "stacks",
            top_lines(&folded, TOP_STACKS, MAX_STACK_BYTES).into(),
        ),
        ("truncated_stacks", (folded.truncated as i64).into()),
    ];
    if let Some(always_hz) = settings.always_hz {
        attributes.push((
            "samples_before_threshold",
            (early_folded.samples as i64).into(),
        ));
        attributes.push(("always_hz", (always_hz as i64).into()));
        if early_folded.samples > 0 {
            attributes.push((
                "stacks_before_threshold",
                top_lines(&early_folded, TOP_STACKS, MAX_STACK_BYTES).into(),
            ));
        }
    }
    let title = span.name.to_string();
    flame::attach(
        span,
        flame::Profile {
            event: "cpu_profile",
            attributes,
            folded: &folded,
            title,
            part: "",
            path_key: "performance.profile.path",
        },
        settings.dir.as_deref(),
    );
    if let Ok(mut board) = board.lock() {
        board.record_profile(&span.name, &folded);
        board.keep_flame(span, &folded);
    }
}

/// The waits' stacks, unwound and named, each with its kernel frames and its time; a wait
/// without a stack has none.
fn fold_waits(waits: &[Wait], names: &mut Names, unwinders: &mut Unwinders) -> offcpu::WaitStacks {
    let Some(pid) = waits.first().map(|w| w.pid) else {
        return offcpu::WaitStacks::default();
    };
    let users = named_user_stacks(
        pid,
        waits.iter().map(|w| w.stack.as_ref()),
        names,
        unwinders,
    );
    let resolved = waits.iter().zip(users).map(|(wait, user)| {
        let kernel = match (&wait.stack, wait.kernel_names.is_empty()) {
            (_, false) => wait.kernel_names.clone(),
            (Some(sample), true) => names.kernel(&sample.kernel),
            (None, true) => Vec::new(),
        };
        (wait, kernel, user)
    });
    offcpu::fold(resolved)
}

/// The samples' stacks, unwound, named and folded (all of one process).
fn fold_samples(samples: &[CpuSample], names: &mut Names, unwinders: &mut Unwinders) -> Folded {
    let Some(pid) = samples.first().map(|s| s.pid) else {
        return Folded::default();
    };
    let users = named_user_stacks(pid, samples.iter().map(Some), names, unwinders);
    let resolved: Vec<(Vec<String>, Vec<Frame>)> = samples
        .iter()
        .zip(users)
        .map(|(sample, user)| (names.kernel(&sample.kernel), user.unwrap_or_default()))
        .collect();
    fold(resolved.iter().map(|(k, u)| (&k[..], &u[..])))
}

/// The user stacks of samples of process `pid` (None stays None), unwound and named: every
/// distinct address is resolved once, then the frames are read off the cache. A stack whose
/// unwinding stopped short ends in `Frame::Unmapped`, where `fold` cuts and marks it. A
/// CPython thread's Python frames take the place of its interpreter's eval frames.
fn named_user_stacks<'a>(
    pid: u32,
    samples: impl Iterator<Item = Option<&'a CpuSample>>,
    names: &mut Names,
    unwinders: &mut Unwinders,
) -> Vec<Option<Vec<Frame>>> {
    let mut pythons: Vec<&[crate::events::PyRawFrame]> = Vec::new();
    let stacks: Vec<Option<(Vec<u64>, bool)>> = samples
        .map(|sample| {
            pythons.push(sample.map_or(&[], |s| &s.python[..]));
            sample.map(|s| user_stack(s, unwinders))
        })
        .collect();
    let mut user: Vec<u64> = stacks
        .iter()
        .flatten()
        .flat_map(|(frames, _)| frames.iter().copied())
        .collect();
    user.sort_unstable();
    user.dedup();
    names.resolve_user(pid, &user);
    let mut codes = names.python.job(pid);
    stacks
        .into_iter()
        .zip(pythons)
        .map(|(stack, python)| {
            stack.map(|(frames, cut)| {
                let mut user = names.user(pid, &frames);
                if cut {
                    user.push(Frame::Unmapped);
                }
                codes.spliced(user, python)
            })
        })
        .collect()
}

/// A sample's user stack, innermost first, and whether it stops short of its root: unwound
/// from the kernel's copy of the stack when there is one, else the kernel's frame-pointer walk
/// (whose frames `fold` checks: a walk through code without frame pointers points nowhere).
fn user_stack(sample: &CpuSample, unwinders: &mut Unwinders) -> (Vec<u64>, bool) {
    match &sample.unwind {
        Some(input) => {
            let unwound = unwinders.unwind(sample.pid, input);
            if unwound.frames.is_empty() {
                (sample.user.clone(), false)
            } else {
                let cut = !unwound.complete;
                (unwound.frames, cut)
            }
        }
        None => (sample.user.clone(), false),
    }
}

/// Frame names, cached per process and address: hot loops hit the same few addresses.
struct Names {
    symbolizer: Symbolizer,
    user: HashMap<(u32, u64), Frame>,
    kernel: HashMap<u64, String>,
    maps: HashMap<u32, Vec<Mapping>>,
    python: PythonNames,
}

/// The symbols of process `pid`'s addresses, from the modules' symbol tables or, with
/// `debug_syms`, from their debug information and separate debug files.
fn symbolize<'s>(
    symbolizer: &'s Symbolizer,
    pid: u32,
    addrs: &[u64],
    debug_syms: bool,
) -> Vec<Symbolized<'s>> {
    let mut process = Process::new(Pid::from(pid));
    process.debug_syms = debug_syms;
    symbolizer
        .symbolize(&Source::Process(process), Input::AbsAddr(addrs))
        .unwrap_or_default()
}

/// Cached names at most (the cache is dropped whole past it).
const MAX_CACHED: usize = 100_000;

impl Names {
    fn new() -> Self {
        Self {
            symbolizer: Symbolizer::new(),
            user: HashMap::new(),
            kernel: HashMap::new(),
            maps: HashMap::new(),
            python: PythonNames::default(),
        }
    }

    /// Resolves the addresses not cached yet (one symbolizer call, maps read at most twice).
    /// An address in no mapping is not remembered: a library loaded later may map it.
    fn resolve_user(&mut self, pid: u32, addrs: &[u64]) {
        let missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|addr| !self.user.contains_key(&(pid, *addr)))
            .collect();
        if !missing.is_empty() {
            if self.user.len() > MAX_CACHED {
                self.user.clear();
                self.maps.clear();
            }
            let read = || {
                std::fs::read_to_string(format!("/proc/{pid}/maps"))
                    .map(|text| parse_exec_mappings(&text))
                    .unwrap_or_default()
            };
            let maps = self.maps.entry(pid).or_insert_with(read);
            if missing.iter().any(|addr| find(maps, *addr).is_none()) {
                // A library loaded (or a pid reused) since the maps were read.
                *maps = read();
                self.python.forget(pid);
            }
            // Addresses in no mapping (a walk gone astray) are not worth asking about.
            let mapped: Vec<u64> = missing
                .into_iter()
                .filter(|addr| find(maps, *addr).is_some())
                .collect();
            if mapped.is_empty() {
                return;
            }
            // The symbol tables first; what they do not name, a module's separate debug file
            // may (its .gnu_debuglink, or its build id under /usr/lib/debug), when installed.
            let mut symbolized = symbolize(&self.symbolizer, pid, &mapped, false);
            let unnamed: Vec<usize> = (0..mapped.len())
                .filter(|&i| !matches!(symbolized.get(i), Some(Symbolized::Sym(_))))
                .collect();
            if !unnamed.is_empty() && symbolized.len() == mapped.len() {
                let retry: Vec<u64> = unnamed.iter().map(|&i| mapped[i]).collect();
                let from_debug = symbolize(&self.symbolizer, pid, &retry, true);
                for (i, found) in unnamed.into_iter().zip(from_debug) {
                    if matches!(found, Symbolized::Sym(_)) {
                        symbolized[i] = found;
                    }
                }
            }
            for (i, addr) in mapped.iter().enumerate() {
                let mapping = find(maps, *addr);
                let frame = match (symbolized.get(i), mapping) {
                    (_, None) => Frame::Unmapped,
                    (Some(Symbolized::Sym(sym)), Some(mapping)) => {
                        let module = sym
                            .module
                            .as_deref()
                            .and_then(|m| m.to_str())
                            .and_then(|m| m.rsplit('/').next())
                            .unwrap_or(&mapping.module);
                        Frame::Named(format!("{module}!{}", sym.name))
                    }
                    (_, Some(mapping)) => Frame::Named(module_offset(mapping, *addr)),
                };
                self.user.insert((pid, *addr), frame);
            }
        }
    }

    /// The frames of `addrs`, as resolved (an address in no mapping is Unmapped).
    fn user(&self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        addrs
            .iter()
            .map(|addr| {
                self.user
                    .get(&(pid, *addr))
                    .cloned()
                    .unwrap_or(Frame::Unmapped)
            })
            .collect()
    }

    fn kernel(&mut self, addrs: &[u64]) -> Vec<String> {
        let missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|addr| !self.kernel.contains_key(addr))
            .collect();
        if !missing.is_empty() {
            if self.kernel.len() > MAX_CACHED {
                self.kernel.clear();
            }
            let kernel = Kernel {
                vmlinux: blazesym::MaybeDefault::None,
                debug_syms: false,
                ..Kernel::default()
            };
            let symbolized = self
                .symbolizer
                .symbolize(&Source::Kernel(kernel), Input::AbsAddr(&missing))
                .unwrap_or_default();
            for (i, addr) in missing.iter().enumerate() {
                let name = match symbolized.get(i) {
                    Some(Symbolized::Sym(sym)) => format!("vmlinux!{}", sym.name),
                    _ => format!("vmlinux+0x{addr:x}"),
                };
                self.kernel.insert(*addr, name);
            }
        }
        addrs
            .iter()
            .map(|addr| self.kernel.get(addr).cloned().unwrap_or_default())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_known_name() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn own_functions_are_named_with_their_module() {
        let mut names = Names::new();
        let addr = a_function_with_a_known_name as *const () as u64;
        names.resolve_user(std::process::id(), &[addr, 0x10]);
        let frames = names.user(std::process::id(), &[addr, 0x10]);
        match &frames[0] {
            Frame::Named(name) => assert!(
                name.contains("a_function_with_a_known_name") && name.contains('!'),
                "{name}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(frames[1], Frame::Unmapped, "0x10 is in no mapping");
    }

    /// A program stripped of its symbol table, with its debug file beside it through a
    /// .gnu_debuglink (as distributions ship them): its own static function is named from the
    /// debug file, and without that file it is not.
    #[test]
    fn a_stripped_binary_is_named_from_its_debug_link() {
        use std::{io::BufRead as _, process::Command};
        let dir = std::env::temp_dir().join(format!("loupe-debuglink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("prog.c");
        std::fs::write(
            &source,
            "#include <stdio.h>\n\
             static volatile unsigned long sink;\n\
             __attribute__((noinline)) static void hidden_worker(void) { for (;;) sink++; }\n\
             int main(void) { printf(\"%p\\n\", (void *)hidden_worker); fflush(stdout);\n\
             hidden_worker(); }\n",
        )
        .unwrap();
        let prog = dir.join("prog");
        let run = |cmd: &mut Command| {
            let status = cmd
                .status()
                .expect("gcc and binutils (objcopy, strip) are installed");
            assert!(status.success(), "{cmd:?}");
        };
        run(Command::new("gcc")
            .args(["-g", "-O1", "-o"])
            .arg(&prog)
            .arg(&source));
        run(Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&prog)
            .arg(dir.join("prog.debug")));
        run(Command::new("strip").arg("--strip-all").arg(&prog));
        run(Command::new("objcopy")
            .arg("--add-gnu-debuglink=prog.debug")
            .arg(&prog)
            .current_dir(&dir));
        let mut child = Command::new(&prog)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).unwrap();
        let pid = child.id();
        let name = |names: &mut Names| {
            names.resolve_user(pid, &[addr]);
            names.user(pid, &[addr]).remove(0)
        };
        let named = name(&mut Names::new());
        std::fs::remove_file(dir.join("prog.debug")).unwrap();
        let unnamed = name(&mut Names::new());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(named, Frame::Named("prog!hidden_worker".into()));
        assert!(
            !matches!(&unnamed, Frame::Named(n) if n.contains("hidden_worker")),
            "{unnamed:?}"
        );
    }
}
