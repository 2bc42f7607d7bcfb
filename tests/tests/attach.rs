//! Attaching like a service: loupe started with `--name` or `--exe` observes the demo app's
//! frontend (a copy of the binary under a name and path of the test's own) whenever it runs:
//! one started after loupe, one already running, and each new process after a restart, whose
//! spans carry its own pid, without loupe being restarted. A process of the same name that runs
//! another file is not observed by `--exe`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use loupe_tests::{
    TempDir, binary,
    client::concurrently,
    jaeger::{Jaeger, Span},
    procs::{Loupe, args},
    require_root, wait_until,
};

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 5;

/// A copy of the demo app at `dir/name`: its processes are called `name`.
fn copy_demo_app(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(binary("DEMO_APP_BIN", "demo-app"), &path)
        .expect("copy demo-app (run `cargo xtask build`)");
    path
}

/// The demo app's frontend run from `exe`, killed on drop. Its `/api/users/<digits>` answers
/// without calling its backend.
struct App {
    child: Child,
    addr: String,
}

impl App {
    fn start(exe: &Path) -> Self {
        let mut child = Command::new(exe)
            .args(["frontend", "--port", "0", "--backend", "http://127.0.0.1:9"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", exe.display()));
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("the app says where it listens");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the app said `{line}`"))
            .to_owned();
        Self { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `CLIENTS` keep-alive clients at once, each request to a path of its own under `round`.
fn requests(app: &App, round: usize) -> Vec<String> {
    concurrently(&app.addr, CLIENTS, PER_CLIENT, |client, n| {
        let path = format!("/api/users/{}", 100_000 * (round + 1) + 100 * client + n);
        (path.clone(), path)
    })
}

/// Waits until loupe has told the user `line`.
fn wait_told(loupe: &Loupe, line: &str) {
    let told = wait_until(Duration::from_secs(15), || {
        loupe.stderr().contains(line).then_some(())
    });
    assert!(told.is_some(), "loupe says `{line}`:\n{}", loupe.stderr());
}

fn pid_of(span: &Span) -> Option<i64> {
    span.process_tags
        .get("process.pid")
        .and_then(serde_json::Value::as_i64)
}

/// Each of `paths` is one SERVER span, of process `pid`.
fn assert_served_by(spans: &[Span], paths: &[String], pid: u32, context: &str) {
    for path in paths {
        let servers: Vec<&Span> = spans
            .iter()
            .filter(|s| s.kind() == "server" && s.str_tag("url.path") == Some(path.as_str()))
            .collect();
        assert_eq!(
            servers.len(),
            1,
            "one SERVER span for GET {path}\n{context}"
        );
        assert_eq!(
            pid_of(servers[0]),
            Some(i64::from(pid)),
            "GET {path} was served by pid {pid}\n{context}"
        );
        assert_eq!(servers[0].operation, "GET /api/users/{id}", "{context}");
    }
}

fn dump(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} pid={:?}",
                s.kind(),
                s.str_tag("url.path").unwrap_or("-"),
                pid_of(s)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_service_named_before_it_starts_is_observed_across_restarts() {
    require_root();
    let dir = TempDir::new("attach-name");
    // Unique to this run, and short: a comm holds 15 bytes.
    let name = format!("lpn-{}", std::process::id() % 100_000);
    let exe = copy_demo_app(&dir.0, &name);
    let jaeger = Jaeger::start();
    let loupe = Loupe::attach(&args(&[
        "--name",
        &name,
        "--otlp-endpoint",
        &jaeger.grpc_endpoint(),
    ]));
    wait_told(&loupe, "loupe: attached to 0 process(es)");
    wait_told(
        &loupe,
        &format!("loupe: waiting for a process matching --name {name}"),
    );

    // The kernel makes it a target at its exec: requests sent at once are seen.
    let first = App::start(&exe);
    let first_pid = first.pid();
    let first_paths = requests(&first, 0);
    wait_told(
        &loupe,
        &format!("loupe: observing pid {first_pid} ({name}), which matches --name {name}"),
    );
    drop(first);
    wait_told(&loupe, &format!("loupe: pid {first_pid} ({name}) exited"));
    wait_told(
        &loupe,
        &format!("loupe: no process left to observe; waiting for one matching --name {name}"),
    );

    // Restarted: a new process, under a new pid, while loupe runs on.
    let second = App::start(&exe);
    let second_pid = second.pid();
    assert_ne!(second_pid, first_pid);
    let second_paths = requests(&second, 1);

    let total = first_paths.len() + second_paths.len();
    let spans = jaeger.wait_for_spans(&name, total, |s| s.kind() == "server");
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let context = format!("spans:\n{}\nloupe:\n{}", dump(&spans), finished.stderr);
    assert_served_by(&spans, &first_paths, first_pid, &context);
    assert_served_by(&spans, &second_paths, second_pid, &context);
    assert_eq!(
        spans.iter().filter(|s| s.kind() == "server").count(),
        total,
        "{context}"
    );
    finished.assert_told(&format!(
        "loupe: observing pid {second_pid} ({name}), which matches --name {name}"
    ));
    assert_eq!(finished.summary()["events_lost"], 0, "{context}");
}

#[test]
fn an_executable_is_observed_running_at_start_started_later_and_restarted() {
    require_root();
    let dir = TempDir::new("attach-exe");
    let name = format!("lpx-{}", std::process::id() % 100_000);
    let exe = copy_demo_app(&dir.0, &name);
    // loupe is given a symlink to it: matched as the file it resolves to.
    let link = dir.0.join("current");
    std::os::unix::fs::symlink(&exe, &link).expect("symlink");
    // The same name, another file: not what --exe names.
    let elsewhere = TempDir::new("attach-exe-other");
    let impostor_exe = copy_demo_app(&elsewhere.0, &name);

    let running = App::start(&exe);
    let impostor = App::start(&impostor_exe);
    let jaeger = Jaeger::start();
    let link_text = link.to_str().expect("utf-8 temp path");
    let loupe = Loupe::attach(&args(&[
        "--exe",
        link_text,
        "--otlp-endpoint",
        &jaeger.grpc_endpoint(),
    ]));
    wait_told(&loupe, "loupe: attached to 1 process(es)");
    wait_told(
        &loupe,
        &format!(
            "loupe: observing pid {} ({name}), which matches --exe {link_text}",
            running.pid()
        ),
    );
    let impostor_paths = requests(&impostor, 9);
    let running_paths = requests(&running, 0);

    // Started later: loupe matches its executable once the kernel reports its exec; the test
    // waits for that before its requests.
    let later = App::start(&exe);
    wait_told(
        &loupe,
        &format!(
            "loupe: observing pid {} ({name}), which matches --exe {link_text}",
            later.pid()
        ),
    );
    let later_paths = requests(&later, 1);

    // The first one restarted: a new pid, observed again.
    let running_pid = running.pid();
    drop(running);
    wait_told(&loupe, &format!("loupe: pid {running_pid} ({name}) exited"));
    let restarted = App::start(&exe);
    assert_ne!(restarted.pid(), running_pid);
    wait_told(
        &loupe,
        &format!("loupe: observing pid {} ({name})", restarted.pid()),
    );
    let restarted_paths = requests(&restarted, 2);

    let total = running_paths.len() + later_paths.len() + restarted_paths.len();
    let spans = jaeger.wait_for_spans(&name, total, |s| s.kind() == "server");
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let context = format!("spans:\n{}\nloupe:\n{}", dump(&spans), finished.stderr);
    assert_served_by(&spans, &running_paths, running_pid, &context);
    assert_served_by(&spans, &later_paths, later.pid(), &context);
    assert_served_by(&spans, &restarted_paths, restarted.pid(), &context);
    let impostor_pid = i64::from(impostor.pid());
    assert!(
        !spans.iter().any(|s| pid_of(s) == Some(impostor_pid)
            || impostor_paths
                .iter()
                .any(|p| s.str_tag("url.path") == Some(p))),
        "the process of the same name running another file is not observed\n{context}"
    );
    assert!(
        !finished
            .stderr
            .contains(&format!("observing pid {impostor_pid} ")),
        "{context}"
    );
}
