//! The service.name each process's spans are exported under, remembered by pid: the configured
//! one (`--service-name`, OTEL_SERVICE_NAME) for all of them, else each process's own
//! ([`super::service_name`], read from /proc once per pid).

use std::sync::Arc;

use rustc_hash::FxHashMap;

/// Service names remembered by pid before they are read again.
const MAX_SERVICES: usize = 4096;

pub struct ServiceNames {
    configured: Option<Arc<str>>,
    by_pid: FxHashMap<u32, Arc<str>>,
    /// A process's name, from /proc (None once it is gone).
    name_of: fn(u32) -> Option<String>,
}

impl ServiceNames {
    pub fn new(configured: Option<String>) -> Self {
        Self::with_lookup(configured, |pid| {
            super::ProcessInfo::read(pid).map(|info| info.service_name)
        })
    }

    /// With `name_of` reading a process's name (tests give their own).
    pub fn with_lookup(configured: Option<String>, name_of: fn(u32) -> Option<String>) -> Self {
        Self {
            configured: configured.map(Arc::from),
            by_pid: FxHashMap::default(),
            name_of,
        }
    }

    /// The service.name of `pid` (`pid-N` when the process is gone unread).
    pub fn of(&mut self, pid: u32) -> Arc<str> {
        if let Some(name) = &self.configured {
            return name.clone();
        }
        if let Some(name) = self.by_pid.get(&pid) {
            return name.clone();
        }
        if self.by_pid.len() >= MAX_SERVICES {
            self.by_pid.clear();
        }
        let name: Arc<str> = (self.name_of)(pid)
            .unwrap_or_else(|| format!("pid-{pid}"))
            .into();
        self.by_pid.insert(pid, name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_the_configured_name_else_the_process_name() {
        let mut names = ServiceNames::with_lookup(None, |pid| Some(format!("proc{pid}")));
        assert_eq!(&*names.of(7), "proc7");
        let mut configured = ServiceNames::with_lookup(Some("shop".into()), |_| unreachable!());
        assert_eq!(&*configured.of(7), "shop");
        let mut gone = ServiceNames::with_lookup(None, |_| None);
        assert_eq!(&*gone.of(9), "pid-9");
    }
}
