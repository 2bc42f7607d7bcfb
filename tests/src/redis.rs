//! A real redis-server (Debian's), started on a free loopback port in a temporary directory,
//! persistence off; and the cache shop (tests/apps/cache_shop.py) in front of it.

use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{TempDir, free_port, wait_until};

const REDIS_SERVER: &str = "/usr/bin/redis-server";

pub struct Redis {
    child: Child,
    _dir: TempDir,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Self {
        assert!(
            std::path::Path::new(REDIS_SERVER).is_file(),
            "no {REDIS_SERVER}: run `cargo xtask setup`"
        );
        let dir = TempDir::new("redis");
        let port = free_port();
        let child = Command::new(REDIS_SERVER)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("start redis-server: {err}"));
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "redis-server did not listen on {port}");
        Self {
            child,
            _dir: dir,
            port,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
