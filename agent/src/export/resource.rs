//! The OTel resource of each observed process: service.name, process.pid,
//! process.executable.name, host.name. Read from /proc once per process.
//!
//! Bounded: when the cache grows past what it held after its last sweep (twice that, at least
//! [`SWEEP_AT`]), the resources of processes that exited are dropped; past [`MAX_RESOURCES`]
//! live ones the least recently used goes (it is read again if its process exports again).

use std::num::NonZeroUsize;

use lru::LruCache;
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
};

use crate::process::ProcessInfo;

/// Resources cached before the first sweep for exited processes.
pub const SWEEP_AT: usize = 64;
/// Resources cached at most.
pub const MAX_RESOURCES: usize = 4096;

/// Builds and caches one resource per pid.
pub struct Resources {
    service_name: Option<String>,
    host_name: String,
    cache: LruCache<u32, Resource>,
    /// The cache's size that triggers the next sweep.
    next_sweep: usize,
    /// Whether a process is still running (its /proc entry exists).
    alive: fn(u32) -> bool,
}

impl Resources {
    pub fn new(service_name: Option<String>) -> Self {
        Self::watching(service_name, process_alive)
    }

    /// With `alive` saying which processes still run.
    fn watching(service_name: Option<String>, alive: fn(u32) -> bool) -> Self {
        Self {
            service_name,
            host_name: host_name(),
            cache: LruCache::new(NonZeroUsize::new(MAX_RESOURCES).unwrap_or(NonZeroUsize::MIN)),
            next_sweep: SWEEP_AT,
            alive,
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
        let alive = self.alive;
        let dead: Vec<u32> = self
            .cache
            .iter()
            .map(|(pid, _)| *pid)
            .filter(|pid| !alive(*pid))
            .collect();
        for pid in dead {
            self.cache.pop(&pid);
        }
        self.next_sweep = (self.cache.len() * 2).max(SWEEP_AT);
    }

    pub fn get(&mut self, pid: u32) -> &Resource {
        if !self.cache.contains(&pid) {
            self.sweep();
        }
        let (configured, host_name) = (&self.service_name, &self.host_name);
        self.cache
            .get_or_insert(pid, || build(configured.as_deref(), host_name, pid))
    }
}

/// The resource of `pid`, read from /proc.
fn build(configured: Option<&str>, host_name: &str, pid: u32) -> Resource {
    let info = ProcessInfo::read(pid);
    let service_name = match (configured, &info) {
        (Some(name), _) => name.to_owned(),
        (None, Some(info)) => info.name.clone(),
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

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes below this pid have exited (the test's stand-in for /proc).
    fn alive_from_1000(pid: u32) -> bool {
        pid >= 1000
    }

    #[test]
    fn the_resources_of_exited_processes_are_dropped() {
        let mut resources = Resources::watching(Some("svc".into()), alive_from_1000);
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
        let pid = resources
            .get(1000)
            .attributes
            .iter()
            .find(|kv| kv.key == "process.pid")
            .and_then(|kv| kv.value.clone());
        assert_eq!(
            pid,
            Some(AnyValue {
                value: Some(Value::IntValue(1000))
            })
        );
    }

    #[test]
    fn running_processes_are_bounded_too() {
        let mut resources = Resources::watching(None, |_| true);
        for pid in 0..(MAX_RESOURCES as u32 + 100) {
            resources.get(pid);
        }
        assert_eq!(resources.len(), MAX_RESOURCES);
        assert!(resources.cache.contains(&(MAX_RESOURCES as u32 + 99)));
    }
}
