//! The OTel resource of each observed process: service.name, process.pid,
//! process.executable.name, host.name. Read from /proc once per process.
//!
//! A process is its pid and start time (`process::identity`): at most once a second a cached
//! resource's pid is looked at again, and when another process runs on it now, its resource is
//! read afresh (the kernel reuses pids).
//!
//! Bounded: when the cache grows past what it held after its last sweep (twice that, at least
//! [`SWEEP_AT`]), the resources of processes that exited are dropped; past [`MAX_RESOURCES`]
//! live ones the least recently used goes (it is read again if its process exports again).

use std::{
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
};

use crate::process::{ProcessId, ProcessInfo};

/// Resources cached before the first sweep for exited processes.
pub const SWEEP_AT: usize = 64;
/// Resources cached at most.
pub const MAX_RESOURCES: usize = 4096;
/// How often a cached resource's pid is checked for another process.
const RECHECK: Duration = Duration::from_secs(1);

struct Cached {
    resource: Resource,
    /// The start time of the process it was read from (None: it was gone by then).
    start_time: Option<u64>,
    checked_at: Instant,
}

/// Builds and caches one resource per pid.
pub struct Resources {
    service_name: Option<String>,
    host_name: String,
    cache: LruCache<u32, Cached>,
    /// The cache's size that triggers the next sweep.
    next_sweep: usize,
    /// The start time of the process running on a pid, None when none is.
    start_of: fn(u32) -> Option<u64>,
    recheck: Duration,
}

impl Resources {
    pub fn new(service_name: Option<String>) -> Self {
        Self::watching(service_name, start_time_of)
    }

    /// With `start_of` saying which process runs on a pid.
    fn watching(service_name: Option<String>, start_of: fn(u32) -> Option<u64>) -> Self {
        Self {
            service_name,
            host_name: host_name(),
            cache: LruCache::new(NonZeroUsize::new(MAX_RESOURCES).unwrap_or(NonZeroUsize::MIN)),
            next_sweep: SWEEP_AT,
            start_of,
            recheck: RECHECK,
        }
    }

    /// Resources cached now.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Drops the resources of processes that exited, once the cache has doubled since the
    /// last sweep (amortized: a sweep per as many new processes as the cache holds).
    fn sweep(&mut self) {
        if self.cache.len() < self.next_sweep {
            return;
        }
        let start_of = self.start_of;
        let dead: Vec<u32> = self
            .cache
            .iter()
            .filter(|(pid, cached)| {
                cached.start_time.is_none() || start_of(**pid) != cached.start_time
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in dead {
            self.cache.pop(&pid);
        }
        self.next_sweep = (self.cache.len() * 2).max(SWEEP_AT);
    }

    pub fn get(&mut self, pid: u32) -> &Resource {
        let now = Instant::now();
        let fresh = match self.cache.get_mut(&pid) {
            None => {
                self.sweep();
                false
            }
            Some(cached) if now.duration_since(cached.checked_at) < self.recheck => true,
            Some(cached) => {
                cached.checked_at = now;
                let start_time = (self.start_of)(pid);
                // Gone: the spans still coming are its own. Another start time: a new process.
                start_time.is_none() || start_time == cached.start_time
            }
        };
        if !fresh {
            self.cache.pop(&pid);
        }
        let (configured, host_name, start_of) =
            (&self.service_name, &self.host_name, self.start_of);
        &self
            .cache
            .get_or_insert(pid, || Cached {
                start_time: start_of(pid),
                resource: build(configured.as_deref(), host_name, pid),
                checked_at: now,
            })
            .resource
    }
}

fn start_time_of(pid: u32) -> Option<u64> {
    ProcessId::of(pid).map(|id| id.start_time)
}

/// The resource of `pid`, read from /proc.
fn build(configured: Option<&str>, host_name: &str, pid: u32) -> Resource {
    let info = ProcessInfo::of_target(pid);
    let service_name = match (configured, &info) {
        (Some(name), _) => name.to_owned(),
        (None, Some(info)) => info.service_name.clone(),
        (None, None) => format!("pid-{pid}"),
    };
    let mut attributes = vec![
        attribute("service.name", Value::StringValue(service_name)),
        attribute("process.pid", Value::IntValue(i64::from(pid))),
        attribute("host.name", Value::StringValue(host_name.to_owned())),
        attribute("telemetry.sdk.name", Value::StringValue("loupe".into())),
        attribute(
            "telemetry.sdk.version",
            Value::StringValue(env!("CARGO_PKG_VERSION").into()),
        ),
    ];
    if let Some(info) = &info {
        attributes.push(attribute(
            "process.executable.name",
            Value::StringValue(info.executable_name.clone()),
        ));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

fn attribute(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// This host's name (`host.name`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Processes below this pid have exited (the test's stand-in for /proc); the others all
    /// started at tick 7.
    fn running_from_1000(pid: u32) -> Option<u64> {
        (pid >= 1000).then_some(7)
    }

    fn attributes(resource: &Resource) -> Vec<String> {
        resource
            .attributes
            .iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(text)) => text.clone(),
                    Some(Value::IntValue(n)) => n.to_string(),
                    other => format!("{other:?}"),
                };
                format!("{}={value}", kv.key)
            })
            .collect()
    }

    #[test]
    fn the_resources_of_exited_processes_are_dropped() {
        let mut resources = Resources::watching(Some("svc".into()), running_from_1000);
        // Short-lived workers (pids below 1000, exited since) and long-lived ones.
        for pid in 0..500 {
            resources.get(pid);
        }
        for pid in 1000..1010 {
            resources.get(pid);
        }
        assert!(
            resources.len() < SWEEP_AT * 2,
            "exited processes are forgotten: {}",
            resources.len()
        );
        for pid in 1000..1010 {
            assert!(
                resources.cache.contains(&pid),
                "a running process keeps its resource"
            );
        }
        let attributes = attributes(resources.get(1000));
        assert!(
            attributes.contains(&"process.pid=1000".to_owned()),
            "{attributes:?}"
        );
    }

    #[test]
    fn running_processes_are_bounded_too() {
        let mut resources = Resources::watching(None, |_| Some(1));
        for pid in 0..(MAX_RESOURCES as u32 + 100) {
            resources.get(pid);
        }
        assert_eq!(resources.len(), MAX_RESOURCES);
        assert!(resources.cache.contains(&(MAX_RESOURCES as u32 + 99)));
    }

    /// The start time of the process on every pid, as the test sets it.
    static STARTED: AtomicU64 = AtomicU64::new(100);

    fn started(_pid: u32) -> Option<u64> {
        Some(STARTED.load(Ordering::Relaxed))
    }

    #[test]
    fn a_new_process_on_a_cached_pid_gets_its_own_resource() {
        let me = std::process::id();
        let mut resources = Resources::watching(None, started);
        resources.recheck = Duration::ZERO;
        let first = resources.get(me).clone();
        assert_eq!(resources.cache.peek(&me).unwrap().start_time, Some(100));
        // Same process: the resource is the one cached.
        assert_eq!(attributes(resources.get(me)), attributes(&first));
        assert_eq!(resources.cache.peek(&me).unwrap().start_time, Some(100));
        // Another process on the pid: read again.
        STARTED.store(200, Ordering::Relaxed);
        resources.get(me);
        assert_eq!(resources.cache.peek(&me).unwrap().start_time, Some(200));
    }
}
