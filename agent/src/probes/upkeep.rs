//! Upkeep of the kernel side while loupe runs: polls the loss counters, forgets targets that
//! exited (and their sockets), and probes libraries the targets loaded since the last look. It
//! owns the loaded object: when it ends, every program is detached. Everything it does blocks
//! (procfs, ELF files, uprobe attaches), so it runs on a thread of its own (`crate::stage`).

use std::{sync::Arc, time::Duration};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use loupe_common::{SocketInfo, SocketKey, TargetInfo};
use tokio::sync::{mpsc, oneshot, watch};

use super::{LibraryNews, LibraryProbes, LossCounters, PythonThreads, ThreadSampler};
use crate::{process::is_live_process, profile::ProfileCommand, stats::Counters};

pub struct Upkeep {
    pub ebpf: Ebpf,
    pub libraries: LibraryProbes,
    /// CPU sampling of hot threads (None when the kernel refused the program).
    pub sampler: Option<ThreadSampler>,
    /// Heat/cool orders from the stitch stage.
    pub commands: mpsc::Receiver<ProfileCommand>,
    pub targets: HashMap<MapData, u32, TargetInfo>,
    pub sockets: HashMap<MapData, u64, SocketInfo>,
    pub loss: PerCpuArray<MapData, u64>,
    pub python: PythonThreads,
}

/// Often enough that a library loaded or a process exec'd is probed within a fraction of a second.
const EVERY: Duration = Duration::from_millis(250);

impl Upkeep {
    /// Probes the libraries the targets have mapped, sends `attached` the number of uprobes
    /// that took, then runs until `stop`; returns early (true) when no target is left alive.
    pub async fn run(
        mut self,
        counters: Arc<Counters>,
        mut stop: watch::Receiver<bool>,
        attached: oneshot::Sender<usize>,
    ) -> bool {
        let pids: Vec<u32> = self.targets.keys().flatten().collect();
        report(&self.libraries.scan(&mut self.ebpf, &pids));
        let _ = attached.send(self.libraries.probe_count());
        let mut tick = tokio::time::interval(EVERY);
        let mut commands_open = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                command = self.commands.recv(), if commands_open => {
                    match (command, self.sampler.as_mut()) {
                        (Some(command), Some(sampler)) => {
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
            let live = self.forget_dead();
            if live.is_empty() {
                return true;
            }
            self.python.refresh(&live);
            let news = self.libraries.scan(&mut self.ebpf, &live);
            report(&news);
        }
    }

    fn poll_loss(&self, counters: &Counters) {
        let loss = LossCounters::read(&self.loss);
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

    /// Removes targets that are not live processes; returns those that remain.
    fn forget_dead(&mut self) -> Vec<u32> {
        let pids: Vec<u32> = self.targets.keys().flatten().collect();
        let dead: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&pid| !is_live_process(pid))
            .collect();
        for pid in &dead {
            let _ = self.targets.remove(pid);
        }
        if !dead.is_empty() {
            let stale: Vec<u64> = self
                .sockets
                .keys()
                .flatten()
                .filter(|&key| dead.contains(&SocketKey::pid_of(key)))
                .collect();
            for key in stale {
                let _ = self.sockets.remove(&key);
            }
            tracing::debug!("forgot {} exited targets", dead.len());
        }
        pids.into_iter().filter(|pid| !dead.contains(pid)).collect()
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
