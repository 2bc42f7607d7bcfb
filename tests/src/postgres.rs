//! A throwaway PostgreSQL 15 cluster: initdb in a temporary directory as the `postgres` user (the
//! server refuses to run as root), trust authentication on 127.0.0.1 and a free port, every
//! statement's duration logged so tests can compare loupe's timing with the server's own.

use std::{
    collections::{HashMap, HashSet},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{TempDir, free_port, jaeger::Span, wait_until};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The orders shop's two statements as the test apps send them, and as loupe exports them
/// (normalized, `$1` placeholders).
pub const ORDER_BY_ID: &str = "SELECT id, total FROM orders WHERE id = $1";
pub const ORDERS_OF_USER: &str = "SELECT id, total FROM orders WHERE user_id = $1";

/// What the server logged preparing (log_min_duration_statement=0 logs each Parse as
/// `... [<backend pid>] LOG:  duration: <ms> ms  parse <name>: <text>`): per statement text,
/// the backends (connections) that prepared it, and each statement name's text.
pub struct Prepared {
    pub backends: HashMap<String, HashSet<u32>>,
    pub names: HashMap<String, String>,
}

impl Prepared {
    fn from_log(log: &str) -> Self {
        let mut found = Self {
            backends: HashMap::new(),
            names: HashMap::new(),
        };
        for line in log.lines() {
            let Some((_, parse)) = line.split_once(" ms  parse ") else {
                continue;
            };
            let Some((name, text)) = parse.split_once(": ") else {
                continue;
            };
            let pid = line
                .split_once('[')
                .and_then(|(_, rest)| rest.split_once(']'))
                .and_then(|(pid, _)| pid.parse().ok());
            if let Some(pid) = pid {
                found
                    .backends
                    .entry(text.to_owned())
                    .or_default()
                    .insert(pid);
                found.names.insert(name.to_owned(), text.to_owned());
            }
        }
        found
    }

    /// Whether each of `texts` was prepared on at least `connections` connections.
    pub fn on_each(&self, texts: &[&str], connections: usize) -> bool {
        texts
            .iter()
            .all(|text| self.backends.get(*text).map_or(0, HashSet::len) >= connections)
    }

    /// The statement a query span ran: its text, or the text its name was prepared with.
    pub fn statement_of<'s>(&'s self, query: &'s Span) -> Option<&'s str> {
        query.str_tag("db.query.text").or_else(|| {
            query
                .str_tag("loupe.db.statement_name")
                .and_then(|name| self.names.get(name))
                .map(String::as_str)
        })
    }
}

pub struct Postgres {
    child: Child,
    dir: TempDir,
    pub port: u16,
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres user (Debian's postgresql-15 creates it)")
    };
    (id("-u"), id("-g"))
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// The same server with TLS on (a self-signed certificate made for it): clients that ask
    /// for sslmode=require get an encrypted session, opaque on the wire.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let dir = TempDir::new("pg");
        let data = dir.0.join("data");
        let (uid, gid) = postgres_ids();
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let status = Command::new(format!("{BIN}/initdb"))
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb (cargo xtask setup installs postgresql-15)");
        assert!(status.success(), "initdb failed");
        let mut settings: Vec<String> = Vec::new();
        if tls {
            let status = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.crt",
                ])
                .current_dir(&data)
                .uid(uid)
                .gid(gid)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run openssl (cargo xtask setup installs it)");
            assert!(status.success(), "openssl could not make a certificate");
            // log_connections says, per session, whether it is encrypted.
            settings.extend([
                "log_connections=on".into(),
                "ssl=on".into(),
                "ssl_cert_file=server.crt".into(),
                "ssl_key_file=server.key".into(),
            ]);
        }
        let port = free_port();
        let log = std::fs::File::create(dir.0.join("server.log")).expect("log file");
        std::fs::set_permissions(
            dir.0.join("server.log"),
            std::fs::Permissions::from_mode(0o666),
        )
        .expect("chmod log");
        let child = Command::new(format!("{BIN}/postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
            ])
            .arg(format!("unix_socket_directories={}", dir.0.display()))
            .args(["-c", "log_min_duration_statement=0", "-c", "fsync=off"])
            .args(settings.iter().flat_map(|setting| ["-c", setting.as_str()]))
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let pg = Self { child, dir, port };
        let ready = wait_until(Duration::from_secs(30), || {
            Command::new(format!("{BIN}/pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .status()
                .ok()
                .filter(|s| s.success())
        });
        assert!(ready.is_some(), "postgres did not start:\n{}", pg.log());
        pg
    }

    /// A libpq connection string to `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    /// A `shop` database with an `orders` table: user 7 has three orders, user 8 one. The test
    /// apps query it with [`ORDER_BY_ID`] and [`ORDERS_OF_USER`].
    pub fn create_orders_shop(&self) {
        self.run_sql("postgres", "CREATE DATABASE shop");
        self.run_sql(
            "shop",
            "CREATE TABLE orders (id int, user_id int, total numeric); INSERT INTO orders VALUES (1, 7, 10), (2, 7, 20), (3, 7, 30), (4, 8, 40)",
        );
    }

    /// Runs SQL with psql (not observed by loupe: for set-up).
    pub fn run_sql(&self, database: &str, sql: &str) {
        let out = Command::new(format!("{BIN}/psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                &self.url(database),
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The statements the server's log says were prepared so far.
    pub fn prepared(&self) -> Prepared {
        Prepared::from_log(&self.log())
    }

    /// Runs `round(0)`, `round(1)`, ... (each some requests to a pooled client of this server)
    /// until each of `texts` is prepared on at least `connections` connections, as the server's
    /// log says; fails after ten rounds.
    pub fn prepare_on_each(
        &self,
        texts: &[&str],
        connections: usize,
        mut round: impl FnMut(usize),
    ) {
        for n in 0..10 {
            round(n);
            if self.prepared().on_each(texts, connections) {
                return;
            }
        }
        panic!(
            "ten rounds did not get {connections} connections to prepare each of {texts:?}: {:?}",
            self.prepared().backends
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.0.join("server.log")
    }

    /// The duration the server logged for the statement containing `needle`, in microseconds.
    pub fn logged_duration_us(&self, needle: &str) -> Option<u64> {
        self.log().lines().find_map(|line| {
            let rest = line.split("duration: ").nth(1)?;
            let (ms, statement) = rest.split_once(" ms")?;
            if !statement.contains(needle) {
                return None;
            }
            ms.trim().parse::<f64>().ok().map(|ms| (ms * 1000.0) as u64)
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown.
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        if wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
