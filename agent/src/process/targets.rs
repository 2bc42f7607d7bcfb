//! Target processes: the PIDs the user named and every descendant of theirs (nginx's workers of
//! its master, a pre-fork server's children), with the names spans are labelled with.

use std::collections::HashMap;

/// One process to observe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    /// The PID the user named that this process is, or descends from.
    pub root_pid: u32,
}

/// What a span's resource says about its process.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    pub pid: u32,
    /// `comm`: the short name the kernel keeps (e.g. "nginx").
    pub name: String,
    /// File name of the executable (e.g. "nginx"), or the name when the link is unreadable.
    pub executable_name: String,
    /// Its `service.name` when the user gave none ([`super::service_name`]).
    pub service_name: String,
}

impl ProcessInfo {
    /// Reads /proc; None when the process is gone.
    pub fn read(pid: u32) -> Option<Self> {
        let process = procfs::process::Process::new(pid as i32).ok()?;
        let name = process.stat().ok()?.comm;
        let executable_name = process
            .exe()
            .ok()
            .and_then(|path| {
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| name.clone());
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let service_name = super::service_name::service_name(&environ, &cmdline, &name);
        Some(Self {
            pid,
            name,
            executable_name,
            service_name,
        })
    }
}

/// The names of the targets, recorded as each became one: a span exported after its process
/// exited (a service restarted) is still labelled with it. One entry per pid (a new target on a
/// pid replaces the old one's); bounded.
static RECORDED: std::sync::Mutex<Option<HashMap<u32, ProcessInfo>>> = std::sync::Mutex::new(None);
/// Names recorded at most; past it those of processes gone are dropped.
const MAX_RECORDED: usize = 4096;

impl ProcessInfo {
    /// Reads `pid` and records what it is called (when it is there to read).
    pub fn record(pid: u32) {
        if let Some(info) = Self::read(pid) {
            let mut recorded = RECORDED.lock().unwrap_or_else(|e| e.into_inner());
            let recorded = recorded.get_or_insert_with(HashMap::new);
            if recorded.len() >= MAX_RECORDED && !recorded.contains_key(&pid) {
                recorded.retain(|&pid, _| is_live_process(pid));
                if recorded.len() >= MAX_RECORDED {
                    recorded.clear();
                }
            }
            recorded.insert(pid, info);
        }
    }

    /// What the target on `pid` was called when it became one, else what /proc says now.
    pub fn of_target(pid: u32) -> Option<Self> {
        let recorded = RECORDED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|recorded| recorded.get(&pid).cloned());
        recorded.or_else(|| Self::read(pid))
    }
}

/// The roots and all their live descendants, each tagged with its root.
pub fn expand_targets(roots: &[u32]) -> Vec<Target> {
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    if let Ok(processes) = procfs::process::all_processes() {
        for process in processes.flatten() {
            if let Ok(stat) = process.stat() {
                parent_of.insert(stat.pid as u32, stat.ppid as u32);
            }
        }
    }
    descendants_of(roots, &parent_of)
}

/// Pure part of [`expand_targets`]: walks each process's ancestry up to a root.
fn descendants_of(roots: &[u32], parent_of: &HashMap<u32, u32>) -> Vec<Target> {
    let mut targets: Vec<Target> = roots
        .iter()
        .map(|&pid| Target { pid, root_pid: pid })
        .collect();
    for &pid in parent_of.keys() {
        if roots.contains(&pid) {
            continue;
        }
        let mut cursor = pid;
        // The depth bound guards against a cycle in a racy /proc snapshot.
        for _ in 0..64 {
            let Some(&parent) = parent_of.get(&cursor) else {
                break;
            };
            if roots.contains(&parent) {
                targets.push(Target {
                    pid,
                    root_pid: parent_root(parent, roots),
                });
                break;
            }
            if parent <= 1 {
                break;
            }
            cursor = parent;
        }
    }
    targets.sort_by_key(|target| target.pid);
    targets
}

fn parent_root(parent: u32, roots: &[u32]) -> u32 {
    roots
        .iter()
        .copied()
        .find(|&root| root == parent)
        .unwrap_or(parent)
}

/// True when `pid` is a live process (not a thread of another one, not gone).
pub fn is_live_process(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|tgid| tgid.trim().parse::<u32>().ok())
        == Some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_are_tagged_with_their_root() {
        // 100 -> 101 -> 102; 200 unrelated; 300 -> 301
        let parents = HashMap::from([
            (100, 1),
            (101, 100),
            (102, 101),
            (200, 1),
            (300, 1),
            (301, 300),
        ]);
        let targets = descendants_of(&[100, 300], &parents);
        let pairs: Vec<(u32, u32)> = targets.iter().map(|t| (t.pid, t.root_pid)).collect();
        assert_eq!(
            pairs,
            vec![(100, 100), (101, 100), (102, 100), (300, 300), (301, 300)]
        );
    }

    #[test]
    fn a_recorded_name_outlives_its_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        ProcessInfo::record(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(ProcessInfo::read(pid).is_none(), "gone from /proc");
        let info = ProcessInfo::of_target(pid).expect("recorded while it ran");
        assert_eq!((info.pid, info.name.as_str()), (pid, "sleep"));
        assert_eq!(info.executable_name, "sleep");
    }

    /// A Python process goes by its script, or by the OTEL_SERVICE_NAME it was started with.
    #[test]
    fn a_python_process_is_named_by_its_script_or_its_own_service_name() {
        let python = std::path::Path::new("/usr/bin/python3.11");
        if !python.is_file() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("loupe-name-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("orders_api.py");
        std::fs::write(&script, "import time\ntime.sleep(30)\n").unwrap();
        for (env, expected) in [(None, "orders_api"), (Some("checkout"), "checkout")] {
            let mut command = std::process::Command::new(python);
            command.arg(&script).env_remove("OTEL_SERVICE_NAME");
            if let Some(name) = env {
                command.env("OTEL_SERVICE_NAME", name);
            }
            let mut child = command.spawn().unwrap();
            // spawn returns once the exec began; the new program's arguments are in place a
            // moment later.
            let cmdline = format!("/proc/{}/cmdline", child.id());
            while std::fs::read(&cmdline).map_or(true, |c| c.is_empty()) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let info = ProcessInfo::read(child.id()).unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
            assert_eq!(info.service_name, expected);
            assert!(info.name.starts_with("python3"), "{}", info.name);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn this_process_is_live_and_a_thread_is_not() {
        assert!(is_live_process(std::process::id()));
        assert!(!is_live_process(u32::MAX - 1));
    }
}
