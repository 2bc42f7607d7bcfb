//! CPU profiles of slow spans, end to end: the demo app's /api/crunch burns CPU in a function of
//! its own (`crunch_numbers`) and in libcrypto's SHA256; loupe samples the thread once the
//! request passes its threshold and the slow span in Jaeger carries a `cpu_profile` event naming
//! both, with a flamegraph on disk. A fast request carries none; a request slow because it
//! sleeps shows few or no samples. A CPython service's stacks name its Python functions.

use loupe_tests::{
    TempDir,
    client::{concurrently, get},
    jaeger::{Jaeger, Span},
    procs::{DemoApp, Loupe, PythonApp, otlp_args, pythons},
    require_root,
};
use serde_json::Value;

fn profile(span: &Span) -> Option<&std::collections::HashMap<String, Value>> {
    span.events("cpu_profile").first().copied()
}

#[test]
fn a_slow_cpu_bound_request_carries_its_stacks_and_a_sleeping_one_does_not() {
    require_root();
    let jaeger = Jaeger::start();
    let demo = DemoApp::start();
    let dir = TempDir::new("profiles");
    let profile_dir = dir.0.display().to_string();
    let loupe = Loupe::attach(&otlp_args(
        demo.frontend_pid(),
        &jaeger.grpc_endpoint(),
        "e2e-profile",
        &["--slow-http", "300ms", "--profile-dir", &profile_dir],
    ));
    assert_eq!(get(&demo.frontend_addr, "/api/crunch?ms=1500").status, 200);
    assert_eq!(get(&demo.frontend_addr, "/api/users/7").status, 200);
    assert_eq!(get(&demo.frontend_addr, "/api/slow").status, 200);
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let spans = jaeger.wait_for_spans("e2e-profile", 3, |s| s.kind() == "server");
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s.operation == name)
            .unwrap_or_else(|| panic!("no {name} in {spans:?}"))
    };

    let crunch = by_name("GET /api/crunch");
    assert!(crunch.is_slow());
    let event = profile(crunch).unwrap_or_else(|| panic!("no cpu_profile: {:?}", crunch.logs));
    let samples = event["samples"].as_i64().unwrap();
    // Sampled from about 300 ms (plus up to one 250 ms tick) to 1.5 s at 999 Hz.
    assert!(samples >= 300, "{samples} samples");
    // On a CPU the whole time it was sampled (a loaded CI box may run it a little less).
    let on_cpu = event["on_cpu_share"].as_f64().unwrap();
    assert!(on_cpu > 0.7 && on_cpu <= 1.0, "on-CPU share {on_cpu}");
    let sampled_ms = event["sampled_ms"].as_i64().unwrap();
    assert!(
        (900..=1300).contains(&sampled_ms),
        "sampled for {sampled_ms} ms"
    );
    let stacks = event["stacks"].as_str().unwrap();
    assert!(stacks.contains("demo-app!"), "{stacks}");
    assert!(stacks.contains("crunch_numbers"), "{stacks}");
    assert!(stacks.contains("libcrypto.so.3"), "{stacks}");
    assert!(stacks.len() <= 4096);
    for line in stacks.lines() {
        let (stack, count) = line.rsplit_once(' ').unwrap();
        assert!(count.parse::<u64>().unwrap() >= 1, "{line}");
        assert!(!stack.is_empty());
    }
    let path = crunch.str_tag("performance.profile.path").unwrap();
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.contains("<svg") && svg.contains("crunch_numbers"));
    // The demo app is a Rust release binary without frame pointers and libcrypto is Debian's:
    // unwound from the stack copy with their .eh_frame, the stacks reach the thread's root
    // through std's frames.
    let folded =
        std::fs::read_to_string(std::path::Path::new(path).with_extension("folded")).unwrap();
    let truncated = event["truncated_stacks"].as_i64().unwrap();
    assert!(
        truncated * 100 <= samples,
        "{truncated} of {samples} stacks cut:\n{folded}"
    );
    let whole: i64 = folded
        .lines()
        .filter(|line| {
            line.starts_with("libc.so.6")
                && line.contains("std::sys::")
                && line.contains("demo_app::")
        })
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
        .sum();
    assert!(
        whole * 100 >= samples * 95,
        "{whole} of {samples} samples reach the thread's start in libc through std:\n{folded}"
    );
    assert!(!folded.contains("[truncated]") || truncated > 0, "{folded}");
    // libc's own thread start is not in its symbol table; its debug file (libc6-dbg, through
    // the build id its .gnu_debuglink names) names it.
    assert!(
        folded.contains("libc.so.6!start_thread"),
        "libc's frames named from its debug file:\n{folded}"
    );

    let fast = by_name("GET /api/users/{id}");
    assert!(!fast.is_slow());
    assert!(profile(fast).is_none(), "a fast request is never sampled");

    // 1.2 s asleep: the thread is hot for 0.9 s but hardly on a CPU.
    let sleepy = by_name("GET /api/slow");
    assert!(sleepy.is_slow());
    let sleepy_samples = profile(sleepy).map_or(0, |e| e["samples"].as_i64().unwrap());
    assert!(
        sleepy_samples <= 20,
        "{sleepy_samples} samples while asleep"
    );

    // The hottest frames of the slow routes, at exit.
    assert!(
        finished.stderr.contains("loupe: hottest frames")
            && finished.stderr.contains("GET /api/crunch ("),
        "{}",
        finished.stderr
    );
}

/// The thread is heated when its request passes its threshold (a timer at the deadline), not
/// at the next 250 ms tick: a request 100 ms over its threshold gets the samples of those
/// 100 ms, every time.
#[test]
fn a_request_just_over_its_threshold_is_sampled_from_its_threshold_every_time() {
    require_root();
    const THRESHOLD_MS: f64 = 200.0;
    const HZ: f64 = 999.0;
    const REQUESTS: usize = 20;
    let jaeger = Jaeger::start();
    let demo = DemoApp::start();
    let loupe = Loupe::attach(&otlp_args(
        demo.frontend_pid(),
        &jaeger.grpc_endpoint(),
        "e2e-deadline",
        &["--slow-http", "200ms"],
    ));
    for i in 0..REQUESTS {
        let path = format!("/api/crunch?ms=300&req={i}");
        assert_eq!(get(&demo.frontend_addr, &path).status, 200);
    }
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let spans = jaeger.wait_for_spans("e2e-deadline", REQUESTS, |s| {
        s.kind() == "server" && s.operation == "GET /api/crunch"
    });
    let mut seen = 0;
    for span in spans
        .iter()
        .filter(|s| s.kind() == "server" && s.operation == "GET /api/crunch")
    {
        seen += 1;
        assert!(span.is_slow(), "{span:?}");
        let duration_ms = span.duration_us as f64 / 1000.0;
        let allowed = (duration_ms - THRESHOLD_MS) * HZ / 1000.0;
        let samples = profile(span).map_or(0, |e| e["samples"].as_i64().unwrap()) as f64;
        assert!(
            samples >= 0.7 * allowed,
            "{samples} samples of the {allowed:.0} that {duration_ms:.0} ms at a \
             {THRESHOLD_MS} ms threshold allows ({:?})",
            span.logs
        );
    }
    assert_eq!(seen, REQUESTS);
}

/// With `--profile-always`, a slow span also carries the stacks of its part before its
/// threshold, from the low-rate event every CPU runs, folded apart from the hot thread's.
#[test]
fn profile_always_gives_a_slow_span_the_stacks_of_its_start() {
    require_root();
    const HZ: i64 = 49;
    let jaeger = Jaeger::start();
    let demo = DemoApp::start();
    let loupe = Loupe::attach(&otlp_args(
        demo.frontend_pid(),
        &jaeger.grpc_endpoint(),
        "e2e-always",
        &["--slow-http", "400ms", "--profile-always", &HZ.to_string()],
    ));
    assert_eq!(
        get(&demo.frontend_addr, "/api/crunch?ms=800&req=1").status,
        200
    );
    assert_eq!(get(&demo.frontend_addr, "/api/users/7").status, 200);
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

    let spans = jaeger.wait_for_spans("e2e-always", 2, |s| s.kind() == "server");
    let crunch = spans
        .iter()
        .find(|s| s.operation == "GET /api/crunch")
        .unwrap_or_else(|| panic!("no crunch span in {spans:?}"));
    let event = profile(crunch).unwrap_or_else(|| panic!("no cpu_profile: {:?}", crunch.logs));
    assert_eq!(event["always_hz"].as_i64(), Some(HZ));
    // About 400 ms on a CPU before the threshold, at 49 Hz: about 19 samples.
    let early = event["samples_before_threshold"].as_i64().unwrap();
    assert!(
        (8..=30).contains(&early),
        "{early} samples before the threshold"
    );
    let stacks = event["stacks_before_threshold"].as_str().unwrap();
    assert!(stacks.contains("demo_app::crunch"), "{stacks}");
    // The hot thread's own samples are still all from the threshold on, at 999 Hz.
    let samples = event["samples"].as_i64().unwrap();
    assert!(samples >= 250, "{samples} hot samples");
    let fast = spans
        .iter()
        .find(|s| s.operation == "GET /api/users/{id}")
        .unwrap_or_else(|| panic!("no fast span in {spans:?}"));
    assert!(profile(fast).is_none(), "a fast request carries no profile");
}

/// The time per kind in an `off_cpu_profile`'s `kinds` (`lock=812ms socket=3ms`).
fn wait_ms(event: &std::collections::HashMap<String, Value>, kind: &str) -> i64 {
    event["kinds"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .find_map(|part| {
            let (name, ms) = part.split_once('=')?;
            (name == kind).then(|| ms.trim_end_matches("ms").parse().ok())?
        })
        .unwrap_or(0)
}

fn off_cpu(span: &Span) -> Option<&std::collections::HashMap<String, Value>> {
    span.events("off_cpu_profile").first().copied()
}

/// Off-CPU profiles: a request blocked on a lock another request holds waited on that lock,
/// in the demo app's `reserve_ledger`, for the time it was watched; the request holding it
/// slept; one waiting on its downstream waited on a socket as long as its CLIENT span ran
/// while watched; a CPU-bound one hardly waited at all.
#[test]
fn off_cpu_profiles_say_where_slow_requests_waited() {
    require_root();
    const THRESHOLD_MS: u64 = 200;
    let jaeger = Jaeger::start();
    let demo = DemoApp::start();
    let dir = TempDir::new("offcpu");
    let profile_dir = dir.0.display().to_string();
    let loupe = Loupe::attach(&otlp_args(
        demo.frontend_pid(),
        &jaeger.grpc_endpoint(),
        "e2e-offcpu",
        &[
            "--slow-http",
            &format!("{THRESHOLD_MS}ms"),
            "--profile-dir",
            &profile_dir,
        ],
    ));
    let holder = {
        let addr = demo.frontend_addr.clone();
        std::thread::spawn(move || get(&addr, "/api/ledger/hold?ms=1200&req=hold").status)
    };
    // The hold takes the lock at once; the reservation comes well after it.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let reserve = get(&demo.frontend_addr, "/api/ledger/reserve?req=reserve");
    assert_eq!(reserve.status, 200);
    assert_eq!(holder.join().unwrap(), 200);
    assert_eq!(get(&demo.frontend_addr, "/api/checkout/slow").status, 200);
    assert_eq!(get(&demo.frontend_addr, "/api/crunch?ms=800").status, 200);
    let finished = loupe.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    // The longest waits per route, at exit.
    let waits = finished
        .stderr
        .split_once("loupe: longest waits of slow spans (off-CPU)\n")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no longest waits at exit: {}", finished.stderr));
    assert!(
        waits
            .lines()
            .any(|line| line.starts_with("GET /api/ledger/reserve (")
                && line.contains("% lock in demo_app::reserve_ledger")),
        "{waits}"
    );

    let spans = jaeger.wait_for_spans("e2e-offcpu", 5, |s| s.is_slow());
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s.operation == name)
            .unwrap_or_else(|| panic!("no {name} in {spans:?}"))
    };

    // Blocked on the lock from its start, watched from its threshold on.
    let reserved = by_name("GET /api/ledger/reserve");
    let event =
        off_cpu(reserved).unwrap_or_else(|| panic!("no off_cpu_profile: {:?}", reserved.logs));
    let watched_ms = reserved.duration_us as i64 / 1000 - THRESHOLD_MS as i64;
    assert!(
        watched_ms >= 400,
        "the reservation waited only {watched_ms} ms past its threshold"
    );
    let lock_ms = wait_ms(event, "lock");
    assert!(
        lock_ms * 10 >= watched_ms * 8 && lock_ms <= watched_ms + 20,
        "{lock_ms} ms on a lock of {watched_ms} ms watched: {event:?}"
    );
    assert_eq!(event["began_before_watch"].as_bool(), Some(true));
    let stacks = event["stacks"].as_str().unwrap();
    assert!(stacks.contains("futex"), "{stacks}");
    assert!(stacks.contains("demo_app::reserve_ledger"), "{stacks}");
    let diagnosis = reserved.str_tag("performance.diagnosis").unwrap_or("");
    assert!(
        diagnosis.starts_with("at least ")
            && diagnosis.contains(
                "% of the request waited on a lock in `demo_app::reserve_ledger` (off-CPU)"
            ),
        "{diagnosis}\n{stacks}"
    );
    assert_eq!(reserved.str_tag("performance.wait_kind"), Some("lock"));
    let path = reserved
        .str_tag("performance.off_cpu_profile.path")
        .unwrap();
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.contains("<svg") && svg.contains("reserve_ledger"));

    // The holder slept with the lock held.
    let hold = by_name("GET /api/ledger/hold");
    let event = off_cpu(hold).unwrap_or_else(|| panic!("no off_cpu_profile: {:?}", hold.logs));
    let held_ms = hold.duration_us as i64 / 1000 - THRESHOLD_MS as i64;
    assert!(wait_ms(event, "sleep") * 10 >= held_ms * 8, "{event:?}");
    assert!(
        hold.str_tag("performance.diagnosis")
            .unwrap_or("")
            .contains("waited on a sleep"),
        "{:?}",
        hold.tags
    );

    // Waiting on the backend: the socket wait is the CLIENT span's time while watched.
    let checkout = by_name("GET /api/checkout/slow");
    let client = spans
        .iter()
        .find(|s| s.kind() == "client" && s.parent.as_deref() == Some(checkout.span_id.as_str()))
        .unwrap_or_else(|| panic!("no client span under the checkout in {spans:?}"));
    let event =
        off_cpu(checkout).unwrap_or_else(|| panic!("no off_cpu_profile: {:?}", checkout.logs));
    let watch_start = checkout.start_us + THRESHOLD_MS * 1000;
    let client_end = client.start_us + client.duration_us;
    let expected_ms = (client_end.saturating_sub(client.start_us.max(watch_start)) / 1000) as i64;
    let socket_ms = wait_ms(event, "socket");
    assert!(
        (socket_ms - expected_ms).abs() <= 50.max(expected_ms / 10),
        "{socket_ms} ms on a socket, the client span ran {expected_ms} ms while watched: {event:?}"
    );
    assert!(
        checkout
            .str_tag("performance.diagnosis")
            .unwrap_or("")
            .contains("waited on a socket"),
        "{:?}",
        checkout.tags
    );

    // On a CPU the whole time: it waited on nothing (time runnable but preempted, on a busy
    // machine, is its `cpu` kind, not a wait).
    let crunch = by_name("GET /api/crunch");
    let crunch_watched = crunch.duration_us as i64 / 1000 - THRESHOLD_MS as i64;
    let crunch_waited =
        off_cpu(crunch).map_or(0, |e| e["off_cpu_ms"].as_i64().unwrap() - wait_ms(e, "cpu"));
    assert!(
        crunch_waited * 20 <= crunch_watched,
        "a CPU-bound request waited {crunch_waited} ms of {crunch_watched} ms: {:?}",
        off_cpu(crunch)
    );
    assert!(
        !crunch
            .str_tag("performance.diagnosis")
            .unwrap_or("")
            .contains("off-CPU"),
        "{:?}",
        crunch.tags
    );
}

/// A CPython service's profiles name its Python functions, on Debian's stock python3.11
/// (stripped) and each pyenv 3.12 and 3.13 build the machine has: tests/apps/py_burn.py burns
/// CPU in `crunch_numbers` (Python) and in `hash_password` (hashlib's PBKDF2, in libcrypto),
/// two requests at a time. The Python frames stand where the interpreter's eval loop was, with
/// their module, function and line, and libcrypto's frames sit under `hash_password`.
#[test]
fn python_profiles_name_the_python_functions_on_every_known_cpython() {
    require_root();
    let jaeger = Jaeger::start();
    for (version, python) in pythons() {
        let app = PythonApp::start(&python, "py_burn.py", &["--port", "0"]);
        let service = format!("e2e-pyprofile-{}", version.replace('.', ""));
        let dir = TempDir::new("pyprofiles");
        let profile_dir = dir.0.display().to_string();
        let loupe = Loupe::attach(&otlp_args(
            app.pid(),
            &jaeger.grpc_endpoint(),
            &service,
            &["--slow-http", "100ms", "--profile-dir", &profile_dir],
        ));
        concurrently(&app.addr, 2, 2, |client, i| {
            (format!("/burn/c{client}-{i}?ms=250"), ())
        });
        assert_eq!(get(&app.addr, "/fast/f1").status, 200);
        let finished = loupe.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        let who = format!("{service} ({})", python.display());
        assert!(
            finished
                .stderr
                .contains("its profiles name its Python functions"),
            "{who}: {}",
            finished.stderr
        );

        let spans = jaeger.wait_for_spans(&service, 5, |s| s.kind() == "server");
        let burns: Vec<&Span> = spans
            .iter()
            .filter(|s| s.operation.starts_with("GET /burn"))
            .collect();
        assert_eq!(burns.len(), 4, "{who}: {spans:?}");
        for span in burns {
            let event =
                profile(span).unwrap_or_else(|| panic!("{who}: no cpu_profile: {:?}", span.logs));
            let stacks = event["stacks"].as_str().unwrap();
            assert!(
                stacks.contains("py_burn.Handler.do_GET (py_burn.py:"),
                "{who}: {stacks}"
            );
            let path = span.str_tag("performance.profile.path").unwrap();
            let folded =
                std::fs::read_to_string(std::path::Path::new(path).with_extension("folded"))
                    .unwrap();
            let samples_where = |what: &dyn Fn(&str) -> bool| -> i64 {
                folded
                    .lines()
                    .filter(|line| what(line))
                    .map(|line| line.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
                    .sum()
            };
            let all = samples_where(&|_| true);
            let crunch = samples_where(&|l| l.contains("py_burn.crunch_numbers (py_burn.py:"));
            // Python code, then the C it calls: libcrypto's frames come after (under) it.
            let hashing = samples_where(&|l| {
                l.find("py_burn.hash_password (py_burn.py:")
                    .is_some_and(|at| l[at..].contains("libcrypto.so.3!"))
            });
            let evals = samples_where(&|l| l.contains("!_PyEval_EvalFrameDefault"));
            // Each part burns for about as long, but two requests share the GIL in
            // crunch_numbers (which stops at a deadline) while PBKDF2 runs without it.
            assert!(
                crunch * 8 >= all && hashing * 4 >= all,
                "{who}: {crunch} in crunch_numbers, {hashing} in PBKDF2 under hash_password, of {all}:\n{folded}"
            );
            assert!(
                evals * 20 <= all,
                "{who}: {evals} of {all} samples still show the eval loop:\n{folded}"
            );
        }
        let fast = spans
            .iter()
            .find(|s| s.operation.starts_with("GET /fast"))
            .unwrap_or_else(|| panic!("{who}: no fast span in {spans:?}"));
        assert!(
            profile(fast).is_none(),
            "{who}: a fast request is never sampled"
        );
    }
}
