//! Upkeep of the kernel side while loupe runs: polls the loss counters, keeps the targets in
//! step with what runs (those that exited are taken out with their sockets, and with `--exe` or
//! `--name` those that start later and match join: `targets`), and probes libraries the targets
//! loaded since the last look. It owns the loaded object: when it ends, every program is
//! detached. Everything it does blocks (procfs, ELF files, uprobe attaches), so it runs on a
//! thread of its own (`crate::stage`).

use std::{sync::Arc, time::Duration};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    EvictionAudit, LibraryNews, LibraryProbes, LossCounters, PythonThreads, TargetNews, Targets,
    ThreadSampler, targets::Changes,
};
use crate::{events::ExecRecord, profile::ProfileCommand, stats::Counters};

pub struct Upkeep {
    pub ebpf: Ebpf,
    pub libraries: LibraryProbes,
    /// CPU sampling of hot threads (None when the kernel refused the program).
    pub sampler: Option<ThreadSampler>,
    /// Heat/cool orders from the stitch stage.
    pub commands: mpsc::Receiver<ProfileCommand>,
    pub targets: Targets,
    pub loss: PerCpuArray<MapData, u64>,
    /// Sockets the LRU socket map let go of.
    pub evictions: EvictionAudit,
    pub python: PythonThreads,
    /// Execs of processes that were not targets, from the stitch stage.
    pub execs: mpsc::Receiver<ExecRecord>,
    /// Targets whose PostgreSQL sessions the wire cannot read, from the stitch stage: their
    /// libpq is probed at once.
    pub libpq: mpsc::UnboundedReceiver<u32>,
    /// Targets coming and going, for the stitch stage.
    pub news: mpsc::UnboundedSender<TargetNews>,
}

/// Often enough that a library loaded or a process exec'd is probed within a fraction of a second.
const EVERY: Duration = Duration::from_millis(250);
/// Exec reports handled before the libraries of those that joined are probed.
const EXECS_AT_ONCE: usize = 64;

impl Upkeep {
    /// Probes the libraries the targets have mapped, sends `attached` the number of uprobes
    /// that took, then runs until `stop`; returns early (true) when no target is left alive,
    /// unless processes that start later may join (`--exe`, `--name`).
    pub async fn run(
        mut self,
        counters: Arc<Counters>,
        mut stop: watch::Receiver<bool>,
        attached: oneshot::Sender<usize>,
    ) -> bool {
        let mut changes = Changes::default();
        if self.targets.watching() {
            // A process that exec'd between the first scan and the exec program's attach.
            self.targets.rescan(&mut self.ebpf, &mut changes);
        }
        self.apply(changes);
        let live = self.targets.live();
        report(&self.libraries.scan(&mut self.ebpf, &live));
        self.set_runtime();
        let _ = attached.send(self.libraries.probe_count());
        let mut tick = tokio::time::interval(EVERY);
        let mut commands_open = true;
        let mut execs_open = true;
        let mut libpq_open = true;
        let mut losses = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                exec = self.execs.recv(), if execs_open => {
                    let Some(exec) = exec else {
                        execs_open = false;
                        continue;
                    };
                    let mut changes = Changes::default();
                    self.targets.on_exec(&mut self.ebpf, &exec, &mut changes);
                    for _ in 1..EXECS_AT_ONCE {
                        let Ok(exec) = self.execs.try_recv() else {
                            break;
                        };
                        self.targets.on_exec(&mut self.ebpf, &exec, &mut changes);
                    }
                    if !changes.is_empty() {
                        self.apply(changes);
                        self.probe_libraries();
                    }
                    continue;
                }
                pid = self.libpq.recv(), if libpq_open => {
                    let Some(pid) = pid else {
                        libpq_open = false;
                        continue;
                    };
                    self.libraries.want(pid);
                    while let Ok(pid) = self.libpq.try_recv() {
                        self.libraries.want(pid);
                    }
                    self.probe_libraries();
                    continue;
                }
                command = self.commands.recv(), if commands_open => {
                    match (command, self.sampler.as_mut()) {
                        (Some(command), Some(sampler)) => {
                            if let ProfileCommand::Heat { pid, tid } = command {
                                self.python.ensure(pid, tid);
                            }
                            sampler.apply(&mut self.ebpf, command);
                            counters
                                .hot_threads
                                .store(sampler.hot() as u64, std::sync::atomic::Ordering::Relaxed);
                            counters
                                .threads_unsampleable
                                .store(sampler.failures, std::sync::atomic::Ordering::Relaxed);
                        }
                        (Some(_), None) => {}
                        (None, _) => commands_open = false,
                    }
                    continue;
                }
                _ = stop.changed() => {
                    self.poll_loss(&counters);
                    return false;
                }
            }
            self.poll_loss(&counters);
            if let Some(sampler) = self.sampler.as_mut() {
                sampler.settle(&mut self.ebpf);
            }
            let mut changes = Changes::default();
            self.targets.check(&mut self.ebpf, &mut changes);
            // An exec report lost (the ring was full, or the queue to here): the process it
            // was about may be one to observe.
            let lost = Counters::get(&counters.events_lost_kernel)
                + Counters::get(&counters.execs_unchecked);
            if lost > losses && self.targets.watching() {
                self.targets.rescan(&mut self.ebpf, &mut changes);
            }
            losses = lost;
            self.apply(changes);
            if self.targets.live().is_empty() && !self.targets.watching() {
                return true;
            }
            self.probe_libraries();
        }
    }

    /// Tells the user and the stitch stage what changed, and lets go of what was attached to a
    /// process that another one replaced on its pid.
    fn apply(&mut self, changes: Changes) {
        for pid in &changes.replaced {
            self.libraries.forget(&mut self.ebpf, *pid);
            self.python.forget(*pid);
        }
        for departure in changes.departures.iter().filter(|d| d.root) {
            eprintln!("loupe: pid {} ({}) exited", departure.pid, departure.comm);
        }
        for arrival in &changes.arrivals {
            eprintln!(
                "loupe: observing pid {} ({}), which matches {}",
                arrival.pid, arrival.comm, arrival.by
            );
        }
        if !changes.departures.is_empty()
            && self.targets.watching()
            && self.targets.live().is_empty()
        {
            eprintln!(
                "loupe: no process left to observe; waiting for one matching {}",
                self.targets.matcher().describe()
            );
        }
        for news in changes.news {
            // The stitch stage outlives this stage's loop: a send fails only at shutdown.
            let _ = self.news.send(news);
        }
    }

    /// Python threads and libraries of the live targets; those of targets gone are let go.
    fn probe_libraries(&mut self) {
        let live = self.targets.live();
        self.python.refresh(&live);
        report(&self.libraries.scan(&mut self.ebpf, &live));
        self.set_runtime();
    }

    /// What the data exits must look for, as the targets are now.
    fn set_runtime(&mut self) {
        use loupe_common::{RUNTIME_PYTHON, RUNTIME_TLS};
        super::set_runtime(&mut self.ebpf, RUNTIME_PYTHON, self.python.any());
        super::set_runtime(&mut self.ebpf, RUNTIME_TLS, self.libraries.tls_probed());
    }

    fn poll_loss(&mut self, counters: &Counters) {
        let loss = LossCounters::read(&self.loss);
        let evicted = self
            .evictions
            .update(self.targets.sockets(), &loss, &self.loss);
        Counters::set(&counters.sockets_evicted, evicted);
        // The kernel's counts are totals: they replace what was polled before.
        for (counter, total) in [
            (&counters.events_lost_kernel, loss.events_lost()),
            (&counters.iovecs_cut, loss.iovecs_cut),
            (&counters.tls_unplaced, loss.tls_unplaced),
            (&counters.sockets_full, loss.sockets_full),
            (&counters.targets_full, loss.targets_full),
        ] {
            Counters::set(counter, total);
        }
    }
}

/// Tells the user about libraries probed or not: one line each on stderr.
pub fn report(news: &[LibraryNews]) {
    for item in news {
        match item {
            LibraryNews::Attached { pid, path, probes } => {
                eprintln!("loupe: probing {path} in pid {pid} ({probes} uprobes)");
            }
            LibraryNews::Failed { pid, path, reason } => {
                eprintln!("loupe: warning: cannot probe {path} in pid {pid}: {reason}");
            }
        }
    }
}
