//! Keeps the kernel's `PY_CONTEXTS` and `PY_THREADS` maps in step with the Python targets'
//! threads: where each thread's current Context is, so the data exit program can read it, and
//! where its frame chain starts, so a CPU sample can read its Python frames
//! (`process::python` walks the interpreter; this owns the maps).

use aya::maps::{HashMap, MapData};
use loupe_common::{PY_DIRECT, PyThread};
use rustc_hash::FxHashMap;

use crate::process::python::{self, FrameLayout, Interpreter, ThreadState};

/// One of the two things loupe reads of a Python thread, and whether its layout is proven on
/// the process.
#[derive(Default)]
struct Reading<V> {
    /// The layout's offsets fit this process (seen through them once).
    confirmed: bool,
    /// Threads in the map, and the value written.
    installed: FxHashMap<u32, V>,
    /// Told the user why it is not read (once).
    failed: bool,
}

/// What loupe knows of one target.
enum Process {
    /// Not a CPython of a known version (looked at once).
    Other,
    Python(Box<Known>),
}

/// A CPython target of a known version.
struct Known {
    interpreter: Interpreter,
    contexts: Reading<u64>,
    frames: Reading<PyThread>,
    /// Threads the process had at the last walk.
    threads_seen: usize,
}

/// The Python threads in the maps, per process.
pub struct PythonThreads {
    contexts: HashMap<MapData, u64, u64>,
    frames: HashMap<MapData, u64, PyThread>,
    processes: FxHashMap<u32, Process>,
}

impl PythonThreads {
    pub fn new(
        contexts: HashMap<MapData, u64, u64>,
        frames: HashMap<MapData, u64, PyThread>,
    ) -> Self {
        Self {
            contexts,
            frames,
            processes: FxHashMap::default(),
        }
    }

    /// Whether some process's threads are in the Context map (the kernel reads Contexts only
    /// then).
    pub fn any(&self) -> bool {
        self.processes.values().any(|process| {
            matches!(process, Process::Python(known) if !known.contexts.installed.is_empty())
        })
    }

    /// Looks at every live target: a new Python one is walked, a known one again when its
    /// thread count changed (or a layout is not confirmed yet); exited ones are forgotten.
    pub fn refresh(&mut self, live: &[u32]) {
        if !crate::process::runtime::adapters() {
            return;
        }
        let gone: Vec<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|pid| !live.contains(pid))
            .collect();
        for pid in gone {
            self.forget(pid);
        }
        for &pid in live {
            self.walk(pid, false);
        }
    }

    /// Makes sure a thread about to be sampled is in the frame map: a thread-per-request server
    /// starts a thread per request, and the next refresh would come too late for its slow part.
    pub fn ensure(&mut self, pid: u32, tid: u32) {
        if !crate::process::runtime::adapters() {
            return;
        }
        let known = match self.processes.get(&pid) {
            Some(Process::Other) => true,
            Some(Process::Python(known)) => known.frames.installed.contains_key(&tid),
            None => false,
        };
        if !known {
            self.walk(pid, true);
        }
    }

    /// Walks `pid` when it is new, its thread count changed, a layout is not confirmed yet, or
    /// `force`.
    fn walk(&mut self, pid: u32, force: bool) {
        let process = self
            .processes
            .entry(pid)
            .or_insert_with(|| match python::interpreter(pid) {
                Some(interpreter) => Process::Python(Box::new(Known {
                    interpreter,
                    contexts: Reading::default(),
                    frames: Reading::default(),
                    threads_seen: 0,
                })),
                None => Process::Other,
            });
        let Process::Python(known) = process else {
            return;
        };
        let Known {
            interpreter,
            contexts,
            frames,
            threads_seen,
        } = &mut **known;
        let threads = thread_count(pid);
        if !force && contexts.confirmed && frames.confirmed && threads == *threads_seen {
            return;
        }
        *threads_seen = threads;
        let (major, minor) = interpreter.version;
        let who = format!("pid {pid} (CPython {major}.{minor})");
        // The reasons are kept as text: the walk's failure is both checks'.
        let states = python::thread_states(pid, interpreter).map_err(|err| err.to_string());
        let check =
            |fits: fn(u32, &Interpreter, &[ThreadState]) -> Result<bool, python::PyError>| {
                states.as_ref().map_err(Clone::clone).and_then(|states| {
                    fits(pid, interpreter, states).map_err(|err| err.to_string())
                })
            };
        if contexts.settle(
            || check(python::contexts_fit),
            &who,
            "reading its threads' asyncio contexts",
            "its asyncio contexts are not read, its calls nest as threads do",
        ) && let Ok(states) = &states
        {
            let offset = interpreter.layout.thread_context;
            contexts.install(&mut self.contexts, pid, states, |s| s.tstate + offset);
        }
        if frames.settle(
            || check(python::frames_fit),
            &who,
            "its profiles name its Python functions",
            "its profiles show the interpreter's frames, not its Python functions",
        ) && let Ok(states) = &states
        {
            let layout = interpreter.layout.frames;
            frames.install(&mut self.frames, pid, states, |s| {
                py_thread(s.tstate, &layout)
            });
        }
    }

    /// Forgets `pid` and takes its threads out of the maps: it exited, or another process has
    /// its pid now (looked at afresh on the next refresh).
    pub fn forget(&mut self, pid: u32) {
        if let Some(Process::Python(known)) = self.processes.remove(&pid) {
            for tid in known.contexts.installed.keys() {
                let _ = self.contexts.remove(&pid_tgid(pid, *tid));
            }
            for tid in known.frames.installed.keys() {
                let _ = self.frames.remove(&pid_tgid(pid, *tid));
            }
        }
    }
}

impl<V: Copy + PartialEq + aya::Pod> Reading<V> {
    /// Whether the map should be written now: once the layout is proven on the process, always
    /// (a later check would prove nothing against it, so none is made); until then, when `check`
    /// proves it. Tells the user once when it is first proven, or why it is not.
    fn settle(
        &mut self,
        check: impl FnOnce() -> Result<bool, String>,
        who: &str,
        proven: &str,
        unfit: &str,
    ) -> bool {
        if self.confirmed {
            return true;
        }
        match check() {
            Ok(true) => {
                eprintln!("loupe: {who}: {proven}");
                self.confirmed = true;
                true
            }
            Ok(false) => false,
            Err(err) => {
                if !self.failed {
                    self.failed = true;
                    eprintln!("loupe: warning: {who}: {unfit}: {err}");
                }
                false
            }
        }
    }

    /// Writes the threads' values, and takes out the threads that are gone.
    fn install(
        &mut self,
        map: &mut HashMap<MapData, u64, V>,
        pid: u32,
        states: &[ThreadState],
        value: impl Fn(&ThreadState) -> V,
    ) {
        self.installed.retain(|tid, _| {
            let keep = states.iter().any(|state| state.tid == *tid);
            if !keep {
                let _ = map.remove(&pid_tgid(pid, *tid));
            }
            keep
        });
        for state in states {
            let value = value(state);
            if self.installed.get(&state.tid) == Some(&value) {
                continue;
            }
            match map.insert(pid_tgid(pid, state.tid), value, 0) {
                Ok(()) => {
                    self.installed.insert(state.tid, value);
                }
                Err(err) => tracing::debug!("Python thread map full: {err}"),
            }
        }
    }
}

/// The kernel's view of a thread: where its frame chain starts and which words of a frame
/// to keep.
fn py_thread(tstate: u64, layout: &FrameLayout) -> PyThread {
    PyThread {
        tstate,
        frame_field: layout.thread_frame,
        cframe_current: layout.cframe_current.unwrap_or(PY_DIRECT),
        frame_code: layout.frame_code,
        frame_previous: layout.frame_previous,
        frame_instr: layout.frame_instr,
        frame_marker: layout.frame_marker,
    }
}

fn pid_tgid(pid: u32, tid: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(tid)
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |dir| dir.count())
}
