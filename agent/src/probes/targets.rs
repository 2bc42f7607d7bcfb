//! The targets as the kernel sees them (`TARGET_PIDS`), kept in step with what runs. Each target
//! is known by its identity (pid and start time, `process::identity`): one that exited is taken
//! out with its sockets, and a later process the kernel gives its pid is never taken for it.
//! With `--exe` and `--name`, a process that starts later and matches joins: from the kernel's
//! report of its exec (a watched name is a target from its exec on; an executable is matched
//! here), or from a rescan of /proc when such a report may have been lost.

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use loupe_common::{GoLayout, SocketInfo, SocketKey, TargetInfo, names::MAP_GO_LAYOUTS};
use rustc_hash::FxHashMap;

use super::{ProbeError, SocketMap};
use crate::{
    events::ExecRecord,
    process::{
        ExistingSocket, MatchedBy, Matcher, ProcessId, ProcessInfo, Target, existing_sockets,
        expand_targets, runtime::go_layout,
    },
};

/// What the stitch stage learns of targets coming and going.
#[derive(Debug)]
pub enum TargetNews {
    /// Processes that became targets while loupe runs (one that matched, and the children it
    /// had forked by then), with the sockets they had open, by pid.
    Joined {
        pids: Vec<u32>,
        sockets: Vec<(u32, ExistingSocket)>,
    },
    /// A target is gone: its state goes once its last events are in. `at_once`: another process
    /// has its pid already, and the state goes now.
    Left { pid: u32, at_once: bool },
}

/// A process that joined.
#[derive(Debug)]
pub struct Arrival {
    pub pid: u32,
    pub comm: String,
    pub by: MatchedBy,
}

/// A target that exited.
#[derive(Debug)]
pub struct Departure {
    pub pid: u32,
    pub comm: String,
    /// A process loupe was told to observe (or matched), not a child of one.
    pub root: bool,
}

/// What one look at the targets changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub arrivals: Vec<Arrival>,
    pub departures: Vec<Departure>,
    /// Pids now of another process than before: what loupe attached to the old one must go.
    pub replaced: Vec<u32>,
    /// For the stitch stage.
    pub news: Vec<TargetNews>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.arrivals.is_empty()
            && self.departures.is_empty()
            && self.replaced.is_empty()
            && self.news.is_empty()
    }
}

struct Known {
    id: ProcessId,
    comm: String,
    root: bool,
}

/// The target set: the kernel's map and what runs on each of its pids.
pub struct Targets {
    map: HashMap<MapData, u32, TargetInfo>,
    sockets: SocketMap,
    matcher: Matcher,
    known: FxHashMap<u32, Known>,
    /// Pids taken out since their sockets were last swept from `SOCKETS`.
    unswept: Vec<u32>,
}

impl Targets {
    /// Takes over the maps with `registered`, the targets registered at attach, in them (any
    /// other entry is a process the kernel made a target since: the next check finds it).
    pub fn new(
        map: HashMap<MapData, u32, TargetInfo>,
        sockets: SocketMap,
        matcher: Matcher,
        registered: &[u32],
    ) -> Self {
        let mut targets = Self {
            map,
            sockets,
            matcher,
            known: FxHashMap::default(),
            unswept: Vec::new(),
        };
        for &pid in registered {
            ProcessInfo::record(pid);
            if let Some(id) = ProcessId::of(pid) {
                let root = targets.is_root(pid);
                targets.known.insert(
                    pid,
                    Known {
                        id,
                        comm: comm_of(pid),
                        root,
                    },
                );
            }
        }
        targets
    }

    /// Whether processes that start later may join (`--exe`, `--name`).
    pub fn watching(&self) -> bool {
        !self.matcher.is_empty()
    }

    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// The targets running now, by pid.
    pub fn live(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.known.keys().copied().collect();
        pids.sort_unstable();
        pids
    }

    fn is_root(&self, pid: u32) -> bool {
        self.map.get(&pid, 0).is_ok_and(|info| info.root_pid == pid)
    }

    /// Checks every target in the kernel's map against what runs on its pid now.
    pub fn check(&mut self, ebpf: &mut Ebpf, changes: &mut Changes) {
        let pids: Vec<u32> = self.map.keys().flatten().collect();
        let in_map: rustc_hash::FxHashSet<u32> = pids.iter().copied().collect();
        self.known.retain(|pid, _| in_map.contains(pid));
        for pid in pids {
            let now = ProcessId::of(pid);
            let known = self.known.get(&pid).map(|known| known.id);
            match (known, now) {
                (_, None) => self.depart(ebpf, pid, changes),
                (Some(known), Some(now)) if known == now => {}
                (Some(_), Some(now)) => {
                    // It exited and another process got its pid before this look: whatever
                    // was traced on the pid since was the new one's, and goes with the old.
                    self.known.remove(&pid);
                    changes.replaced.push(pid);
                    changes.news.push(TargetNews::Left { pid, at_once: true });
                    match self.matcher.match_pid(pid) {
                        Some(by) => self.arrive(ebpf, now, by, false, changes),
                        None => self.unregister(ebpf, pid),
                    }
                }
                (None, Some(now)) if self.watching() && self.is_root(pid) => {
                    // The kernel made it a target by its name; the report of its exec is on
                    // its way (and will find it known).
                    let by = self
                        .matcher
                        .match_pid(pid)
                        .unwrap_or_else(|| MatchedBy::Name(comm_of(pid)));
                    self.arrive(ebpf, now, by, true, changes);
                }
                (None, Some(now)) => {
                    // A child a target forked.
                    ProcessInfo::record(pid);
                    let root = self.is_root(pid);
                    self.known.insert(
                        pid,
                        Known {
                            id: now,
                            comm: comm_of(pid),
                            root,
                        },
                    );
                }
            }
        }
        self.sweep_sockets();
    }

    /// A process that was not a target exec'd: it joins if it matches (or the kernel made it a
    /// target already, by its name).
    pub fn on_exec(&mut self, ebpf: &mut Ebpf, exec: &ExecRecord, changes: &mut Changes) {
        let pid = exec.pid;
        // Gone already: if the kernel made it a target, the next check takes it out.
        let Some(now) = ProcessId::of(pid) else {
            return;
        };
        if let Some(known) = self.known.get(&pid) {
            if known.id == now {
                // A check or a rescan found it first.
                return;
            }
            // The stitch stage let go of the old process's state at this exec, in order.
            self.known.remove(&pid);
            changes.replaced.push(pid);
        }
        let by = match self.matcher.match_pid(pid) {
            Some(by) => by,
            None if exec.adopted => MatchedBy::Name(exec.comm.clone()),
            None => return,
        };
        self.arrive(ebpf, now, by, exec.adopted, changes);
        self.sweep_sockets();
    }

    /// Every running process that matches and is not a target yet joins: at start (a process
    /// that exec'd between the first scan and the exec program's attach) and after a loss
    /// (its exec report may be what was lost).
    pub fn rescan(&mut self, ebpf: &mut Ebpf, changes: &mut Changes) {
        for (pid, by) in self.matcher.scan() {
            if self.known.contains_key(&pid) {
                continue;
            }
            if let Some(now) = ProcessId::of(pid) {
                self.arrive(ebpf, now, by, false, changes);
            }
        }
    }

    /// Makes `id` a target, with the children it forked before now unless the kernel made it a
    /// target at its exec (then the kernel followed its forks itself).
    fn arrive(
        &mut self,
        ebpf: &mut Ebpf,
        id: ProcessId,
        by: MatchedBy,
        in_kernel: bool,
        changes: &mut Changes,
    ) {
        let pid = id.pid;
        let group: Vec<Target> = if in_kernel {
            vec![Target { pid, root_pid: pid }]
        } else {
            expand_targets(&[pid])
                .into_iter()
                .filter(|target| target.pid == pid || !self.known.contains_key(&target.pid))
                .collect()
        };
        let mut pids = Vec::new();
        let mut sockets = Vec::new();
        for target in &group {
            let member = if target.pid == pid {
                Some(id)
            } else {
                ProcessId::of(target.pid)
            };
            let Some(member) = member else {
                continue;
            };
            let goid_offset = match register(&mut self.map, ebpf, target) {
                Ok(goid_offset) => goid_offset,
                Err(err) => {
                    eprintln!(
                        "loupe: warning: cannot observe pid {}: {}",
                        target.pid,
                        error_chain(&err)
                    );
                    continue;
                }
            };
            ProcessInfo::record(target.pid);
            self.known.insert(
                target.pid,
                Known {
                    id: member,
                    comm: comm_of(target.pid),
                    root: target.pid == pid,
                },
            );
            pids.push(target.pid);
            match seed_sockets(&mut self.sockets, target.pid, goid_offset) {
                Ok(found) => sockets.extend(found.into_iter().map(|socket| (target.pid, socket))),
                Err(err) => tracing::debug!("sockets of pid {} not seeded: {err}", target.pid),
            }
        }
        let Some(known) = self.known.get(&pid) else {
            return;
        };
        changes.arrivals.push(Arrival {
            pid,
            comm: known.comm.clone(),
            by,
        });
        changes.news.push(TargetNews::Joined { pids, sockets });
    }

    fn depart(&mut self, ebpf: &mut Ebpf, pid: u32, changes: &mut Changes) {
        let known = self.known.remove(&pid);
        let root = known.as_ref().map_or_else(|| self.is_root(pid), |k| k.root);
        self.unregister(ebpf, pid);
        changes.departures.push(Departure {
            pid,
            comm: known.map_or_else(|| "?".to_owned(), |k| k.comm),
            root,
        });
        changes.news.push(TargetNews::Left {
            pid,
            at_once: false,
        });
    }

    /// Takes `pid` out of the kernel's maps (its sockets at the next sweep).
    fn unregister(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let _ = self.map.remove(&pid);
        if let Some(map) = ebpf.map_mut(MAP_GO_LAYOUTS)
            && let Ok(mut layouts) = HashMap::<&mut MapData, u32, GoLayout>::try_from(map)
        {
            let _ = layouts.remove(&pid);
        }
        self.unswept.push(pid);
    }

    /// The handle on `SOCKETS` (to count what the LRU let go of).
    pub fn sockets(&self) -> &SocketMap {
        &self.sockets
    }

    /// Removes the sockets of the pids taken out from `SOCKETS`, in one pass over the map.
    fn sweep_sockets(&mut self) {
        if self.unswept.is_empty() {
            return;
        }
        let stale: Vec<u64> = self
            .sockets
            .keys()
            .filter(|&key| self.unswept.contains(&SocketKey::pid_of(key)))
            .filter(|&key| !self.known.contains_key(&SocketKey::pid_of(key)))
            .collect();
        for key in stale {
            self.sockets.remove(key);
        }
        tracing::debug!("forgot {} exited targets", self.unswept.len());
        self.unswept.clear();
    }
}

/// Registers `target` in the kernel's maps: `TARGET_PIDS`, with the goroutine-id offsets of a
/// Go program of a known version (whose layout goes in `GO_LAYOUTS`). Returns the offsets
/// (`TargetInfo::goid_offset`).
pub fn register(
    map: &mut HashMap<MapData, u32, TargetInfo>,
    ebpf: &mut Ebpf,
    target: &Target,
) -> Result<u32, ProbeError> {
    let map_err = |name| {
        move |source| ProbeError::Map {
            name,
            source: Box::new(source),
        }
    };
    let layout = go_layout(target.pid);
    if let Some(layout) = &layout {
        let mut layouts: HashMap<&mut MapData, u32, GoLayout> = HashMap::try_from(
            ebpf.map_mut(MAP_GO_LAYOUTS)
                .ok_or(ProbeError::MissingMap(MAP_GO_LAYOUTS))?,
        )
        .map_err(map_err(MAP_GO_LAYOUTS))?;
        layouts
            .insert(target.pid, layout, 0)
            .map_err(map_err(MAP_GO_LAYOUTS))?;
    }
    let goid_offset = layout.map_or(0, |layout| {
        TargetInfo::pack_go_offsets(layout.g_goid, layout.g_parent_goid)
    });
    let info = TargetInfo {
        root_pid: target.root_pid,
        goid_offset,
    };
    map.insert(target.pid, info, 0)
        .map_err(map_err(loupe_common::names::MAP_TARGET_PIDS))?;
    Ok(goid_offset)
}

/// Puts the established TCP sockets `pid` has open now in `SOCKETS` (their later bytes are
/// traced as connections of their own); returns them.
pub fn seed_sockets(
    sockets: &mut SocketMap,
    pid: u32,
    goid_offset: u32,
) -> Result<Vec<ExistingSocket>, ProbeError> {
    let found = existing_sockets(pid);
    for socket in &found {
        let key = SocketKey { pid, fd: socket.fd };
        let info = SocketInfo {
            role: socket.role as u32,
            goid_offset,
            conn_id: socket.conn_id(),
        };
        sockets
            .insert(key.as_u64(), info)
            .map_err(|source| ProbeError::Map {
                name: loupe_common::names::MAP_SOCKETS,
                source: Box::new(source),
            })?;
    }
    Ok(found)
}

/// The `comm` of `pid`, for telling the user which process came or went.
fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
