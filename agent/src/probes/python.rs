//! Keeps the kernel's `PY_CONTEXTS` map in step with the Python targets' threads: where each
//! thread's current Context is, so the data exit program can read it (`process::python` walks
//! the interpreter; this owns the map).

use aya::maps::{HashMap, MapData};
use rustc_hash::FxHashMap;

use crate::process::python::{self, Interpreter};

/// What loupe knows of one target.
enum Process {
    /// Not a CPython of a known version (looked at once).
    Other,
    Python {
        interpreter: Interpreter,
        /// A Context was seen through the layout: it fits this process.
        confirmed: bool,
        /// Threads whose field is in the map, and the address written.
        installed: FxHashMap<u32, u64>,
        /// Threads the process had at the last walk.
        threads_seen: usize,
        /// Told the user why its Contexts are not read (once).
        failed: bool,
    },
}

/// The Python threads in the map, per process.
pub struct PythonThreads {
    map: HashMap<MapData, u64, u64>,
    processes: FxHashMap<u32, Process>,
}

impl PythonThreads {
    pub fn new(map: HashMap<MapData, u64, u64>) -> Self {
        Self {
            map,
            processes: FxHashMap::default(),
        }
    }

    /// Whether some process's threads are in the map (the kernel reads Contexts only then).
    pub fn any(&self) -> bool {
        self.processes.values().any(
            |process| matches!(process, Process::Python { installed, .. } if !installed.is_empty()),
        )
    }

    /// Looks at every live target: a new Python one is walked, a known one again when its
    /// thread count changed (or its layout is not confirmed yet); exited ones are forgotten.
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
            let process =
                self.processes
                    .entry(pid)
                    .or_insert_with(|| match python::interpreter(pid) {
                        Some(interpreter) => Process::Python {
                            interpreter,
                            confirmed: false,
                            installed: FxHashMap::default(),
                            threads_seen: 0,
                            failed: false,
                        },
                        None => Process::Other,
                    });
            let Process::Python {
                interpreter,
                confirmed,
                installed,
                threads_seen,
                failed,
            } = process
            else {
                continue;
            };
            let threads = thread_count(pid);
            if *confirmed && threads == *threads_seen {
                continue;
            }
            *threads_seen = threads;
            match python::context_fields(pid, interpreter, *confirmed) {
                Ok(fields) => {
                    if fields.is_empty() {
                        continue;
                    }
                    if !*confirmed {
                        eprintln!(
                            "loupe: pid {pid} is CPython {}.{}: reading its threads' asyncio contexts",
                            interpreter.version.0, interpreter.version.1
                        );
                    }
                    *confirmed = true;
                    installed.retain(|tid, _| {
                        let keep = fields.iter().any(|field| field.tid == *tid);
                        if !keep {
                            let _ = self.map.remove(&pid_tgid(pid, *tid));
                        }
                        keep
                    });
                    for field in fields {
                        if installed.get(&field.tid) == Some(&field.address) {
                            continue;
                        }
                        match self.map.insert(pid_tgid(pid, field.tid), field.address, 0) {
                            Ok(()) => {
                                installed.insert(field.tid, field.address);
                            }
                            Err(err) => tracing::debug!("PY_CONTEXTS full: {err}"),
                        }
                    }
                }
                Err(err) => {
                    if !*failed && !*confirmed {
                        *failed = true;
                        eprintln!(
                            "loupe: warning: pid {pid} (CPython {}.{}): its asyncio contexts are not read, its calls nest as threads do: {err}",
                            interpreter.version.0, interpreter.version.1
                        );
                    }
                }
            }
        }
    }
}

impl PythonThreads {
    /// Forgets `pid` and takes its threads out of the map: it exited, or another process has
    /// its pid now (looked at afresh on the next refresh).
    pub fn forget(&mut self, pid: u32) {
        if let Some(Process::Python { installed, .. }) = self.processes.remove(&pid) {
            for tid in installed.keys() {
                let _ = self.map.remove(&pid_tgid(pid, *tid));
            }
        }
    }
}

fn pid_tgid(pid: u32, tid: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(tid)
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |dir| dir.count())
}
