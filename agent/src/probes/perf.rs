//! CPU sampling of hot threads: a CPU-clock perf event opened on one thread (never a whole CPU
//! or process), with the `cpu_sample` program attached, while that thread runs something slow.
//! Nothing is open while nothing is slow, unless `--profile-always HZ` asked for one low-rate
//! event per CPU whose program keeps only the targets' samples.
//!
//! Off-CPU: while at least one thread is hot, the `off_cpu` program is attached to
//! sched:sched_switch (and `off_cpu_return` to raw_syscalls:sys_exit) and the hot threads are in
//! `HOT_THREADS`; a second after the last one cools they are detached, so nothing is paid while
//! nothing is slow. A thread found asleep as it is heated has what it waits on read from /proc
//! ([`crate::profile::asleep`]).

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        PerfEvent, TracePoint,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
        trace_point::TracePointLinkId,
    },
};
use loupe_common::{
    HotThread,
    names::{
        MAP_HOT_THREADS, PROGRAM_CPU_SAMPLE, PROGRAM_CPU_SAMPLE_ALWAYS, PROGRAM_OFF_CPU,
        PROGRAM_OFF_CPU_RETURN,
    },
};
use tokio::sync::mpsc;

use crate::{
    profile::{ProfileCommand, asleep, samples::Heated},
    spans::clock::monotonic_now_ns,
};

/// Perf events open per hot thread.
pub struct ThreadSampler {
    hz: u64,
    links: HashMap<u32, PerfEventLinkId>,
    /// Heat commands that failed (thread gone, perf_event_open refused).
    pub failures: u64,
    /// None when the kernel refused the off-CPU program.
    off_cpu: Option<OffCpu>,
}

/// The off-CPU side: the hot threads' map, the sched_switch and sys_exit links while any is
/// hot, and the line to the stitch stage for what each heated thread was doing.
struct OffCpu {
    hot: BpfHashMap<MapData, u32, HotThread>,
    links: Option<(TracePointLinkId, TracePointLinkId)>,
    heated: mpsc::UnboundedSender<Heated>,
    /// The threads in `hot`, and since when none has been.
    watched: std::collections::HashSet<u32>,
    idle_since: Option<std::time::Instant>,
}

/// How long the off-CPU programs stay attached with no thread hot.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

impl ThreadSampler {
    /// Loads the sampling programs, and with `always_hz` starts the always-on sampling of every
    /// CPU; Err says why CPU profiles are off. With `heated`, hot threads are watched off the
    /// CPU too, and reports of the threads it heats go there.
    pub fn new(
        ebpf: &mut Ebpf,
        hz: u64,
        always_hz: Option<u64>,
        heated: Option<mpsc::UnboundedSender<Heated>>,
    ) -> Result<Self, String> {
        load(ebpf, PROGRAM_CPU_SAMPLE)?;
        if let Some(always_hz) = always_hz {
            // Its links live as long as the program, which lives as long as loupe.
            if let Err(reason) = sample_always(ebpf, always_hz) {
                eprintln!("loupe: warning: --profile-always is off: {reason}");
            }
        }
        let off_cpu = match heated.map(|heated| (heated, load_off_cpu(ebpf))) {
            None => None,
            Some((heated, Ok(hot))) => Some(OffCpu {
                hot,
                links: None,
                heated,
                watched: Default::default(),
                idle_since: None,
            }),
            Some((_, Err(reason))) => {
                eprintln!("loupe: warning: off-CPU profiles are off: {reason}");
                None
            }
        };
        Ok(Self {
            hz,
            links: HashMap::new(),
            failures: 0,
            off_cpu,
        })
    }

    pub fn apply(&mut self, ebpf: &mut Ebpf, command: ProfileCommand) {
        let new =
            matches!(command, ProfileCommand::Heat { tid, .. } if !self.links.contains_key(&tid));
        self.sample(ebpf, command);
        // The CPU clock first: it is what the deadline heated the thread for.
        if let Some(off_cpu) = &mut self.off_cpu {
            match command {
                ProfileCommand::Heat { pid, tid } if new => off_cpu.heat(ebpf, pid, tid),
                ProfileCommand::Cool { tid } => off_cpu.cool(tid),
                ProfileCommand::Heat { .. } => {}
            }
        }
    }

    /// Detaches the off-CPU programs once no thread has been hot for a while (called on the
    /// upkeep's tick): a service slow now and then does not attach and detach them per request.
    pub fn settle(&mut self, ebpf: &mut Ebpf) {
        if let Some(off_cpu) = &mut self.off_cpu {
            off_cpu.settle(ebpf);
        }
    }

    fn sample(&mut self, ebpf: &mut Ebpf, command: ProfileCommand) {
        let Some(program) = ebpf
            .program_mut(PROGRAM_CPU_SAMPLE)
            .and_then(|p| <&mut PerfEvent>::try_from(p).ok())
        else {
            return;
        };
        match command {
            ProfileCommand::Heat { tid, .. } => {
                if self.links.contains_key(&tid) {
                    return;
                }
                // A tid as the pid of perf_event_open samples that one thread.
                match program.attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::OneProcess {
                        pid: tid,
                        cpu: None,
                    },
                    SamplePolicy::Frequency(self.hz),
                    false,
                ) {
                    Ok(link) => {
                        self.links.insert(tid, link);
                    }
                    Err(err) => {
                        self.failures += 1;
                        tracing::debug!("cannot sample thread {tid}: {err}");
                    }
                }
            }
            ProfileCommand::Cool { tid } => {
                if let Some(link) = self.links.remove(&tid)
                    && let Err(err) = program.detach(link)
                {
                    tracing::debug!("cannot stop sampling thread {tid}: {err}");
                }
            }
        }
    }

    /// Threads sampled right now.
    pub fn hot(&self) -> usize {
        self.links.len()
    }

    /// Whether the off-CPU programs are attached (they stay for a second after the last hot
    /// thread cools).
    pub fn watching_off_cpu(&self) -> bool {
        self.off_cpu.as_ref().is_some_and(OffCpu::attached)
    }
}

impl OffCpu {
    /// Watches thread `tid` leave and re-enter CPUs (attaching the programs for the first hot
    /// thread), then tells the stitch stage what it is doing now.
    fn heat(&mut self, ebpf: &mut Ebpf, pid: u32, tid: u32) {
        if self.links.is_none() {
            match attach_off_cpu(ebpf) {
                Ok(links) => self.links = Some(links),
                Err(reason) => {
                    tracing::debug!("cannot watch threads off the CPU: {reason}");
                    return;
                }
            }
        }
        let heat_ns = monotonic_now_ns();
        let entry = HotThread {
            pid,
            ..HotThread::default()
        };
        if let Err(err) = self.hot.insert(tid, entry, 0) {
            tracing::debug!("cannot watch thread {tid} off the CPU: {err}");
            return;
        }
        self.watched.insert(tid);
        self.idle_since = None;
        // Read after the insert: a thread asleep now is seen by the programs when it wakes.
        let asleep = asleep::read(pid, tid);
        let _ = self.heated.send(Heated {
            pid,
            tid,
            heat_ns,
            asleep,
        });
    }

    fn cool(&mut self, tid: u32) {
        if self.watched.remove(&tid) {
            let _ = self.hot.remove(&tid);
            if self.watched.is_empty() {
                self.idle_since = Some(std::time::Instant::now());
            }
        }
    }

    fn settle(&mut self, ebpf: &mut Ebpf) {
        let idle_long = self
            .idle_since
            .is_some_and(|since| since.elapsed() >= LINGER);
        if !self.watched.is_empty() || !idle_long {
            return;
        }
        if let Some((switch, exit)) = self.links.take() {
            for (name, link) in [(PROGRAM_OFF_CPU, switch), (PROGRAM_OFF_CPU_RETURN, exit)] {
                if let Err(err) = tracepoint(ebpf, name)
                    .and_then(|program| program.detach(link).map_err(|err| err.to_string()))
                {
                    tracing::debug!("cannot detach {name}: {err}");
                }
            }
        }
    }

    /// The off-CPU programs are attached right now.
    fn attached(&self) -> bool {
        self.links.is_some()
    }
}

fn attach_off_cpu(ebpf: &mut Ebpf) -> Result<(TracePointLinkId, TracePointLinkId), String> {
    let switch = tracepoint(ebpf, PROGRAM_OFF_CPU)?
        .attach("sched", "sched_switch")
        .map_err(|err| err.to_string())?;
    match tracepoint(ebpf, PROGRAM_OFF_CPU_RETURN)?
        .attach("raw_syscalls", "sys_exit")
        .map_err(|err| err.to_string())
    {
        Ok(exit) => Ok((switch, exit)),
        Err(err) => {
            let _ = tracepoint(ebpf, PROGRAM_OFF_CPU).map(|p| p.detach(switch));
            Err(err)
        }
    }
}

fn tracepoint<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut TracePoint, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("the eBPF object has no program `{name}`"))?
        .try_into()
        .map_err(|err| format!("`{name}` is not a tracepoint program: {err}"))
}

/// Loads the off-CPU programs (not attached yet) and takes the hot threads' map.
fn load_off_cpu(ebpf: &mut Ebpf) -> Result<BpfHashMap<MapData, u32, HotThread>, String> {
    for name in [PROGRAM_OFF_CPU, PROGRAM_OFF_CPU_RETURN] {
        tracepoint(ebpf, name)?
            .load()
            .map_err(|err| format!("the kernel refused `{name}`: {err}"))?;
    }
    let map = ebpf
        .take_map(MAP_HOT_THREADS)
        .ok_or_else(|| format!("the eBPF object has no map `{MAP_HOT_THREADS}`"))?;
    BpfHashMap::try_from(map).map_err(|err| format!("map `{MAP_HOT_THREADS}`: {err}"))
}

/// Loads perf_event program `name`; Err says why it cannot run.
fn load<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut PerfEvent, String> {
    let program: &mut PerfEvent = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("the eBPF object has no program `{name}`"))?
        .try_into()
        .map_err(|err| format!("`{name}` is not a perf_event program: {err}"))?;
    program
        .load()
        .map_err(|err| format!("the kernel refused `{name}`: {err}"))?;
    Ok(program)
}

/// One CPU-clock event per online CPU at `hz`, with the program that keeps the targets' samples.
fn sample_always(ebpf: &mut Ebpf, hz: u64) -> Result<(), String> {
    let program = load(ebpf, PROGRAM_CPU_SAMPLE_ALWAYS)?;
    let cpus =
        aya::util::online_cpus().map_err(|(_, err)| format!("cannot list the CPUs: {err}"))?;
    for cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz),
                false,
            )
            .map_err(|err| format!("cannot sample CPU {cpu}: {err}"))?;
    }
    Ok(())
}
