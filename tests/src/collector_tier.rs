//! A Jaeger v2 process as the collector tier of docs/deployment.md, started from the very config
//! file the docs ship (docs/collector-tier.yaml), its listeners and its upstream set to loopback
//! through the environment the file reads.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{TempDir, free_port, jaeger::jaeger_binary, wait_until, workspace_root};

/// A running collector tier, killed on drop.
pub struct CollectorTier {
    child: Child,
    dir: TempDir,
    pub otlp_grpc: u16,
}

impl CollectorTier {
    /// Starts the tier forwarding to the OTLP gRPC endpoint `upstream` (`127.0.0.1:<port>`),
    /// with `settings` (the file's other `${env:...}` values). A port found free can be taken
    /// before the tier binds it: then it exits at once and is started again, up to three times.
    pub fn start(upstream: &str, settings: &[(&str, &str)]) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(upstream, settings) {
                Ok(tier) => return tier,
                Err(log) => last = log,
            }
        }
        panic!("the collector tier exited at start three times; the last time:\n{last}");
    }

    fn try_start(upstream: &str, settings: &[(&str, &str)]) -> Result<Self, String> {
        let dir = TempDir::new("collector");
        let (otlp_grpc, otlp_http) = (free_port(), free_port());
        let log = std::fs::File::create(dir.0.join("collector.log")).expect("collector log");
        let child = Command::new(jaeger_binary())
            .arg("--config")
            .arg(workspace_root().join("docs/collector-tier.yaml"))
            .env(
                "COLLECTOR_OTLP_GRPC_ENDPOINT",
                format!("127.0.0.1:{otlp_grpc}"),
            )
            .env(
                "COLLECTOR_OTLP_HTTP_ENDPOINT",
                format!("127.0.0.1:{otlp_http}"),
            )
            .env("JAEGER_OTLP_GRPC_ENDPOINT", upstream)
            .envs(settings.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the collector tier (jaeger)");
        let mut tier = Self {
            child,
            dir,
            otlp_grpc,
        };
        let up = wait_until(Duration::from_secs(60), || {
            if let Ok(Some(status)) = tier.child.try_wait() {
                return Some(Err(format!("exited with {status}:\n{}", tier.log())));
            }
            // Its OTLP receiver accepts connections: loupe can export.
            std::net::TcpStream::connect(("127.0.0.1", tier.otlp_grpc))
                .ok()
                .map(|_| Ok(()))
        });
        match up {
            Some(Ok(())) => Ok(tier),
            Some(Err(exited)) => Err(exited),
            None => panic!("the collector tier never got ready:\n{}", tier.log()),
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_grpc)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("collector.log")).unwrap_or_default()
    }
}

impl Drop for CollectorTier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
