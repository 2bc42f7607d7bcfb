//! CPU sampling of hot threads: a CPU-clock perf event opened on one thread (never a whole CPU
//! or process), with the `cpu_sample` program attached, while that thread runs something slow.
//! Nothing is open while nothing is slow, unless `--profile-always HZ` asked for one low-rate
//! event per CPU whose program keeps only the targets' samples.

use std::collections::HashMap;

use aya::{
    Ebpf,
    programs::{
        PerfEvent,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
    },
};
use loupe_common::names::{PROGRAM_CPU_SAMPLE, PROGRAM_CPU_SAMPLE_ALWAYS};

use crate::profile::ProfileCommand;

/// Perf events open per hot thread.
pub struct ThreadSampler {
    hz: u64,
    links: HashMap<u32, PerfEventLinkId>,
    /// Heat commands that failed (thread gone, perf_event_open refused).
    pub failures: u64,
}

impl ThreadSampler {
    /// Loads the sampling program, and with `always_hz` starts the always-on sampling of every
    /// CPU; Err says why CPU profiles are off.
    pub fn new(ebpf: &mut Ebpf, hz: u64, always_hz: Option<u64>) -> Result<Self, String> {
        load(ebpf, PROGRAM_CPU_SAMPLE)?;
        if let Some(always_hz) = always_hz {
            // Its links live as long as the program, which lives as long as loupe.
            if let Err(reason) = sample_always(ebpf, always_hz) {
                eprintln!("loupe: warning: --profile-always is off: {reason}");
            }
        }
        Ok(Self {
            hz,
            links: HashMap::new(),
            failures: 0,
        })
    }

    pub fn apply(&mut self, ebpf: &mut Ebpf, command: ProfileCommand) {
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
