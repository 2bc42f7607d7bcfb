//! Upkeep of the kernel maps while loupe runs: polls the loss counters, and forgets targets that
//! exited (and their sockets), including the thread ids the fork program adds by mistake.

use std::{sync::Arc, time::Duration};

use aya::maps::{HashMap, MapData, PerCpuArray};
use loupe_common::{SocketInfo, SocketKey, TargetInfo};
use tokio::sync::watch;

use super::LossCounters;
use crate::{process::is_live_process, stats::Counters};

pub struct Upkeep {
    pub targets: HashMap<MapData, u32, TargetInfo>,
    pub sockets: HashMap<MapData, u64, SocketInfo>,
    pub loss: PerCpuArray<MapData, u64>,
}

const EVERY: Duration = Duration::from_secs(1);

impl Upkeep {
    /// Runs until `stop`; returns early (true) when no target is left alive.
    pub async fn run(mut self, counters: Arc<Counters>, mut stop: watch::Receiver<bool>) -> bool {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {
                    self.poll_loss(&counters);
                    return false;
                }
            }
            self.poll_loss(&counters);
            if self.forget_dead() == 0 {
                return true;
            }
        }
    }

    fn poll_loss(&self, counters: &Counters) {
        let loss = LossCounters::read(&self.loss);
        counters
            .events_lost_kernel
            .store(loss.events_lost(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes targets that are not live processes; returns how many targets remain.
    fn forget_dead(&mut self) -> usize {
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
        pids.len() - dead.len()
    }
}
