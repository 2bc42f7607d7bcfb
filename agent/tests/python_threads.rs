//! Reading CPython's thread states from outside, against real interpreters: Debian's stripped,
//! static python3.11 (which `cargo xtask setup` installs) and every other CPython 3.11+ found on
//! the machine (pyenv builds with a shared libpython). Each runs a function inside a Context of
//! its own, from its main thread and from a second thread, and prints which Context; loupe must
//! find the interpreter, its version, both threads, and read that very Context where it says the
//! thread keeps it, and find a code object where it reads a thread's innermost frame.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use loupe::process::python::{contexts_fit, frames_fit, interpreter, thread_states};

/// Runs `hold` in a fresh Context on the main thread and on a second one; each prints the id of
/// its Context (the object's address) and its native thread id, then waits for stdin.
const SCRIPT: &str = r#"
import contextvars, sys, threading
ready = threading.Barrier(2)
out = threading.Lock()
def hold(tag):
    with out:
        sys.stdout.write(f"{tag} {id(contextvars_now[tag])} {threading.get_native_id()}\n")
        sys.stdout.flush()
    ready.wait()
    if tag == "main":
        sys.stdin.readline()
    else:
        threading.Event().wait()
contextvars_now = {}
def run(tag):
    ctx = contextvars.copy_context()
    contextvars_now[tag] = ctx
    ctx.run(hold, tag)
threading.Thread(target=run, args=("worker",), daemon=True).start()
run("main")
"#;

/// The interpreters to check: Debian's always, others where present.
fn interpreters() -> Vec<(PathBuf, (u32, u32))> {
    let debian = PathBuf::from("/usr/bin/python3.11");
    assert!(
        debian.is_file(),
        "no {}: run `cargo xtask setup`",
        debian.display()
    );
    let mut found = vec![(debian, (3, 11))];
    let home = std::env::var("HOME").unwrap_or_default();
    for (version, minor) in [("3.11", 11), ("3.12", 12), ("3.13", 13)] {
        let Ok(dir) = std::fs::read_dir(Path::new(&home).join(".pyenv/versions")) else {
            break;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let python = entry.path().join(format!("bin/python{version}"));
            if name.starts_with(&format!("{version}.")) && python.is_file() {
                found.push((python, (3, minor)));
            }
        }
    }
    found
}

fn read_u64(pid: u32, at: u64) -> u64 {
    let mem = File::open(format!("/proc/{pid}/mem")).expect("open its memory");
    let mut raw = [0u8; 8];
    mem.read_exact_at(&mut raw, at).expect("read its memory");
    u64::from_le_bytes(raw)
}

#[test]
fn each_threads_current_context_is_found_where_loupe_reads_it() {
    let mut checked = Vec::new();
    for (python, version) in interpreters() {
        let mut child = Command::new(&python)
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", python.display()));
        let pid = child.id();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut held = Vec::new();
        for _ in 0..2 {
            let line = lines.next().expect("a line").expect("read a line");
            let fields: Vec<&str> = line.split_whitespace().collect();
            held.push((
                fields[1].parse::<u64>().expect("a context id"),
                fields[2].parse::<u32>().expect("a thread id"),
            ));
        }
        // Both threads are inside their Context now (the worker waits; main waits for stdin
        // once the barrier let it through, which it does before the worker printed).
        let found = interpreter(pid)
            .unwrap_or_else(|| panic!("{}: no interpreter found", python.display()));
        assert_eq!(found.version, version, "{}", python.display());
        let states =
            thread_states(pid, &found).unwrap_or_else(|err| panic!("{}: {err}", python.display()));
        assert!(
            matches!(contexts_fit(pid, &found, &states), Ok(true)),
            "{}: the context offset is proven",
            python.display()
        );
        // Both threads run Python code: their innermost frames hold code objects.
        assert!(
            matches!(frames_fit(pid, &found, &states), Ok(true)),
            "{}: the frame offsets are proven",
            python.display()
        );
        for (context, tid) in &held {
            let state = states
                .iter()
                .find(|state| state.tid == *tid)
                .unwrap_or_else(|| panic!("{}: thread {tid} not found", python.display()));
            assert_eq!(
                read_u64(pid, state.tstate + found.layout.thread_context),
                *context,
                "{}: thread {tid}'s Context",
                python.display()
            );
        }
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let _ = child.kill();
        let _ = child.wait();
        checked.push(format!(
            "{} ({}.{})",
            python.display(),
            version.0,
            version.1
        ));
    }
    eprintln!("checked: {}", checked.join(", "));
}

#[test]
fn a_process_that_is_not_python_has_no_interpreter() {
    assert_eq!(interpreter(std::process::id()), None);
}
