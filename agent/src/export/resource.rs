//! The OTel resource of each observed process: service.name, process.pid,
//! process.executable.name, host.name. Read from /proc once per process.

use std::collections::HashMap;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use crate::process::ProcessInfo;

/// Builds and caches one resource per pid.
pub struct Resources {
    service_name: Option<String>,
    host_name: String,
    cache: HashMap<u32, Resource>,
}

impl Resources {
    pub fn new(service_name: Option<String>) -> Self {
        Self {
            service_name,
            host_name: host_name(),
            cache: HashMap::new(),
        }
    }

    /// service.name for `pid`: the configured one, else the process name.
    pub fn service_name(&self, info: Option<&ProcessInfo>, pid: u32) -> String {
        match (&self.service_name, info) {
            (Some(name), _) => name.clone(),
            (None, Some(info)) => info.name.clone(),
            (None, None) => format!("pid-{pid}"),
        }
    }

    pub fn get(&mut self, pid: u32) -> &Resource {
        if !self.cache.contains_key(&pid) {
            let info = ProcessInfo::read(pid);
            let mut attributes = vec![
                KeyValue::new("service.name", self.service_name(info.as_ref(), pid)),
                KeyValue::new("process.pid", i64::from(pid)),
                KeyValue::new("host.name", self.host_name.clone()),
                KeyValue::new("telemetry.sdk.name", "loupe"),
                KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
            ];
            if let Some(info) = &info {
                attributes.push(KeyValue::new(
                    "process.executable.name",
                    info.executable_name.clone(),
                ));
            }
            let resource = Resource::builder_empty()
                .with_attributes(attributes)
                .build();
            self.cache.insert(pid, resource);
        }
        &self.cache[&pid]
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}
