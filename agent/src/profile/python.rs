//! Python frames in a CPython thread's stacks. The kernel reads the thread's chain of
//! interpreter frames with each sample (each frame's code object, instruction pointer and
//! marker); here the code objects are named (read from the process's memory), each frame's line
//! comes from its code's location table, and the frames take the place of the interpreter's
//! `_PyEval_EvalFrameDefault` frames in the native stack: each call of the eval loop executes
//! one run of Python frames, the innermost call the innermost run. The interpreter's own frames
//! between Python code and what it calls (the call machinery) are left out; its frames at the
//! leaf (a builtin's work) and at the root (`main`, `Py_RunMain`) stay. Nothing is invented: a
//! run without an eval frame to stand in for is left out, an eval frame without a run stays.

use rustc_hash::FxHashMap as HashMap;

use super::stacks::Frame;
use crate::{
    events::PyRawFrame,
    process::python::{self, Code, Interpreter, Marker, Memory, OWNED_BY_CSTACK},
};

/// The eval loop's function: one native frame per run of Python frames.
const EVAL_FRAME: &str = "_PyEval_EvalFrameDefault";

/// The line of code unit `unit` in a location table (the 3.11+ format: CPython's
/// Objects/locations.md), counting from `first_line`; None where the unit has no location or
/// the table ends first.
pub fn line_at(table: &[u8], first_line: u32, unit: u64) -> Option<u32> {
    let mut line = i64::from(first_line);
    let mut start = 0u64;
    let mut bytes = table.iter().copied();
    let mut next = bytes.next();
    while let Some(head) = next {
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 0x0f;
        let units = u64::from(head & 0x07) + 1;
        let mut located = true;
        match code {
            15 => located = false,
            14 => {
                line = line.checked_add(signed_varint(&mut bytes)?)?;
                // End line, column and end column.
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
            }
            13 => line = line.checked_add(signed_varint(&mut bytes)?)?,
            10..=12 => {
                line += i64::from(code - 10);
                bytes.next()?;
                bytes.next()?;
            }
            _ => {
                bytes.next()?;
            }
        }
        if unit < start.saturating_add(units) {
            return located.then(|| u32::try_from(line).ok()).flatten();
        }
        start = start.saturating_add(units);
        next = bytes.next();
    }
    None
}

/// A varint of the location table: 6 bits per byte, least significant first, bit 6 set on all
/// but the last.
fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = bytes.next()?;
        value |= u64::from(byte & 0x3f).checked_shl(shift)?;
        if byte & 0x40 == 0 {
            return Some(value);
        }
        shift += 6;
    }
}

fn signed_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let value = i64::try_from(varint(bytes)?).ok()?;
    Some(if value & 1 == 1 {
        -(value >> 1)
    } else {
        value >> 1
    })
}

/// A source file's module name and the path shown for it: relative to the directory it was
/// imported from (site- or dist-packages, the standard library), else its file name.
pub fn module_of(filename: &str) -> (String, String) {
    if filename.starts_with('<') {
        return (filename.to_owned(), filename.to_owned());
    }
    let relative = ["/site-packages/", "/dist-packages/"]
        .iter()
        .filter_map(|dir| filename.rfind(dir).map(|at| &filename[at + dir.len()..]))
        .next()
        .or_else(|| {
            // The standard library: .../lib/python3.11/http/server.py.
            let at = filename.rfind("/lib/python3")?;
            let rest = &filename[at + "/lib/".len()..];
            Some(&rest[rest.find('/')? + 1..])
        })
        .unwrap_or_else(|| filename.rsplit('/').next().unwrap_or(filename));
    let module = relative.strip_suffix(".py").unwrap_or(relative);
    let module = module.strip_suffix("/__init__").unwrap_or(module);
    (module.replace('/', "."), relative.to_owned())
}

/// A Python frame's name in a stack: `module.qualname (path:line)`, without the separators
/// folded stacks use.
pub fn frame_name(code: &Code, line: Option<u32>) -> String {
    let (module, path) = module_of(&code.filename);
    let line = line.unwrap_or(code.first_line);
    format!("{module}.{} ({path}:{line})", code.qualname).replace(';', ":")
}

/// The line a frame is at: from the unit its instruction pointer points at (a frame not yet
/// started points before its first and is at its first line).
pub fn frame_line(code: &Code, instr: u64) -> Option<u32> {
    match instr.checked_sub(code.instructions) {
        Some(offset) if offset / 2 < code.units => {
            line_at(&code.linetable, code.first_line, offset / 2)
        }
        _ => Some(code.first_line),
    }
}

/// Splits a thread's frames (innermost first, each named, or None for the eval loop's shim
/// frames and frames whose code could not be read) into the runs each eval-loop call executes,
/// innermost first.
pub fn runs(frames: &[(Option<String>, u8)], marker: Marker) -> Vec<Vec<String>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for (name, byte) in frames {
        match marker {
            Marker::IsEntry => {
                run.extend(name.clone());
                if *byte != 0 {
                    runs.push(std::mem::take(&mut run));
                }
            }
            Marker::OwnerCStack if *byte == OWNED_BY_CSTACK => {
                runs.push(std::mem::take(&mut run));
            }
            Marker::OwnerCStack => run.extend(name.clone()),
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// The native stack (innermost first) with the runs in place of the interpreter's eval frames,
/// innermost with innermost, and the interpreter's call machinery between them left out.
pub fn splice(native: Vec<Frame>, runs: &[Vec<String>], interpreter: &str) -> Vec<Frame> {
    let eval = format!("{interpreter}!{EVAL_FRAME}");
    let of_interpreter = |frame: &Frame| match frame {
        Frame::Named(name) => name
            .strip_prefix(interpreter)
            .is_some_and(|rest| rest.starts_with('!') || rest.starts_with('+')),
        Frame::Unmapped => false,
    };
    let evals: Vec<usize> = native
        .iter()
        .enumerate()
        .filter(|(_, frame)| matches!(frame, Frame::Named(name) if *name == eval))
        .map(|(i, _)| i)
        .take(runs.len())
        .collect();
    let Some(&outermost) = evals.last() else {
        return native;
    };
    // The innermost frame that is not the interpreter's own work: Python code, or what it
    // called (an extension, a library).
    let work = native
        .iter()
        .position(|frame| !of_interpreter(frame))
        .map_or(evals[0], |i| i.min(evals[0]));
    let mut out = Vec::with_capacity(native.len() + runs.iter().map(Vec::len).sum::<usize>());
    let mut next_run = runs.iter();
    for (i, frame) in native.into_iter().enumerate() {
        if evals.contains(&i) {
            if let Some(run) = next_run.next() {
                out.extend(run.iter().cloned().map(Frame::Named));
            }
        } else if i < work || i > outermost || !of_interpreter(&frame) {
            out.push(frame);
        }
    }
    out
}

/// Names Python frames: the interpreter of each process, and the code objects of one job (a
/// code object may be freed and its address reused later: they are read again per job).
#[derive(Default)]
pub struct PythonNames {
    interpreters: HashMap<u32, Option<Interpreter>>,
}

/// One job's code objects, by address (None: not readable as one).
pub struct JobCodes {
    pid: u32,
    interpreter: Option<Interpreter>,
    memory: Option<Memory>,
    codes: HashMap<u64, Option<Code>>,
}

impl PythonNames {
    /// The code objects of a job on process `pid`.
    pub fn job(&mut self, pid: u32) -> JobCodes {
        if self.interpreters.len() > 1024 {
            self.interpreters.clear();
        }
        let interpreter = self
            .interpreters
            .entry(pid)
            .or_insert_with(|| python::interpreter(pid))
            .clone();
        JobCodes {
            pid,
            interpreter,
            memory: None,
            codes: HashMap::default(),
        }
    }

    /// Forgets `pid`'s interpreter (the process is gone, or its pid was reused).
    pub fn forget(&mut self, pid: u32) {
        self.interpreters.remove(&pid);
    }
}

impl JobCodes {
    /// The native stack of a sample with its Python frames spliced in (unchanged when it has
    /// none, or the process is no CPython loupe knows).
    pub fn spliced(&mut self, native: Vec<Frame>, python: &[PyRawFrame]) -> Vec<Frame> {
        let Some(interpreter) = &self.interpreter else {
            return native;
        };
        if python.is_empty() {
            return native;
        }
        let layout = interpreter.layout.frames;
        if self.memory.is_none() {
            self.memory = Memory::open(self.pid).ok();
        }
        let Some(memory) = &self.memory else {
            return native;
        };
        let named: Vec<(Option<String>, u8)> = python
            .iter()
            .map(|frame| {
                let shim = layout.marker == Marker::OwnerCStack && frame.marker == OWNED_BY_CSTACK;
                let name = (!shim)
                    .then(|| {
                        let code = self
                            .codes
                            .entry(frame.code)
                            .or_insert_with(|| python::read_code(memory, frame.code, &layout).ok())
                            .as_ref()?;
                        Some(frame_name(code, frame_line(code, frame.instr)))
                    })
                    .flatten();
                (name, frame.marker)
            })
            .collect();
        splice(native, &runs(&named, layout.marker), &interpreter.module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `co_linetable` of this function, and the line of each code unit as `co_lines()` gave
    /// it, from CPython 3.11.2 and 3.13.0:
    ///
    /// ```python
    /// def sample(n):          # line 2
    ///     total = 0
    ///     for i in range(n):
    ///         if i % 3:
    ///             total += i * i
    ///         else:
    ///             total -= 1
    ///     return [total,
    ///             n]
    /// ```
    const GOLDEN: &[(&str, &[u32])] = &[
        (
            "8000d80c0d8045dd0d12903189588c58f000040517f0000405178801d80b0c88718935f000030917d80c11905198119155894e88458845e00c119051894a88458845d80c11d80c0df003010c0ff00001050f",
            &[
                2, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 6, 6, 6,
                6, 6, 6, 6, 6, 6, 8, 8, 8, 8, 8, 8, 9, 10, 9, 9,
            ],
        ),
        (
            "8000d80c0d8045dc0d1290318e588801d80b0c88718f35d80c1198119155894e8a45e00c119051894a8a45f109000e16f00a000d12d80c0df003010c0ff00001050f",
            &[
                2, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6,
                6, 6, 6, 6, 6, 6, 6, 6, 8, 8, 8, 8, 8, 8, 8, 4, 4, 9, 10, 9, 9,
            ],
        ),
    ];

    #[test]
    fn lines_come_from_the_location_table_as_cpython_reads_it() {
        for (hex, lines) in GOLDEN {
            let table = unhex(hex);
            for (unit, line) in lines.iter().enumerate() {
                assert_eq!(line_at(&table, 2, unit as u64), Some(*line), "unit {unit}");
            }
            assert_eq!(line_at(&table, 2, lines.len() as u64), None, "past the end");
        }
        assert_eq!(line_at(&[0x01], 2, 0), None, "not an entry's first byte");
        assert_eq!(line_at(&[0xf0], 2, 0), None, "no location");
        assert_eq!(line_at(&[0xe8], 2, 0), None, "cut short");
    }

    /// The table comes from another process's memory: any bytes give a line or None, never a
    /// panic (every prefix of a real table, and pseudo-random tables).
    #[test]
    fn any_table_gives_a_line_or_none() {
        let table = unhex(GOLDEN[0].0);
        for end in 0..table.len() {
            for unit in [0, 5, 40, u64::MAX] {
                let _ = line_at(&table[..end], 2, unit);
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let first = [0, u32::MAX / 2, u32::MAX][(next() % 3) as usize];
            let _ = line_at(&bytes, first, next() % 128);
        }
    }

    #[test]
    fn modules_are_named_from_where_they_were_imported() {
        let cases = [
            ("/srv/app/py_burn.py", "py_burn", "py_burn.py"),
            (
                "/usr/lib/python3.11/http/server.py",
                "http.server",
                "http/server.py",
            ),
            (
                "/root/.pyenv/versions/3.13.0/lib/python3.13/asyncio/__init__.py",
                "asyncio",
                "asyncio/__init__.py",
            ),
            (
                "/venv/lib/python3.11/site-packages/fastapi/routing.py",
                "fastapi.routing",
                "fastapi/routing.py",
            ),
            (
                "/usr/lib/python3/dist-packages/yaml/__init__.py",
                "yaml",
                "yaml/__init__.py",
            ),
            (
                "<frozen importlib._bootstrap>",
                "<frozen importlib._bootstrap>",
                "<frozen importlib._bootstrap>",
            ),
        ];
        for (file, module, path) in cases {
            assert_eq!(
                module_of(file),
                (module.to_owned(), path.to_owned()),
                "{file}"
            );
        }
        let code = Code {
            qualname: "Handler.do_GET".into(),
            filename: "/srv/app/py_burn.py".into(),
            first_line: 30,
            linetable: Vec::new(),
            instructions: 0x1000,
            units: 10,
        };
        assert_eq!(
            frame_name(&code, Some(33)),
            "py_burn.Handler.do_GET (py_burn.py:33)"
        );
        assert_eq!(
            frame_line(&code, 0x0ffe),
            Some(30),
            "not started: its first line"
        );
        assert_eq!(frame_line(&code, 0x2000), Some(30), "outside its code");
    }

    fn named(names: &[&str]) -> Vec<Frame> {
        names
            .iter()
            .map(|n| Frame::Named((*n).to_owned()))
            .collect()
    }

    fn run(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn runs_end_at_3_11_entry_frames_and_at_3_12_shims() {
        let frames = |list: &[(Option<&str>, u8)]| -> Vec<(Option<String>, u8)> {
            list.iter()
                .map(|(n, m)| (n.map(str::to_owned), *m))
                .collect()
        };
        let eleven = frames(&[
            (Some("a"), 0),
            (Some("b"), 1),
            (Some("c"), 0),
            (Some("d"), 1),
        ]);
        assert_eq!(
            runs(&eleven, Marker::IsEntry),
            vec![run(&["a", "b"]), run(&["c", "d"])]
        );
        let twelve = frames(&[
            (Some("a"), 0),
            (Some("b"), 0),
            (None, 3),
            (Some("c"), 2),
            (None, 3),
        ]);
        assert_eq!(
            runs(&twelve, Marker::OwnerCStack),
            vec![run(&["a", "b"]), run(&["c"])]
        );
        // A chain cut by the kernel's frame limit still gives its inner runs.
        let cut = frames(&[(Some("a"), 0), (None, 3), (Some("b"), 0)]);
        assert_eq!(
            runs(&cut, Marker::OwnerCStack),
            vec![run(&["a"]), run(&["b"])]
        );
    }

    #[test]
    fn python_frames_stand_in_for_eval_frames_and_the_call_machinery_goes() {
        let native = named(&[
            "libcrypto.so.3!sha256_block_data_order",
            "libcrypto.so.3!PKCS5_PBKDF2_HMAC",
            "_hashlib.so!pbkdf2_hmac",
            "python3.11!cfunction_vectorcall_FASTCALL_KEYWORDS",
            "python3.11!_PyEval_EvalFrameDefault",
            "python3.11!_PyObject_Call",
            "python3.11!_PyEval_EvalFrameDefault",
            "python3.11!thread_run",
            "libc.so.6!start_thread",
        ]);
        let runs = [
            run(&["app.hash_password (app.py:9)", "app.handle (app.py:20)"]),
            run(&["threading.Thread.run (threading.py:975)"]),
        ];
        assert_eq!(
            splice(native, &runs, "python3.11"),
            named(&[
                "libcrypto.so.3!sha256_block_data_order",
                "libcrypto.so.3!PKCS5_PBKDF2_HMAC",
                "_hashlib.so!pbkdf2_hmac",
                "app.hash_password (app.py:9)",
                "app.handle (app.py:20)",
                "threading.Thread.run (threading.py:975)",
                "python3.11!thread_run",
                "libc.so.6!start_thread",
            ])
        );
    }

    #[test]
    fn the_interpreters_own_work_at_the_leaf_stays() {
        let native = named(&[
            "python3.11!insertdict",
            "python3.11!PyDict_SetItem",
            "python3.11!_PyEval_EvalFrameDefault",
            "python3.11!Py_RunMain",
        ]);
        let runs = [run(&["app.<module> (app.py:3)"])];
        assert_eq!(
            splice(native, &runs, "python3.11"),
            named(&[
                "python3.11!insertdict",
                "python3.11!PyDict_SetItem",
                "app.<module> (app.py:3)",
                "python3.11!Py_RunMain",
            ])
        );
    }

    #[test]
    fn nothing_is_invented_where_eval_frames_and_runs_do_not_pair() {
        // More eval frames than runs: the outer ones stay as they are.
        let native = named(&[
            "python3.11!_PyEval_EvalFrameDefault",
            "python3.11!_PyObject_Call",
            "python3.11!_PyEval_EvalFrameDefault",
        ]);
        let runs = [run(&["app.f (app.py:1)"])];
        assert_eq!(
            splice(native, &runs, "python3.11"),
            named(&[
                "app.f (app.py:1)",
                "python3.11!_PyObject_Call",
                "python3.11!_PyEval_EvalFrameDefault",
            ])
        );
        // More runs than eval frames (the native walk stopped short): the outer runs go.
        let native = vec![
            Frame::Named("python3.11!_PyEval_EvalFrameDefault".into()),
            Frame::Unmapped,
        ];
        let runs = [run(&["app.f (app.py:1)"]), run(&["app.g (app.py:2)"])];
        assert_eq!(
            splice(native, &runs, "python3.11"),
            vec![Frame::Named("app.f (app.py:1)".into()), Frame::Unmapped]
        );
        // No eval frame: the native stack as it is.
        let native = named(&["libc.so.6!read"]);
        assert_eq!(splice(native.clone(), &runs, "python3.11"), native);
    }
}
