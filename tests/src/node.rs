//! The Node.js shop (tests/apps/node_shop/shop.js): node:http and a node-postgres pool, with the
//! node_modules `cargo xtask setup` installs into `${LOUPE_CACHE:-~/.cache/loupe}/node_shop`.

use std::process::{Child, Command, Stdio};

use crate::procs::listening_addr;

/// The Node.js shop, killed on drop.
pub struct NodeShop {
    child: Child,
    pub addr: String,
}

impl NodeShop {
    /// `dsn` as a URL: `postgres://postgres@127.0.0.1:<port>/shop`.
    pub fn start(dsn: &str) -> Self {
        let modules = crate::cache_dir().join("node_shop/node_modules");
        assert!(
            modules.join("pg/package.json").is_file(),
            "no node-postgres in {}: run `cargo xtask setup`",
            modules.display()
        );
        let script = crate::workspace_root().join("tests/apps/node_shop/shop.js");
        // The script stays in the clone; `require('pg')` finds the cached modules through
        // NODE_PATH (a script outside the cache has no node_modules of its own to search).
        let mut child = Command::new("node")
            .arg(script)
            .args(["--port", "0", "--dsn", dsn])
            .env("NODE_PATH", &modules)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("start node (cargo xtask setup installs it): {err}"));
        let addr = listening_addr(&mut child, "node_shop/shop.js");
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeShop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
