//! Loads the eBPF object with its globals set, registers the targets, attaches every tracepoint
//! and seeds the sockets that were open before attach.

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use loupe_common::{
    COMM_LEN, TargetInfo, WATCH_BY_COMM, WATCH_EVERY_EXEC,
    names::{
        GLOBAL_CAPTURE_BYTES, GLOBAL_NEWTASK_FLAGS_OFFSET, GLOBAL_NEWTASK_PID_OFFSET,
        GLOBAL_OFF_CPU_GAP_NS, GLOBAL_QUERY_BYTES, GLOBAL_SWITCH_NEXT_PID_OFFSET,
        GLOBAL_SWITCH_PREV_PID_OFFSET, GLOBAL_SWITCH_PREV_STATE_OFFSET, GLOBAL_WAKEUP_BYTES,
        GLOBAL_WATCH_EXECS, MAP_EVENTS, MAP_LOSS, MAP_PY_CONTEXTS, MAP_PY_THREADS, MAP_SOCKETS,
        MAP_TARGET_PIDS, MAP_WATCH_COMMS, TRACEPOINT_PROGRAMS,
    },
};

use super::{
    FdResync, ProbeError, PythonThreads, SocketMap,
    targets::{register, seed_sockets},
};
use crate::process::{ExistingSocket, Matcher, Target};

/// The compiled kernel programs, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loupe"));

/// Programs whose attach may fail without failing loupe: accelerators and conveniences.
const OPTIONAL_PROGRAMS: &[&str] = &["process_fork"];

/// Knobs of the kernel side.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub capture_bytes: u32,
    /// Statement text bytes read per libpq call.
    pub query_bytes: u32,
    /// Unread ring buffer bytes above which the kernel wakes the reader.
    pub wakeup_bytes: u64,
    /// What the exec program does for processes that are not targets.
    pub watch: ExecWatch,
    /// Entries of the kernel's socket map (`SOCKETS_MAX` by default).
    pub max_sockets: u32,
    /// The least time between two switch-out stacks of one hot thread (a sampling period).
    pub off_cpu_gap_ns: u64,
}

/// What the kernel watches execs for (`--name`, `--exe`); the default watches nothing.
#[derive(Clone, Debug, Default)]
pub struct ExecWatch {
    /// Names whose exec makes a target at once (`comm_key`s).
    pub comms: Vec<[u8; COMM_LEN]>,
    /// Report every other exec, for userspace to match its executable.
    pub every_exec: bool,
}

impl ExecWatch {
    /// What `matcher` needs of the kernel.
    pub fn of(matcher: &Matcher) -> Self {
        Self {
            comms: matcher.names().iter().map(|name| name.key()).collect(),
            every_exec: matcher.matches_executables(),
        }
    }

    /// The `WATCH_EXECS` flags.
    fn flags(&self) -> u32 {
        let mut flags = 0;
        if !self.comms.is_empty() {
            flags |= WATCH_BY_COMM;
        }
        if self.every_exec {
            flags |= WATCH_EVERY_EXEC;
        }
        flags
    }
}

/// Puts the watched names in `WATCH_COMMS` (the flags are a global, set at load).
fn watch_execs(ebpf: &mut Ebpf, watch: &ExecWatch) -> Result<(), ProbeError> {
    let mut comms: HashMap<&mut MapData, [u8; COMM_LEN], u8> = HashMap::try_from(
        ebpf.map_mut(MAP_WATCH_COMMS)
            .ok_or(ProbeError::MissingMap(MAP_WATCH_COMMS))?,
    )
    .map_err(map_err(MAP_WATCH_COMMS))?;
    for key in &watch.comms {
        comms.insert(key, 1, 0).map_err(map_err(MAP_WATCH_COMMS))?;
    }
    Ok(())
}

/// The loaded object and the maps each pipeline stage takes ownership of.
pub struct Probes {
    /// Keeps every program loaded and attached; dropping it detaches them.
    pub ebpf: Ebpf,
    pub events: RingBuf<MapData>,
    pub targets: HashMap<MapData, u32, TargetInfo>,
    pub sockets: SocketMap,
    /// Settles the fds an exec or a long close_range closed, with a handle on `SOCKETS` of its
    /// own.
    pub resync: FdResync,
    pub loss: PerCpuArray<MapData, u64>,
    /// The Python targets' threads, as the kernel reads their Contexts.
    pub python: PythonThreads,
    /// Number of tracepoint attachments made.
    pub attached: usize,
    /// Sockets found open at attach, per target pid.
    pub existing: Vec<(u32, ExistingSocket)>,
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map {
        name,
        source: Box::new(source),
    }
}

/// Loads, registers `targets`, attaches, and seeds the open sockets of every target.
pub fn load_and_attach(config: &ProbeConfig, targets: &[Target]) -> Result<Probes, ProbeError> {
    let newtask = std::fs::read_to_string(format!(
        "{}/events/task/task_newtask/format",
        crate::preflight::TRACEFS
    ))
    .unwrap_or_default();
    let newtask_pid = parse_field_offset(&newtask, "pid").unwrap_or(8);
    let newtask_flags = parse_field_offset(&newtask, "clone_flags").unwrap_or(32);
    let switch = std::fs::read_to_string(format!(
        "{}/events/sched/sched_switch/format",
        crate::preflight::TRACEFS
    ))
    .unwrap_or_default();
    let prev_pid = parse_field_offset(&switch, "prev_pid").unwrap_or(24);
    let prev_state = parse_field_offset(&switch, "prev_state").unwrap_or(32);
    let next_pid = parse_field_offset(&switch, "next_pid").unwrap_or(56);
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_CAPTURE_BYTES, &config.capture_bytes, true)
        .override_global(GLOBAL_WAKEUP_BYTES, &config.wakeup_bytes, true)
        .override_global(GLOBAL_QUERY_BYTES, &config.query_bytes, true)
        .override_global(GLOBAL_NEWTASK_PID_OFFSET, &newtask_pid, true)
        .override_global(GLOBAL_NEWTASK_FLAGS_OFFSET, &newtask_flags, true)
        .override_global(GLOBAL_WATCH_EXECS, &config.watch.flags(), true)
        .override_global(GLOBAL_SWITCH_PREV_PID_OFFSET, &prev_pid, true)
        .override_global(GLOBAL_SWITCH_PREV_STATE_OFFSET, &prev_state, true)
        .override_global(GLOBAL_SWITCH_NEXT_PID_OFFSET, &next_pid, true)
        .override_global(GLOBAL_OFF_CPU_GAP_NS, &config.off_cpu_gap_ns, true)
        .map_max_entries(MAP_SOCKETS, config.max_sockets)
        .load(EBPF_OBJECT)
        .map_err(|err| ProbeError::Load(Box::new(err)))?;

    let mut target_map: HashMap<MapData, u32, TargetInfo> =
        HashMap::try_from(take_map(&mut ebpf, MAP_TARGET_PIDS)?)
            .map_err(map_err(MAP_TARGET_PIDS))?;
    // Go targets of a known version get their layout in GO_LAYOUTS (the map stays in `ebpf`:
    // the uprobes that read it are loaded later, and need its fd) and the goid offsets in
    // their TargetInfo, for the data programs.
    let mut goid_offsets = std::collections::HashMap::new();
    for target in targets {
        goid_offsets.insert(target.pid, register(&mut target_map, &mut ebpf, target)?);
    }
    watch_execs(&mut ebpf, &config.watch)?;
    let socket_map = take_map(&mut ebpf, MAP_SOCKETS)?;
    let second = HashMap::try_from(second_handle(&socket_map).map_err(map_err(MAP_SOCKETS))?)
        .map_err(map_err(MAP_SOCKETS))?;
    let mut sockets = SocketMap::new(HashMap::try_from(socket_map).map_err(map_err(MAP_SOCKETS))?);
    let resync = FdResync::new(sockets.sibling(second));
    let events =
        RingBuf::try_from(take_map(&mut ebpf, MAP_EVENTS)?).map_err(map_err(MAP_EVENTS))?;
    let loss = PerCpuArray::try_from(take_map(&mut ebpf, MAP_LOSS)?).map_err(map_err(MAP_LOSS))?;
    let mut python = PythonThreads::new(
        HashMap::try_from(take_map(&mut ebpf, MAP_PY_CONTEXTS)?)
            .map_err(map_err(MAP_PY_CONTEXTS))?,
        HashMap::try_from(take_map(&mut ebpf, MAP_PY_THREADS)?).map_err(map_err(MAP_PY_THREADS))?,
    );
    // Before the first syscall is traced: a warm loop's calls are keyed from the start.
    python.refresh(&targets.iter().map(|target| target.pid).collect::<Vec<_>>());
    super::set_runtime(&mut ebpf, loupe_common::RUNTIME_PYTHON, python.any());

    let attached = attach_all(&mut ebpf)?;

    // After attach, so that a connection opened meanwhile is seen by one side or the other.
    let mut existing = Vec::new();
    for target in targets {
        let goid_offset = goid_offsets.get(&target.pid).copied().unwrap_or(0);
        for socket in seed_sockets(&mut sockets, target.pid, goid_offset)? {
            existing.push((target.pid, socket));
        }
    }
    Ok(Probes {
        ebpf,
        events,
        targets: target_map,
        sockets,
        resync,
        loss,
        python,
        attached,
        existing,
    })
}

/// A second handle on a hash map (same kernel map, its own fd), for a second thread.
fn second_handle(map: &Map) -> Result<Map, MapError> {
    let data = match map {
        Map::HashMap(data) | Map::LruHashMap(data) => data,
        _ => return Err(MapError::InvalidMapType { map_type: 0 }),
    };
    Map::from_map_data(MapData::from_id(data.info()?.id())?)
}

fn attach_all(ebpf: &mut Ebpf) -> Result<usize, ProbeError> {
    let mut attached = 0;
    for spec in TRACEPOINT_PROGRAMS {
        let name = spec.program;
        let optional = OPTIONAL_PROGRAMS.contains(&name);
        let result = attach_one(ebpf, spec);
        match result {
            Ok(count) => attached += count,
            Err(err) if optional => tracing::warn!("{err}; continuing without it"),
            Err(err) => return Err(err),
        }
    }
    Ok(attached)
}

fn attach_one(
    ebpf: &mut Ebpf,
    spec: &'static loupe_common::names::TracepointProgram,
) -> Result<usize, ProbeError> {
    let name = spec.program;
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::ProgramType {
            name,
            source: Box::new(source),
        })?;
    program.load().map_err(|source| ProbeError::Verify {
        name,
        source: Box::new(source),
    })?;
    for &(category, tracepoint) in spec.tracepoints {
        program
            .attach(category, tracepoint)
            .map_err(|source| ProbeError::Attach {
                name,
                category,
                tracepoint,
                source: Box::new(source),
            })?;
    }
    Ok(spec.tracepoints.len())
}

/// Finds `offset:N;` of the field named `field` in a tracepoint format description.
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?;
        if name != field {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::parse_field_offset;

    #[test]
    fn newtask_format_offsets_are_read() {
        let format = "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
                      \tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\
                      \tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\
                      \tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;\n\
                      \tfield:short oom_score_adj;\toffset:40;\tsize:2;\tsigned:1;\n";
        assert_eq!(parse_field_offset(format, "pid"), Some(8));
        assert_eq!(parse_field_offset(format, "clone_flags"), Some(32));
        assert_eq!(parse_field_offset(format, "common_pid"), Some(4));
    }
}
