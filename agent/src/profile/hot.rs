//! Which threads are hot: the set the stitcher reports each tick, turned into commands for the
//! upkeep (which owns the perf events). Bounded: at most [`HotThreads::MAX`] threads at once.

use std::collections::BTreeSet;

/// What the upkeep is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileCommand {
    /// Start sampling thread `tid` of process `pid`.
    Heat { pid: u32, tid: u32 },
    /// Stop sampling thread `tid`.
    Cool { tid: u32 },
}

/// The threads being sampled.
#[derive(Debug, Default)]
pub struct HotThreads {
    hot: BTreeSet<(u32, u32)>,
    /// Threads refused at the last update (past the limit), so each is counted once.
    refused: BTreeSet<(u32, u32)>,
    /// Threads that would have been hot past the limit (each counted once per refusal spell).
    pub over_limit: u64,
}

impl HotThreads {
    pub const MAX: usize = 64;

    /// Moves to `wanted`: cools threads no longer in it, heats new ones (up to the limit).
    pub fn update(&mut self, wanted: &BTreeSet<(u32, u32)>, out: &mut Vec<ProfileCommand>) {
        let cooled: Vec<(u32, u32)> = self.hot.difference(wanted).copied().collect();
        for thread in cooled {
            self.hot.remove(&thread);
            out.push(ProfileCommand::Cool { tid: thread.1 });
        }
        let mut refused = BTreeSet::new();
        for &(pid, tid) in wanted.difference(&self.hot.clone()) {
            if self.hot.len() >= Self::MAX {
                if !self.refused.contains(&(pid, tid)) {
                    self.over_limit += 1;
                }
                refused.insert((pid, tid));
                continue;
            }
            self.hot.insert((pid, tid));
            out.push(ProfileCommand::Heat { pid, tid });
        }
        self.refused = refused;
    }

    pub fn len(&self) -> usize {
        self.hot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hot.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_heat_once_and_cool_when_no_longer_slow() {
        let mut hot = HotThreads::default();
        let mut out = Vec::new();
        hot.update(&BTreeSet::from([(1, 10), (1, 11)]), &mut out);
        assert_eq!(
            out,
            vec![
                ProfileCommand::Heat { pid: 1, tid: 10 },
                ProfileCommand::Heat { pid: 1, tid: 11 }
            ]
        );
        out.clear();
        hot.update(&BTreeSet::from([(1, 11)]), &mut out);
        assert_eq!(out, vec![ProfileCommand::Cool { tid: 10 }]);
        out.clear();
        hot.update(&BTreeSet::from([(1, 11)]), &mut out);
        assert!(out.is_empty(), "no command while nothing changes");
        hot.update(&BTreeSet::new(), &mut out);
        assert!(hot.is_empty());
    }

    #[test]
    fn at_most_max_threads_are_hot() {
        let mut hot = HotThreads::default();
        let mut out = Vec::new();
        let wanted: BTreeSet<(u32, u32)> = (0..100).map(|tid| (1, tid)).collect();
        hot.update(&wanted, &mut out);
        assert_eq!(hot.len(), HotThreads::MAX);
        assert_eq!(hot.over_limit, 100 - HotThreads::MAX as u64);
        hot.update(&wanted, &mut out);
        assert_eq!(
            hot.over_limit,
            100 - HotThreads::MAX as u64,
            "a thread still refused is not counted again"
        );
    }
}
